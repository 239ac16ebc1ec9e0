"""Results that finish in any order, written in the order of their inputs.

Decoding many prompts together finishes short answers first; writing them as they finish would
make the output's order depend on the batch (and on the machine). Held back until every earlier
one is out, each output line sits where its input line sits: the same file from one process or
many, and a resumed run appends after the last line written.
"""

from __future__ import annotations

from typing import Iterable, Iterator, TypeVar

T = TypeVar("T")


def in_order(results: Iterable[tuple[int, T]]) -> Iterator[tuple[int, T]]:
    """(index, value) pairs arriving in any order, yielded as 0, 1, 2, ... as soon as each one's
    predecessors have been.

    >>> list(in_order([(1, "b"), (0, "a"), (3, "d"), (2, "c")]))
    [(0, 'a'), (1, 'b'), (2, 'c'), (3, 'd')]
    """
    waiting: dict[int, T] = {}
    following = 0
    for i, value in results:
        if i < following or i in waiting:
            raise ValueError(f"result {i} arrived twice")
        waiting[i] = value
        while following in waiting:
            yield following, waiting.pop(following)
            following += 1
    if waiting:
        raise ValueError(f"results {sorted(waiting)} arrived without result {following}")
