"""A faster CPU product for the body's linear layers when a pass feeds 2 to 4 tokens.

``linear(x, W)`` with x [m, in] and W [out, in] runs on CPU as x @ W.T. For m = 2 to 4 rows
torch's CPU GEMM picks a slow kernel for that shape on this machine (a 3-token pass of
SmolLM2-135M cost 116 ms against 63 ms for 1 token); computed as W @ x.T, the product whose
large side is ``out``, the same pass costs 79 ms, and a 2-token pass 71 ms instead of 112 ms.
Small drafts, which is what moderate acceptance calls for, get much cheaper.

The switch is a ``TorchFunctionMode`` entered only around the backend's own passes of that
size: the model's modules are not changed, so other users of the same model (the
transformers peers in ``polyverse bench``, training) run the stock path.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch.overrides import TorchFunctionMode

from . import cpu

ROWS = range(2, 5)  # rows per product for which the swapped product is used


class FewRowLinear(TorchFunctionMode):
    """Within this mode, bias-free ``F.linear`` on CPU runs as (W @ x.T).T.

    Example: x [1, 3, 576], W [1536, 576] -> W @ x[0].T is [1536, 3] -> output [1, 3, 1536],
    equal to ``F.linear(x, W)`` up to float rounding.
    """

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func is F.linear:
            x, weight = args[0], args[1]
            bias = args[2] if len(args) > 2 else kwargs.get("bias")
            if bias is None and x.device.type == "cpu" and weight.dim() == 2 and x.dtype == weight.dtype:
                flat = x.reshape(-1, x.shape[-1])  # [m, in]
                out = (weight @ flat.t()).t().contiguous()  # [m, out]
                return out.view(*x.shape[:-1], weight.shape[0])
        return func(*args, **kwargs)


def wanted(q: int, device: torch.device) -> bool:
    """Whether a pass feeding q tokens on ``device`` should run under FewRowLinear: on CPU, and not
    where torch's products are MKL's kernels for the CPU (there the swap is 2x slower, ``cpu``)."""
    return device.type == "cpu" and q in ROWS and not cpu.mkl_tuned()
