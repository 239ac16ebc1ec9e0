"""Prompt prefixes already computed, shared by the sessions of one lean model.

Requests to a chat model begin alike: the chat template, often a system prompt, sometimes a whole
conversation so far. Their key/value cells depend only on the tokens before them (each row's
products are summed alone and its attention reads the cells before it in position order), so the
cells a previous request computed for the same leading tokens are the very bits a new prefill
would compute; copying them skips that part of the prefill.

``PrefixStore`` keeps the cells of the last few prompts (at most ``entries``, each cut to
``max_tokens``), least recently used out first; a new prompt takes the longest leading run of
tokens it shares with any of them (at least ``least`` tokens, below that copying is not worth it).
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from typing import Sequence

LEAST = 8  # the fewest shared tokens worth copying


def common_length(a: Sequence[int], b: Sequence[int]) -> int:
    """How many leading tokens ``a`` and ``b`` share.

    >>> common_length((1, 2, 3, 4), (1, 2, 5))
    2
    """
    n = min(len(a), len(b))
    i = 0
    while i < n and a[i] == b[i]:
        i += 1
    return i


class PrefixStore:
    """Cells of recent prompt prefixes: per entry its tokens and the cells ``cache.head(n)`` copied
    (the cache's own layout; their positions those of a plain chain from 0)."""

    def __init__(self, entries: int = 8, max_tokens: int = 128, least: int = LEAST) -> None:
        self.entries, self.max_tokens, self.least = entries, max_tokens, least
        self._store: "OrderedDict[tuple[int, ...], object]" = OrderedDict()
        self._lock = threading.Lock()  # sessions of one model may run on several threads

    def __len__(self) -> int:
        return len(self._store)

    def clear(self) -> None:
        """Forget every stored prefix."""
        with self._lock:
            self._store.clear()

    def restore(self, tokens: Sequence[int], cache) -> int:
        """Copy the cells of the longest stored prefix of ``tokens`` into the empty ``cache``
        (``lean.LeanCache``); returns how many (0 when none is long enough)."""
        tokens = tuple(tokens)
        with self._lock:
            best, n = None, 0
            for key in self._store:
                m = common_length(key, tokens)
                if m > n:
                    best, n = key, m
            if best is None or n < self.least:
                return 0
            self._store.move_to_end(best)
            cells = self._store[best]
        cache.load_head(cells, n)
        return n

    def put(self, tokens: Sequence[int], cache) -> None:
        """Keep the cells of ``tokens`` (the first cells of ``cache``, a plain chain from position 0)."""
        n = min(len(tokens), self.max_tokens, cache.length)
        if n < self.least:
            return
        key = tuple(tokens[:n])
        with self._lock:
            if any(common_length(other, key) == n for other in self._store):
                return  # a stored prompt already holds these cells
            self._store[key] = cache.head(n)
            while len(self._store) > self.entries:
                self._store.popitem(last=False)
