"""The options and the run of an offline command on a Ray cluster (``--ray``), shared by
`generate --input`, `train distill` and `train cllm collect`."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional, Sequence

import typer

from ..errors import ConfigError
from .common import progress

RAY_OPTION = typer.Option(None, "--ray", help="Run on a Ray cluster: its address (HOST:PORT), or local (a Ray "
                          "instance on this machine). Shards of --shard-size items, one model per worker, output in "
                          "input order, a lost worker's shard redone; rerun to resume.")
WORKERS_OPTION = typer.Option(None, "--workers", help="With --ray: workers (default: the cluster's CPUs / --worker-threads).")
WORKER_THREADS_OPTION = typer.Option(1, "--worker-threads", help="With --ray: CPU threads (and Ray CPUs) per worker.")
SHARD_SIZE_OPTION = typer.Option(16, "--shard-size", help="With --ray: items per shard (a shard is the unit a lost worker redoes).")


def check(ray: Optional[str], workers: Optional[int], threads: int, shard_size: int) -> None:
    """Bad cluster options fail before any model loads."""
    if ray is None:
        return
    from ..integrations.ray import available

    if not ray.strip():
        raise ConfigError("--ray takes a cluster address (HOST:PORT) or local")
    if not available():
        raise ConfigError("--ray needs Ray: pip install 'polyverse[ray]'")
    for flag, value in (("--worker-threads", threads), ("--shard-size", shard_size)):
        if value < 1:
            raise ConfigError(f"{flag} must be at least 1, got {value}")
    if workers is not None and workers < 1:
        raise ConfigError(f"--workers must be at least 1, got {workers}")


def run(spec, items: Sequence[tuple[str, Any]], out: Path, done: set[str], address: str, workers: Optional[int],
        threads: int, shard_size: int, what: str) -> dict:
    """The job on the cluster with a progress bar over all its items; returns the driver's counts."""
    from ..integrations.ray import RayExecutor
    from ..offline.shards import run_shards

    with progress() as bar:
        task = bar.add_task(f"{what}: starting Ray workers", total=len(items))
        executor = RayExecutor(address, spec, workers, threads)
        bar.update(task, description=f"{what} on {len(executor.workers())} Ray workers")
        return run_shards(list(items), out, done, shard_size, executor,
                          tick=lambda n, why: bar.update(task, advance=n, description=f"{what}: {why}"))
