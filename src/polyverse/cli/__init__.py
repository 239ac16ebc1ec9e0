"""The command line: `polyverse generate`, `methods`, `bench`, `serve`, `train`, `curate`, `export`.

One module per command group (generate.py, bench.py, train.py, multiverse.py, export.py, serve.py)
over a public common module (common.py: the error console, `fail`, progress bars, option parsing).
Bad input ends with a one-line error on stderr and exit status 2, never a traceback.
"""

from __future__ import annotations

import sys

import typer

from ..errors import PolyverseError
from .bench import bench_app, bench_multiverse
from .common import err
from .export import export_app
from .generate import Generate, list_methods
from .multiverse import curate, multiverse_app
from .serve import serve
from .train import train_app
from .train_head import head_cmd

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="Parallel decoding for language models: many tokens per forward pass, same output.")
app.command("curate")(curate)
app.command("bench-multiverse", hidden=True)(bench_multiverse)  # the old name of `polyverse bench multiverse`
app.command("serve")(serve)  # the OpenAI-compatible server
app.command("generate")(Generate())  # its method flags come from the registered methods
app.command("methods")(list_methods)
app.add_typer(bench_app, name="bench")  # the method bench, and `load`, `ar-jacobi`, `multiverse`
app.add_typer(train_app, name="train")  # the CLLM and SPACE pipelines, self-distillation
train_app.add_typer(multiverse_app, name="multiverse")  # Multiverse SFT
train_app.command("head")(head_cmd)  # a draft head for auto
app.add_typer(export_app, name="export")  # `polyverse export gguf`


def main() -> None:
    try:
        app()
    except PolyverseError as exc:  # errors raised outside a command body
        err.print(f"[bold red]error:[/] {exc}", highlight=False)
        sys.exit(2)
