"""The command line: `polyverse generate`, `polyverse methods`, `polyverse bench`.

Bad input ends with a one-line error on stderr and exit status 2, never a traceback.
"""

from __future__ import annotations

import json
import os
import sys
from typing import Any, Optional

import typer
from rich.console import Console
from rich.table import Table

from . import registry
from .config import GenerationConfig, SamplingConfig
from .errors import ConfigError, PolyverseError

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="Parallel decoding for language models: many tokens per forward pass, same output.")
err = Console(stderr=True)


def _fail(message: str, code: int = 2) -> None:
    err.print(f"[bold red]error:[/] {message}", highlight=False, soft_wrap=True)
    raise typer.Exit(code)


def _parse_value(raw: str) -> Any:
    try:
        return json.loads(raw)
    except json.JSONDecodeError:
        return raw


def _method_options(flags: dict[str, Any], option: list[str]) -> dict[str, Any]:
    """Method options from the dedicated flags that were given, then from --option KEY=VALUE."""
    options: dict[str, Any] = {k: v for k, v in flags.items() if v is not None}
    for item in option:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"--option takes KEY=VALUE, got '{item}'")
        options[key.strip().replace("-", "_")] = _parse_value(value.strip())
    return options


@app.command()
def generate(
    prompt: str = typer.Argument(..., help="The prompt (a user message when --chat)."),
    method: str = typer.Option("auto", "--method", "-m", help="Decoding method (see `polyverse methods`)."),
    model: str = typer.Option("SmolLM2-135M-Instruct", "--model", help="Bundled model name, HF model directory, or .gguf file."),
    chat: Optional[bool] = typer.Option(None, "--chat/--no-chat", help="Apply the chat template (default: when the model has one)."),
    max_new_tokens: int = typer.Option(128, "--max-new-tokens", "-n", help="Most tokens to generate."),
    temperature: float = typer.Option(0.0, "--temperature", "-t", help="0 = greedy; > 0 samples."),
    top_k: int = typer.Option(0, "--top-k", help="Sample from the k most likely tokens (0 = off)."),
    top_p: float = typer.Option(1.0, "--top-p", help="Nucleus sampling mass (1 = off)."),
    seed: Optional[int] = typer.Option(None, "--seed", help="Seed of the sampling random stream."),
    stop: list[str] = typer.Option([], "--stop", help="Stop string (repeatable)."),
    block: Optional[int] = typer.Option(None, "--block", help="jacobi: tokens guessed per pass."),
    window: Optional[int] = typer.Option(None, "--window", help="lookahead: window W."),
    ngram: Optional[int] = typer.Option(None, "--ngram", help="lookahead: n-gram size N; prompt_lookup/auto: longest match."),
    guesses: Optional[int] = typer.Option(None, "--guesses", help="lookahead: n-grams verified per pass G."),
    num_tokens: Optional[int] = typer.Option(None, "--num-tokens", help="prompt_lookup: tokens drafted per candidate."),
    candidates: Optional[int] = typer.Option(None, "--candidates", help="prompt_lookup/auto: continuations per pass."),
    draft_model: Optional[str] = typer.Option(None, "--draft-model", help="draft: the draft model (same tokenizer)."),
    k: Optional[int] = typer.Option(None, "--k", help="draft/early_exit: tokens drafted per pass; space: masks per group."),
    layers: Optional[int] = typer.Option(None, "--layers", help="early_exit: the target's first L layers draft."),
    max_tokens: Optional[int] = typer.Option(None, "--max-tokens", help="auto: most draft tokens per candidate."),
    option: list[str] = typer.Option([], "--option", "-o", help="Method option KEY=VALUE (repeatable)."),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object (text, token ids, statistics) instead."),
    adapter: Optional[str] = typer.Option(None, "--adapter", help="Adapter name (e.g. cllm-gsm8k) or folder."),
) -> None:
    """Generate text, streaming it as tokens are accepted, then one line of statistics."""
    try:
        if not prompt.strip():
            raise ConfigError("the prompt is empty")
        GenerationConfig(max_new_tokens=max_new_tokens, sampling=SamplingConfig(temperature, top_k, top_p), stop=tuple(stop))
        spec = registry.get(method)
        flags = dict(block=block, window=window, ngram=ngram, guesses=guesses, num_tokens=num_tokens,
                     candidates=candidates, model=draft_model, k=k, layers=layers, max_tokens=max_tokens)
        options = _method_options(flags, option)
        spec.make_config(options)

        from .api import load

        lm = load(model, adapter=adapter, progress=not as_json)
        stream = lm.stream(prompt, method=method, options=options, chat=chat, max_new_tokens=max_new_tokens,
                           temperature=temperature, top_k=top_k, top_p=top_p, seed=seed, stop=stop)
        for chunk in stream:
            if not as_json and chunk.text:
                sys.stdout.write(chunk.text)
                sys.stdout.flush()
        result = stream.result()
    except PolyverseError as exc:
        _fail(str(exc))
    except KeyboardInterrupt:
        _fail("interrupted", 130)
    if as_json:
        out = result.to_dict()
        out["model"] = model
        out["stats"].pop("accepted_per_pass", None)
        out["accepted_per_pass"] = result.stats.accepted_per_pass
        typer.echo(json.dumps(out))
    else:
        typer.echo("")
        typer.echo(f"[{method}] {result.stats.line()}")


