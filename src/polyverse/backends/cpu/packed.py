"""oneDNN-packed weights for the prepared decode model's linear layers on CPU.

torch runs a float32 ``linear`` on CPU through MKL, which takes a generic kernel on AMD CPUs: the
products of a pass grow with every fed token, while streaming the weights once would serve many
more tokens. oneDNN (built into every x86 torch) packs a weight once into its own blocked layout
and then multiplies with AVX-512 kernels chosen for the CPU it runs on, so that a pass feeding 16
tokens costs not much more than one feeding 1, which is the room every parallel method lives in.
It is the choice where the row kernel (``rows``) cannot be built.

The packed copies live in a ``PackedWeights`` store owned by the prepared decode model (one per set
of weights, shared by its forks and sessions); only the decode view runs through it, so the
model's other users (the transformers peers in ``polyverse bench``, training) run the stock
modules. A weight changed in place (its version counter moves) is packed again on its next use.
Toy models (the tests' random ones) stay on the stock path: there a store call's own cost
outweighs the gain.
"""

from __future__ import annotations

import weakref

import torch

from . import features
from .store import ByWeight

BATCH_HINT = 16  # rows per product the packed layout is tuned for (1 to 32 rows all gain)
# below this many parameters a store call's own cost outweighs the products it speeds up (a toy
# model of the tests decodes slower with packed weights)
MIN_PARAMS = 10_000_000


def available(device: torch.device, dtype: torch.dtype) -> bool:
    """Whether this torch can run packed float32 products on ``device``."""
    return (device.type == "cpu" and dtype == torch.float32 and torch.backends.mkldnn.is_available()
            and hasattr(torch.ops.mkldnn, "_linear_pointwise") and hasattr(torch.ops.mkldnn, "_reorder_linear_weight"))


def worth_it(model: torch.nn.Module) -> bool:
    """Whether a model's passes should run on packed weights: it can, it is large enough to gain, and
    torch's own products are not MKL's kernels for this CPU (``features.mkl_tuned``: Intel CPUs)."""
    first = next(model.parameters())
    return (available(first.device, first.dtype) and sum(p.numel() for p in model.parameters()) >= MIN_PARAMS
            and not features.mkl_tuned())


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
        float rounding.
        """
        return torch.ops.mkldnn._linear_pointwise(x.contiguous(), self.get(weight), bias, "none", [], "")

    def eligible(self, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> bool:
        return (weight.dim() == 2 and x.device.type == "cpu" and x.dtype == torch.float32 == weight.dtype
                and (bias is None or bias.dtype == torch.float32) and not torch.is_grad_enabled())
