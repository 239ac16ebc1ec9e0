"""Logits computed on demand: the LM head runs only on the rows verification actually reads.

The LM head (hidden -> vocabulary) is a large share of a pass that feeds many tokens, and most
draft rows past the first rejection are never read. ``LazyLogits`` keeps the pass's hidden
states and projects rows in blocks as they are indexed.
"""

from __future__ import annotations

from typing import Callable

import torch

from .backends import cpu


class LazyLogits:
    """Rows of a [q, V] logits matrix, projected from [q, H] hidden states when first read.

    The first read at row r projects rows r and r+1 (two rows cost what one does, see
    ``Projection``, and r+1 is the first draft token's child row); each later miss at row r
    projects the missing rows among r .. r+block-1 in one matmul. Verification walks drafts
    root first, so a draft rejected at its root costs the smallest product, and a longer
    accepted path one block per 8 rows.

    Example: q = 20, block = 8; reading rows 0, 1, 2 computes rows 0-1, then rows 2-9 once;
    row 10 then computes rows 10-17.
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
                size = self.block if self.rows else 2
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

    On CPU the product runs as weight [V, H] @ hidden.T [H, m]: a matrix product whose large
    side is the vocabulary, which torch's CPU GEMM handles far better than ``linear``'s
    few-row [m, H] @ [H, V] shape. Measured here for SmolLM2's 49152 x 576 head (2 threads,
    quiet machine): 2 rows 3.3 ms vs 21.6 ms with ``linear``, 4 rows 4.0 vs 16.2 ms, 8 rows
    7.1 vs 16.1 ms, 24 rows 18 vs 22 ms. One row would take the matrix-vector path (10 ms),
    so a single row is fed twice.
    Plain decoding and drafts rejected at their root pay this one-row product every pass.
    With a store of packed weights the product runs on the packed head instead: oneDNN's
    (``PackedWeights``) 16 rows 6.3 ms vs 14.8 ms, one row 4.6 ms; the row kernel's
    (``rows.RowWeights``, on AVX-512 CPUs) 9 rows 4.8 ms vs 14.2 ms stock on an Intel Xeon.
    Where torch's products are MKL's kernels for the CPU (``backends.cpu.mkl_tuned``, Intel CPUs)
    the head runs stock: measured on an Intel Xeon, 1 row 3.1 ms vs 10.4 ms as weight @ hidden.T,
    2 rows 3.7 vs 10.4, 9 and 16 rows even.
    """

    def __init__(self, head: torch.nn.Module, packed=None) -> None:
        self.head = head
        self.packed = packed
        self.plain = isinstance(head, torch.nn.Linear) and head.bias is None
        # weight @ hidden.T instead of linear: on CPU, where torch's products are not MKL's own kernels
        self.fast = self.plain and head.weight.device.type == "cpu" and not cpu.mkl_tuned()

    def __call__(self, hidden: torch.Tensor) -> torch.Tensor:
        if self.packed is not None and self.plain:
            out = self.packed.run(self.head, hidden)  # [m, V], or None where the store does not take it
            if out is not None:
                return out.float()  # asked for, on any CPU
        if not self.fast:
            return self.head(hidden).float()
        m = hidden.shape[0]
        if m == 1:
            hidden = torch.cat([hidden, hidden])  # real rows: a stride-0 expand takes a slow path
        out = self.head.weight @ hidden.t()  # [V, max(m, 2)]; hidden.t() stays column-major
        return out.t()[:m].contiguous().float()  # [m, V]


def eager(logits: torch.Tensor) -> LazyLogits:
    """A LazyLogits over logits already computed (for backends without a separable head)."""
    lazy = LazyLogits(logits, lambda h: h, logits.shape[-1])
    lazy.rows = {i: row for i, row in enumerate(logits)}
    return lazy
