"""Pure builders: from a draft to the tokens, positions and visibility of one forward pass.

The visibility of a pass is described by branches: every fed token sees the committed context
of its sequence, itself, and its ancestors through ``parents``. Sequences are llama.cpp's idea:
every KV cell belongs to a set of sequence ids, and a fed token sees the cells of its own
sequence (its first id). Plain methods use sequence 0 only, where every token sees the whole
context; the Multiverse engine gives each path its own sequence. Each backend turns this into
its own mechanism (a 4D additive mask for transformers; sequence ids for llama.cpp).
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
    # per token: the sequence ids its KV cell joins; the first is the one whose context it sees.
    # None = every token in sequence 0.
    seqs: tuple[tuple[int, ...], ...] | None = None

    def __post_init__(self) -> None:
        if not len(self.tokens) == len(self.positions) == len(self.parents):
            raise ValueError("feed tokens, positions and parents differ in length")
        for i, p in enumerate(self.parents):
            if not -1 <= p < i:
                raise ValueError(f"feed node {i} has parent {p}: parents must come first")
        if self.seqs is not None:
            if len(self.seqs) != len(self.tokens):
                raise ValueError(f"feed has {len(self.tokens)} tokens but {len(self.seqs)} sequence sets")
            if any(not s or min(s) < 0 for s in self.seqs):
                raise ValueError("every fed token needs at least one sequence id >= 0")

    def own_seqs(self) -> tuple[int, ...]:
        """The sequence whose context each token sees (its first id; 0 when the feed has none)."""
        return (0,) * len(self.tokens) if self.seqs is None else tuple(s[0] for s in self.seqs)

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
    """True when the feed is an ordinary causal continuation of a context of length ``past``
    (sequence 0 only; the caller checks that every committed cell is in sequence 0 too)."""
    n = len(feed)
    return (
        feed.parents == tuple(range(-1, n - 1))
        and feed.positions == tuple(range(past, past + n))
        and (feed.seqs is None or all(s == (0,) for s in feed.seqs))
    )


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


def additive_mask(
    parents: "tuple[int, ...]",
    past: int,
    dtype: torch.dtype = torch.float32,
    context: torch.Tensor | None = None,
) -> torch.Tensor:
    """[1, 1, q, past + q] additive mask: 0 where visible, the dtype's minimum where hidden.

    Every token sees its own branch of the feed and the committed entries that ``context``
    ([q, past] bool) marks visible to it; all ``past`` entries when ``context`` is None.
    """
    q = len(parents)
    vis = visible(parents, past, context)  # [q, kv]
    mask = torch.zeros(q, past + q, dtype=dtype)  # [q, kv]
    mask.masked_fill_(~vis, torch.finfo(dtype).min)
    return mask[None, None]  # [1, 1, q, kv]


def visible(parents: "tuple[int, ...]", past: int, context: torch.Tensor | None = None) -> torch.Tensor:
    """[q, past + q] bool: what each fed token sees, the cells ``additive_mask`` leaves at 0.

    >>> visible((-1, 0, 0), 1).int().tolist()
    [[1, 1, 0, 0], [1, 1, 1, 0], [1, 1, 0, 1]]
    """
    q = len(parents)
    vis = torch.ones(q, past + q, dtype=torch.bool)  # [q, kv]
    if context is not None:
        if tuple(context.shape) != (q, past):
            raise ValueError(f"context visibility has shape {tuple(context.shape)}, expected {(q, past)}")
        vis[:, :past] = context
    vis[:, past:] = visibility(parents)
    return vis
