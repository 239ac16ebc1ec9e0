"""The decode-time model prepared once (backends/cpu/prepare.py): a view over the same Parameters,
linear layers run through a product store, grouped-head attention, and the model as loaded left alone."""

import os

import pytest
import torch

from polyverse.backends.cpu import attention, packed
from polyverse.backends.cpu.prepare import view
from polyverse.backends.cpu.store import ByWeight, StoreLinear
from polyverse.backends.transformers import TransformersBackend
from polyverse.config import GenerationConfig
from polyverse.draft import Draft
from polyverse.layout import chain_feed, draft_feed
from polyverse.loop import decode
from polyverse.methods.jacobi import JacobiConfig, JacobiProposer
from polyverse.models.tiny import tiny_model


class Recorder(ByWeight):
    """A store that takes every call, answers the stock product plus 1, and counts."""

    def __init__(self) -> None:
        self.calls = 0

    def eligible(self, x, weight, bias) -> bool:
        return True

    def linear(self, x, weight, bias=None):
        self.calls += 1
        return torch.nn.functional.linear(x, weight, bias) + 1.0


def _small() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 3, bias=False))


def test_a_store_linear_shares_the_parameters_and_falls_back_to_the_stock_product():
    layer, store = torch.nn.Linear(4, 6), Recorder()
    swapped = StoreLinear(layer, store)
    assert swapped.weight is layer.weight and swapped.bias is layer.bias
    x = torch.randn(2, 4)
    assert torch.equal(swapped(x), layer(x) + 1.0) and store.calls == 1
    store.eligible = lambda x, weight, bias: False
    assert torch.equal(swapped(x), layer(x))


def test_a_view_copies_only_what_changes_and_leaves_the_original_as_it_was():
    model, store = _small(), Recorder()
    x = torch.randn(2, 4)
    stock = model(x)
    routed = view(model, lambda linear: StoreLinear(linear, store), {})
    assert routed is not model and routed[1] is model[1]  # the ReLU is shared, not copied
    assert torch.equal(routed(x), torch.relu(model[0](x) + 1.0) @ model[2].weight.t() + 1.0) and store.calls == 2
    assert all(type(m) is torch.nn.Linear for m in (model[0], model[2]))
    assert torch.equal(model(x), stock) and store.calls == 2
    assert [p for p in routed.parameters()] == [p for p in model.parameters()]  # the same Parameter objects
    assert view(model, None, {}) is model  # nothing to change: the model itself
    shared = torch.nn.Linear(3, 3)
    twice = view(torch.nn.Sequential(shared, shared), lambda linear: StoreLinear(linear, store), {})
    assert twice[0] is twice[1]  # a module reached twice stays one module


def _linears_are_stock(model) -> bool:
    return all(type(m) is torch.nn.Linear and "forward" not in m.__dict__
               for m in model.modules() if isinstance(m, torch.nn.Linear) or "Linear" in type(m).__name__)


@pytest.mark.parametrize("options", [{}, {"packed_weights": True}, {"row_kernel": False}])
def test_the_model_as_loaded_runs_its_stock_modules_after_preparing_and_decoding(options, monkeypatch):
    from polyverse.backends.cpu import features

    if options.get("packed_weights") and not packed.available(torch.device("cpu"), torch.float32):
        pytest.skip("this torch has no oneDNN packed products")
    if "row_kernel" in options:  # the few-row view, as on an AMD CPU
        monkeypatch.setattr(features, "mkl_tuned", lambda path=features.SYSTEM: False)
    model = tiny_model(seed=3)
    ctx = torch.tensor([[5, 17, 42, 8, 9, 33]])
    mask = torch.tensor([[0, 1, 1, 1, 1, 1]])  # a masked multi-row pass: transformers repeats the heads
    with torch.no_grad():
        before = model(input_ids=ctx, attention_mask=mask).logits
        generated = model.generate(ctx, max_new_tokens=6, do_sample=False)
    be = TransformersBackend(model, **options)
    prepared = be.decode_model
    tokens = [t for s in decode(be, JacobiProposer(JacobiConfig(block=3)), [3, 14, 15, 92], GenerationConfig(max_new_tokens=12))
              for t in s.tokens]
    assert len(tokens) == 12
    assert _linears_are_stock(model) and model.config._attn_implementation == "sdpa"
    with torch.no_grad():
        assert torch.equal(model(input_ids=ctx, attention_mask=mask).logits, before)
        assert torch.equal(model.generate(ctx, max_new_tokens=6, do_sample=False), generated)
    own = dict(model.named_parameters())
    for v in prepared.views():
        assert v is not model and v.config is not model.config
        assert v.config._attn_implementation == attention.NAME  # the view's own copy names the grouped attention
        theirs = dict(v.named_parameters())
        assert theirs.keys() == own.keys() and all(theirs[k] is own[k] for k in own)
    main, *few = prepared.views()
    assert _swapped(main) is (prepared.store is not None) and all(_swapped(v) for v in few)
    if "row_kernel" in options:
        assert len(few) == 1 and prepared.lm(3) is few[0] and prepared.lm(5) is main  # passes of 2 to 4 tokens
    assert be.torch_model is model and be.session().decode_model is prepared


