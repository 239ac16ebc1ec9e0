"""Continuous batching: the requests running at one time share each forward pass.

Requests join and leave between passes. Each round, every request that decodes through the one
decode loop (a ``loop.Decoding``) puts its rows into one shared pass (``backends.base.forward_many``):
a request still reading its prompt puts a chunk of it (at most ``prefill_chunk`` prompt tokens per
pass over all such requests, shortest prompt first: ``prefill``; so a long prompt stalls no one), a decoding request its
pending token and its draft, cut to the pass's row budget (``budget.allocate``) when it decodes
greedily. Requests of methods that schedule their own passes (a ``Runner``, e.g. Multiverse, whose
paths already share its passes) run one step each per round, in their own passes.

What each request gets does not depend on its batch mates: the backend gives every row the bits a
pass of its own would, greedy verification accepts the same tokens whatever the draft was cut to,
and a sampling request's draft is never cut (its random draws, from its own generator, then follow
its own history alone).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Hashable, Iterator

from ..backends.base import forward_many
from ..costs import CostCurve
from ..loop import Decoding, Step
from .budget import Acceptance, allocate
from .prefill import prompt_shares


@dataclass(frozen=True)
class BatchConfig:
    """max_rows: the most rows a shared pass gives drafts and prompt chunks beyond every decoding
    request's own row; prefill_chunk: prompt tokens per pass over all requests reading their prompts
    (0: whole prompts at once); budget: cut greedy drafts to the pass's row budget (False: every
    draft as proposed)."""

    max_rows: int = 64
    prefill_chunk: int = 64
    budget: bool = True

    def __post_init__(self) -> None:
        if self.max_rows < 1:
            raise ValueError(f"max_rows must be at least 1, got {self.max_rows}")
        if self.prefill_chunk < 0:
            raise ValueError(f"prefill_chunk must be 0 (whole prompts) or more, got {self.prefill_chunk}")


@dataclass(frozen=True)
class PassStats:
    """One shared pass: requests with rows in it, rows fed (prompt chunks, roots and drafts), draft
    tokens fed and accepted, and its wall time (proposing and verifying included)."""

    requests: int
    rows: int
    prompt_rows: int
    drafted: int
    accepted: int
    seconds: float


@dataclass(frozen=True)
class Event:
    """What a round did for one request: a Step; or ``error`` (the request is dropped); or neither
    when a runner ended without a last Step."""

    key: Hashable
    step: Step | None = None
    error: BaseException | None = None


@dataclass(eq=False)
class _Shared:
    decoding: Decoding
    acceptance: Acceptance
    # greedy drafts as proposed (before the budget cut), judged once the output has grown past them:
    # (context length when proposed, the draft's root-to-leaf token paths)
    judged: list = field(default_factory=list)


def paths(draft) -> list[tuple[int, ...]]:
    """The root-to-leaf token paths of a draft tree.

    >>> from polyverse.draft import Draft
    >>> paths(Draft.tree([[1, 2], [1, 3], [4]]))
    [(1, 2), (1, 3), (4,)]
    """
    kids: dict[int, list[int]] = {}
    for i, p in enumerate(draft.parents):
        kids.setdefault(p, []).append(i)
    out: list[tuple[int, ...]] = []

    def walk(node: int, prefix: tuple[int, ...]) -> None:
        here = prefix + (draft.tokens[node],)
        if node not in kids:
            out.append(here)
        for c in kids.get(node, []):
            walk(c, here)

    for root in kids.get(-1, []):
        walk(root, ())
    return out


def matched(path: tuple[int, ...], actual: list[int]) -> int:
    """Leading tokens of ``path`` that the output ``actual`` (from the same point) repeats.

    >>> matched((5, 6, 7), [5, 6, 9, 1])
    2
    """
    n = 0
    while n < len(path) and n < len(actual) and path[n] == actual[n]:
        n += 1
    return n


class Batch:
    """The running requests and the passes they share. ``curve``: the backend's pass costs (the row
    budget needs it; None = drafts are never cut)."""

    def __init__(self, curve: CostCurve | None = None, config: BatchConfig | None = None) -> None:
        self.curve = curve
        self.config = config or BatchConfig()
        self._shared: dict[Hashable, _Shared] = {}
        self._own: dict[Hashable, Iterator[Step]] = {}
        # per method: the acceptance of every request's drafts so far, a new request's starting estimate
        self._method_acceptance: dict[type, Acceptance] = {}

    def __len__(self) -> int:
        return len(self._shared) + len(self._own)

    def __contains__(self, key: Hashable) -> bool:
        return key in self._shared or key in self._own

    def add(self, key: Hashable, decoding: Decoding) -> None:
        """A request that decodes through the shared passes, from the next round on."""
        self._check_new(key)
        seen = self._method_acceptance.setdefault(type(decoding.proposer), Acceptance(decay=0.99))
        a = seen.alpha
        self._shared[key] = _Shared(decoding, Acceptance(hits=2 * a, misses=2 * (1 - a)))

    def add_steps(self, key: Hashable, steps: Iterator[Step]) -> None:
        """A request that runs its own passes (a Runner's steps): one step per round."""
        self._check_new(key)
        self._own[key] = steps

    def _check_new(self, key: Hashable) -> None:
        if key in self:
            raise ValueError(f"request {key!r} is already in the batch")

    def remove(self, key: Hashable) -> None:
        """Drop a request (finished, failed or cancelled): its cache goes with it, now."""
        self._shared.pop(key, None)
        steps = self._own.pop(key, None)
        if steps is not None and hasattr(steps, "close"):
            steps.close()

    def round(self) -> tuple[list[Event], PassStats | None]:
        """One step of every request: the shared pass, then one step of each own-pass request.
        Finished and failed requests leave the batch. Returns the events and the shared pass's stats."""
        events, stats = self._shared_pass()
        for key, steps in list(self._own.items()):
            try:
                step = next(steps, None)
            except Exception as exc:  # noqa: BLE001 - handed to the request's owner
                events.append(Event(key, error=exc))
                self.remove(key)
                continue
            if step is not None and step.prompt:  # a prompt chunk: nothing to hand over yet
                continue
            events.append(Event(key, step))
            if step is None or step.finish_reason is not None:
                self.remove(key)
        return events, stats

    def _shared_pass(self) -> tuple[list[Event], PassStats | None]:
        if not self._shared:
            return [], None
        t0 = time.perf_counter()
        events: list[Event] = []
        cfg = self.config
        parts, owners, drafts = [], [], []
        # prompt chunks: the pass's prompt budget shared shortest prompt first (``prefill``)
        prefilling = [(key, s) for key, s in self._shared.items() if s.decoding.prefilling]
        # a backend that runs a pass per request feeds prompts in its own fixed pieces (``loop.PROMPT_PASS``):
        # its passes are not shared, and a prompt cut elsewhere may not give the same bits there (llama.cpp)
        chunked = [(key, s) for key, s in prefilling if getattr(s.decoding.backend, "shares_passes", False)]
        shares: dict = {key: None for key, _ in prefilling}
        if cfg.prefill_chunk:
            left = [s.decoding.prompt_length - 1 - s.decoding.prefilled for _, s in chunked]
            shares.update(zip([key for key, _ in chunked], prompt_shares(left, cfg.prefill_chunk)))
        prompt_rows = 0
        for key, s in prefilling:
            if shares[key] == 0:
                continue
            try:
                feed, rows = s.decoding.feed(limit=shares[key])
            except Exception as exc:  # noqa: BLE001
                events.append(Event(key, error=exc))
                self.remove(key)
                continue
            parts.append((s.decoding.backend, feed, rows))
            owners.append(key)
            prompt_rows += len(feed)
        # decoding requests: their drafts, cut to the budget where they decode greedily
        proposed: list[tuple[Hashable, _Shared, object]] = []
        for key, s in list(self._shared.items()):
            if s.decoding.prefilling:
                continue
            try:
                proposed.append((key, s, s.decoding.propose()))
            except Exception as exc:  # noqa: BLE001
                events.append(Event(key, error=exc))
                self.remove(key)
        cut = [i for i, (_, s, _) in enumerate(proposed) if s.decoding.config.sampling.greedy]
        depths = {}
        # a request alone in its pass drafts as it would alone (its method weighs its own rows); so does
        # every request on a backend that runs a pass per request (the budget prices rows of one pass)
        shared = (len(proposed) > 1 or prompt_rows > 0) and all(
            getattr(s.decoding.backend, "shares_passes", False) for _, s, _ in proposed)
        if cfg.budget and self.curve is not None and cut and shared:
            cutting = set(cut)
            fixed = [i for i in range(len(proposed)) if i not in cutting]
            base_rows = prompt_rows + len(proposed) + sum(len(proposed[i][2]) for i in fixed)
            alphas = [self._alpha(proposed[i][1]) for i in cut]
            got = allocate([proposed[i][2] for i in cut], alphas, base_rows, self.curve,
                           max_rows=base_rows + cfg.max_rows, base_tokens=len(proposed))
            depths = dict(zip(cut, got))
        for i, (key, s, draft) in enumerate(proposed):
            if s.decoding.config.sampling.greedy and draft:
                s.judged.append((len(s.decoding.context), paths(draft)))
            if i in depths and draft:
                draft = draft.pruned(depths[i])
            elif len(draft) > cfg.max_rows:
                draft = draft.pruned(cfg.max_rows)
            drafts.append(draft)
            parts.append((s.decoding.backend, *s.decoding.feed(draft)))
            owners.append(key)
        if not parts:
            return events, None
        try:
            logits = forward_many(parts)
        except Exception as exc:  # noqa: BLE001 - every request of the pass fails with it
            for key in owners:
                events.append(Event(key, error=exc))
                self.remove(key)
            return events, None
        drafted = accepted = 0
        for key, out in zip(owners, logits):
            s = self._shared[key]
            s.decoding.alone = len(owners) == 1  # a shared pass's time is not this request's
            try:
                step = s.decoding.finish(out)
            except Exception as exc:  # noqa: BLE001
                events.append(Event(key, error=exc))
                self.remove(key)
                continue
            if step is None:  # a prompt chunk
                continue
            verdict = s.decoding.last_verdict
            self._judge(s, step.finish_reason is not None)
            drafted += step.stats.drafted
            accepted += len(verdict.accepted)
            events.append(Event(key, step))
            if step.finish_reason is not None:
                self.remove(key)
        rows = sum(len(p[1]) for p in parts)
        return events, PassStats(len(parts), rows, prompt_rows, drafted, accepted, time.perf_counter() - t0)

    def _judge(self, s: _Shared, finished: bool) -> None:
        """Learn the acceptance of the request's drafts as proposed, cut or not: greedy output is the
        same whatever was fed, so a draft's accepted length is how far the output repeats it (known
        once the output has grown past it, or at the end). Cut drafts still teach, so a request whose
        drafts were cut under load drafts again when the rows come back, if its drafts are good."""
        context = s.decoding.context
        keep = []
        for start, ways in s.judged:
            depth = max(len(w) for w in ways)
            actual = context[start:]
            if len(actual) > depth or finished:
                got = max(matched(w, actual) for w in ways)
                if got < len(actual) or got == depth:  # a shorter match at the very end may be the budget
                    s.acceptance.update(got, depth)
                    self._method_acceptance[type(s.decoding.proposer)].update(got, depth)
            else:
                keep.append((start, ways))
        s.judged = keep

    @staticmethod
    def _alpha(s: _Shared) -> float:
        """The request's chance per draft token: what its drafts in this batch measured (from the
        estimate of its method's requests so far), capped by its proposer's own estimate where it
        keeps one (``auto``'s, per match length: a short match predicts worse)."""
        own = s.decoding.proposer.acceptance()
        return s.acceptance.alpha if own is None else min(own, s.acceptance.alpha)
