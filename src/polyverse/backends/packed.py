"""oneDNN-packed weights for the linear layers of the backend's own passes on CPU.

torch runs a float32 ``linear`` on CPU through MKL, which takes a generic kernel on this AMD
machine: the products of a pass grow with every fed token, while streaming the weights once
would serve many more tokens. oneDNN (built into every x86 torch) packs a weight once into its own
blocked layout and then multiplies with AVX-512 kernels chosen for the CPU it runs on. Measured
here on SmolLM2-135M's 30 layers of products alone (2 threads): 1 row 14 ms packed vs 36 ms,
16 rows 18 to 20 ms vs 40 to 66 ms; the 49152 x 576 LM head on 16 rows 6.3 ms vs 14.8 ms. A pass
that feeds 16 tokens then costs not much more than one that feeds 1, which is the room every
parallel method lives in.

The packed copies live in a ``PackedWeights`` store owned by the backend (one per set of
weights, shared by its forks and sessions); the backend routes only its own passes through it
(``route.through``), so the model's other users (the transformers peers in ``polyverse bench``,
training) run the stock path. A weight changed
in place (its version counter moves) is packed again on its next use. Toy models (the tests'
random ones) stay on the stock path: there a routed call's own cost outweighs the gain.
"""

from __future__ import annotations

import weakref

import torch

from . import cpu
from .route import ByWeight

BATCH_HINT = 16  # rows per product the packed layout is tuned for (measured: 1 to 32 all gain)
# below this many parameters a routed call's own cost outweighs the products it speeds up (a toy
# model of the tests decoded at half the speed with packed weights)
MIN_PARAMS = 10_000_000


def available(device: torch.device, dtype: torch.dtype) -> bool:
    """Whether this torch can run packed float32 products on ``device``."""
    return (device.type == "cpu" and dtype == torch.float32 and torch.backends.mkldnn.is_available()
            and hasattr(torch.ops.mkldnn, "_linear_pointwise") and hasattr(torch.ops.mkldnn, "_reorder_linear_weight"))


def worth_it(model: torch.nn.Module) -> bool:
    """Whether a model's passes should run on packed weights: it can, it is large enough to gain, and
    torch's own products are not MKL's kernels for this CPU (``cpu.mkl_tuned``: Intel CPUs)."""
    first = next(model.parameters())
    return (available(first.device, first.dtype) and sum(p.numel() for p in model.parameters()) >= MIN_PARAMS
            and not cpu.mkl_tuned())


class PackedWeights(ByWeight):
    """Packed copies of 2D float32 CPU weights, made on first use and kept while the weight lives."""

    def __init__(self) -> None:
        self._packed: dict[int, tuple[weakref.ref, int, torch.Tensor]] = {}

    def __len__(self) -> int:
        return len(self._packed)

    def get(self, weight: torch.Tensor) -> torch.Tensor:
        key = id(weight)
        hit = self._packed.get(key)
        if hit is not None and hit[0]() is weight and hit[1] == weight._version:
            return hit[2]
        with torch.inference_mode():
            packed = torch.ops.mkldnn._reorder_linear_weight(weight.detach(), BATCH_HINT)  # [out, in], blocked
        self._packed[key] = (weakref.ref(weight, lambda _, k=key: self._packed.pop(k, None)), weight._version, packed)
        return packed

    def linear(self, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
        """``F.linear(x, weight, bias)`` through the packed weight: x [..., in] -> [..., out].

        Example: x [1, 16, 576], weight [1536, 576] -> [1, 16, 1536], equal to ``F.linear`` up to
        float rounding (about 4e-6 here).
        """
        return torch.ops.mkldnn._linear_pointwise(x.contiguous(), self.get(weight), bias, "none", [], "")

    def eligible(self, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> bool:
        return (weight.dim() == 2 and x.device.type == "cpu" and x.dtype == torch.float32 == weight.dtype
                and (bias is None or bias.dtype == torch.float32) and not torch.is_grad_enabled())
