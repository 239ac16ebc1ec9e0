"""What the command modules share: the error console, failing cleanly, progress bars, option parsing,
fitting, and the GSM8K question files of the train and eval commands.

Bad input ends with a one-line error on stderr and exit status 2, never a traceback: every command
body runs under `clean_exit`.
"""

from __future__ import annotations

import sys
from contextlib import contextmanager
from typing import Any, Callable, Iterator, Optional

import typer
from rich.console import Console

from ..errors import ConfigError, PolyverseError
from ..options import parse_value
from ..registry import Method

err = Console(stderr=True)

# the learning-rate schedule options of every `train ... fit` (common.lr_at)
DTYPE_OPTION = typer.Option(None, "--dtype", help="Weight type of the CPU pass: fp32, bf16 or int8 (default: bf16 "
                            "where the lean CPU pass runs, else fp32; transformers backend only).")
SCHEDULE_OPTION = typer.Option("constant", "--schedule", help="Learning rate: constant, or held until --decay-from, "
                               "then linear or cosine to 0 at the last step.")
DECAY_FROM_OPTION = typer.Option(0, "--decay-from", help="Step where the decay starts (with --resume: branch a decay "
                                 "off a constant-rate checkpoint).")


def load(*args, **kwargs):
    """``polyverse.load`` for a command, whose process it owns: the model, then every object the
    interpreter tracks frozen out of the collector's full passes (``heap.freeze``)."""
    from ..api import load as load_model
    from ..heap import freeze

    model = load_model(*args, **kwargs)
    freeze()
    return model


def fail(message: str, code: int = 2) -> None:
    """One red line on stderr, then exit with ``code`` (2: bad input; 130: interrupted)."""
    err.print(f"[bold red]error:[/] {message}", highlight=False, soft_wrap=True)
    raise typer.Exit(code)


def option_value(method: Method, key: str, raw: str) -> tuple[str, Any]:
    """One ``KEY=VALUE`` option of ``method``: its name (dashes read as underscores) and the value
    typed by the option's spec (JSON where it parses; a string option keeps the text as written).
    An unknown name passes through, for the method's ``make_config`` to name in its error."""
    name = key.strip().replace("-", "_")
    spec = next((s for s in method.specs() if s.name == name), None)
    return name, parse_value(spec, raw.strip())


def key_values(method: Method, items: list[str]) -> dict[str, Any]:
    """``--option KEY=VALUE`` items of ``method`` as a dict of typed values."""
    options: dict[str, Any] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"--option takes KEY=VALUE, got '{item}'")
        name, parsed = option_value(method, key, value)
        options[name] = parsed
    return options


def int_list(text: str, flag: str) -> tuple[int, ...]:
    """Comma-separated integers of an option, or a ConfigError naming it.

    >>> int_list("1, 4,16", "--clients")
    (1, 4, 16)
    """
    try:
        return tuple(int(x) for x in text.split(",") if x.strip())
    except ValueError:
        raise ConfigError(f"{flag} takes comma-separated integers, got '{text}'") from None


def progress():
    """A progress bar on stderr (stdout stays for results): description, bar, n/total, elapsed, left."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

    return Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                    TimeRemainingColumn(), console=err)


@contextmanager
def clean_exit(interrupted: str = "interrupted") -> Iterator[None]:
    """The body of a command: bad input ends with a one-line error and exit status 2, Ctrl-C with
    ``interrupted`` (what was kept or not) and 130; never a traceback."""
    try:
        yield
    except PolyverseError as exc:
        fail(str(exc))
    except KeyboardInterrupt:
        fail(interrupted, 130)


def fit_and_save(out: str, steps: int, parts: tuple[str, ...], train: Callable, meta: dict, store: str = "fp32") -> None:
    """The end of every `train ... fit`: ``train(tick)`` -> (model, history, more metadata) under a
    progress bar showing the named loss parts, the adapter written to ``out`` with ``meta``, one
    summary line. Bad input and Ctrl-C end cleanly (checkpoints stay for --resume)."""
    from pathlib import Path

    from ..train.common import save_adapter

    with clean_exit("interrupted: checkpoints under --out are kept; rerun with --resume to continue"):
        with progress() as bar:
            task = bar.add_task("fit", total=steps)

            def tick(step: int, losses: dict) -> None:
                shown = " ".join(f"{k} {losses[k]:.4f}" for k in parts)
                bar.update(task, completed=step, description=f"step {step}: {shown}")

            model, history, more = train(tick)
        save_adapter(model, Path(out), {**meta, **more, "final": history[-1] if history else None,
                                        "command": "polyverse " + " ".join(sys.argv[1:])}, store)
    last = history[-1] if history else {}
    typer.echo(f"adapter written to {out} (step {last.get('step')}: " + ", ".join(f"{k} {last.get(k)}" for k in parts) + ")")


def gsm8k_default(name: str) -> str:
    """A GSM8K file of the shared data folder (the default --data of the train and eval commands)."""
    from ..bench.prompts import SHARED_DATA

    return str(SHARED_DATA / name)


def question_rows(data: str, limit: int, offset: int = 0) -> list[tuple[str, Any, Optional[str]]]:
    """(id, prompt, GSM8K gold answer or None) of a JSONL file's usable rows."""
    from pathlib import Path

    from ..bench.data import read_rows
    from ..train.cllm.evaluate import final_number

    if limit < 1 or offset < 0:
        raise ConfigError("--limit must be at least 1 and --offset at least 0")
    out = []
    for pid, prompt, row in read_rows(Path(data), limit + offset)[offset:]:
        answer = row.get("answer")
        out.append((pid, prompt, final_number(answer) if isinstance(answer, str) and "####" in answer else None))
    return out
