"""`polyverse train ...`: the CLLM and SPACE pipelines (collect, fit, eval) and self-distillation (distill)."""

from __future__ import annotations

import json
from typing import Callable, Optional

import typer
from rich.console import Console
from rich.table import Table

from ..errors import ConfigError
from . import cluster
from .common import DECAY_FROM_OPTION, SCHEDULE_OPTION, clean_exit, fit_and_save, gsm8k_default, progress, question_rows

train_app = typer.Typer(no_args_is_help=True, help="Training pipelines (CLLM consistency distillation, SPACE SFT).")
cllm_app = typer.Typer(no_args_is_help=True, help="CLLM: collect Jacobi trajectories, fit an adapter, evaluate it.")
space_app = typer.Typer(no_args_is_help=True, help="SPACE: [MASK] semi-autoregressive SFT, evaluate the adapter.")
train_app.add_typer(cllm_app, name="cllm")
train_app.add_typer(space_app, name="space")


def _check_device(device: str) -> None:
    """A clear error for a device name torch does not know, or CUDA asked for where there is none."""
    from ..api import parse_device

    try:
        parse_device(device)
    except ConfigError as exc:
        raise ConfigError(f"--device: {exc}") from None


CHAT_OPTION = typer.Option(None, "--chat/--no-chat", help="Chat template (default: when the model has one).")
# the options `train cllm eval` and `train space eval` share
EVAL_MODEL_OPTION = typer.Option("SmolLM2-135M-Instruct", "--model", help="Base model.")
EVAL_DATA_OPTION = typer.Option("", "--data", help="JSONL of questions (default: ../shared/data/gsm8k_test_dev.jsonl).")
EVAL_LIMIT_OPTION = typer.Option(10, "--limit", help="Prompts.")
EVAL_OFFSET_OPTION = typer.Option(0, "--offset", help="Skip this many questions first (a fresh slice).")
EVAL_TOKENS_OPTION = typer.Option(128, "--max-new-tokens", "-n", help="Tokens per prompt.")
EVAL_OUT_OPTION = typer.Option(None, "--out", help="Write every figure to this JSON file.")
DEVICE_OPTION = typer.Option("cpu", "--device", help="Where both models decode (cpu, cuda ...). Tokens per pass and "
                             "agreement hold anywhere; the speed ratios are the device's own.")


def _evaluate_adapter(model: str, adapter: str, data: str, limit: int, chat: Optional[bool], out: Optional[str],
                      run: Callable[..., dict], offset: int = 0, device: str = "cpu") -> dict:
    """Load the base and the adapted model, run ``run(base, adapted, prompts, tick)`` over GSM8K-style
    questions with a progress bar, write the figures to ``out`` if given; bad input fails cleanly."""
    from pathlib import Path

    with clean_exit():
        rows = question_rows(data or gsm8k_default("gsm8k_test_dev.jsonl"), limit, offset)
        from .common import load

        _check_device(device)
        base = load(model).to(device)
        adapted = load(model, adapter=adapter).to(device)
        prompts = [(pid, base.encode(p, chat), gold) for pid, p, gold in rows]
        with progress() as bar:
            task = bar.add_task("eval", total=len(prompts))
            doc = run(base, adapted, prompts, lambda pid: bar.update(task, advance=1))
        if out:
            Path(out).write_text(json.dumps(doc, indent=1))
    return doc


