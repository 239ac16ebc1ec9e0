"""Jacobi trajectory collection for CLLM: every intermediate state of each block and its fixed point.

For each prompt, greedy Jacobi decoding block by block (as in the CLLM paper): an n-token block
starts as a guess, each pass replaces every position with the target's argmax given the context
and the guess before it, and the block stops changing at its fixed point, which is exactly the AR
greedy continuation. The fixed point is appended to the context and the next block starts. One
record per block: the context before it, the states visited, the fixed point.

Records are appended to ``trajectories.jsonl`` one prompt at a time (a single write, flushed and
synced), so a killed run resumes at the first prompt not yet written; a torn last line is cut off.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Sequence

import torch

from ...errors import ConfigError
from ...layout import chain_feed

FILE = "trajectories.jsonl"


@dataclass(frozen=True)
class CollectConfig:
    block: int = 16  # n: tokens per Jacobi block
    max_new_tokens: int = 256
    max_run: int = 8  # a fixed point with a run of this many equal tokens is degenerate: dropped

    def __post_init__(self) -> None:
        if not isinstance(self.block, int) or not 2 <= self.block <= 128:
            raise ConfigError(f"--block must be an integer in [2, 128], got {self.block!r}")
        if not isinstance(self.max_new_tokens, int) or self.max_new_tokens < 1:
            raise ConfigError(f"--max-new-tokens must be at least 1, got {self.max_new_tokens!r}")
        if not isinstance(self.max_run, int) or self.max_run < 2:
            raise ConfigError(f"--max-run must be at least 2, got {self.max_run!r}")


@dataclass(frozen=True)
class Trajectory:
    prompt_id: str
    block_index: int
    context: tuple[int, ...]  # prompt + fixed points of the earlier blocks
    states: tuple[tuple[int, ...], ...]  # the guesses fed, first (the initial guess) to last
    fixed: tuple[int, ...]  # the fixed point (= AR greedy continuation), n tokens or fewer at EOS

    def to_json(self) -> dict:
        return {"prompt_id": self.prompt_id, "block_index": self.block_index, "context": list(self.context),
                "states": [list(s) for s in self.states], "fixed": list(self.fixed)}

    @classmethod
    def from_json(cls, d: dict) -> "Trajectory":
        return cls(str(d["prompt_id"]), int(d["block_index"]), tuple(d["context"]),
                   tuple(tuple(s) for s in d["states"]), tuple(d["fixed"]))


def longest_run(tokens: Sequence[int]) -> int:
    """Length of the longest run of one repeated token. Example: [1, 2, 2, 2, 3] -> 3."""
    best = run = 0
    prev = None
    for t in tokens:
        run = run + 1 if t == prev else 1
        prev = t
        best = max(best, run)
    return best


def jacobi_block(backend, context: Sequence[int], n: int) -> tuple[list[tuple[int, ...]], list[int]]:
    """(states, fixed point) of one greedy Jacobi block after ``context``.

    The backend's cache must hold ``context[:-1]``; on return it also holds the last context token
    and the fixed point but its last token (the last pass fed exactly those). The initial guess repeats
    the last context token. Example: if the model always predicts its input + 1, context [5] and
    n = 3 go [5, 5, 5] -> [6, 6, 6] -> [6, 7, 7] -> [6, 7, 8] (fixed).
    """
    pending, pos = int(context[-1]), len(context) - 1
    state = [pending] * n
    states: list[tuple[int, ...]] = []
    while True:
        states.append(tuple(state))
        logits = backend.forward(chain_feed([pending] + state, pos), logits_for=list(range(n)))  # [n, V]
        new = logits[:].argmax(dim=-1).tolist()
        if new == state:
            backend.commit(range(n))
            return states, state
        backend.commit([])
        state = new


def collect_prompt(backend, prompt_id: str, prompt: Sequence[int], cfg: CollectConfig,
                   eos: Iterable[int]) -> list[Trajectory]:
    """All block records of one prompt, stopping at EOS or the token budget."""
    eos = set(eos)
    context = [int(t) for t in prompt]
    out: list[Trajectory] = []
    backend.reset()
    if len(context) > 1:
        backend.forward(chain_feed(context[:-1], 0), logits_for=[])
        backend.commit(range(len(context) - 1))
    produced = 0
    room = min(cfg.max_new_tokens, backend.max_length - len(context) - cfg.block - 1)
    while produced < room:
        states, fixed = jacobi_block(backend, context, cfg.block)
        cut = next((i for i, t in enumerate(fixed) if t in eos), None)
        if cut is not None:
            fixed = fixed[: cut + 1]
        out.append(Trajectory(prompt_id, len(out), tuple(context), tuple(states), tuple(fixed)))
        if cut is not None:
            break
        context.extend(fixed)
        produced += len(fixed)
    return out


def clean(records: list[Trajectory], max_run: int) -> list[Trajectory]:
    """Drop degenerate blocks: a fixed point with ``max_run`` or more equal tokens in a row
    (the repetition that CLLM training collapses into)."""
    return [r for r in records if longest_run(r.fixed) < max_run]


def done_prompts(path: Path) -> set[str]:
    """Prompt ids already written; a torn last line (a killed write) is cut off first."""
    if not path.exists():
        return set()
    data = path.read_bytes()
    end = data.rfind(b"\n") + 1
    if end < len(data):
        with path.open("r+b") as f:
            f.truncate(end)
    done = set()
    for line in data[:end].splitlines():
        if line.strip():
            done.add(str(json.loads(line)["prompt_id"]))
    return done


def _append(path: Path, lines: list[str]) -> None:
    with path.open("a", encoding="utf-8") as f:
        f.write("".join(lines))
        f.flush()
        os.fsync(f.fileno())


def prompt_lines(model, pid: str, ids: Sequence[int], cfg: CollectConfig) -> tuple[list[str], list, list]:
    """One prompt's output lines (its kept blocks, or a marker line when none is kept), the kept
    blocks and all of them."""
    with torch.inference_mode():
        records = collect_prompt(model.backend, pid, ids, cfg, model.eos_token_ids)
    kept = clean(records, cfg.max_run)
    lines = [json.dumps(r.to_json()) + "\n" for r in kept] or [json.dumps({"prompt_id": pid, "empty": True}) + "\n"]
    return lines, kept, records


def collect(model, prompts: Sequence[tuple[str, Sequence[int]]], out_dir: Path, cfg: CollectConfig,
            tick: Callable[[str, int], None] | None = None) -> dict:
    """Collect trajectories for every prompt not already in ``out_dir``; returns counts.

    A prompt whose blocks were all degenerate is still written (as a marker line with no
    blocks) so that a resumed run does not redo it.
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / FILE
    done = done_prompts(path)
    counts = {"prompts": 0, "skipped": 0, "blocks": 0, "dropped": 0}
    with torch.inference_mode():
        for pid, ids in prompts:
            if pid in done:
                counts["skipped"] += 1
                if tick:
                    tick(pid, 0)
                continue
            lines, kept, records = prompt_lines(model, pid, ids, cfg)
            _append(path, lines)
            done.add(pid)
            counts["prompts"] += 1
            counts["blocks"] += len(kept)
            counts["dropped"] += len(records) - len(kept)
            if tick:
                tick(pid, len(kept))
    (out_dir / "collect.json").write_text(json.dumps({"block": cfg.block, "max_new_tokens": cfg.max_new_tokens,
                                                      "max_run": cfg.max_run, "model": model.name, **counts}))
    return counts


