"""The AVX-512 row kernel (backends/rows.cpp): its products, its row independence, its store, and the
backend's passes and greedy decoding on it."""

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from polyverse.backends.cpu import rows
from polyverse.backends.transformers import TransformersBackend
from polyverse.config import GenerationConfig
from polyverse.draft import Draft
from polyverse.layout import chain_feed, draft_feed
from polyverse.loop import decode
from polyverse.methods.ar import ARProposer
from polyverse.methods.jacobi import JacobiConfig, JacobiProposer
from polyverse.models.tiny import tiny_model

pytestmark = pytest.mark.skipif(rows.extension() is None, reason="the row kernel cannot be built or run here")


def _weight(n: int, k: int, seed: int) -> torch.Tensor:
    return torch.randn(n, k, generator=torch.Generator().manual_seed(seed))


@settings(max_examples=40, deadline=None)
@given(m=st.integers(1, 30), panels=st.integers(1, 5), k=st.integers(1, 70), seed=st.integers(0, 1000))
def test_the_kernel_equals_linear(m, panels, k, seed):
    w = _weight(32 * panels, k, seed)  # [n, k]
    x = _weight(m, k, seed + 1)  # [m, k]
    out = rows.extension().linear(x, rows.extension().pack(w))  # [m, n]
    assert out.shape == (m, 32 * panels)
    assert torch.allclose(out, x @ w.t(), atol=1e-4 * k ** 0.5)


@settings(max_examples=30, deadline=None)
@given(m=st.integers(2, 16), seed=st.integers(0, 1000), data=st.data())
def test_a_row_does_not_depend_on_the_other_rows(m, seed, data):
    # a 9-token Jacobi pass and a 1-token AR pass must compute a row with the same bits
    ext = rows.extension()
    panels = ext.pack(_weight(96, 200, seed))
    x = _weight(m, 200, seed + 1)
    i = data.draw(st.integers(0, m - 1))
    together = ext.linear(x, panels)[i]
    alone = ext.linear(x[i : i + 1].contiguous(), panels)[0]
    assert torch.equal(together, alone)


def test_pack_and_linear_refuse_shapes_they_cannot_take():
    ext = rows.extension()
    with pytest.raises(RuntimeError, match="multiple of 32"):
        ext.pack(torch.randn(40, 8))
    with pytest.raises(RuntimeError, match="does not fit"):
        ext.linear(torch.randn(2, 9), ext.pack(torch.randn(32, 8)))


def test_the_store_packs_once_repacks_a_changed_weight_and_leaves_what_it_cannot_take():
    store = rows.RowWeights()
    layer = torch.nn.Linear(24, 64)
    x = torch.randn(1, 5, 24)
    with torch.inference_mode():
        out = store.run(layer, x)  # [1, 5, 64]
        assert out.shape == (1, 5, 64) and len(store) == 1
        assert torch.allclose(out, x @ layer.weight.t() + layer.bias, atol=1e-5)
        layer.weight.mul_(2.0)  # changed in place: packed again
        assert torch.allclose(store.run(layer, x), x @ layer.weight.t() + layer.bias, atol=1e-5)
        assert store.run(torch.nn.Linear(24, 40), x) is None  # 40 columns: not whole panels
        assert store.run(layer, torch.randn(rows.MAX_ROWS + 1, 24)) is None  # a prefill: torch's product
        assert store.run(torch.nn.Linear(24, 64).double(), x.double()) is None  # float64
        assert len(store) == 1
    assert store.run(layer, x) is None  # autograd on: training keeps the stock path


@pytest.fixture(scope="module")
def model():
    return tiny_model(seed=5)


@pytest.mark.parametrize("draft_len", [0, 3, 8])
def test_passes_on_the_kernel_match_a_full_forward(model, draft_len):
    assert not rows.worth_it(model)  # a toy model: only when asked
    be = TransformersBackend(model, row_kernel=True)
    assert isinstance(be.decode_model.store, rows.RowWeights)
    ctx = [5, 17, 42, 8, 9, 33]
    be.forward(chain_feed(ctx[:-1], 0), logits_for=[])
    be.commit(range(len(ctx) - 1))
    draft = Draft.chain([(20 + 3 * i) % 90 for i in range(draft_len)])
    logits = be.forward(draft_feed(ctx[-1], len(ctx) - 1, draft))[:]  # [1 + draft_len, V]
    with torch.no_grad():
        ref = model(input_ids=torch.tensor([ctx + list(draft.tokens)])).logits[0]
    assert len(be.decode_model.store) > 0  # the body's products went through the kernel
    assert torch.allclose(logits, ref[len(ctx) - 1 :], atol=1e-4)


def test_jacobi_on_the_kernel_says_what_ar_says(model):
    be = TransformersBackend(model, row_kernel=True)
    cfg = GenerationConfig(max_new_tokens=40)
    prompt = [3, 14, 15, 92, 65]
    ar = [t for s in decode(be, ARProposer(), prompt, cfg) for t in s.tokens]
    jac = [t for s in decode(be, JacobiProposer(JacobiConfig(block=6)), prompt, cfg) for t in s.tokens]
    assert len(ar) == 40 and jac == ar


def test_the_backend_refuses_the_kernel_where_it_cannot_run(model, monkeypatch):
    monkeypatch.setattr(rows, "available", lambda device, dtype: False)
    with pytest.raises(ValueError, match="row kernel"):
        TransformersBackend(model, row_kernel=True)


def test_only_avx512_cpus_are_supported():
    assert rows.supported(frozenset({"avx512f", "fma", "avx2"}))
    assert not rows.supported(frozenset({"avx2", "fma"}))