@train_app.command("distill")
def distill_cmd(
    model: str = typer.Option("SmolLM2-135M-Instruct", "--model", help="Model whose greedy answers are written."),
    backend: str = typer.Option("transformers", "--backend", help="transformers or llamacpp (a GGUF --model)."),
    data: str = typer.Option("", "--data", help="JSONL of prompts/questions (default: ../shared/data/gsm8k_train.jsonl)."),
    out: str = typer.Option(..., "--out", help="JSONL of prompt/response rows (appended; a rerun resumes)."),
    max_new_tokens: int = typer.Option(256, "--max-new-tokens", "-n", help="Token budget per answer."),
    limit: int = typer.Option(1000, "--limit", help="Questions to answer."),
    offset: int = typer.Option(0, "--offset", help="Skip this many questions first."),
    method: str = typer.Option("auto", "--method", help="Lossless method used to decode (greedy output is the same)."),
    chat: Optional[bool] = CHAT_OPTION,
    concurrency: int = typer.Option(16, "--concurrency", help="Questions decoded together through --method, sharing "
                                    "each pass (each answer exactly its greedy answer alone)."),
    batch: int = typer.Option(0, "--batch", help="0: questions through --method (exactly greedy); N: N "
                              "questions per transformers `generate` call (for a GPU; greedy up to rounding)."),
    device: str = typer.Option("cpu", "--device", help="With --batch: where the model runs (cpu, cuda, cuda:1 ...)."),
    ray: Optional[str] = cluster.RAY_OPTION,
    workers: Optional[int] = cluster.WORKERS_OPTION,
    worker_threads: int = cluster.WORKER_THREADS_OPTION,
    shard_size: int = cluster.SHARD_SIZE_OPTION,
) -> None:
    """Self-distillation data: the model's own greedy answers, as training data for SPACE and CLLM fit."""
    from pathlib import Path

    from ..train.distill import DistillConfig, distill
    from ..train.distill_batched import distill_batched

    with clean_exit("interrupted: answers already written are kept; rerun the same command to resume"):
        cfg = DistillConfig(max_new_tokens=max_new_tokens, method=method, concurrency=concurrency)
        if batch < 0:
            raise ConfigError(f"--batch must be 0 or more, got {batch}")
        if device != "cpu" and not batch:
            raise ConfigError("--device needs --batch (one-at-a-time distillation decodes on the CPU)")
        if batch and backend != "transformers":
            raise ConfigError("--batch needs --backend transformers")
        if ray is not None and batch:
            raise ConfigError("--ray runs questions through --method; --batch is for one GPU")
        cluster.check(ray, workers, worker_threads, shard_size)
        rows = question_rows(data or gsm8k_default("gsm8k_train.jsonl"), limit, offset)
        from .common import load
        from ..registry import registry

        _check_device(device)
        registry.get(method)  # an unknown method fails before the model loads
        if ray is not None:
            from ..offline.work import JobSpec
            from ..train.distill import done_ids

            spec = JobSpec("distill", model, {"backend": backend},
                           {"method": method, "max_new_tokens": max_new_tokens, "concurrency": concurrency, "chat": chat})
            counts = cluster.run(spec, [(pid, p) for pid, p, _ in rows], Path(out), done_ids(Path(out)), ray, workers,
                                 worker_threads, shard_size, "distill")
            typer.echo(f"{counts['written']} answers written ({counts['skipped']} already there; {counts['shards']} "
                       f"shards, {counts['redone']} redone after a lost worker) -> {out}")
            return
        lm = load(model, backend=backend)
        if batch:
            lm.to(device)
        questions = [(pid, p) for pid, p, _ in rows]
        with progress() as bar:
            task = bar.add_task("distill", total=len(questions))
            tick = lambda pid, why: bar.update(task, advance=1, description=f"question {pid}: {why}")  # noqa: E731
            if batch:
                counts = distill_batched(lm, questions, Path(out), cfg, batch, chat, tick=tick)
            else:
                counts = distill(lm, questions, Path(out), cfg, chat, tick=tick)
    typer.echo(f"{counts['written']} answers written ({counts['truncated']} cut by the budget, "
               f"{counts['skipped']} already there) -> {out}")


