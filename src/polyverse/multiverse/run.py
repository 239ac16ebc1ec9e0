"""Multiverse requests through the ordinary API: ``Model.stream(..., method="multiverse")``.

The engine's passes become Chunks of settled text: the trunk as it grows, and a whole Parallel
block (its paths in order, then the Conclusion) once every path of it has closed. Callers that
want to watch the paths grow (the CLI view) pass ``on_update``.
"""

from __future__ import annotations

import time
from typing import Callable, Iterator

from ..loop import StepStats
from ..stats import Stats
from ..text import TextStream
from .engine import Branch, Engine, MultiverseConfig, Update


def settled(br: Branch) -> list[int]:
    """Tokens of ``br`` in training order that can no longer change place (open blocks cut off)."""
    out: list[int] = []
    at = 0
    for cut, kids in br.forks:
        out += br.tokens[at:cut]
        if any(k.state not in ("closing", "done") for k in kids):
            return out
        for kid in kids:
            out += settled(kid)
        at = cut
    return out + br.tokens[at:]


def chunks(model, ids, config: MultiverseConfig, gen_cfg, generator, holder: dict,
           on_update: Callable[[Engine, Update], None] | None = None) -> Iterator:
    from ..api import Chunk, Generation

    t0 = time.perf_counter()
    engine = Engine(model.backend, model.tokenizer, config, gen_cfg, generator)
    holder["engine"] = engine
    stats = Stats()
    text = TextStream(model.tokenizer, gen_cfg.stop)
    shown = len(ids)
    finish = "length"
    for update in engine.run(ids):
        if on_update is not None:
            on_update(engine, update)
        written = sum(len(w[2]) for w in update.writes)
        step = StepStats(update.fed, 0, written, update.seconds)
        stats.add(step)
        done = update.finish_reason is not None
        toks = engine.flat()[0] if done else settled(engine.trunk)
        new = tuple(toks[shown:])
        shown = len(toks)
        piece = text.push(new, final=done)
        stats.seconds = time.perf_counter() - t0
        if text.stopped:
            finish = "stop"
            yield Chunk(piece, new, step, finish)
            break
        if done:
            finish = update.finish_reason
        yield Chunk(piece, new, step, update.finish_reason)
    stats.seconds = time.perf_counter() - t0
    # sequential length: the measure the token budget uses (the paper's), next to all tokens written
    holder["generation"] = Generation(text.text, tuple(text.ids), finish, "multiverse", stats)
