"""Pure builders: from a draft to the tokens, positions and visibility of one forward pass.

The visibility of a pass is described by branches: every fed token sees the whole committed
context, itself, and its ancestors through ``parents``. Each backend turns that into its own
mechanism (a 4D additive mask for transformers; sequence ids for llama.cpp).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .draft import Draft


@dataclass(frozen=True)
class Feed:
    """The tokens of one forward pass, a forest below the committed context.

    Example: pending token x at position 10 with the draft tree {a, b -> c} gives
    tokens (x, a, b, c), parents (-1, 0, 0, 2), positions (10, 11, 11, 12).
    """

    tokens: tuple[int, ...]
    positions: tuple[int, ...]
    parents: tuple[int, ...]  # index into this feed, -1 = hangs directly below the context

    def __post_init__(self) -> None:
        if not len(self.tokens) == len(self.positions) == len(self.parents):
            raise ValueError("feed tokens, positions and parents differ in length")
        for i, p in enumerate(self.parents):
            if not -1 <= p < i:
                raise ValueError(f"feed node {i} has parent {p}: parents must come first")

    def __len__(self) -> int:
        return len(self.tokens)


def chain_feed(tokens: "list[int] | tuple[int, ...]", start: int) -> Feed:
    """A plain causal run of tokens at positions start, start+1, ...

    >>> chain_feed([5, 6, 7], 3)
    Feed(tokens=(5, 6, 7), positions=(3, 4, 5), parents=(-1, 0, 1))
    """
    n = len(tokens)
    return Feed(tuple(int(t) for t in tokens), tuple(range(start, start + n)), tuple(range(-1, n - 1)))


def draft_feed(root_token: int, root_position: int, draft: Draft) -> Feed:
    """The pending token followed by the draft tree; node i of the draft is feed index i+1.

    >>> draft_feed(9, 4, Draft((1, 2, 3), (-1, -1, 0)))
    Feed(tokens=(9, 1, 2, 3), positions=(4, 5, 5, 6), parents=(-1, 0, 0, 1))
    """
    depths = draft.depths()
    return Feed(
        (int(root_token),) + draft.tokens,
        (root_position,) + tuple(root_position + d for d in depths),
        (-1,) + tuple(p + 1 for p in draft.parents),
    )


def is_plain_chain(feed: Feed, past: int) -> bool:
    """True when the feed is an ordinary causal continuation of a context of length ``past``."""
    n = len(feed)
    return feed.parents == tuple(range(-1, n - 1)) and feed.positions == tuple(range(past, past + n))


def visibility(parents: "tuple[int, ...]") -> torch.Tensor:
    """[q, q] bool: entry (i, j) is True when token j is token i or one of its ancestors.

    >>> visibility((-1, 0, 0)).int().tolist()
    [[1, 0, 0], [1, 1, 0], [1, 0, 1]]
    """
    q = len(parents)
    vis = torch.zeros(q, q, dtype=torch.bool)  # [q, q]
    for i, p in enumerate(parents):
        if p >= 0:
            vis[i] = vis[p]
        vis[i, i] = True
    return vis


def additive_mask(parents: "tuple[int, ...]", past: int, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """[1, 1, q, past + q] additive mask: 0 where visible, the dtype's minimum where hidden.

    Every token sees all ``past`` committed entries and its own branch of the feed.
    """
    q = len(parents)
    vis = torch.ones(q, past + q, dtype=torch.bool)  # [q, kv]
    vis[:, past:] = visibility(parents)
    mask = torch.zeros(q, past + q, dtype=dtype)  # [q, kv]
    mask.masked_fill_(~vis, torch.finfo(dtype).min)
    return mask[None, None]  # [1, 1, q, kv]
