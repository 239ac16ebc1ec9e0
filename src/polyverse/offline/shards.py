"""The driver of a sharded offline job: items split into fixed shards, run on whatever workers an
executor has, each finished shard kept on disk, the output written in input order, lost shards redone.

Shards are fixed slices of the item list (shard k = items k*S .. k*S+S-1), so a rerun cuts the same
shards: those whose every id is in the output are skipped, a finished shard waiting in the parts
folder (``OUT.parts/shard-00012.jsonl``, written whole before it counts) is not run again, the rest
are. A shard joins the output once every earlier shard has, so the output is the single-process
command's file line for line, whatever finished first. A worker that dies takes only its shard,
which goes back to the front of the queue (at most ``max_redo`` times, then the job fails).

An executor runs shards: ``free()`` workers, ``submit(k, items)``, ``next_done() -> (k, lines or
None)`` (None: the worker died), ``close()``. ``LocalExecutor`` runs them in this process (tests,
and the shape a cluster executor follows: ``integrations.ray``).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Callable, Protocol, Sequence

from ..errors import PolyverseError
from ..train.cllm.collect import _append
from .work import line_id

MAX_REDO = 3


class Executor(Protocol):
    def free(self) -> int: ...
    def submit(self, k: int, items: list[tuple[str, Any]]) -> None: ...
    def next_done(self) -> tuple[int, list[str] | None]: ...
    def close(self) -> None: ...


def parts_dir(out: Path) -> Path:
    return out.with_name(out.name + ".parts")


def _part(out: Path, k: int) -> Path:
    return parts_dir(out) / f"shard-{k:05d}.jsonl"


def _read_part(path: Path, ids: Sequence[str]) -> list[str] | None:
    """A finished shard's lines, if the file holds exactly its items (else None: run it again)."""
    try:
        lines = path.read_text(encoding="utf-8").splitlines(keepends=True)
        got = list(dict.fromkeys(line_id(line) for line in lines))
    except (OSError, ValueError, KeyError):
        return None
    return lines if got == list(ids) and all(line.endswith("\n") for line in lines) else None


def _write_atomic(path: Path, lines: list[str]) -> None:
    tmp = path.with_suffix(".tmp")
    with tmp.open("w", encoding="utf-8") as f:
        f.write("".join(lines))
        f.flush()
        os.fsync(f.fileno())
    tmp.replace(path)


def run_shards(items: Sequence[tuple[str, Any]], out: Path, done: set[str], shard_size: int, executor: Executor,
               tick: Callable[[int, str], None] | None = None, max_redo: int = MAX_REDO) -> dict:
    """Run the items whose ids are not in ``done`` (those already in ``out``); append their lines to
    ``out`` in item order. Returns counts: items written, skipped, shards run, redone and reused."""
    if shard_size < 1:
        raise PolyverseError(f"shard size must be at least 1, got {shard_size}")
    shards: dict[int, list[tuple[str, Any]]] = {}
    for k in range(0, len(items), shard_size):
        todo = [it for it in items[k : k + shard_size] if it[0] not in done]
        if todo:
            shards[k // shard_size] = todo
    counts = {"written": 0, "skipped": len(items) - sum(map(len, shards.values())), "shards": 0, "redone": 0, "reused": 0}
    if tick and counts["skipped"]:
        tick(counts["skipped"], "already written")
    if not shards:
        return counts
    out.parent.mkdir(parents=True, exist_ok=True)
    parts_dir(out).mkdir(exist_ok=True)
    finished: dict[int, list[str]] = {}
    for k, todo in shards.items():
        lines = _read_part(_part(out, k), [i for i, _ in todo])
        if lines is not None:
            finished[k] = lines
            counts["reused"] += 1
            if tick:
                tick(len(todo), f"shard {k} kept from an earlier run")
    queue = [k for k in shards if k not in finished]
    order = sorted(shards)
    redos: dict[int, int] = {}
    running = 0

    def merge() -> None:
        while order and order[0] in finished:
            k = order.pop(0)
            _append(out, finished.pop(k))
            counts["written"] += len(shards[k])
            _part(out, k).unlink(missing_ok=True)

    merge()
    try:
        while queue or running:
            while queue and executor.free() > 0:
                k = queue.pop(0)
                executor.submit(k, shards[k])
                running += 1
            k, lines = executor.next_done()
            running -= 1
            if lines is None:  # its worker died: the shard goes back to the front
                redos[k] = redos.get(k, 0) + 1
                counts["redone"] += 1
                if redos[k] > max_redo:
                    raise PolyverseError(f"shard {k} lost its worker {redos[k]} times; stopping "
                                         "(finished shards are kept: rerun to resume)")
                queue.insert(0, k)
                if tick:
                    tick(0, f"shard {k}: worker lost, redoing it")
                continue
            got = list(dict.fromkeys(line_id(line) for line in lines))
            if got != [i for i, _ in shards[k]]:
                raise PolyverseError(f"shard {k} came back with the lines of other items")
            _write_atomic(_part(out, k), lines)
            finished[k] = lines
            counts["shards"] += 1
            if tick:
                tick(len(shards[k]), f"shard {k} done")
            merge()
    finally:
        executor.close()
    try:
        parts_dir(out).rmdir()
    except OSError:
        pass  # shards kept for a rerun
    return counts


class LocalExecutor:
    """Shards run one at a time in this process by ``work`` (items -> lines)."""

    def __init__(self, work: Callable[[list[tuple[str, Any]]], list[str]]) -> None:
        self.work = work
        self.pending: list[tuple[int, list[tuple[str, Any]]]] = []

    def free(self) -> int:
        return 0 if self.pending else 1

    def submit(self, k: int, items: list[tuple[str, Any]]) -> None:
        self.pending.append((k, items))

    def next_done(self) -> tuple[int, list[str] | None]:
        k, items = self.pending.pop(0)
        return k, self.work(items)

    def close(self) -> None:
        self.pending.clear()