@app.command("methods")
def list_methods() -> None:
    """List the registered decoding methods and their options."""
    table = Table("method", "options", "what it does")
    for m in registry:
        opts = ", ".join(f"{k}={v!r}" for k, v in m.options().items()) or "-"
        table.add_row(m.name, opts, m.summary)
    Console().print(table)


def _progress():
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

    return Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                    TimeRemainingColumn(), console=err)


def _has_mask(adapter: Optional[str]) -> bool:
    """Whether the adapter adds SPACE's [MASK] token (so `space` can run on the adapted model)."""
    if not adapter:
        return False
    from .adapters import info, resolve

    return "[MASK]" in info(resolve(adapter)).get("added_tokens", [])


@app.command()
def bench(
    model: str = typer.Option("SmolLM2-135M-Instruct", "--model", help="Bundled model name, HF model directory, or .gguf file."),
    methods: str = typer.Option("", "--methods", help="Comma-separated polyverse methods (default: every method that "
                                "needs no extra model; draft too when --draft-model is given, space with a SPACE adapter)."),
    data: str = typer.Option("humaneval", "--data", help="Comma-separated: humaneval, gsm8k, grounded, mtbench-like, or PATH.jsonl."),
    max_new_tokens: int = typer.Option(128, "--max-new-tokens", "-n", help="Most new tokens per prompt."),
    limit: int = typer.Option(20, "--limit", help="Prompts per data set."),
    temperature: float = typer.Option(0.0, "--temperature", "-t", help="0 = greedy (outputs checked against ar)."),
    out: str = typer.Option("bench-out", "--out", help="Folder for results.json, report.md and the plots."),
    draft_model: Optional[str] = typer.Option(None, "--draft-model", help="Draft model: adds `draft` and generate(assistant_model=)."),
    prompt_lookup_tokens: int = typer.Option(10, "--prompt-lookup-tokens", help="prompt_lookup_num_tokens of the generate peer."),
    peers: bool = typer.Option(True, "--peers/--no-peers", help="Include the transformers generate peers."),
    baseline: str = typer.Option("generate", "--baseline", help="Contender the ratios are taken against."),
    chat: Optional[bool] = typer.Option(None, "--chat/--no-chat", help="Chat template on every set (default: chat sets "
                                        "when the model has one; HumanEval as plain completion)."),
    option: list[str] = typer.Option([], "--option", "-o", help="Method option METHOD.KEY=VALUE (repeatable)."),
    markdown: Optional[str] = typer.Option(None, "--markdown", help="Also write the report to this file (e.g. BENCHMARKS.md)."),
    seed: int = typer.Option(0, "--seed", help="Seed of sampled runs."),
    adapter: Optional[str] = typer.Option(None, "--adapter", help="Adapter applied to the model (every row)."),
) -> None:
    """Measure methods against the transformers peers on data sets: table, results.json, report.md, plots."""
    from pathlib import Path

    from .bench import report
    from .bench.contenders import Contender
    from .bench.data import load_set, raw_prompts
    from .bench.runner import REFERENCE, BenchConfig, run_bench

    try:
        cfg = BenchConfig(max_new_tokens=max_new_tokens, temperature=temperature, seed=seed, baseline=baseline)
        if methods.strip():
            wanted = [m.strip() for m in methods.split(",") if m.strip()]
        else:
            wanted = [m.name for m in registry if (m.name != "draft" or draft_model) and (m.name != "space" or _has_mask(adapter))]
        per_method: dict[str, dict[str, Any]] = {m: {} for m in wanted}
        for item in option:
            key, sep, value = item.partition("=")
            meth, dot, opt = key.partition(".")
            if not sep or not dot or not opt:
                raise ConfigError(f"--option takes METHOD.KEY=VALUE, got '{item}'")
            if meth not in per_method:
                raise ConfigError(f"--option '{item}' names method '{meth}', which is not benchmarked")
            per_method[meth][opt.strip().replace("-", "_")] = _parse_value(value.strip())
        if "draft" in per_method and draft_model:
            per_method["draft"].setdefault("model", draft_model)
        for m, opts in per_method.items():
            registry.get(m).make_config(opts)  # unknown methods and bad options fail before any loading
        set_names = [d.strip() for d in data.split(",") if d.strip()]
        if not set_names:
            raise ConfigError("--data names no data set")
        for d in set_names:
            raw_prompts(d, limit)  # missing files and bad lines fail before the model loads

        from .api import load

        lm = load(model, adapter=adapter)
        contenders: list[Contender] = []
        if peers:
            contenders.append(Contender("generate"))
            contenders.append(Contender(f"generate(prompt_lookup={prompt_lookup_tokens})", None,
                                        {"prompt_lookup_num_tokens": prompt_lookup_tokens}))
            if draft_model:
                contenders.append(Contender("generate(assistant_model)", None, {"assistant_model": load(draft_model)}))
        if REFERENCE not in per_method and temperature == 0:
            per_method = {REFERENCE: {}, **per_method}  # the exactness reference
        contenders += [Contender(m, m, opts) for m, opts in per_method.items()]
        sets = [load_set(d, lm, limit, chat) for d in set_names]
        total = sum(len(s.prompts) for s in sets) * len(contenders)
        with _progress() as bar:
            task = bar.add_task("warm-up", total=total)
            doc = run_bench(lm, contenders, sets, cfg, tick=lambda what: bar.update(task, advance=1, description=what))
        command = "polyverse bench " + " ".join(sys.argv[2:]) if sys.argv[1:2] == ["bench"] else None
        paths = report.write(doc, Path(out), command)
        if markdown:
            md = Path(markdown)
            rel = os.path.relpath(Path(out).resolve(), md.resolve().parent)  # image links from the copy's folder
            md.write_text(report.markdown(doc, command, image_prefix=f"{Path(rel).as_posix()}/"))
    except PolyverseError as exc:
        _fail(str(exc))
    except KeyboardInterrupt:
        _fail("interrupted: nothing written", 130)
    con = Console(width=max(Console().width, 120))
    for set_name in doc["sets"]:
        table = Table(title=f"{set_name}: {cfg.max_new_tokens} new tokens, baseline {baseline}")
        for i, h in enumerate(report.HEADER):
            table.add_column(h, no_wrap=i == 0, justify="left" if i in (0, 5) else "right")
        for r in report.table_rows(doc, set_name):
            table.add_row(*r)
        con.print(table)
    con.print("wrote " + ", ".join(str(p) for p in paths.values()))


