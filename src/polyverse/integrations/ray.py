"""Offline batch jobs on a Ray cluster: `polyverse generate --input`, `train distill` and
`train cllm collect` with ``--ray ADDRESS`` (or ``--ray local``).

Each worker is a Ray actor that loads the model once and turns shards into output lines
(``offline.work``); the driver (``offline.shards``) keeps finished shards, writes the output in
input order and redoes the shard of a worker that dies (a new worker takes its place). ``local``
starts a Ray instance on this machine with ``workers`` x ``threads`` CPUs; an address joins a
running cluster (``ray start --head`` on one machine, ``ray start --address HEAD:6379`` on the
others), whose machines need polyverse installed alike (the same model name must load on each).
"""

from __future__ import annotations

import os
from typing import Any

from ..errors import ConfigError, PolyverseError
from ..offline.work import JobSpec, load_model, shard_lines


class ShardWorker:
    """One worker: the model, loaded once, and its shards turned into lines."""

    def __init__(self, spec: JobSpec, threads: int) -> None:
        import torch

        torch.set_num_threads(threads)
        self.spec = spec
        self.model = load_model(spec)

    def pid(self) -> int:
        return os.getpid()

    def run(self, items: list[tuple[str, Any]]) -> list[str]:
        return shard_lines(self.model, self.spec, items)


def available() -> bool:
    try:
        import ray  # noqa: F401
    except ImportError:
        return False
    return True


class RayExecutor:
    """Shards on Ray actors: ``workers`` of them, ``threads`` CPUs each."""

    def __init__(self, address: str, spec: JobSpec, workers: int | None = None, threads: int = 1) -> None:
        if not available():
            raise ConfigError("--ray needs Ray: pip install 'polyverse[ray]'")
        import ray

        if threads < 1:
            raise ConfigError(f"--worker-threads must be at least 1, got {threads}")
        if workers is not None and workers < 1:
            raise ConfigError(f"--workers must be at least 1, got {workers}")
        self.ray = ray
        self.started = False
        if not ray.is_initialized():
            if address == "local":
                cpus = (workers or max((os.cpu_count() or 1) // threads, 1)) * threads
                ray.init(num_cpus=cpus, include_dashboard=False, log_to_driver=False, logging_level="ERROR")
            else:
                try:
                    ray.init(address=address, log_to_driver=False, logging_level="ERROR")
                except (ConnectionError, RuntimeError, ValueError) as exc:
                    raise ConfigError(f"cannot join the Ray cluster at {address}: {exc}") from None
            self.started = True
        if workers is None:
            workers = max(int(ray.cluster_resources().get("CPU", 1)) // threads, 1)
        self.spec, self.threads = spec, threads
        self.actor = ray.remote(num_cpus=threads, max_restarts=0)(ShardWorker)
        self.idle = [self._new() for _ in range(workers)]
        self.running: dict[Any, tuple[Any, int]] = {}  # task ref -> (actor, shard)

    def _new(self):
        return self.actor.remote(self.spec, self.threads)

    def workers(self) -> list:
        return list(self.idle) + [a for a, _ in self.running.values()]

    def free(self) -> int:
        return len(self.idle)

    def submit(self, k: int, items: list[tuple[str, Any]]) -> None:
        actor = self.idle.pop(0)
        self.running[actor.run.remote(items)] = (actor, k)

    def next_done(self) -> tuple[int, list[str] | None]:
        ray = self.ray
        ready, _ = ray.wait(list(self.running), num_returns=1)
        actor, k = self.running.pop(ready[0])
        try:
            lines = ray.get(ready[0])
        except ray.exceptions.RayActorError:  # the worker died (killed, out of memory, its node lost)
            self.idle.append(self._new())
            return k, None
        except ray.exceptions.RayTaskError as exc:  # the work itself failed: the same shard would again
            raise PolyverseError(f"shard {k} failed on its worker: {exc.cause!r}") from None
        self.idle.append(actor)
        return k, lines

    def close(self) -> None:
        for actor in self.workers():
            self.ray.kill(actor)
        self.idle, self.running = [], {}
        if self.started:
            self.ray.shutdown()
