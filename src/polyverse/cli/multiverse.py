"""`polyverse curate`, `polyverse train multiverse fit|eval`: Multiverse data and SFT."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer

from ..errors import ConfigError
from .common import DECAY_FROM_OPTION, SCHEDULE_OPTION, clean_exit, fit_and_save, gsm8k_default, progress, question_rows

multiverse_app = typer.Typer(no_args_is_help=True, help="Multiverse: SFT on curated structured data, evaluate it.")


def curate(
    inp: str = typer.Option(..., "--in", help="JSONL of sequential reasoning: `text`, or GSM8K `question` + `answer`."),
    out: str = typer.Option(..., "--out", help="Structured rows go here (appended; finished ids are skipped)."),
    rejects: Optional[str] = typer.Option(None, "--rejects", help="Rejected rows with the reason (default: OUT.rejects.jsonl)."),
    llm: Optional[str] = typer.Option(None, "--llm", help="OpenAI-compatible URL (http://host:port[#model]) or a local "
                                      "model name/folder; without it only the rule-based converter runs."),
    threshold: float = typer.Option(0.35, "--threshold", help="Largest normalised edit distance to the original."),
    limit: Optional[int] = typer.Option(None, "--limit", help="Curate the first N rows only."),
) -> None:
    """Turn sequential chains of thought into Multiverse structure (five LLM stages, rule-based fallback)."""
    from ..multiverse.curate import curate_file, make_llm

    with clean_exit("interrupted: rows written so far are kept; rerun the same command to continue"):
        if not 0.0 <= threshold <= 1.0:
            raise ConfigError(f"--threshold must be in [0, 1], got {threshold}")
        if limit is not None and limit < 1:
            raise ConfigError("--limit must be at least 1")
        if not Path(inp).is_file():
            raise ConfigError(f"no input file {inp}")
        rej = rejects or str(Path(out).with_suffix("")) + ".rejects.jsonl"
        model = make_llm(llm) if llm else None
        total = limit or sum(1 for line in open(inp) if line.strip())
        with progress() as bar:
            task = bar.add_task("curate", total=total)
            report = curate_file(inp, out, rej, model, threshold=threshold, limit=limit,
                                 progress=lambda n, rid, status: bar.update(task, completed=n, description=f"{rid}: {status}"))
    typer.echo(report.line())
    typer.echo(f"structured rows in {out}, rejects in {rej}")


@multiverse_app.command("fit")
def multiverse_fit(
    data: str = typer.Option(..., "--data", help="Curated JSONL (`polyverse curate` output: question + structured)."),
    out: str = typer.Option(..., "--out", help="Adapter folder (checkpoints go under it)."),
    model: str = typer.Option("SmolLM2-135M-Instruct", "--model", help="Base model to fine-tune."),
    limit: int = typer.Option(0, "--limit", help="Use the first N rows (0: all)."),
    steps: int = typer.Option(150, "--steps", help="Optimizer steps."),
    batch: int = typer.Option(4, "--batch", help="Samples per micro-batch."),
    accumulate: int = typer.Option(1, "--accumulate", help="Micro-batches per optimizer step."),
    lr: float = typer.Option(3e-4, "--lr", help="Learning rate."),
    schedule: str = SCHEDULE_OPTION,
    decay_from: int = DECAY_FROM_OPTION,
    full: bool = typer.Option(False, "--full", help="Full fine-tune instead of LoRA."),
    lora_rank: int = typer.Option(8, "--lora-rank", help="LoRA rank."),
    save_every: int = typer.Option(25, "--save-every", help="Checkpoint every N steps."),
    resume: bool = typer.Option(False, "--resume", help="Continue from the latest checkpoint under --out."),
    seed: int = typer.Option(0, "--seed", help="Seed of the data order and initialisation."),
    precision: str = typer.Option("fp32", "--precision", help="fp32, or bf16 mixed precision (faster on CPUs with avx512_bf16 and on GPUs)."),
) -> None:
    """SFT with the tag tokens under Multiverse Attention; writes a LoRA adapter (safetensors)."""
    from ..train.multiverse.data import add_tag_tokens, read_curated
    from ..train.multiverse.fit import MultiverseFitConfig, fit, meta

    with clean_exit("interrupted before training: nothing written"):
        cfg = MultiverseFitConfig(steps=steps, batch=batch, accumulate=accumulate, lr=lr, lora=not full,
                                  lora_rank=lora_rank, lora_alpha=2 * lora_rank, save_every=save_every, seed=seed,
                                  precision=precision, schedule=schedule, decay_from=decay_from)
        if limit < 0:
            raise ConfigError("--limit must be 0 (all) or more")
        if not Path(data).is_file():
            raise ConfigError(f"no curated data file {data} (make it with `polyverse curate`)")
        from .common import load

        lm = load(model)
        add_tag_tokens(lm.hf_model, lm.tokenizer)  # the samples are tokenised with the tags as tokens
        samples = read_curated(Path(data), lm.tokenizer, limit)
    fit_and_save(out, steps, ("ce", "tags"),
                  lambda tick: (*fit(lm.hf_model, lm.tokenizer, samples, Path(out), cfg, resume=resume, tick=tick)[:2], {}),
                  {"method": "multiverse", "base_model": model, **meta(lm.tokenizer, cfg, data, len(samples))})


@multiverse_app.command("eval")
def multiverse_eval(
    adapter: str = typer.Option(..., "--adapter", help="Multiverse adapter (folder or shipped name)."),
    model: str = typer.Option("SmolLM2-135M-Instruct", "--model", help="Base model."),
    data: str = typer.Option("", "--data", help="Held-out questions (default: ../shared/data/gsm8k_test_dev.jsonl)."),
    limit: int = typer.Option(10, "--limit", help="Questions."),
    max_new_tokens: int = typer.Option(256, "--max-new-tokens", "-n", help="Sequential-length budget per answer."),
    out: Optional[str] = typer.Option(None, "--out", help="Write the figures and texts as JSON here."),
) -> None:
    """How often the base and the adapted model write valid <Parallel> structure on held-out questions."""
    from ..train.multiverse.evaluate import rate

    with clean_exit("interrupted: nothing written"):
        rows = question_rows(data or gsm8k_default("gsm8k_test_dev.jsonl"), limit)
        from .common import load

        docs = {}
        with progress() as bar:
            task = bar.add_task("eval", total=2 * len(rows))
            for name, lm in (("base", load(model)), ("adapted", load(model, adapter=adapter))):
                docs[name] = rate(lm, [p for _, p, _ in rows], max_new_tokens, tick=lambda q: bar.update(task, advance=1))
    for name, d in docs.items():
        typer.echo(f"{name}: writes <Parallel> on {d['parallel_rate']:.0%}, valid structure on {d['valid_rate']:.0%} "
                   f"of {d['n']} held-out questions")
    if out:
        Path(out).parent.mkdir(parents=True, exist_ok=True)
        Path(out).write_text(json.dumps({"adapter": adapter, "limit": limit, "max_new_tokens": max_new_tokens, **docs}, indent=1))
