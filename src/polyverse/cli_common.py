"""What the command-line modules share: the error console, failing cleanly, progress bars, fitting."""

from __future__ import annotations

import json
import sys
from typing import Any, Callable

import typer
from rich.console import Console

err = Console(stderr=True)

# the learning-rate schedule options of every `train ... fit` (common.lr_at)
SCHEDULE_OPTION = typer.Option("constant", "--schedule", help="Learning rate: constant, or held until --decay-from, "
                               "then linear or cosine to 0 at the last step.")
DECAY_FROM_OPTION = typer.Option(0, "--decay-from", help="Step where the decay starts (with --resume: branch a decay "
                                 "off a constant-rate checkpoint).")


def _fail(message: str, code: int = 2) -> None:
    err.print(f"[bold red]error:[/] {message}", highlight=False, soft_wrap=True)
    raise typer.Exit(code)


def _parse_value(raw: str) -> Any:
    try:
        return json.loads(raw)
    except json.JSONDecodeError:
        return raw


def _progress():
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

    return Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                    TimeRemainingColumn(), console=err)


def _fit_and_save(out: str, steps: int, parts: tuple[str, ...], train: Callable, meta: dict, store: str = "fp32") -> None:
    """The end of every `train ... fit`: ``train(tick)`` -> (model, history, more metadata) under a
    progress bar showing the named loss parts, the adapter written to ``out`` with ``meta``, one
    summary line. Bad input and Ctrl-C end cleanly (checkpoints stay for --resume)."""
    from pathlib import Path

    from .errors import PolyverseError
    from .train.common import save_adapter

    try:
        with _progress() as bar:
            task = bar.add_task("fit", total=steps)

            def tick(step: int, losses: dict) -> None:
                shown = " ".join(f"{k} {losses[k]:.4f}" for k in parts)
                bar.update(task, completed=step, description=f"step {step}: {shown}")

            model, history, more = train(tick)
        save_adapter(model, Path(out), {**meta, **more, "final": history[-1] if history else None,
                                        "command": "polyverse " + " ".join(sys.argv[1:])}, store)
    except PolyverseError as exc:
        _fail(str(exc))
    except KeyboardInterrupt:
        _fail("interrupted: checkpoints under --out are kept; rerun with --resume to continue", 130)
    last = history[-1] if history else {}
    typer.echo(f"adapter written to {out} (step {last.get('step')}: " + ", ".join(f"{k} {last.get(k)}" for k in parts) + ")")
