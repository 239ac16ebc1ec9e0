"""A faster CPU product for the body's linear layers when a pass feeds 2 to 4 tokens.

``linear(x, W)`` with x [m, in] and W [out, in] runs on CPU as x @ W.T. For m = 2 to 4 rows
torch's CPU GEMM picks a slow kernel for that shape on AMD CPUs (a 3-token pass cost nearly twice
a 1-token one); computed as W @ x.T, the product whose large side is ``out``, such passes cost
little more than one token, and small drafts, which is what moderate acceptance calls for, get
much cheaper.

Where no store of packed weights is used, the prepared decode model keeps a view whose linear
layers run through a ``FewRows`` store and takes it for passes of that size, so other users of the
same model (the transformers peers in ``polyverse bench``, training) run the stock modules.
"""

from __future__ import annotations

import torch

from . import features
from .store import ByWeight

ROWS = range(2, 5)  # rows per product for which the swapped product is used


class FewRows(ByWeight):
    """A product store (``store.Store``) that runs bias-free CPU ``linear`` as (W @ x.T).T.

    Example: x [1, 3, 576], W [1536, 576] -> W @ x[0].T is [1536, 3] -> output [1, 3, 1536],
    equal to ``F.linear(x, W)`` up to float rounding.
    """

    def eligible(self, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> bool:
        return bias is None and x.device.type == "cpu" and weight.dim() == 2 and x.dtype == weight.dtype

    def linear(self, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
        flat = x.reshape(-1, x.shape[-1])  # [m, in]
        out = (weight @ flat.t()).t().contiguous()  # [m, out]
        return out.view(*x.shape[:-1], weight.shape[0])


def available(device: torch.device) -> bool:
    """Whether passes of ``ROWS`` tokens on ``device`` should run through FewRows: on CPU, and not
    where torch's products are MKL's kernels for the CPU (there the swap is slower, ``features``)."""
    return device.type == "cpu" and not features.mkl_tuned()


def wanted(q: int, device: torch.device) -> bool:
    """Whether a pass feeding q tokens on ``device`` should run through FewRows."""
    return q in ROWS and available(device)