train_app = typer.Typer(no_args_is_help=True, help="Training pipelines (CLLM consistency distillation, SPACE SFT).")
cllm_app = typer.Typer(no_args_is_help=True, help="CLLM: collect Jacobi trajectories, fit an adapter, evaluate it.")
space_app = typer.Typer(no_args_is_help=True, help="SPACE: [MASK] semi-autoregressive SFT, evaluate the adapter.")
app.add_typer(train_app, name="train")
train_app.add_typer(cllm_app, name="cllm")
train_app.add_typer(space_app, name="space")


def _gsm8k_default(name: str) -> str:
    from .bench.prompts import SHARED_DATA

    return str(SHARED_DATA / name)


def _question_rows(data: str, limit: int, offset: int = 0) -> list[tuple[str, Any, Optional[str]]]:
    """(id, prompt, GSM8K gold answer or None) of a JSONL file's usable rows."""
    from pathlib import Path

    from .bench.data import read_rows
    from .train.cllm.evaluate import final_number

    if limit < 1 or offset < 0:
        raise ConfigError("--limit must be at least 1 and --offset at least 0")
    out = []
    for pid, prompt, row in read_rows(Path(data), limit + offset)[offset:]:
        answer = row.get("answer")
        out.append((pid, prompt, final_number(answer) if isinstance(answer, str) and "####" in answer else None))
    return out


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
    chat: Optional[bool] = typer.Option(None, "--chat/--no-chat", help="Chat template (default: when the model has one)."),
) -> None:
    """Greedy Jacobi on each prompt, recording every state of each block and its fixed point."""
    from pathlib import Path

    from .train.cllm.collect import CollectConfig, collect

    try:
        cfg = CollectConfig(block=block, max_new_tokens=max_new_tokens, max_run=max_run)
        rows = _question_rows(data or _gsm8k_default("gsm8k_train.jsonl"), limit, offset)
        from .api import load

        lm = load(model)
        prompts = [(pid, lm.encode(p, chat)) for pid, p, _ in rows]
        with _progress() as bar:
            task = bar.add_task("collect", total=len(prompts))
            counts = collect(lm, prompts, Path(out), cfg, tick=lambda pid, n: bar.update(task, advance=1, description=f"prompt {pid}: {n} blocks"))
    except PolyverseError as exc:
        _fail(str(exc))
    except KeyboardInterrupt:
        _fail("interrupted: prompts already written are kept; rerun the same command to resume", 130)
    typer.echo(f"{counts['prompts']} prompts collected ({counts['skipped']} already done), {counts['blocks']} blocks kept, "
               f"{counts['dropped']} degenerate dropped -> {Path(out) / 'trajectories.jsonl'}")


