"""An incremental index of the n-grams of a token sequence, for lookup-based drafting."""

from __future__ import annotations

from collections import defaultdict
from typing import Sequence


class NgramIndex:
    """Where each n-gram (n = 1 .. max_n) ends in a growing sequence.

    Example: for [1, 2, 3, 1, 2] the 2-gram (1, 2) ends at 1 and 4, so after the suffix (1, 2)
    the earlier match predicts the continuation [3, 1, 2].
    """

    def __init__(self, max_n: int) -> None:
        self.max_n = max_n
        self.ends: dict[tuple[int, ...], list[int]] = defaultdict(list)
        self.tokens: list[int] = []

    def extend(self, context: Sequence[int]) -> None:
        """Index the tokens of ``context`` beyond those already seen (context only grows)."""
        start = len(self.tokens)
        self.tokens.extend(int(t) for t in context[start:])
        toks = self.tokens
        for end in range(start, len(toks)):
            for n in range(1, min(self.max_n, end + 1) + 1):
                self.ends[tuple(toks[end - n + 1 : end + 1])].append(end)

    def continuations(self, k: int, limit: int, min_n: int = 1) -> list[list[int]]:
        """Up to ``limit`` distinct continuations (at most k tokens) of the current suffix.

        Longer matching n-grams first, then the most recent match first; the suffix itself is
        not a match of itself. A match close to the end overlaps its own continuation and is
        copied on through it, as in LZ77: after [7, 8, 7, 8] the match of (7, 8) ending at 1
        continues [7, 8, 7, 8, ...] to k tokens, not just the 2 tokens that follow it.
        """
        toks = self.tokens
        last = len(toks) - 1
        found: list[list[int]] = []
        seen: set[tuple[int, ...]] = set()
        for n in range(min(self.max_n, len(toks)), min_n - 1, -1):
            for end in reversed(self.ends.get(tuple(toks[last - n + 1 :]), ())):
                if end >= last:
                    continue
                cont = _copy(toks, end + 1, k)
                key = tuple(cont)
                if cont and key not in seen:
                    seen.add(key)
                    found.append(cont)
                    if len(found) >= limit:
                        return found
        return found


def _copy(toks: list[int], start: int, k: int) -> list[int]:
    """k tokens copied from ``toks[start:]`` onward, through the copy itself past the end."""
    period = len(toks) - start  # distance between the copied text and the copy
    out = toks[start : start + k]
    while 0 < period and len(out) < k:
        out.append(out[len(out) - period])
    return out