def _swapped(model) -> bool:
    return any(isinstance(m, StoreLinear) for m in model.modules())


def test_a_session_shares_the_preparation_and_has_a_cache_of_its_own():
    model = tiny_model(seed=4)
    be = TransformersBackend(model)
    be.forward(chain_feed([1, 2, 3], 0), logits_for=[])
    be.commit(range(3))
    other = be.session()
    assert other.length == 0 and be.length == 3 and other.decode_model is be.decode_model
    assert other.cost_key() == be.cost_key() == f"transformers|{sum(p.numel() for p in model.parameters())}|torch.float32|cpu"
    a = other.forward(chain_feed([1, 2, 3, 4], 0), logits_for=[3])[0]
    b = be.forward(chain_feed([4], 3), logits_for=[0])[0]
    assert torch.allclose(a, b, atol=1e-5)
    with pytest.raises(ValueError, match="another model"):
        TransformersBackend(tiny_model(seed=5), decode_model=be.decode_model)


def test_moving_prepares_the_model_again():
    model = tiny_model(seed=6)
    be = TransformersBackend(model)
    moved = be.moved(torch.device("cpu"))
    assert moved is not be and moved.torch_model is model and moved.decode_model is not be.decode_model


@pytest.mark.parametrize("mask", [True, False])
@pytest.mark.parametrize("past", [0, 7])
def test_the_grouped_attention_gives_the_bits_of_transformers_own_grouped_sdpa(mask, past, monkeypatch):
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    model = tiny_model(seed=7)
    module = model.model.layers[0].self_attn  # 4 query heads over 2 key/value heads
    g = torch.Generator().manual_seed(past)
    q, kv = 5, past + 5
    query = torch.randn(1, 4, q, 16, generator=g)
    key, value = torch.randn(1, 2, kv, 16, generator=g), torch.randn(1, 2, kv, 16, generator=g)
    attn = None
    if mask:  # causal over the cache, as an additive [1, 1, q, kv] mask
        allowed = torch.arange(kv)[None, :] <= past + torch.arange(q)[:, None]  # [q, kv]
        attn = torch.zeros(q, kv).masked_fill(~allowed, float("-inf"))[None, None]
    ours, _ = attention.grouped_sdpa(module, query, key, value, attn, dropout=0.0, scaling=0.25)
    monkeypatch.setenv("TRANSFORMERS_SDPA_FORCE_GQA", "1")  # how the backend asked for it before
    theirs, _ = sdpa_attention_forward(module, query, key, value, attn, dropout=0.0, scaling=0.25)
    monkeypatch.delenv("TRANSFORMERS_SDPA_FORCE_GQA")
    assert torch.equal(ours, theirs)
    one, _ = attention.grouped_sdpa(module, query[:, :, :1], key, value, None, dropout=0.0, scaling=0.25)
    stock, _ = sdpa_attention_forward(module, query[:, :, :1], key, value, None, dropout=0.0, scaling=0.25)
    assert torch.equal(one, stock)  # one row: transformers' own path
    assert "TRANSFORMERS_SDPA_FORCE_GQA" not in os.environ


def test_decoding_sets_no_environment_variable(monkeypatch):
    monkeypatch.delenv("TRANSFORMERS_SDPA_FORCE_GQA", raising=False)
    be = TransformersBackend(tiny_model(seed=8))
    env = dict(os.environ)
    be.forward(draft_feed(5, 0, Draft((6, 7, 8), (-1, 0, -1))))
    assert dict(os.environ) == env
