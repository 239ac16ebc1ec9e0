"""The one decode loop: propose -> layout -> forward -> verify -> commit -> observe -> Step.

Every method is a Proposer; the loop, the verification and the cache handling are shared, so
losslessness is proved once. The KV cache holds every output token but the last one, the
*pending* token, which is fed at the root of each pass together with the draft.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Iterator, Protocol, Sequence, runtime_checkable

import torch

from .backends.base import Backend
from .config import GenerationConfig
from .draft import Draft
from .errors import ConfigError
from .layout import chain_feed, draft_feed
from .sampling import make_generator
from .verify import Verdict, verify


@dataclass(frozen=True)
class StepStats:
    fed: int  # tokens in this step's forward pass
    drafted: int  # draft tokens proposed
    accepted: int  # new output tokens: accepted draft tokens + the bonus token
    seconds: float


@dataclass(frozen=True)
class Step:
    tokens: tuple[int, ...]  # new output tokens of this step (cut at EOS and at the budget)
    stats: StepStats
    finish_reason: str | None = None  # "eos" | "length" on the last step


@dataclass(frozen=True)
class Observation:
    """What a proposer sees after a step."""

    draft: Draft
    verdict: Verdict
    logits: torch.Tensor  # [1 + len(draft), V] target logits, feed order (root first)
    context: tuple[int, ...]  # all tokens so far; the last one is the new pending token


class Proposer:
    """A method: proposes drafts and learns from what was accepted. Holds per-request state.

    Subclass it and override ``propose`` (and ``start``/``observe`` where the method keeps state);
    every member has a default, so the loop reads them directly.
    """

    reads_every_row: bool = False
    """Whether ``observe`` reads every logits row (Jacobi's update): the loop then asks the backend
    for all rows in one LM-head product instead of lazily, which would pay two products."""

    def start(self, context: Sequence[int]) -> None:
        """Called once with the prompt tokens before the first step."""

    def propose(self, context: Sequence[int]) -> Draft:
        """Draft continuations of ``context`` (whose last token is the pending one)."""
        raise NotImplementedError

    def observe(self, obs: Observation) -> None:
        """Update proposer state from the step's outcome."""


@runtime_checkable
class Runner(Protocol):
    """What generates one request: yields one Step per forward pass (or group of passes).

    Draft methods get theirs from the registry (a Proposer under ``decode``); engine-style
    methods (Multiverse) implement it themselves, starting with ``prefill``.
    """

    def run(self, prompt: Sequence[int]) -> Iterator[Step]:
        ...


def check_prompt(prompt: Sequence[int], max_length: int) -> None:
    """The one check of a prompt's token ids: at least one token, and room for one more.

    Example: check_prompt([1, 2], 2) raises "the prompt is 2 tokens long; the model's context holds 2".
    """
    if not prompt:
        raise ConfigError("the prompt is empty")
    if len(prompt) >= max_length:
        raise ConfigError(f"the prompt is {len(prompt)} tokens long; the model's context holds {max_length}")


def prefill(backend: Backend, prompt: Sequence[int]) -> list[int]:
    """Check the prompt, empty the backend and commit every prompt token but the last, which is
    the pending token fed at the root of the first pass. Returns the prompt as a list of ints.

    Example: prompt [5, 6, 7] -> one pass over (5, 6) at positions (0, 1), both committed.
    """
    context = [int(t) for t in prompt]
    check_prompt(context, backend.max_length)
    backend.reset()
    if len(context) > 1:
        backend.forward(chain_feed(context[:-1], 0), logits_for=[])
        backend.commit(range(len(context) - 1))
    return context


def decode(
    backend: Backend,
    proposer: Proposer,
    prompt: Sequence[int],
    config: GenerationConfig,
    generator: torch.Generator | None = None,
) -> Iterator[Step]:
    """Generate up to ``config.max_new_tokens`` tokens after ``prompt``, one Step per pass.

    Example: with the AR proposer (empty drafts) each step feeds 1 token and yields 1 token.
    """
    gen = generator if generator is not None else make_generator(config.seed)
    eos = set(config.eos_token_ids)
    context = prefill(backend, prompt)
    proposer.start(tuple(context))
    produced = 0
    while True:
        t0 = time.perf_counter()
        pos = len(context) - 1  # position of the pending token
        room = min(config.max_new_tokens - produced, backend.max_length - 1 - pos)
        draft = proposer.propose(tuple(context))
        if draft and max(draft.depths()) > room - 1:
            draft = draft.pruned(room - 1)
        every = range(len(draft) + 1) if proposer.reads_every_row else None
        logits = backend.forward(draft_feed(context[-1], pos, draft), logits_for=every)  # [1 + n, V]
        verdict = verify(draft, logits, config.sampling, gen)
        backend.commit([0] + [i + 1 for i in verdict.accepted])
        tokens = list(verdict.tokens)
        finish = None
        cut = next((i for i, t in enumerate(tokens) if t in eos), None)
        if cut is not None:
            tokens, finish = tokens[: cut + 1], "eos"
        if len(tokens) >= room:
            tokens = tokens[:room]
            finish = finish or "length"
        context.extend(tokens)
        produced += len(tokens)
        if finish is None:
            proposer.observe(Observation(draft, verdict, logits, tuple(context)))
        stats = StepStats(len(draft) + 1, len(draft), len(tokens), time.perf_counter() - t0)
        yield Step(tuple(tokens), stats, finish)
        if finish is not None:
            return
