"""Routing a model's linear layers through a product store during the backend's passes (backends/route.py)."""

import threading

import torch

from polyverse.backends import route


class Recorder(route.ByWeight):
    """A store that takes every call, answers the stock product plus 1, and counts."""

    def __init__(self) -> None:
        self.calls = 0

    def eligible(self, x, weight, bias) -> bool:
        return True

    def linear(self, x, weight, bias=None):
        self.calls += 1
        return torch.nn.functional.linear(x, weight, bias) + 1.0


def _model() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 3, bias=False))


def test_layers_are_routed_only_inside_and_left_as_loaded_after():
    model, store = _model(), Recorder()
    x = torch.randn(2, 4)
    stock = model(x)
    with route.through(model, store):
        routed = model(x)
    assert store.calls == 2 and not torch.allclose(routed, stock)
    assert all("forward" not in m.__dict__ for m in model.modules())  # the modules are as loaded
    assert torch.equal(model(x), stock) and store.calls == 2


def test_a_none_store_changes_nothing():
    model = _model()
    with route.through(model, None):
        assert all("forward" not in m.__dict__ for m in model.modules())


def test_overlapping_passes_keep_the_routes_until_the_last_ends_and_other_threads_run_stock():
    model, store = _model(), Recorder()
    x = torch.randn(2, 4)
    stock = model(x)
    entered, release = threading.Event(), threading.Event()
    seen = {}

    def other_pass():
        with route.through(model, Recorder()):
            entered.set()
            release.wait(5)

    worker = threading.Thread(target=other_pass)
    worker.start()
    entered.wait(5)
    seen["outside"] = model(x)  # this thread is in no pass: stock, though the other thread's routes are installed
    with route.through(model, store):
        release.set()
        worker.join(5)
        seen["inside"] = model(x)  # the other pass ended first: this one keeps its routes
    assert torch.equal(seen["outside"], stock)
    assert store.calls == 2 and not torch.allclose(seen["inside"], stock)
    assert all("forward" not in m.__dict__ for m in model.modules())


def test_a_store_that_declines_leaves_the_stock_product():
    class Declines(Recorder):
        def eligible(self, x, weight, bias) -> bool:
            return False

    model, store = _model(), Declines()
    x = torch.randn(2, 4)
    with route.through(model, store):
        out = model(x)
    assert store.calls == 0 and torch.equal(out, model(x))
