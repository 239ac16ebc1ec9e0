"""Multiverse Attention: the mask and position ids of a structured sequence, from branch labels.

Every token carries a *label*: the path it belongs to, written from the trunk down as
``((block, path), ...)``; ``()`` is the trunk (prompt, Goal, Conclusion and text between blocks).
``block`` counts the Parallel blocks opened on the parent branch (0-based) and ``path`` the
paths of that block (1-based). Labels alone fix the attention and the positions:

- a token sees every earlier token except those of a sibling path (a path of the same block
  that is not its own) and everything below such a sibling;
- every path of a block starts at the position after the last token before the block;
- the branch continues (Conclusion) at that start + the longest path's length.

The Multiverse engine assigns the same labels as it decodes, which is what ties the two together
(``tests/test_mv_engine.py``: engine logits equal one masked pass over the sequence).
"""

from __future__ import annotations

from typing import Sequence

import torch

Label = tuple[tuple[int, int], ...]


def sees(reader: Label, earlier: Label) -> bool:
    """Can a token on branch ``reader`` see an earlier token (training order) on ``earlier``?

    >>> sees(((0, 1),), ((0, 2),)), sees(((1, 1),), ((0, 2),)), sees((), ((0, 2), (0, 1)))
    (False, True, True)
    """
    for a, b in zip(reader, earlier):
        if a != b:
            return a[0] != b[0]  # same block, other path: a sibling; another block: already merged
    return True


def mask(labels: Sequence[Label]) -> torch.Tensor:
    """[n, n] bool: entry (i, j) is True when token i attends to token j (j <= i).

    >>> mask([(), ((0, 1),), ((0, 2),), ()]).int().tolist()
    [[1, 0, 0, 0], [1, 1, 0, 0], [1, 0, 1, 0], [1, 1, 1, 1]]
    """
    n = len(labels)
    kinds = list(dict.fromkeys(tuple(lab) for lab in labels))  # distinct branches
    which = {lab: k for k, lab in enumerate(kinds)}
    pair = torch.tensor([[a == b or sees(a, b) for b in kinds] for a in kinds], dtype=torch.bool)  # [K, K]
    idx = torch.tensor([which[tuple(lab)] for lab in labels], dtype=torch.long)  # [n]
    causal = torch.ones(n, n, dtype=torch.bool).tril()  # [n, n]
    return causal & pair[idx][:, idx]


def additive(labels: Sequence[Label], dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """[1, 1, n, n] additive mask for a model's ``attention_mask``: 0 visible, dtype min hidden."""
    vis = mask(labels)
    out = torch.zeros(vis.shape, dtype=dtype).masked_fill(~vis, torch.finfo(dtype).min)
    return out[None, None]  # [1, 1, n, n]


def positions(labels: Sequence[Label], start: int = 0) -> list[int]:
    """Position id of every token; the first trunk token is at ``start``.

    >>> positions([(), (), ((0, 1),), ((0, 1),), ((0, 2),), ()])
    [0, 1, 2, 3, 2, 4]
    """
    nxt: dict[Label, int] = {(): start}  # next position of each branch seen so far
    block_start: dict[tuple[Label, int], int] = {}
    open_block: dict[Label, int] = {}  # branch -> its block whose paths have not merged yet
    out: list[int] = []
    for label in labels:
        label = tuple(label)
        if label not in nxt:
            parent, (block, _) = label[:-1], label[-1]
            if parent not in nxt:
                raise ValueError(f"path {label} appears before its parent branch")
            _merge(parent, nxt, block_start, open_block, keep=block)
            if (parent, block) not in block_start:
                block_start[(parent, block)] = nxt[parent]
                open_block[parent] = block
            nxt[label] = block_start[(parent, block)]
        else:
            _merge(label, nxt, block_start, open_block)
        out.append(nxt[label])
        nxt[label] += 1
    return out


def _merge(branch: Label, nxt, block_start, open_block, keep: int | None = None) -> None:
    """Close ``branch``'s open block (unless it is ``keep``): the branch goes on after its longest path."""
    block = open_block.get(branch)
    if block is None or block == keep:
        return
    begin = block_start[(branch, block)]
    ends = [p for lab, p in nxt.items() if len(lab) == len(branch) + 1 and lab[:-1] == branch and lab[-1][0] == block]
    nxt[branch] = begin + max(p - begin for p in ends)
    del open_block[branch]