@cllm_app.command("collect")
def cllm_collect(
    model: str = typer.Option("SmolLM2-135M-Instruct", "--model", help="Model whose Jacobi trajectories are collected."),
    data: str = typer.Option("", "--data", help="JSONL of prompts/questions (default: ../shared/data/gsm8k_train.jsonl)."),
    out: str = typer.Option(..., "--out", help="Folder for trajectories.jsonl (appended; a rerun resumes)."),
    block: int = typer.Option(16, "--block", help="n: tokens per Jacobi block."),
    max_new_tokens: int = typer.Option(256, "--max-new-tokens", "-n", help="Tokens generated per prompt."),
    limit: int = typer.Option(100, "--limit", help="Prompts to use."),
    offset: int = typer.Option(0, "--offset", help="Skip this many prompts first."),
    max_run: int = typer.Option(8, "--max-run", help="Drop blocks with this many equal tokens in a row."),
    chat: Optional[bool] = CHAT_OPTION,
    ray: Optional[str] = cluster.RAY_OPTION,
    workers: Optional[int] = cluster.WORKERS_OPTION,
    worker_threads: int = cluster.WORKER_THREADS_OPTION,
    shard_size: int = cluster.SHARD_SIZE_OPTION,
) -> None:
    """Greedy Jacobi on each prompt, recording every state of each block and its fixed point."""
    from pathlib import Path

    from ..train.cllm.collect import CollectConfig, collect

    with clean_exit("interrupted: prompts already written are kept; rerun the same command to resume"):
        cfg = CollectConfig(block=block, max_new_tokens=max_new_tokens, max_run=max_run)
        cluster.check(ray, workers, worker_threads, shard_size)
        rows = question_rows(data or gsm8k_default("gsm8k_train.jsonl"), limit, offset)
        from .common import load

        lm = load(model)
        prompts = [(pid, lm.encode(p, chat)) for pid, p, _ in rows]
        if ray is not None:
            from dataclasses import asdict

            from ..offline.work import JobSpec
            from ..train.cllm.collect import FILE, done_prompts, write_summary

            path = Path(out) / FILE
            spec = JobSpec("collect", model, {}, asdict(cfg))
            counts = cluster.run(spec, [(pid, list(ids)) for pid, ids in prompts], path, done_prompts(path), ray,
                                 workers, worker_threads, shard_size, "collect")
            write_summary(Path(out), cfg, lm.name, path)
            typer.echo(f"{counts['written']} prompts collected ({counts['skipped']} already done; {counts['shards']} "
                       f"shards, {counts['redone']} redone after a lost worker) -> {path}")
            return
        with progress() as bar:
            task = bar.add_task("collect", total=len(prompts))
            counts = collect(lm, prompts, Path(out), cfg, tick=lambda pid, n: bar.update(task, advance=1, description=f"prompt {pid}: {n} blocks"))
    typer.echo(f"{counts['prompts']} prompts collected ({counts['skipped']} already done), {counts['blocks']} blocks kept, "
               f"{counts['dropped']} degenerate dropped -> {Path(out) / 'trajectories.jsonl'}")


