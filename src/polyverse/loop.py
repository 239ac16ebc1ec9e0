"""The one decode loop: propose -> layout -> forward -> verify -> commit -> observe -> Step.

Every method is a Proposer; the loop, the verification and the cache handling are shared, so
losslessness is proved once. The KV cache holds every output token but the last one, the
*pending* token, which is fed at the root of each pass together with the draft.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Iterator, Protocol, Sequence, runtime_checkable

import torch

from .backends.base import Backend
from .config import GenerationConfig
from .draft import Draft
from .errors import ConfigError
from .layout import Feed, chain_feed, draft_feed
from .logprobs import producing_rows, token_logprobs
from .sampling import make_generator
from .shaping import Shaper
from .verify import Verdict, verify

if TYPE_CHECKING:
    from .costs import LiveCurve


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
    prompt: bool = False  # a pass over prompt tokens only (``prompt_chunks``): no output, not a decode pass
    logprobs: tuple | None = None  # one ``logprobs.TokenLogprob`` per token, when the request asks for them


@dataclass(frozen=True)
class Observation:
    """What a proposer sees after a step."""

    draft: Draft
    verdict: Verdict
    logits: torch.Tensor  # [1 + len(draft), V] target logits, feed order (root first), shaped as verified
    context: tuple[int, ...]  # all tokens so far; the last one is the new pending token


class Proposer:
    """A method: proposes drafts and learns from what was accepted. Holds per-request state.

    Subclass it and override ``propose`` (and ``start``/``observe`` where the method keeps state);
    every member has a default, so the loop reads them directly.
    """

    reads_every_row: bool = False
    """Whether ``observe`` reads every logits row (Jacobi's update): the loop then asks the backend
    for all rows in one LM-head product instead of lazily, which would pay two products."""

    forced_drafts: bool = True
    """Whether the loop adds the tokens a grammar forces (structured output) to this proposer's drafts."""

    live: "LiveCurve | None" = None
    """The live cost curve this proposer prices its drafts by (``costs.pricing``), if any: the loop tells
    it what each step took, from the proposal to the verdict (the whole step, the proposer's own work
    included), where the pass was the request's own (a pass shared with other requests is the batch's)."""

    def start(self, context: Sequence[int]) -> None:
        """Called once with the prompt tokens before the first step."""

    def propose(self, context: Sequence[int]) -> Draft:
        """Draft continuations of ``context`` (whose last token is the pending one)."""
        raise NotImplementedError

    def observe(self, obs: Observation) -> None:
        """Update proposer state from the step's outcome."""

    def acceptance(self) -> float | None:
        """The chance that each token of the last proposed draft is accepted, where the method keeps
        an estimate (None: the batch measures it per request). A shared pass's row budget reads it."""
        return None


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


PROMPT_PASS = 512
"""The most prompt tokens one pass feeds, everywhere: a pass's cost and temporaries stay bounded
whatever the prompt's length, and prompts are cut at the same places alone and in a batch, so a
backend whose bits depend on a pass's rows (llama.cpp, whose batch is this size) gives the same."""


def prefill(backend: Backend, prompt: Sequence[int]) -> list[int]:
    """Check the prompt, empty the backend and commit every prompt token but the last, which is
    the pending token fed at the root of the first pass, in passes of at most ``PROMPT_PASS``.
    Returns the prompt as a list of ints.

    Example: prompt [5, 6, 7] -> one pass over (5, 6) at positions (0, 1), both committed.
    """
    steps = prompt_chunks(backend, prompt, PROMPT_PASS)
    while True:
        try:
            next(steps)
        except StopIteration as done:
            return done.value


PROMPT_CHUNK = 64  # prompt tokens per pass of a runner that prefills between its steps (``prompt_chunks``)


def prompt_chunks(backend: Backend, prompt: Sequence[int], chunk: int | None = None) -> Iterator[Step]:
    """``prefill`` in passes of at most ``chunk`` tokens, yielding a prompt Step after each, so a batch
    running the request one step per round interleaves a long prompt with the other requests'
    passes. Returns (``yield from``'s value) the prompt as a list of ints. ``chunk`` None:
    ``PROMPT_CHUNK`` where the backend's rows get the same bits whatever the pass (``shares_passes``),
    else ``PROMPT_PASS``, the cut every other prefill makes.

    Example: prompt [5, 6, 7, 8] with chunk 2 -> passes over (5, 6) and (7,), one prompt Step each.
    """
    context = [int(t) for t in prompt]
    check_prompt(context, backend.max_length)
    backend.reset()
    if chunk is None:
        chunk = PROMPT_CHUNK if getattr(backend, "shares_passes", False) else PROMPT_PASS
    for start in range(0, len(context) - 1, chunk):
        t0 = time.perf_counter()
        end = min(start + chunk, len(context) - 1)
        backend.forward(chain_feed(context[start:end], start), logits_for=[])
        backend.commit(range(end - start))
        yield Step((), StepStats(end - start, 0, 0, time.perf_counter() - t0), prompt=True)
    return context


class Decoding:
    """One request's decoding between passes: the feed its next pass carries, and what that pass's
    logits make of it. ``decode`` drives one request alone; ``batching.Batch`` drives several through
    shared passes (one forward over every request's feed), with the same steps.

    A request first prefills its prompt (every token but the last, in chunks of at most ``limit``
    tokens per pass when the driver asks), then decodes: ``propose`` drafts, ``feed`` lays out the
    pass (the driver may have cut the draft to its budget), ``finish`` verifies, commits and gives the
    Step. ``backend`` is the request's own (a session); it is emptied here.

    Example: prompt [5, 6, 7], AR proposer: feed() -> (5, 6) at positions (0, 1), no logits read;
    finish() -> None; then propose() -> empty draft, feed() -> (7) at 2, finish() -> Step((t,), ...).
    """

    def __init__(self, backend: Backend, proposer: Proposer, prompt: Sequence[int], config: GenerationConfig,
                 generator: torch.Generator | None = None) -> None:
        self.backend = backend
        self.proposer = proposer
        self.config = config
        self.generator = generator if generator is not None else make_generator(config.seed)
        self.eos = set(config.eos_token_ids)
        self.context = [int(t) for t in prompt]
        check_prompt(self.context, backend.max_length)
        backend.reset()
        self.prompt_length = len(self.context)
        # prompt tokens committed: a backend that keeps earlier requests' prompt cells may hand over some
        restore = getattr(backend, "restore_prefix", None)
        self.prefilled = restore(self.context[:-1]) if restore is not None and len(self.context) > 1 else 0
        self.produced = 0
        self.finished: str | None = None
        self._started = False
        self._chunk = 0  # prompt tokens in the pass under way (0: a decoding pass)
        self._draft: Draft | None = None
        self.last_verdict: Verdict | None = None  # the last decoding pass's verification
        self.shaper = make_shaper(config, backend.vocab_size, proposer.forced_drafts)
        self._t0 = 0.0
        self.alone = True  # whether the next pass is this request's own (a batch says when it is not)

    @property
    def prefilling(self) -> bool:
        """True while prompt tokens other than the pending one are still to be fed."""
        return self.prefilled < self.prompt_length - 1

    @property
    def room(self) -> int:
        """Output tokens this request may still write (its budget and the context window)."""
        return min(self.config.max_new_tokens - self.produced, self.backend.max_length - len(self.context))

    def propose(self) -> Draft:
        """The proposer's draft for the next pass, cut to the room left (decoding only)."""
        if not self._started:
            self.proposer.start(tuple(self.context))
            self._started = True
        self._t0 = time.perf_counter()
        draft = self.proposer.propose(tuple(self.context))
        if draft and max(draft.depths()) > self.room - 1:
            draft = draft.pruned(self.room - 1)
        if self.shaper is not None:
            draft = self.shaper.draft(draft, self.room - 1)
        return draft

    def feed(self, draft: Draft | None = None, limit: int | None = None) -> tuple[Feed, Sequence[int] | None]:
        """(the next pass's feed, the logits rows to read: None = as verification reads them).
        Prefilling: the next prompt chunk (at most ``limit`` tokens); decoding: ``draft`` below the
        pending token (``propose``'s, or a part of it)."""
        if self.prefilling:
            n = self.prompt_length - 1 - self.prefilled
            self._chunk = max(1, min(n, PROMPT_PASS if limit is None else limit, PROMPT_PASS))
            return chain_feed(self.context[self.prefilled: self.prefilled + self._chunk], self.prefilled), []
        self._draft = draft if draft is not None else Draft.empty()
        every = range(len(self._draft) + 1) if self.proposer.reads_every_row else None
        return draft_feed(self.context[-1], len(self.context) - 1, self._draft), every

    def finish(self, logits) -> Step | None:
        """Take the pass's logits: a prompt chunk is committed (None); a decoding pass is verified,
        its accepted path committed, and its Step returned."""
        if self._chunk:
            self.backend.commit(range(self._chunk))
            self.prefilled += self._chunk
            self._chunk = 0
            store = getattr(self.backend, "store_prefix", None)
            if not self.prefilling and store is not None:
                store(self.context[: self.prefilled])
            return None
        draft = self._draft
        target = logits if self.shaper is None else self.shaper.rows(logits, draft)
        verdict = verify(draft, target, self.config.sampling, self.generator)
        self.last_verdict = verdict
        self.backend.commit([0] + [i + 1 for i in verdict.accepted])
        tokens = list(verdict.tokens)
        room = self.room
        finish = None
        cut = next((i for i, t in enumerate(tokens) if t in self.eos), None)
        if cut is not None:
            tokens, finish = tokens[: cut + 1], "eos"
        if len(tokens) >= room:
            tokens = tokens[:room]
            finish = finish or "length"
        self.context.extend(tokens)
        self.produced += len(tokens)
        if finish is None:
            if self.alone and self.proposer.live is not None:
                self.proposer.live.observe(len(draft) + 1, time.perf_counter() - self._t0)
            self.proposer.observe(Observation(draft, verdict, target, tuple(self.context)))
            if self.shaper is not None:  # after observe: the rows it reads are shaped before the step
                self.shaper.advance(tokens)
        self.finished = finish
        stats = StepStats(len(draft) + 1, len(draft), len(tokens), time.perf_counter() - self._t0)
        lps = None
        if self.config.logprobs is not None and tokens:
            rows = logits[producing_rows(verdict.accepted, len(tokens))]  # [len(tokens), V]
            lps = token_logprobs(rows, tokens, self.config.logprobs)
        return Step(tuple(tokens), stats, finish, logprobs=lps)


def make_shaper(config: GenerationConfig, vocab: int, forced_drafts: bool = True) -> Shaper | None:
    """The request's shaping of the target distribution (``shaping``), or None when it asks for none;
    the grammar's forced tokens are drafted where both the request and the proposer want them."""
    if not config.penalties and config.grammar is None:
        return None
    grammar = None if config.grammar is None else config.grammar.state()
    return Shaper(vocab, config.penalties, grammar, config.forced_drafts and forced_drafts)


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
    state = Decoding(backend, proposer, prompt, config, generator)
    while state.prefilling:
        state.finish(backend.forward(*state.feed()))
    while True:
        feed, rows = state.feed(state.propose())
        step = state.finish(backend.forward(feed, logits_for=rows))
        yield step
        if step.finish_reason is not None:
            return