@cllm_app.command("fit")
def cllm_fit(
    model: str = typer.Option("SmolLM2-135M-Instruct", "--model", help="Base model to fine-tune."),
    trajectories: str = typer.Option(..., "--trajectories", help="Folder written by `collect`."),
    out: str = typer.Option(..., "--out", help="Adapter folder (checkpoints go under it)."),
    steps: int = typer.Option(200, "--steps", help="Optimizer steps."),
    batch: int = typer.Option(1, "--batch", help="Examples per micro-batch."),
    accumulate: int = typer.Option(4, "--accumulate", help="Micro-batches per optimizer step."),
    lr: float = typer.Option(2e-4, "--lr", help="Learning rate."),
    ar_weight: float = typer.Option(10.0, "--ar-weight", help="Weight of the AR loss."),
    consistency_weight: float = typer.Option(1.0, "--consistency-weight", help="Weight of the consistency loss."),
    label_smoothing: float = typer.Option(0.1, "--label-smoothing", help="Label smoothing of the AR loss."),
    full: bool = typer.Option(False, "--full", help="Full fine-tune instead of LoRA."),
    lora_rank: int = typer.Option(16, "--lora-rank", help="LoRA rank."),
    save_every: int = typer.Option(50, "--save-every", help="Checkpoint every N steps."),
    resume: bool = typer.Option(False, "--resume", help="Continue from the latest checkpoint under --out."),
    seed: int = typer.Option(0, "--seed", help="Seed of the data order and initialisation."),
) -> None:
    """Consistency + AR fine-tune on collected trajectories; writes a LoRA adapter (safetensors)."""
    from pathlib import Path

    from dataclasses import asdict

    from .train.cllm.collect import read_trajectories
    from .train.cllm.fit import FitConfig, fit, save_adapter

    try:
        cfg = FitConfig(steps=steps, batch=batch, accumulate=accumulate, lr=lr, ar_weight=ar_weight,
                        consistency_weight=consistency_weight, label_smoothing=label_smoothing, lora=not full,
                        lora_rank=lora_rank, lora_alpha=2 * lora_rank, save_every=save_every, seed=seed)
        records = read_trajectories(Path(trajectories))
        from .api import load

        lm = load(model)
        with _progress() as bar:
            task = bar.add_task("fit", total=steps)

            def tick(step, parts):
                bar.update(task, completed=step, description=f"step {step}: ar {parts['ar']:.3f} consistency {parts['consistency']:.4f}")

            trained, history = fit(lm.hf_model, records, Path(out), cfg, resume=resume, tick=tick)
        save_adapter(trained, Path(out), {"method": "cllm", "base_model": model, "trajectories": str(trajectories),
                                          "records": len(records), "config": asdict(cfg),
                                          "final": history[-1] if history else None,
                                          "command": "polyverse " + " ".join(sys.argv[1:])})
    except PolyverseError as exc:
        _fail(str(exc))
    except KeyboardInterrupt:
        _fail("interrupted: checkpoints under --out are kept; rerun with --resume to continue", 130)
    last = history[-1] if history else {}
    typer.echo(f"adapter written to {out} (step {last.get('step')}: ar {last.get('ar')}, consistency {last.get('consistency')})")


