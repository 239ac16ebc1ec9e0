"""`polyverse train head`: a draft head for `auto`, fitted on the model's own answers."""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path

import typer

from ..errors import ConfigError
from .common import clean_exit, progress


def head_cmd(
    model: str = typer.Option("SmolLM2-135M-Instruct", "--model", help="Model whose hidden states the head reads."),
    data: str = typer.Option(..., "--data", help="JSONL of prompt/response rows (`polyverse train distill`: the "
                             "model's own answers) or question/answer rows."),
    out: str = typer.Option(..., "--out", help="Folder for the head (head.safetensors, polyverse.json)."),
    limit: int = typer.Option(0, "--limit", help="Use the first N rows (0: all)."),
    holdout: float = typer.Option(0.05, "--holdout", help="Share of rows kept out of training to measure the head."),
    inner: int = typer.Option(1024, "--inner", help="The head's width."),
    vocab: int = typer.Option(4096, "--vocab", help="Tokens it can guess: the most frequent of the model's choices."),
    epochs: int = typer.Option(6, "--epochs", help="Passes over the examples."),
    batch: int = typer.Option(256, "--batch", help="Examples per step."),
    lr: float = typer.Option(1e-3, "--lr", help="Peak learning rate (one-cycle schedule)."),
    seed: int = typer.Option(0, "--seed", help="Seed of the initialisation and the data order."),
) -> None:
    """Fit a draft head: `auto` then drafts its guesses where the text offers nothing to copy
    (a head in the package's heads folder is found by the model's weights; elsewhere, copy the folder there)."""
    from ..heads import fingerprint
    from ..train.head.data import examples
    from ..train.head.fit import HeadFitConfig, accuracy, fit
    from ..train.space.data import read_samples

    with clean_exit("interrupted: no head written"):
        cfg = HeadFitConfig(inner=inner, vocab=vocab, epochs=epochs, batch=batch, lr=lr, seed=seed)
        if limit < 0:
            raise ConfigError("--limit must be 0 (all) or more")
        if not 0 <= holdout < 1:
            raise ConfigError(f"--holdout must be in [0, 1), got {holdout}")
        if not Path(data).is_file():
            raise ConfigError(f"--data: no such file: {data}")
        from .common import load

        lm = load(model)
        samples = read_samples(Path(data), lm.tokenizer, limit)
        kept = len(samples) - int(len(samples) * holdout)
        if kept < 1:
            raise ConfigError(f"{data}: no rows left to train on")
        with progress() as bar:
            task = bar.add_task("hidden states", total=len(samples))
            train = examples(lm.hf_model, samples[:kept], tick=lambda: bar.update(task, advance=1))
            held = examples(lm.hf_model, samples[kept:], tick=lambda: bar.update(task, advance=1)) if kept < len(samples) else None
            steps = cfg.epochs * max(1, len(train) // cfg.batch)
            task = bar.add_task("fit", total=steps)
            head = fit(lm.hf_model, train, cfg,
                       tick=lambda step, loss: bar.update(task, completed=step, description=f"fit (loss {loss:.3f})"))
        score = accuracy(lm.hf_model, head, held) if held is not None else None
        head.save(Path(out), {"base": model, "fingerprint": fingerprint(lm.hf_model), "data": str(data),
                              "rows": len(samples), "examples": len(train), "held_out_first_guess": score,
                              "config": asdict(cfg)})
    typer.echo(f"head written to {out}: {len(train)} examples"
               + (f", first guess right on {score:.1%} of held-out positions" if score is not None else ""))