@cllm_app.command("fit")
def cllm_fit(
    model: str = typer.Option("SmolLM2-135M-Instruct", "--model", help="Base model to fine-tune."),
    trajectories: str = typer.Option("", "--trajectories", help="Folder written by `collect`."),
    data: str = typer.Option("", "--data", help="Instead of --trajectories (packed training only): JSONL of the "
                             "model's own greedy answers, as written by `polyverse train distill`."),
    out: str = typer.Option(..., "--out", help="Adapter folder (checkpoints go under it)."),
    limit: int = typer.Option(0, "--limit", help="With --data: use the first N rows (0: all)."),
    steps: int = typer.Option(200, "--steps", help="Optimizer steps."),
    batch: int = typer.Option(1, "--batch", help="Examples per micro-batch."),
    accumulate: int = typer.Option(4, "--accumulate", help="Micro-batches per optimizer step."),
    lr: float = typer.Option(2e-4, "--lr", help="Learning rate."),
    schedule: str = SCHEDULE_OPTION,
    decay_from: int = DECAY_FROM_OPTION,
    ar_weight: float = typer.Option(10.0, "--ar-weight", help="Weight of the AR loss."),
    consistency_weight: float = typer.Option(1.0, "--consistency-weight", help="Weight of the consistency loss."),
    label_smoothing: float = typer.Option(0.1, "--label-smoothing", help="Label smoothing of the AR loss."),
    groups: int = typer.Option(0, "--groups", help="0: one recorded state per example; G: packed samples, a whole "
                               "answer and up to G Jacobi states each, laid out as the decoder feeds them (denser)."),
    block: int = typer.Option(8, "--block", help="Packed: tokens per state (the Jacobi block to decode with)."),
    refine: float = typer.Option(0.0, "--refine", help="Packed: share of micro-batches whose states first get one "
                                 "Jacobi update by the model being trained (on-policy states)."),
    max_len: int = typer.Option(160, "--max-len", help="Packed: answer tokens kept per sample."),
    full: bool = typer.Option(False, "--full", help="Full fine-tune instead of LoRA."),
    lora_rank: int = typer.Option(16, "--lora-rank", help="LoRA rank."),
    save_every: int = typer.Option(50, "--save-every", help="Checkpoint every N steps."),
    resume: bool = typer.Option(False, "--resume", help="Continue from the latest checkpoint under --out."),
    seed: int = typer.Option(0, "--seed", help="Seed of the data order and initialisation."),
    precision: str = typer.Option("fp32", "--precision", help="fp32, or bf16 mixed precision (faster on CPUs with avx512_bf16 and on GPUs)."),
    store: str = typer.Option("fp32", "--store", help="dtype of the saved LoRA weights: fp32, fp16 (half the size) or bf16."),
) -> None:
    """Consistency + AR fine-tune on collected trajectories (or distilled answers); writes a LoRA adapter."""
    from pathlib import Path

    from dataclasses import asdict

    from ..train.cllm.collect import read_trajectories
    from ..train.cllm.fit import FitConfig, fit
    from ..train.cllm.packed import from_samples
    from ..train.common import STORE_DTYPES
    from ..train.space.data import read_samples

    with clean_exit("interrupted before training: nothing written"):
        cfg = FitConfig(steps=steps, batch=batch, accumulate=accumulate, lr=lr, ar_weight=ar_weight,
                        consistency_weight=consistency_weight, label_smoothing=label_smoothing, lora=not full,
                        lora_rank=lora_rank, lora_alpha=2 * lora_rank, save_every=save_every, seed=seed,
                        precision=precision, groups=groups, block=block, refine=refine, max_len=max_len,
                        schedule=schedule, decay_from=decay_from)
        if store not in STORE_DTYPES:
            raise ConfigError(f"--store must be one of {', '.join(STORE_DTYPES)}, got {store!r}")
        if bool(trajectories) == bool(data):
            raise ConfigError("give exactly one of --trajectories and --data")
        if data and not groups:
            raise ConfigError("--data has no recorded states: it needs packed training (--groups G)")
        if limit < 0:
            raise ConfigError("--limit must be 0 (all) or more")
        from .common import load

        lm = load(model)
        if data:
            records = from_samples(read_samples(Path(data), lm.tokenizer, limit, max(max_len, 512)))
            source = {"data": data}
        else:
            records = read_trajectories(Path(trajectories))
            source = {"trajectories": trajectories}
            collected = Path(trajectories) / "collect.json"
            if not groups and collected.is_file():
                block = int(json.loads(collected.read_text()).get("block", block))
    fit_and_save(out, steps, ("ar", "consistency"),
                  lambda tick: (*fit(lm.hf_model, records, Path(out), cfg, resume=resume, tick=tick), {}),
                  {"method": "cllm", "base_model": model, **source, "records": len(records),
                   "block": block, "config": asdict(cfg)}, store)


