"""The LM head's product on CPU: hidden rows -> float32 logits, for ``polyverse.logits.Logits``.

The head (hidden -> vocabulary) is the largest single product of a pass, and the rows it runs on
are few (those verification reads), a shape torch's CPU ``linear`` handles badly outside Intel's
MKL. ``Projection`` is the callable the transformers backend hands to ``Logits``.
"""

from __future__ import annotations

import torch

from . import features
from .store import Store


class Projection:
    """hidden [m, H] -> logits [m, V] through a bias-free linear head, as float32.

    On CPU the product runs as weight [V, H] @ hidden.T [H, m]: a matrix product whose large
    side is the vocabulary, which torch's CPU GEMM handles far better than ``linear``'s
    few-row [m, H] @ [H, V] shape. One row would take the slower matrix-vector path, so a single
    row is fed twice. Plain decoding and drafts rejected at their root pay this one-row product
    every pass. With a store of packed weights (``rows.RowWeights`` on AVX-512 CPUs, else
    ``packed.PackedWeights``) the product runs on the packed head instead, on any CPU. Where
    torch's products are MKL's kernels for the CPU (``features.mkl_tuned``, Intel CPUs) and no
    store is used, the head runs stock: there weight @ hidden.T is the slower one.

    Example: a 49152 x 576 head, hidden [3, 576] -> logits [3, 49152], equal to ``head(hidden)``
    up to float rounding.
    """

    def __init__(self, head: torch.nn.Module, store: Store | None = None) -> None:
        self.head = head
        self.store = store
        self.plain = isinstance(head, torch.nn.Linear) and head.bias is None
        # weight @ hidden.T instead of linear: on CPU, where torch's products are not MKL's own kernels
        self.fast = self.plain and head.weight.device.type == "cpu" and not features.mkl_tuned()

    def __call__(self, hidden: torch.Tensor) -> torch.Tensor:
        if self.store is not None and self.plain:
            out = self.store.run(self.head, hidden)  # [m, V], or None where the store does not take it
            if out is not None:
                return out.float()  # asked for, on any CPU
        if not self.fast:
            return self.head(hidden).float()
        m = hidden.shape[0]
        if m == 1:
            hidden = torch.cat([hidden, hidden])  # real rows: a stride-0 expand takes a slow path
        out = self.head.weight @ hidden.t()  # [V, max(m, 2)]; hidden.t() stays column-major
        return out.t()[:m].contiguous().float()  # [m, V]
