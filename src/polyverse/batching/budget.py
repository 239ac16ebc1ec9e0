"""The rows of a shared pass as a budget: how deep each request's draft goes when several requests
decode together.

A pass's cost grows with the rows it feeds (``costs.CostCurve``), slowly up to the point where the
products stop streaming each weight once for all rows and then about linearly. Every decoding request
writes one token per pass for its root row; a draft level d (its nodes at depth d) adds the chance
that the draft's first d tokens are all accepted, about alpha^d for a request whose draft tokens are
each accepted with chance alpha. So the pass that writes the most tokens per second keeps the levels
with the most expected tokens per row, and stops where one more row costs more time than its tokens
are worth: with few requests drafts run long, with many they shrink, down to none.
"""

from __future__ import annotations

import heapq
from typing import Sequence

from ..costs import CostCurve
from ..draft import Draft


class Acceptance:
    """A request's chance that a draft token is accepted: decayed counts of accepted draft tokens
    (hits) and of drafts cut short (misses), with a Beta(1, 1) prior, so it follows the text.

    Example: a fresh estimate is 0.5; after a draft of 4 accepted whole (decay 0.9) it is
    (0.9 + 4) / (0.9 + 4 + 0.9) = 0.84.
    """

    def __init__(self, decay: float = 0.9, hits: float = 1.0, misses: float = 1.0) -> None:
        self.decay, self.hits, self.misses = decay, hits, misses

    @property
    def alpha(self) -> float:
        return self.hits / (self.hits + self.misses)

    def update(self, accepted: int, depth: int) -> None:
        """A pass accepted ``accepted`` draft tokens of a draft ``depth`` levels deep."""
        if depth <= 0:
            return
        self.hits = self.hits * self.decay + accepted
        self.misses = self.misses * self.decay + (1 if accepted < depth else 0)


def level_widths(draft: Draft) -> list[int]:
    """Nodes at each depth 1, 2, ... of a draft.

    >>> level_widths(Draft((1, 2, 3, 4), (-1, -1, 0, 2)))
    [2, 1, 1]
    """
    widths: list[int] = []
    for d in draft.depths():
        if d > len(widths):
            widths.extend([0] * (d - len(widths)))
        widths[d - 1] += 1
    return widths


def allocate(drafts: Sequence[Draft], alphas: Sequence[float], base_rows: int, curve: CostCurve,
             max_rows: int | None = None, base_tokens: float | None = None, min_gain: float = 0.0) -> list[int]:
    """The depth each draft is cut to (``Draft.pruned``) so that the pass writes the most expected
    tokens per second: sum over requests of (1 + alpha + ... + alpha^depth) / c(rows).

    ``base_rows``: the rows the pass carries whatever the drafts (one root row per decoding request,
    prompt chunks, drafts that are not cut); ``base_tokens``: the tokens the pass is expected to write
    whatever the cut (default: one per draft, its root's); ``max_rows``: the most rows of the pass. Levels are
    added in order of expected tokens per row, each request's own levels in order, and the best
    prefix of that order wins, if it beats drafting nothing by the share ``min_gain`` (else nothing
    is drafted: a margin for estimates the caller does not trust, e.g. costs it cannot see).

    Example: a flat curve c(q) = 1 up to 16 rows: two chains of 4 with alphas 0.9 and 0.1 and 2 base
    rows -> [4, 4] (every row is free); a curve c(q) = q: -> [0, 0] (a draft row costs a whole pass
    and writes less than one token).
    """
    depths = [0] * len(drafts)
    if not drafts:
        return depths
    widths = [level_widths(d) for d in drafts]
    gains = [1.0] * len(drafts)  # alpha^depth of the next level to add, per request
    heap: list[tuple[float, int]] = []  # (-expected tokens per row of the request's next level, request)

    def push(r: int) -> None:
        d = depths[r]
        if d < len(widths[r]) and widths[r][d] > 0:
            heapq.heappush(heap, (-(gains[r] * alphas[r]) / widths[r][d], r))

    for r in range(len(drafts)):
        push(r)
    rows = base_rows
    expected = 0.0  # draft tokens expected on top of the roots' tokens (a constant: left out)
    roots = float(len(drafts)) if base_tokens is None else float(base_tokens)
    plain_rate = (roots + expected) / curve(max(rows, 1))
    best_rate, best = plain_rate, list(depths)
    while heap:
        _, r = heapq.heappop(heap)
        w = widths[r][depths[r]]
        if max_rows is not None and rows + w > max_rows:
            continue  # a narrower level of another request may still fit
        gains[r] *= alphas[r]
        expected += gains[r]
        rows += w
        depths[r] += 1
        push(r)
        rate = (roots + expected) / curve(rows)
        if rate > best_rate:
            best_rate, best = rate, list(depths)
    return best if best_rate >= plain_rate * (1.0 + min_gain) else [0] * len(drafts)