@cllm_app.command("eval")
def cllm_eval(
    model: str = typer.Option("SmolLM2-135M-Instruct", "--model", help="Base model."),
    adapter: str = typer.Option(..., "--adapter", help="Adapter name or folder."),
    data: str = typer.Option("", "--data", help="JSONL of questions (default: ../shared/data/gsm8k_test_dev.jsonl)."),
    limit: int = typer.Option(10, "--limit", help="Prompts."),
    block: int = typer.Option(16, "--block", help="Jacobi block size."),
    max_new_tokens: int = typer.Option(128, "--max-new-tokens", "-n", help="Tokens per prompt."),
    out: Optional[str] = typer.Option(None, "--out", help="Write every figure to this JSON file."),
    chat: Optional[bool] = typer.Option(None, "--chat/--no-chat", help="Chat template (default: when the model has one)."),
) -> None:
    """Accepted tokens per Jacobi pass and tokens/s before and after an adapter; output drift."""
    from pathlib import Path

    from .train.cllm.evaluate import evaluate

    try:
        rows = _question_rows(data or _gsm8k_default("gsm8k_test_dev.jsonl"), limit)
        from .api import load

        base = load(model)
        adapted = load(model, adapter=adapter)
        prompts = [(pid, base.encode(p, chat), gold) for pid, p, gold in rows]
        with _progress() as bar:
            task = bar.add_task("eval", total=len(prompts))
            doc = evaluate(base, adapted, prompts, block, max_new_tokens, tick=lambda pid: bar.update(task, advance=1))
        if out:
            Path(out).write_text(json.dumps(doc, indent=1))
    except PolyverseError as exc:
        _fail(str(exc))
    except KeyboardInterrupt:
        _fail("interrupted", 130)
    s = doc["summary"]
    table = Table("figure", "before", "after")
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
    steps: int = typer.Option(300, "--steps", help="Optimizer steps."),
    batch: int = typer.Option(4, "--batch", help="Samples per micro-batch."),
    accumulate: int = typer.Option(1, "--accumulate", help="Micro-batches per optimizer step."),
    lr: float = typer.Option(3e-4, "--lr", help="Learning rate."),
    k: int = typer.Option(5, "--k", help="Masks per group: future tokens proposed per pass."),
    p: float = typer.Option(0.5, "--p", help="Share of samples cut and given k + 1 masks."),
    full: bool = typer.Option(False, "--full", help="Full fine-tune instead of LoRA."),
    lora_rank: int = typer.Option(16, "--lora-rank", help="LoRA rank."),
    save_every: int = typer.Option(50, "--save-every", help="Checkpoint every N steps."),
    resume: bool = typer.Option(False, "--resume", help="Continue from the latest checkpoint under --out."),
    seed: int = typer.Option(0, "--seed", help="Seed of the data order and initialisation."),
) -> None:
    """Semi-autoregressive SFT with a new [MASK] token; writes a LoRA adapter (safetensors)."""
    from dataclasses import asdict
    from pathlib import Path

    from .train.common import save_adapter
    from .train.space.data import read_samples
    from .train.space.fit import SpaceFitConfig, fit

    try:
        cfg = SpaceFitConfig(steps=steps, batch=batch, accumulate=accumulate, lr=lr, k=k, p=p, lora=not full,
                             lora_rank=lora_rank, lora_alpha=2 * lora_rank, save_every=save_every, seed=seed)
        if limit < 0:
            raise ConfigError("--limit must be 0 (all) or more")
        from .api import load

        lm = load(model)
        path = Path(data or _gsm8k_default("gsm8k_train.jsonl"))
        samples = read_samples(path, lm.tokenizer, limit)
        with _progress() as bar:
            task = bar.add_task("fit", total=steps)

            def tick(step, parts):
                bar.update(task, completed=step, description=f"step {step}: ar {parts['ar']:.3f} mask {parts['mask']:.3f}")

            trained, history, mask_id = fit(lm.hf_model, lm.tokenizer, samples, Path(out), cfg, resume=resume, tick=tick)
        save_adapter(trained, Path(out), {"method": "space", "base_model": model, "data": str(path),
                                          "samples": len(samples), "config": asdict(cfg),
                                          "added_tokens": ["[MASK]"], "mask_id": mask_id,
                                          "vocab_size": mask_id + 1, "final": history[-1] if history else None,
                                          "command": "polyverse " + " ".join(sys.argv[1:])})
    except PolyverseError as exc:
        _fail(str(exc))
    except KeyboardInterrupt:
        _fail("interrupted: checkpoints under --out are kept; rerun with --resume to continue", 130)
    last = history[-1] if history else {}
    typer.echo(f"adapter written to {out} (step {last.get('step')}: ar {last.get('ar')}, mask {last.get('mask')})")


