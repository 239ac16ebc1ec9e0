"""`polyverse bench load`, `polyverse bench serve` and `polyverse bench soak`: the server under concurrent
streaming clients, alone (load test), against vLLM's CPU build at several client counts (serving
benchmark), and under a mixed, misbehaving load for a fixed time (soak test)."""

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


@bench_app.command("soak")
def bench_soak(
    duration: float = typer.Option(600.0, "--duration", help="Seconds during which clients start requests."),
    clients: int = typer.Option(16, "--clients", help="Concurrent clients."),
    model: str = typer.Option("SmolLM2-135M-Instruct", "--model", help="Bundled model name, HF model directory, or .gguf file."),
    method: str = typer.Option("auto", "--method", help="Method the server decodes with."),
    dtype: Optional[str] = DTYPE_OPTION,
    seed: int = typer.Option(0, "--seed", help="Seed of the clients' choices and prompts."),
    mix: Optional[str] = typer.Option(None, "--mix", help="Weights of the request kinds: KIND=WEIGHT, comma-separated, of "
                                      "short, long, disconnect, slow_headers, slow_body, bad (default: mostly short)."),
    max_concurrent: int = typer.Option(4, "--max-concurrent", help="Server slots (fewer than clients: requests queue)."),
    max_queue: int = typer.Option(8, "--max-queue", help="Server queue (small: some requests get 429)."),
    header_timeout: float = typer.Option(5.0, "--header-timeout", help="The server's --header-timeout (0: not passed)."),
    body_timeout: float = typer.Option(5.0, "--body-timeout", help="The server's --body-timeout (0: not passed)."),
    rss_slack_mib: Optional[float] = typer.Option(None, "--rss-slack-mib", help="Fail when memory after the idle "
                                                  "stays this far above the start (default: report only)."),
    out: str = typer.Option("bench-soak", "--out", help="Folder for results.json and report.md."),
) -> None:
    """Mixed long and short prompts, disconnects, slow clients and bad requests against `polyverse serve`
    for a fixed time: failures, short requests' TTFT, memory (exit 1 when it did not pass)."""
    from ..bench import soak

    with clean_exit("interrupted: the server was stopped, nothing written"):
        cfg = soak.SoakConfig(duration=duration, clients=clients, model=model, method=method, dtype=dtype, seed=seed,
                              mix=soak.parse_mix(mix) if mix else soak.DEFAULT_MIX, max_concurrent=max_concurrent, max_queue=max_queue,
                              header_timeout=header_timeout, body_timeout=body_timeout, rss_slack_mib=rss_slack_mib)
        registry.get(method)  # an unknown method fails before the server starts
        with progress() as bar:
            task = bar.add_task("starting the server", total=cfg.duration)
            fig = soak.run(cfg, tick=lambda done, what: bar.update(task, completed=done, description=what),
                           log=lambda line: err.print(line, highlight=False))
        soak.write(fig, Path(out))
    typer.echo(soak.report(fig))
    typer.echo(f"written: {out}/results.json, report.md")
    if not fig["passed"]:
        raise typer.Exit(1)