@cllm_app.command("eval")
def cllm_eval(
    model: str = EVAL_MODEL_OPTION,
    adapter: str = typer.Option(..., "--adapter", help="Adapter name or folder."),
    data: str = EVAL_DATA_OPTION,
    limit: int = EVAL_LIMIT_OPTION,
    offset: int = EVAL_OFFSET_OPTION,
    block: Optional[int] = typer.Option(None, "--block", help="Jacobi block size, before and after (default: "
                                        "the block the adapter was trained for, else 16)."),
    max_new_tokens: int = EVAL_TOKENS_OPTION,
    out: Optional[str] = EVAL_OUT_OPTION,
    chat: Optional[bool] = CHAT_OPTION,
    device: str = DEVICE_OPTION,
) -> None:
    """Accepted tokens per Jacobi pass and tokens/s before and after an adapter; output drift."""
    from ..methods.jacobi import trained_block
    from ..train.cllm.evaluate import evaluate

    doc = _evaluate_adapter(model, adapter, data, limit, chat, out,
                            lambda base, adapted, prompts, tick: evaluate(base, adapted, prompts,
                                                                          block or trained_block(adapted), max_new_tokens, tick),
                            offset, device)
    s = doc["summary"]
    table = Table("figure", "before", "after")
    table.add_row("Jacobi block", str(doc["block"]), str(doc["block"]))
    table.add_row("tokens per Jacobi pass (mean)", f"{s['per_pass_before']:.3f}", f"{s['per_pass_after']:.3f}")
    table.add_row("Jacobi tok/s (median)", f"{s['jacobi_before_rate_median']:.1f}", f"{s['jacobi_after_rate_median']:.1f}")
    table.add_row("Jacobi x generate of the original (median)", "", f"{s['after_vs_generate_median']:.2f}x")
    table.add_row("greedy tokens equal to the original (mean)", "1.000", f"{s['agreement_mean']:.3f}")
    if "accuracy_before" in s:
        table.add_row("GSM8K answer accuracy", f"{s['accuracy_before']:.2f}", f"{s['accuracy_after']:.2f}")
    Console().print(table)


