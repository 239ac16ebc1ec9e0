"""Route a model's linear layers through a product store during the backend's own passes.

The backend replaces torch's float32 ``linear`` on CPU with faster products (``rows``, ``packed``,
``few_rows``). A ``TorchFunctionMode`` would scope that to a pass without touching the model, but
it sends every torch call of the pass through Python: measured on SmolLM2-135M (Intel Xeon, 2
threads) a mode that changes nothing costs 10 to 11 ms per pass, a quarter of a 1-token pass.

Instead, while a pass is in flight, each plain ``nn.Linear`` of the model gets an instance
``forward`` that asks the store of the *calling thread* (a thread-local set by ``through``) to
run it, and otherwise runs ``nn.Linear.forward``. A routed call costs about 20 us less than one
that asks ``eligible`` then ``linear`` with the module's weight (211 calls a pass). The instance forwards are installed when the first pass on
a model starts and removed when the last one in flight ends (threads may overlap), so the model's
modules are as loaded between passes, and a thread that is not inside a pass (a transformers
``generate`` peer, training) runs the stock product even during one.
"""

from __future__ import annotations

import threading
import weakref
from contextlib import contextmanager
from typing import Callable, Protocol

import torch

_local = threading.local()  # .store: the store of the pass this thread is in, if any
_lock = threading.Lock()


class Store(Protocol):
    def run(self, module: torch.nn.Linear, x: torch.Tensor) -> torch.Tensor | None:
        """``module(x)`` through the store's product, or None where the store does not take it."""


class ByWeight:
    """A store's ``run`` from its ``eligible(x, weight, bias)`` and ``linear(x, weight, bias)``."""

    def run(self, module: torch.nn.Linear, x: torch.Tensor) -> torch.Tensor | None:
        weight, bias = module.weight, module.bias
        return self.linear(x, weight, bias) if self.eligible(x, weight, bias) else None


class _Routes:
    """A model's plain linear layers, the forwards that route them, and how many passes use them."""

    def __init__(self, model: torch.nn.Module) -> None:
        self.linears = [m for m in model.modules() if type(m) is torch.nn.Linear]
        self.forwards = [_routed(m) for m in self.linears]
        self.inside = 0


_routes: "weakref.WeakKeyDictionary[torch.nn.Module, _Routes]" = weakref.WeakKeyDictionary()


def _routed(module: torch.nn.Linear) -> Callable[[torch.Tensor], torch.Tensor]:
    stock = torch.nn.Linear.forward
    ref = weakref.ref(module)  # the forward lives in the module's own __dict__: no cycle

    def forward(x: torch.Tensor) -> torch.Tensor:
        mod = ref()
        store = getattr(_local, "store", None)
        if store is not None:
            out = store.run(mod, x)
            if out is not None:
                return out
        return stock(mod, x)

    return forward


@contextmanager
def through(model: torch.nn.Module, store: Store | None):
    """Within this context, the calling thread's calls of ``model``'s plain ``nn.Linear`` layers run
    through ``store`` where it takes them (``store.eligible``); a None store is a no-op."""
    if store is None:
        yield
        return
    with _lock:
        routes = _routes.get(model)
        if routes is None:
            routes = _routes[model] = _Routes(model)
        if routes.inside == 0:
            for module, forward in zip(routes.linears, routes.forwards):
                module.__dict__["forward"] = forward  # a plain attribute: nn.Module.__setattr__'s checks skipped
        routes.inside += 1
    previous = getattr(_local, "store", None)
    _local.store = store
    try:
        yield
    finally:
        _local.store = previous
        with _lock:
            routes.inside -= 1
            if routes.inside == 0:
                for module in routes.linears:
                    module.__dict__.pop("forward", None)
