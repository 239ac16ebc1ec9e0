"""Drafts: candidate tokens as data, a tree hanging below the pending token.

A chain is a tree with one branch. Node i holds token ``tokens[i]`` and hangs below node
``parents[i]`` (``-1`` = below the pending token, the root of every draft); parents come first.

Example: the chain "a b c" is ``Draft((a, b, c), (-1, 0, 1))``; two alternatives for the next
token, the first followed by "d", are ``Draft((a, b, d), (-1, -1, 0))``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class Draft:
    tokens: tuple[int, ...]
    parents: tuple[int, ...]
    # [n, V] draft distribution q each token was drawn from; None = deterministic proposer
    probs: torch.Tensor | None = None

    def __post_init__(self) -> None:
        if len(self.tokens) != len(self.parents):
            raise ValueError(f"draft has {len(self.tokens)} tokens but {len(self.parents)} parents")
        for i, p in enumerate(self.parents):
            if not -1 <= p < i:
                raise ValueError(f"draft node {i} has parent {p}: parents must come first")
        if self.probs is not None and self.probs.shape[0] != len(self.tokens):
            raise ValueError(f"draft probs has {self.probs.shape[0]} rows for {len(self.tokens)} tokens")

    def __len__(self) -> int:
        return len(self.tokens)

    @classmethod
    def empty(cls) -> "Draft":
        return cls((), ())

    @classmethod
    def chain(cls, tokens: "list[int] | tuple[int, ...]", probs: torch.Tensor | None = None) -> "Draft":
        tokens = tuple(int(t) for t in tokens)
        return cls(tokens, tuple(range(-1, len(tokens) - 1)), probs)

    @classmethod
    def tree(cls, sequences, base: "Draft | None" = None) -> "Draft":
        """Merge candidate continuations into a trie: shared prefixes become shared nodes.

        With ``base``, the sequences are inserted below the root of that deterministic draft,
        reusing its nodes wherever (parent, token) already exists.

        Example: [[1, 2, 3], [1, 2, 4], [5]] -> tokens (1, 2, 3, 4, 5), parents (-1, 0, 1, 1, -1).
        """
        tokens: list[int] = list(base.tokens) if base is not None else []
        parents: list[int] = list(base.parents) if base is not None else []
        index: dict[tuple[int, int], int] = {}
        for i, (t, p) in enumerate(zip(tokens, parents)):
            index.setdefault((p, t), i)
        for seq in sequences:
            node = -1
            for t in seq:
                key = (node, int(t))
                if key not in index:
                    index[key] = len(tokens)
                    tokens.append(int(t))
                    parents.append(node)
                node = index[key]
        return cls(tuple(tokens), tuple(parents))

    def depths(self) -> tuple[int, ...]:
        """Depth of each node below the pending token (children of the root have depth 1)."""
        out: list[int] = []
        for p in self.parents:
            out.append(1 if p < 0 else out[p] + 1)
        return tuple(out)

    def children(self, node: int) -> list[int]:
        """Nodes hanging directly below ``node`` (-1 = the root), in draft order."""
        return [i for i, p in enumerate(self.parents) if p == node]

    def paths(self) -> tuple[tuple[int, ...], ...]:
        """Each node's path: the nodes from the root's child down to it.

        Example: parents (-1, 0, -1) -> ((0,), (0, 1), (2,)).
        """
        out: list[tuple[int, ...]] = []
        for i, p in enumerate(self.parents):
            out.append((out[p] if p >= 0 else ()) + (i,))
        return tuple(out)

    def node_map(self, fed: "Draft") -> dict[int, int]:
        """Each node of this draft still in ``fed`` (the draft as the loop fed it, cut or grown) -> its
        index there, matched by the tokens on its path from the root (a tree has one node per path).

        Example: (5, 6, 7) as a chain, fed (5, 9, 6) with parents (-1, -1, 0) -> {0: 0, 1: 2}.
        """
        def keys(draft: "Draft") -> list[tuple[int, ...]]:
            return [tuple(draft.tokens[j] for j in path) for path in draft.paths()]

        where = {key: i for i, key in enumerate(keys(fed))}
        return {i: where[key] for i, key in enumerate(keys(self)) if key in where}

    def pruned(self, max_depth: int) -> "Draft":
        """The draft without nodes deeper than ``max_depth`` (parents come first, so indices stay valid)."""
        depths = self.depths()
        return self.only([i for i, d in enumerate(depths) if d <= max_depth])

    def only(self, keep) -> "Draft":
        """The draft with only the nodes ``keep`` (ascending; every kept node's parent kept too).

        Example: tokens (1, 2, 3), parents (-1, 0, -1), keep [0, 2] -> tokens (1, 3), parents (-1, -1).
        """
        keep = list(keep)
        if len(keep) == len(self.tokens):
            return self
        remap = {old: new for new, old in enumerate(keep)}
        probs = None if self.probs is None else self.probs[keep]
        return Draft(
            tuple(self.tokens[i] for i in keep),
            tuple(-1 if self.parents[i] < 0 else remap[self.parents[i]] for i in keep),
            probs,
        )
