"""The product-store protocol, and the module that runs an ``nn.Linear``'s product through a store.

A store (``rows.RowWeights``, ``packed.PackedWeights``, ``few_rows.FewRows``) multiplies by a weight
faster than torch's stock float32 ``linear`` on CPU, keeping whatever it needs for that (packed
copies of the weights, or nothing), and answers None for a call it does not take. ``StoreLinear``
stands in for a plain ``nn.Linear`` in the prepared decode model (``prepare``): it holds the very
same weight and bias Parameters, asks its store first, and runs the stock product otherwise.
"""

from __future__ import annotations

from typing import Protocol

import torch
import torch.nn.functional as F


class Store(Protocol):
    def run(self, module: torch.nn.Module, x: torch.Tensor) -> torch.Tensor | None:
        """``module(x)`` (a linear layer: ``module.weight`` [out, in], ``module.bias`` [out] or None)
        through the store's product, or None where the store does not take it."""


class ByWeight:
    """A store's ``run`` from its ``eligible(x, weight, bias)`` and ``linear(x, weight, bias)``."""

    def run(self, module: torch.nn.Module, x: torch.Tensor) -> torch.Tensor | None:
        weight, bias = module.weight, module.bias
        return self.linear(x, weight, bias) if self.eligible(x, weight, bias) else None


class StoreLinear(torch.nn.Module):
    """An ``nn.Linear`` whose product runs through a store: x [..., in] -> [..., out].

    The weight and bias are the linear layer's own Parameters (no copy; the store keeps its packed
    panels apart). Where the store declines (``run`` answers None) the stock ``F.linear`` runs, so
    the output is what the layer gives whenever the store is not used.
    """

    def __init__(self, linear: torch.nn.Linear, store: Store) -> None:
        super().__init__()
        self.in_features, self.out_features = linear.in_features, linear.out_features
        self.weight = linear.weight
        self.register_parameter("bias", linear.bias)
        self.store = store

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.store.run(self, x)
        return out if out is not None else F.linear(x, self.weight, self.bias)

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}, "
                f"store={type(self.store).__name__}")
