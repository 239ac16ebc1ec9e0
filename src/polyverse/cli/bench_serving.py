"""`polyverse bench load` and `polyverse bench serve`: the server under concurrent streaming clients,
alone (load test) and against vLLM's CPU build at several client counts (serving benchmark)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer

from ..errors import ConfigError
from ..registry import registry
from .bench import bench_app
from .common import DTYPE_OPTION, clean_exit, err, int_list, progress


@bench_app.command("load")
def bench_load(
    clients: int = typer.Option(32, "--clients", help="Concurrent streaming clients."),
    duration: float = typer.Option(60.0, "--duration", help="Seconds during which clients start requests."),
    drain: float = typer.Option(120.0, "--drain", help="Seconds requests under way at the end may still take."),
    max_tokens: int = typer.Option(32, "--max-tokens", help="max_tokens of every request."),
    model: str = typer.Option("SmolLM2-135M-Instruct", "--model", help="Bundled model name, HF model directory, or .gguf file."),
    method: str = typer.Option("auto", "--method", help="Method the server decodes with."),
    max_concurrent: Optional[int] = typer.Option(None, "--max-concurrent", help="Server slots (default: --clients)."),
    idle: float = typer.Option(5.0, "--idle", help="Seconds of idle before memory is read again."),
    warm_clients: int = typer.Option(0, "--warm-clients", help="Concurrent warm-up requests before the start figure "
                                     "(0: as many as --clients; 1: one)."),
    rss_slack_mib: float = typer.Option(32.0, "--rss-slack-mib", help="How far above its start memory may stay."),
    rounds: int = typer.Option(1, "--rounds", help="Load rounds against the same server (memory after each: a leak grows)."),
    out: Optional[str] = typer.Option(None, "--out", help="Also write the figures here as JSON."),
) -> None:
    """Concurrent streaming clients against `polyverse serve`: throughput, latency, memory (exit 1 on a failure or a leak)."""
    from ..bench.load import LoadConfig, passed, run

    with clean_exit("interrupted: the server was stopped, nothing written"):
        cfg = LoadConfig(clients=clients, duration=duration, drain=drain, max_tokens=max_tokens, model=model,
                         method=method, max_concurrent=max_concurrent, idle=idle, warm_clients=warm_clients,
                         rss_slack_mib=rss_slack_mib, rounds=rounds)
        registry.get(method)  # an unknown method fails before the server starts
        with progress() as bar:
            task = bar.add_task("starting the server", total=cfg.rounds * cfg.duration)
            fig = run(cfg, tick=lambda done, what: bar.update(task, completed=done, description=what),
                      log=lambda line: err.print(line, highlight=False))
    typer.echo(json.dumps(fig, indent=1))
    if out:
        Path(out).write_text(json.dumps(fig, indent=1) + "\n")
    if not passed(fig):
        raise typer.Exit(1)


@bench_app.command("serve")
def bench_serve(
    clients: str = typer.Option("1,4,16", "--clients", help="Concurrent streaming client counts, comma-separated."),
    duration: float = typer.Option(30.0, "--duration", help="Seconds of load per client count."),
    max_tokens: int = typer.Option(64, "--max-tokens", help="max_tokens of every request."),
    model: str = typer.Option("SmolLM2-135M-Instruct", "--model", help="Bundled model name or HF model directory."),
    method: str = typer.Option("auto", "--method", help="Method polyverse serves with."),
    dtype: Optional[str] = DTYPE_OPTION,
    data: str = typer.Option("mtbench-like", "--data", help="Prompt set (chat prompts): mtbench-like, gsm8k, humaneval, grounded."),
    limit: int = typer.Option(20, "--limit", help="Prompts of the set (they go round the clients)."),
    vllm: bool = typer.Option(True, "--vllm/--no-vllm", help="Also run vLLM's CPU build on the same load (where `make vllm-env` made it)."),
    vllm_python: Optional[str] = typer.Option(None, "--vllm-python", help="The vLLM environment's python (default .venv-vllm/bin/python)."),
    vllm_dtype: str = typer.Option("float32", "--vllm-dtype", help="vLLM's weight type: float32 or bfloat16."),
    out: str = typer.Option("bench-serve", "--out", help="Folder for results.json, report.md and serving.png."),
) -> None:
    """Serving throughput and latency at several client counts: polyverse serve, and vLLM's CPU build as a peer."""
    from ..bench import serve
    from ..bench.data import raw_prompts

    with clean_exit("interrupted: the servers were stopped, nothing written"):
        counts = int_list(clients, "--clients")
        if vllm_dtype not in ("float32", "bfloat16"):
            raise ConfigError(f"--vllm-dtype must be float32 or bfloat16, got '{vllm_dtype}'")
        registry.get(method)
        cfg = serve.ServeBenchConfig(clients=counts, duration=duration, max_tokens=max_tokens, model=model,
                                     method=method, dtype=dtype, prompts=data, limit=limit, vllm=vllm,
                                     vllm_python=vllm_python, vllm_dtype=vllm_dtype)
        rows, _ = raw_prompts(data, limit)
        prompts = [p for _, p in rows if isinstance(p, str)]
        if not prompts:
            raise ConfigError(f"set '{data}' has no plain-text prompts")
        with progress() as bar:
            task = bar.add_task("starting", total=None)
            fig = serve.run(cfg, prompts, tick=lambda what: bar.update(task, description=what),
                            log=lambda line: err.print(line, highlight=False))
        serve.write(fig, Path(out))
    typer.echo(serve.report(fig))
    typer.echo(f"written: {out}/results.json, report.md, serving.png")
    if not serve.passed(fig):
        raise typer.Exit(1)
