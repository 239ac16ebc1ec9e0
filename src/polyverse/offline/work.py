"""What one shard of an offline job writes: the output lines of its items, in their order.

A job is data (``JobSpec``: the command, the model to load, the command's options), so that a
worker anywhere can load the model once and then turn shards of (id, input) items into the same
lines the single-process command writes for them.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any, Sequence

KINDS = ("generate", "distill", "collect")


@dataclass(frozen=True)
class JobSpec:
    kind: str  # generate (polyverse generate --input), distill (train distill), collect (train cllm collect)
    model: str  # what ``polyverse.load`` takes
    load: dict = field(default_factory=dict)  # load's keyword arguments (adapter, backend, dtype)
    options: dict = field(default_factory=dict)  # the command's: generate's keyword arguments and
    # concurrency; distill's DistillConfig fields and chat; collect's CollectConfig fields

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"unknown job kind '{self.kind}' (one of {', '.join(KINDS)})")


def load_model(spec: JobSpec):
    from ..api import load
    from ..heap import freeze

    model = load(spec.model, progress=False, **spec.load)
    freeze()  # a worker's own process: the model's objects out of the collector's full passes
    return model


def line_id(line: str) -> str:
    """The item id an output line belongs to (collect writes several lines per prompt)."""
    row = json.loads(line)
    return str(row["id"] if "id" in row else row["prompt_id"])


def shard_lines(model, spec: JobSpec, items: Sequence[tuple[str, Any]]) -> list[str]:
    """The output lines of ``items`` ((id, input) pairs; collect's inputs are token ids), in order."""
    opts = dict(spec.options)
    if spec.kind == "generate":
        from ..cli.generate_file import output_line
        from .ordered import in_order

        concurrency = opts.pop("concurrency", 32)
        gens = in_order(model.generate_many([p for _, p in items], concurrency=concurrency, **opts))
        return [output_line(items[i][0], gen) for i, gen in gens]
    if spec.kind == "distill":
        from ..train.distill import DistillConfig, answer_line, answers

        chat = opts.pop("chat", None)
        cfg = DistillConfig(**opts)
        return [answer_line(items[i][0], items[i][1], gen) for i, gen in answers(model, [q for _, q in items], cfg, chat)]
    from ..train.cllm.collect import CollectConfig, prompt_lines

    cfg = CollectConfig(**opts)
    return [line for pid, ids in items for line in prompt_lines(model, pid, ids, cfg)[0]]
