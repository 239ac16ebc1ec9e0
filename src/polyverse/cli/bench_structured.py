"""`polyverse bench structured`: JSON-schema output, constrained `ar` against `auto` (``bench.structured``)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer
from rich.console import Console

from ..errors import ConfigError
from .bench import bench_app
from .common import DTYPE_OPTION, clean_exit, progress


@bench_app.command("structured")
def bench_structured(
    model: str = typer.Option("SmolLM2-135M-Instruct", "--model", help="Bundled model name or HF model directory."),
    limit: int = typer.Option(20, "--limit", help="Prompts (of 20, over 5 JSON schemas)."),
    max_new_tokens: int = typer.Option(512, "--max-new-tokens", "-n", help="Most new tokens per prompt."),
    dtype: Optional[str] = DTYPE_OPTION,
    out: str = typer.Option("bench-out/structured.json", "--out", help="JSON file of the per-prompt rows."),
) -> None:
    """JSON-schema output: constrained `ar` against `auto` with and without grammar-forced drafts."""
    from dataclasses import asdict

    from ..bench import structured
    from ..bench.runner import cpu_name

    with clean_exit("interrupted: nothing written"):
        if not 1 <= limit <= len(structured.PROMPTS):
            raise ConfigError(f"--limit must be in 1..{len(structured.PROMPTS)}, got {limit}")
        if max_new_tokens < 1:
            raise ConfigError(f"--max-new-tokens must be at least 1, got {max_new_tokens}")
        from .common import load

        lm = load(model, dtype=dtype, progress=False)
        prompts = structured.PROMPTS[:limit]
        with progress() as bar:
            task = bar.add_task("structured", total=len(prompts) * len(structured.CONTENDERS))
            rows = structured.run(lm, max_new_tokens, tick=lambda what: bar.update(task, advance=1, description=what),
                                  prompts=prompts)
        Path(out).parent.mkdir(parents=True, exist_ok=True)
        Path(out).write_text(json.dumps({"cpu": cpu_name(), "max_new_tokens": max_new_tokens,
                                         "rows": [asdict(r) for r in rows]}, indent=1))
    Console(width=max(Console().width, 120)).print(structured.markdown(rows, cpu_name(), max_new_tokens))
