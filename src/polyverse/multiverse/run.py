"""Multiverse as a method of the one decode path: the engine's passes become Steps.

The prompt is fed in chunks first, one prompt Step each (``loop.prompt_chunks``), so a batch
interleaves a long prompt with other requests. Each Step then carries the settled text's new
tokens: the trunk as it grows, and a whole Parallel block (its paths in order, then the
Conclusion) once every path of it has closed. ``max_new_tokens`` is a hard cap here: the engine
counts sequential length (parallel paths write more tokens than that), so the runner stops it once
every branch together has written that many tokens and cuts the merged output there. Its statistics
count the tokens fed and written by every branch in the pass. Callers that want to watch the
paths grow (the CLI view) pass ``on_update`` in the method context.
"""

from __future__ import annotations

from typing import Iterator, Sequence

from ..errors import ConfigError
from ..loop import Step, StepStats, prompt_chunks
from ..registry import registry
from .engine import Branch, Engine, MultiverseConfig


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


class MultiverseRunner:
    """One Multiverse request: runs the engine and reports each pass as a Step."""

    def __init__(self, config: MultiverseConfig, ctx) -> None:
        self.engine = Engine(ctx.backend, ctx.model.tokenizer, config, ctx.generation, ctx.generator)
        self.on_update = ctx.on_update

    def run(self, prompt: Sequence[int]) -> Iterator[Step]:
        engine = self.engine
        ids = yield from prompt_chunks(engine.backend, prompt)
        shown = len(ids)
        cap = len(ids) + engine.gen.max_new_tokens
        for update in engine.run(ids, prefilled=True):
            if self.on_update is not None:
                self.on_update(engine, update)
            written = sum(len(w[2]) for w in update.writes)
            done = update.finish_reason is not None
            finish = update.finish_reason
            if finish is None and engine.written() >= engine.gen.max_new_tokens:
                done, finish = True, "length"
            toks = engine.flat()[0] if done else settled(engine.trunk)
            if len(toks) > cap:  # the last pass wrote past the cap (several paths at once)
                toks, finish = toks[:cap], "length"
            new = tuple(toks[shown:])
            shown = len(toks)
            yield Step(new, StepStats(update.fed, 0, written, update.seconds), finish)
            if finish is not None:
                return


def make(config: MultiverseConfig, ctx) -> MultiverseRunner:
    """The registry's factory: the engine needs the served model's tokenizer and the request config."""
    if ctx.model is None or ctx.generation is None:
        raise ConfigError("multiverse needs the serving model: use polyverse.load(...).generate(method='multiverse')")
    return MultiverseRunner(config, ctx)


def rewrite(config: MultiverseConfig, prompt: str):
    """Guided mode: a text prompt becomes the chat that asks for a plan of independent parts."""
    if not config.guided:
        return prompt
    from .guided import instruction

    return instruction(prompt)


registry.register("multiverse", MultiverseConfig, make,
                  "Multiverse: fork a path per <Outline> at </Goal>, decode the paths together, merge (guided=true: any model)",
                  runner=True, rewrite=rewrite)
