"""Logits computed on demand: the LM head runs only on the rows verification actually reads.

The LM head (hidden -> vocabulary) is a large share of a pass that feeds many tokens, and most
draft rows past the first rejection are never read. ``LazyLogits`` keeps the pass's hidden
states and projects rows in blocks as they are indexed.
"""

from __future__ import annotations

from typing import Callable

import torch


class LazyLogits:
    """Rows of a [q, V] logits matrix, projected from [q, H] hidden states when first read.

    Reading row r projects the missing rows among r .. r+block-1 in one matmul: verification
    walks drafts root first, so a rejected draft costs one block, not the whole draft.

    Example: q = 20, block = 8; reading rows 0, 1, 2 computes rows 0-7 once; row 9 then
    computes rows 9-16.
    """

    def __init__(self, hidden: torch.Tensor, head: Callable[[torch.Tensor], torch.Tensor], vocab: int, block: int = 8):
        self.hidden = hidden  # [q, H]
        self.head = head
        self.vocab = vocab
        self.block = block
        self.rows: dict[int, torch.Tensor] = {}

    @property
    def shape(self) -> tuple[int, int]:
        return (self.hidden.shape[0], self.vocab)

    def __len__(self) -> int:
        return self.hidden.shape[0]

    def computed(self) -> int:
        """How many rows have been projected so far."""
        return len(self.rows)

    def _ensure(self, wanted: list[int]) -> None:
        missing = [r for r in wanted if r not in self.rows]
        if not missing:
            return
        with torch.inference_mode():
            out = self.head(self.hidden[missing]).float()  # [m, V]
        for r, row in zip(missing, out):
            self.rows[r] = row

    def __getitem__(self, idx) -> torch.Tensor:
        q = len(self)
        if isinstance(idx, int):
            if idx < 0:
                idx += q
            if not 0 <= idx < q:
                raise IndexError(f"row {idx} of {q}")
            if idx not in self.rows:
                self._ensure(list(range(idx, min(idx + self.block, q))))
            return self.rows[idx]  # [V]
        rows = list(range(q))[idx] if isinstance(idx, slice) else [int(i) for i in idx]
        self._ensure(rows)
        if not rows:
            return torch.empty(0, self.vocab)
        return torch.stack([self.rows[r] for r in rows])  # [len(rows), V]

    def full(self) -> torch.Tensor:
        return self[:]


def eager(logits: torch.Tensor) -> LazyLogits:
    """A LazyLogits over logits already computed (for backends without a separable head)."""
    lazy = LazyLogits(logits, lambda h: h, logits.shape[-1])
    lazy.rows = {i: row for i, row in enumerate(logits)}
    return lazy