@space_app.command("fit")
def space_fit(
    model: str = typer.Option("SmolLM2-135M-Instruct", "--model", help="Base model to fine-tune."),
    data: str = typer.Option("", "--data", help="JSONL with question/answer (GSM8K) or prompt/response rows "
                             "(default: ../shared/data/gsm8k_train.jsonl)."),
    out: str = typer.Option(..., "--out", help="Adapter folder (checkpoints go under it)."),
    limit: int = typer.Option(0, "--limit", help="Use the first N rows (0: all)."),
    max_len: int = typer.Option(512, "--max-len", help="Keep the last N prompt tokens and the first N response "
                                "tokens of each sample (a short N trains faster on the start of answers)."),
    steps: int = typer.Option(300, "--steps", help="Optimizer steps."),
    batch: int = typer.Option(4, "--batch", help="Samples per micro-batch."),
    accumulate: int = typer.Option(1, "--accumulate", help="Micro-batches per optimizer step."),
    lr: float = typer.Option(3e-4, "--lr", help="Learning rate."),
    schedule: str = SCHEDULE_OPTION,
    decay_from: int = DECAY_FROM_OPTION,
    k: int = typer.Option(5, "--k", help="Masks per group: future tokens proposed per pass."),
    p: float = typer.Option(0.5, "--p", help="Share of samples cut and given k + 1 masks."),
    groups: int = typer.Option(0, "--groups", help="0: one cut per sample (--p); G: whole samples, each with "
                               "up to G mask groups at random cuts, laid out as at decoding (denser training)."),
    full: bool = typer.Option(False, "--full", help="Full fine-tune instead of LoRA."),
    lora_rank: int = typer.Option(16, "--lora-rank", help="LoRA rank."),
    save_every: int = typer.Option(50, "--save-every", help="Checkpoint every N steps."),
    resume: bool = typer.Option(False, "--resume", help="Continue from the latest checkpoint under --out."),
    seed: int = typer.Option(0, "--seed", help="Seed of the data order and initialisation."),
    precision: str = typer.Option("fp32", "--precision", help="fp32, or bf16 mixed precision (faster on CPUs with avx512_bf16 and on GPUs)."),
) -> None:
    """Semi-autoregressive SFT with a new [MASK] token; writes a LoRA adapter (safetensors)."""
    from dataclasses import asdict
    from pathlib import Path

    from ..train.space.data import read_samples
    from ..train.space.fit import SpaceFitConfig, fit

    with clean_exit("interrupted before training: nothing written"):
        cfg = SpaceFitConfig(steps=steps, batch=batch, accumulate=accumulate, lr=lr, k=k, p=p, groups=groups, lora=not full,
                             lora_rank=lora_rank, lora_alpha=2 * lora_rank, save_every=save_every, seed=seed,
                             precision=precision, schedule=schedule, decay_from=decay_from)
        if limit < 0:
            raise ConfigError("--limit must be 0 (all) or more")
        if max_len < 2:
            raise ConfigError("--max-len must be at least 2")
        from .common import load

        lm = load(model)
        path = Path(data or gsm8k_default("gsm8k_train.jsonl"))
        samples = read_samples(path, lm.tokenizer, limit, max_len)

    def train(tick):
        trained, history, mask_id = fit(lm.hf_model, lm.tokenizer, samples, Path(out), cfg, resume=resume, tick=tick)
        return trained, history, {"added_tokens": ["[MASK]"], "mask_id": mask_id, "vocab_size": mask_id + 1}

    fit_and_save(out, steps, ("ar", "mask"), train, {"method": "space", "base_model": model, "data": str(path),
                                                       "samples": len(samples), "max_len": max_len, "config": asdict(cfg)})


@space_app.command("eval")
def space_eval(
    model: str = EVAL_MODEL_OPTION,
    adapter: str = typer.Option(..., "--adapter", help="SPACE adapter name or folder."),
    data: str = EVAL_DATA_OPTION,
    limit: int = EVAL_LIMIT_OPTION,
    offset: int = EVAL_OFFSET_OPTION,
    k: Optional[int] = typer.Option(None, "--k", help="Masks per group at decoding (default: the k the adapter was trained with)."),
    adaptive: bool = typer.Option(True, "--adaptive/--no-adaptive", help="Feed only the candidates worth their pass "
                                  "cost (default), or always all of them (most tokens per pass)."),
    max_new_tokens: int = EVAL_TOKENS_OPTION,
    out: Optional[str] = EVAL_OUT_OPTION,
    chat: Optional[bool] = CHAT_OPTION,
    device: str = DEVICE_OPTION,
) -> None:
    """Accepted tokens per pass and tokens/s of `space` against `generate` of the original model."""
    from ..train.space.evaluate import evaluate

    doc = _evaluate_adapter(model, adapter, data, limit, chat, out,
                            lambda base, adapted, prompts, tick: evaluate(base, adapted, prompts, k, max_new_tokens, tick, adaptive),
                            offset, device)
    s = doc["summary"]
    table = Table("figure", "value")
    table.add_row("accepted tokens per pass (mean)", f"{s['per_pass_mean']:.3f}")
    table.add_row("space tok/s (median)", f"{s['space_rate_median']:.1f}")
    table.add_row("generate tok/s, original model (median)", f"{s['generate_rate_median']:.1f}")
    table.add_row("space x generate (median)", f"{s['space_vs_generate_median']:.2f}x")
    table.add_row("space output equal to adapted ar", f"{s['equal_to_ar']}/{s['prompts']}")
    if "accuracy_before" in s:
        table.add_row("GSM8K accuracy: original / adapted", f"{s['accuracy_before']:.2f} / {s['accuracy_after']:.2f}")
    Console().print(table)