def write_summary(out_dir: Path, cfg: CollectConfig, model_name: str, path: Path) -> dict:
    """collect.json for a run whose counts are the file's own (a sharded run: prompts and kept blocks
    in ``path``; the dropped ones are not recorded there)."""
    prompts, blocks = set(), 0
    for line in path.read_text(encoding="utf-8").splitlines() if path.exists() else []:
        row = json.loads(line)
        prompts.add(str(row["prompt_id"]))
        blocks += not row.get("empty")
    doc = {"block": cfg.block, "max_new_tokens": cfg.max_new_tokens, "max_run": cfg.max_run, "model": model_name,
           "prompts": len(prompts), "blocks": blocks}
    (out_dir / "collect.json").write_text(json.dumps(doc))
    return doc


def read_trajectories(path: Path) -> list[Trajectory]:
    """Every block record of a trajectories folder (or file)."""
    path = path / FILE if path.is_dir() else path
    if not path.exists():
        raise ConfigError(f"no trajectories at {path}: run `polyverse train cllm collect` first")
    out = []
    for line in path.read_text(encoding="utf-8").splitlines():
        if line.strip():
            d = json.loads(line)
            if not d.get("empty"):
                out.append(Trajectory.from_json(d))
    if not out:
        raise ConfigError(f"{path} holds no usable trajectories")
    return out
