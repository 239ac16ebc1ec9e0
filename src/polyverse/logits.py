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

    The first row read is projected alone (a one-row projection is a matrix-vector product,
    several times cheaper than a block); each later miss at row r projects the missing rows
    among r .. r+block-1 in one matmul. Verification walks drafts root first, so a draft
    rejected at its root costs one row, and a longer accepted path one block per 8 rows.

    Example: q = 20, block = 8; reading rows 0, 1, 2 computes row 0, then rows 1-8 once; row 9
    then computes rows 9-16.
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
                size = self.block if self.rows else 1
                self._ensure(list(range(idx, min(idx + size, q))))
            return self.rows[idx]  # [V]
        rows = list(range(q))[idx] if isinstance(idx, slice) else [int(i) for i in idx]
        self._ensure(rows)
        if not rows:
            return torch.empty(0, self.vocab)
        return torch.stack([self.rows[r] for r in rows])  # [len(rows), V]

    def full(self) -> torch.Tensor:
        return self[:]


class Projection:
    """hidden [m, H] -> logits [m, V] through a bias-free linear head, as float32.

    For a few rows on CPU the product runs against a transposed contiguous copy of the weight
    ([H, V]): torch's few-row product streams that layout about twice as fast as ``linear``'s
    [V, H] one here (measured 5 ms vs 10 ms for one row of SmolLM2's 49152 x 576 head), and
    the one-row product is what plain decoding and rejected drafts pay every pass. Blocks
    of rows use the head module itself.
    """

    few = 4  # rows up to which the transposed copy is used

    def __init__(self, head: torch.nn.Module) -> None:
        self.head = head
        weight = getattr(head, "weight", None)
        self.fast = (isinstance(head, torch.nn.Linear) and head.bias is None and weight.device.type == "cpu")
        self._wt: torch.Tensor | None = None
        self._version: tuple[int, int] | None = None

    def _weight_t(self) -> torch.Tensor:
        w = self.head.weight
        if self._wt is None or self._version != (w.data_ptr(), w._version):  # re-copied after training
            self._wt = w.detach().t().contiguous()  # [H, V]
            self._version = (w.data_ptr(), w._version)
        return self._wt

    def __call__(self, hidden: torch.Tensor) -> torch.Tensor:
        if not self.fast or hidden.shape[0] > self.few:
            return self.head(hidden).float()
        return (hidden @ self._weight_t()).float()  # [m, V]


def eager(logits: torch.Tensor) -> LazyLogits:
    """A LazyLogits over logits already computed (for backends without a separable head)."""
    lazy = LazyLogits(logits, lambda h: h, logits.shape[-1])
    lazy.rows = {i: row for i, row in enumerate(logits)}
    return lazy