@space_app.command("eval")
def space_eval(
    model: str = typer.Option("SmolLM2-135M-Instruct", "--model", help="Base model."),
    adapter: str = typer.Option(..., "--adapter", help="SPACE adapter name or folder."),
    data: str = typer.Option("", "--data", help="JSONL of questions (default: ../shared/data/gsm8k_test_dev.jsonl)."),
    limit: int = typer.Option(10, "--limit", help="Prompts."),
    k: int = typer.Option(5, "--k", help="Masks per group at decoding."),
    max_new_tokens: int = typer.Option(128, "--max-new-tokens", "-n", help="Tokens per prompt."),
    out: Optional[str] = typer.Option(None, "--out", help="Write every figure to this JSON file."),
    chat: Optional[bool] = typer.Option(None, "--chat/--no-chat", help="Chat template (default: when the model has one)."),
) -> None:
    """Accepted tokens per pass and tokens/s of `space` against `generate` of the original model."""
    from pathlib import Path

    from .train.space.evaluate import evaluate

    try:
        rows = _question_rows(data or _gsm8k_default("gsm8k_test_dev.jsonl"), limit)
        from .api import load

        base = load(model)
        adapted = load(model, adapter=adapter)
        prompts = [(pid, base.encode(p, chat), gold) for pid, p, gold in rows]
        with _progress() as bar:
            task = bar.add_task("eval", total=len(prompts))
            doc = evaluate(base, adapted, prompts, k, max_new_tokens, tick=lambda pid: bar.update(task, advance=1))
        if out:
            Path(out).write_text(json.dumps(doc, indent=1))
    except PolyverseError as exc:
        _fail(str(exc))
    except KeyboardInterrupt:
        _fail("interrupted", 130)
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


def main() -> None:
    try:
        app()
    except PolyverseError as exc:  # errors raised outside a command body
        err.print(f"[bold red]error:[/] {exc}", highlight=False)
        sys.exit(2)


if __name__ == "__main__":
    main()
