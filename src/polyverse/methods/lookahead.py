"""`lookahead`: lookahead decoding (Fu et al. 2024) with a 2D Jacobi window and an n-gram pool.

One pass carries two branches below the pending token:
- the lookahead branch: (N-1) levels of W guessed tokens. Level 0 is a causal chain; level l
  column i hangs below level l-1 column i. So level l column i sees level-0 columns 0..i and
  column i of levels 1..l, at position p+1+i+l: a tree, so the shared layout handles it.
- the verification branch: up to G n-grams from the pool whose first token is the pending one,
  merged into the same tree (shared prefixes share nodes).
After the pass, column i yields the n-gram (level 0..N-2 of column i, the argmax at its last
level), which enters the pool; the levels shift up and the argmaxes become the new last level.
Accepted tokens may come from either branch; verification is the shared lossless one.
"""

from __future__ import annotations

from collections import OrderedDict, defaultdict
from typing import Sequence

import torch

from ..draft import Draft
from ..logits import guesses
from ..loop import Observation, Proposer
from ..options import method_options, option
from ..registry import registry


@method_options("lookahead")
class LookaheadConfig:
    window: int = option(5, "window W", lo=1, hi=64, flag="--window", label="window W")  # columns of the window
    ngram: int = option(3, "n-gram size N", lo=2, hi=16, flag="--ngram", label="ngram N")  # the window has N-1 levels
    guesses: int = option(5, "n-grams verified per pass G", lo=0, hi=64, flag="--guesses", label="guesses G")
    prompt_pool: bool = option(True, "seed the n-gram pool with the prompt's n-grams")
    seed: int = option(0, "seed of the window's initial guesses", lo=0, hi=2**63 - 1)


def window_draft(levels: list[list[int]]) -> Draft:
    """The lookahead branch as a tree; node of level l, column i is l * W + i.

    Example: W = 2, levels [[a, b], [c, d]] -> tokens (a, b, c, d), parents (-1, 0, 0, 1).
    """
    w = len(levels[0])
    tokens: list[int] = []
    parents: list[int] = []
    for l, level in enumerate(levels):
        for i, t in enumerate(level):
            tokens.append(int(t))
            parents.append((i - 1) if l == 0 else (l - 1) * w + i)
    return Draft(tuple(tokens), tuple(parents))


class NgramPool:
    """n-gram tails keyed by their first token, most recent last, at most ``cap`` per key."""

    def __init__(self, cap: int) -> None:
        self.cap = cap
        self.table: dict[int, OrderedDict] = defaultdict(OrderedDict)

    def add(self, first: int, tail: tuple[int, ...]) -> None:
        entry = self.table[first]
        entry[tail] = None
        entry.move_to_end(tail)
        while len(entry) > self.cap:
            entry.popitem(last=False)

    def get(self, first: int, limit: int) -> list[tuple[int, ...]]:
        entry = self.table.get(first)
        return list(reversed(entry))[:limit] if entry else []


class LookaheadProposer(Proposer):
    def __init__(self, config: LookaheadConfig) -> None:
        self.cfg = config
        self.levels: list[list[int]] = []
        self.pool = NgramPool(max(config.guesses, 1))
        self.seen = 0  # context tokens whose n-grams are in the pool
        self._window = Draft.empty()  # the lookahead branch of the last draft

    def start(self, context: Sequence[int]) -> None:
        w, n = self.cfg.window, self.cfg.ngram
        g = torch.Generator().manual_seed(self.cfg.seed)
        picks = torch.randint(0, len(context), ((n - 1) * w,), generator=g).tolist()
        self.levels = [[int(context[j]) for j in picks[l * w : (l + 1) * w]] for l in range(n - 1)]
        self.pool = NgramPool(max(self.cfg.guesses, 1))
        self.seen = 0
        if self.cfg.prompt_pool:
            self._pool_text(context)

    def _pool_text(self, context: Sequence[int]) -> None:
        n = self.cfg.ngram
        for start in range(max(self.seen - n + 1, 0), len(context) - n + 1):
            self.pool.add(int(context[start]), tuple(int(t) for t in context[start + 1 : start + n]))
        self.seen = len(context)

    def propose(self, context: Sequence[int]) -> Draft:
        guesses = self.pool.get(int(context[-1]), self.cfg.guesses) if self.cfg.guesses else []
        self._window = window_draft(self.levels)
        return Draft.tree(guesses, base=self._window)

    def observe(self, obs: Observation) -> None:
        if self.cfg.prompt_pool:
            self._pool_text(obs.context)
        win = self._window
        if obs.draft.parents[: len(win)] != win.parents or obs.draft.tokens[: len(win)] != win.tokens:
            return  # the loop cut the draft (near the length budget, or a grammar): no window update this step
        w, n = self.cfg.window, self.cfg.ngram
        last = (n - 2) * w  # first node of the last level
        out = guesses(obs.logits, list(range(last + 1, last + 1 + w)))  # [W]
        for i in range(w):
            column = [self.levels[l][i] for l in range(n - 1)] + [out[i]]
            self.pool.add(column[0], tuple(column[1:]))
        self.levels = self.levels[1:] + [out]


def make(config: LookaheadConfig, ctx) -> LookaheadProposer:
    return LookaheadProposer(config)


registry.register("lookahead", LookaheadConfig, make,
                  "lookahead decoding: 2D Jacobi window + n-gram pool verified in the same pass")
