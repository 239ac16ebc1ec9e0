import pytest
import torch

from polyverse.backends.transformers import TransformersBackend
from polyverse.draft import Draft
from polyverse.layout import chain_feed, draft_feed
from polyverse.models.tiny import tiny_model


@torch.no_grad()
def reference_logits(model, tokens):
    """Logits of a plain full forward pass, no cache: [len(tokens), V]."""
    return model(input_ids=torch.tensor([tokens])).logits[0].float()


@pytest.fixture(scope="module")
def model():
    return tiny_model(seed=11)


def test_tree_pass_matches_separate_passes(model):
    be = TransformersBackend(model)
    ctx = [5, 17, 42, 8, 9, 33]
    be.forward(chain_feed(ctx[:-1], 0), logits_for=[])
    be.commit(range(len(ctx) - 1))
    # two branches below the pending token: (20, 21) and (30, 31, 32)
    draft = Draft((20, 21, 30, 31, 32), (-1, 0, -1, 2, 3))
    logits = be.forward(draft_feed(ctx[-1], len(ctx) - 1, draft))  # [6, V]
    ref_a = reference_logits(model, ctx + [20, 21])
    ref_b = reference_logits(model, ctx + [30, 31, 32])
    assert torch.allclose(logits[0], ref_a[len(ctx) - 1], atol=1e-4)
    assert torch.allclose(logits[1:3], ref_a[len(ctx):], atol=1e-4)
    assert torch.allclose(logits[3:6], ref_b[len(ctx):], atol=1e-4)


def test_commit_of_a_branch_then_continue(model):
    be = TransformersBackend(model)
    ctx = [5, 17, 42, 8]
    be.forward(chain_feed(ctx[:-1], 0), logits_for=[])
    be.commit(range(3))
    draft = Draft((20, 21, 30, 31), (-1, 0, -1, 2))
    be.forward(draft_feed(ctx[-1], 3, draft))
    be.commit([0, 3, 4])  # keep pending token + the second branch (30, 31)
    assert be.length == 6
    nxt = be.forward(chain_feed([77], 6))
    ref = reference_logits(model, ctx + [30, 31, 77])
    assert torch.allclose(nxt[0], ref[-1], atol=1e-4)


def test_logits_for_selects_rows(model):
    be = TransformersBackend(model)
    full = be.forward(chain_feed([1, 2, 3, 4], 0))
    be.truncate(0)
    some = be.forward(chain_feed([1, 2, 3, 4], 0), logits_for=[1, 3])
    assert torch.allclose(some.full(), full[[1, 3]], atol=1e-5)
    be.truncate(0)
    last = be.forward(chain_feed([1, 2, 3, 4], 0), logits_for=[3])
    assert torch.allclose(last[0], full[3], atol=1e-5)


def test_forward_twice_without_commit_is_an_error(model):
    be = TransformersBackend(model)
    be.forward(chain_feed([1, 2], 0))
    with pytest.raises(RuntimeError):
        be.forward(chain_feed([3], 2))


def test_truncate_and_fork(model):
    be = TransformersBackend(model)
    be.forward(chain_feed([1, 2, 3, 4, 5], 0), logits_for=[])
    be.commit(range(5))
    other = be.fork()
    be.truncate(2)
    assert be.length == 2 and other.length == 5
    a = be.forward(chain_feed([9], 2))
    b = other.forward(chain_feed([9], 5))
    assert torch.allclose(a[0], reference_logits(model, [1, 2, 9])[-1], atol=1e-4)
    assert torch.allclose(b[0], reference_logits(model, [1, 2, 3, 4, 5, 9])[-1], atol=1e-4)
    with pytest.raises(ValueError):
        other.commit([3, 1])


@pytest.mark.parametrize("rows", [1, 2, 3, 4, 7])
def test_few_row_products_equal_linear(rows):
    from polyverse.backends.cpu.few_rows import FewRows

    torch.manual_seed(rows)
    x = torch.randn(1, rows, 24)
    w = torch.randn(40, 24)
    b = torch.randn(40)
    store = FewRows()
    out = store.linear(x, w)  # [1, rows, 40]
    assert out.shape == (1, rows, 40) and out.is_contiguous()
    assert torch.allclose(out, x @ w.t(), atol=1e-5)
    assert store.eligible(x, w, None) and not store.eligible(x, w, b)  # a bias: stock path


@pytest.mark.parametrize("draft_len", [1, 2, 3])
def test_small_passes_match_a_full_forward(model, draft_len, monkeypatch):
    # passes of 2 to 4 tokens run through FewRows (where the CPU is not MKL's own, as on AMD):
    # their logits must still be the model's
    from polyverse.backends.cpu import features, few_rows

    monkeypatch.setattr(features, "mkl_tuned", lambda path=features.SYSTEM: False)
    assert few_rows.wanted(draft_len + 1, torch.device("cpu"))
    be = TransformersBackend(model, row_kernel=False)
    assert be.decode_model.lm(draft_len + 1) is not be.decode_model.lm(1)  # the few-row view
    ctx = [5, 17, 42, 8, 9, 33]
    be.forward(chain_feed(ctx[:-1], 0), logits_for=[])
    be.commit(range(len(ctx) - 1))
    draft = Draft.chain([20, 21, 22][:draft_len])
    logits = be.forward(draft_feed(ctx[-1], len(ctx) - 1, draft))[:]  # [1 + draft_len, V]
    ref = reference_logits(model, ctx + list(draft.tokens))
    assert torch.allclose(logits, ref[len(ctx) - 1 :], atol=1e-4)


@pytest.mark.parametrize("rows", [1, 3, 16])
def test_packed_linear_equals_linear(rows):
    from polyverse.backends.cpu import packed
    from polyverse.backends.cpu.store import StoreLinear

    if not packed.available(torch.device("cpu"), torch.float32):
        pytest.skip("this torch has no oneDNN packed products")
    torch.manual_seed(rows)
    x = torch.randn(1, rows, 24)
    layer = torch.nn.Linear(24, 40)
    w, b = layer.weight, layer.bias
    store = packed.PackedWeights()
    with torch.inference_mode():
        out = store.linear(x, w)  # [1, rows, 40]
        with_bias = StoreLinear(layer, store)(x)  # through the store
    assert out.shape == (1, rows, 40)
    assert torch.allclose(out, x @ w.t(), atol=1e-5)
    assert torch.allclose(with_bias, x @ w.t() + b, atol=1e-5)
    assert len(store) == 1  # one weight, packed once
    with torch.no_grad():
        w.mul_(2.0)  # changed in place: packed again on its next use
    with torch.inference_mode():
        again = store.linear(x, w)
    assert torch.allclose(again, x @ w.t(), atol=1e-5)
    # with autograd on, the stock path runs (training never sees packed weights)
    assert not store.eligible(x, w, b)


@pytest.mark.parametrize("draft_len", [0, 5, 15])
def test_packed_passes_match_a_full_forward(model, draft_len):
    # the backend's passes run on packed weights here: their logits must still be the model's
    from polyverse.backends.cpu import packed

    if not packed.available(torch.device("cpu"), torch.float32):
        pytest.skip("this torch has no oneDNN packed products")
    assert not packed.worth_it(model)  # a toy model: not packed unless asked
    be = TransformersBackend(model, packed_weights=True)
    assert isinstance(be.decode_model.store, packed.PackedWeights)
    ctx = [5, 17, 42, 8, 9, 33]
    be.forward(chain_feed(ctx[:-1], 0), logits_for=[])
    be.commit(range(len(ctx) - 1))
    draft = Draft.chain([(20 + i) % 50 for i in range(draft_len)])
    logits = be.forward(draft_feed(ctx[-1], len(ctx) - 1, draft))[:]  # [1 + draft_len, V]
    ref = reference_logits(model, ctx + list(draft.tokens))
    assert len(be.decode_model.store) > 0
    assert torch.allclose(logits, ref[len(ctx) - 1 :], atol=1e-4)


def test_tree_pass_does_not_copy_the_cache_to_every_query_head(model, monkeypatch):
    import transformers.integrations.sdpa_attention as sdpa

    calls = []
    real = sdpa.repeat_kv
    monkeypatch.setattr(sdpa, "repeat_kv", lambda x, n: calls.append(n) or real(x, n))
    be = TransformersBackend(model)
    ctx = [5, 17, 42, 8]
    be.forward(chain_feed(ctx[:-1], 0), logits_for=[])
    be.commit(range(len(ctx) - 1))
    draft = Draft((20, 21, 30), (-1, 0, -1))
    logits = be.forward(draft_feed(ctx[-1], len(ctx) - 1, draft))  # [4, V]: a masked multi-row pass
    assert calls == []
    assert torch.allclose(logits[2], reference_logits(model, ctx + [20, 21])[-1], atol=1e-5)
    with torch.no_grad():  # the model's own masked forward outside the backend still repeats the heads
        model(input_ids=torch.tensor([ctx]), attention_mask=torch.tensor([[0] + [1] * (len(ctx) - 1)]))
    assert calls


def test_cache_goes_under_the_name_this_transformers_takes(model):
    """Newer transformers 5 take the KV cache as ``cache`` and warn on ``past_key_values`` (gone in 5.40)."""
    import warnings

    from polyverse.backends.transformers import cache_kwarg

    class Old(torch.nn.Module):
        def forward(self, input_ids=None, past_key_values=None):
            return input_ids

    class New(torch.nn.Module):
        def forward(self, input_ids=None, cache=None):
            return input_ids

    assert cache_kwarg(Old()) == "past_key_values" and cache_kwarg(New()) == "cache"
    be = TransformersBackend(model)
    with warnings.catch_warnings():
        warnings.simplefilter("error", FutureWarning)
        be.forward(chain_feed([5, 17, 42], 0), logits_for=[2])  # no deprecation warning from the cache argument


def test_the_loop_asks_for_every_row_at_once_when_the_proposer_reads_them_all(model):
    from polyverse.config import GenerationConfig
    from polyverse.loop import decode
    from polyverse.methods.ar import ARProposer
    from polyverse.methods.jacobi import JacobiConfig, JacobiProposer

    class Spy(TransformersBackend):
        asked: list

        def forward(self, feed, logits_for=None):
            self.asked.append((len(feed), None if logits_for is None else list(logits_for)))
            return super().forward(feed, logits_for)

    cfg = GenerationConfig(max_new_tokens=12)
    runs = {}
    for name, proposer in (("jacobi", JacobiProposer(JacobiConfig(block=4))), ("ar", ARProposer())):
        be = Spy(model)
        be.asked = []
        runs[name] = [t for step in decode(be, proposer, [1, 2, 3], cfg) for t in step.tokens]
        passes = be.asked[1:]  # the first feeds the prompt, no rows
        assert passes and be.asked[0][1] == []
        if name == "jacobi":
            assert all(rows == list(range(q)) for q, rows in passes)  # one head product over every row
        else:
            assert all(rows is None for _, rows in passes)  # lazily, as before
    assert runs["jacobi"] == runs["ar"]  # still greedy


def test_cpu_vendor_decides_the_product_path(tmp_path, monkeypatch):
    from polyverse.backends.cpu import features as cpu
    from polyverse.backends.cpu import few_rows

    intel = "processor\t: 0\nvendor_id\t: GenuineIntel\nflags\t\t: fpu avx512f amx_int8\n\nprocessor\t: 1\nvendor_id\t: Other\n"
    assert cpu.parse(intel) == ("GenuineIntel", frozenset({"fpu", "avx512f", "amx_int8"}))
    assert cpu.parse("nothing here") == ("", frozenset())
    (tmp_path / "intel").write_text(intel)
    (tmp_path / "amd").write_text("vendor_id\t: AuthenticAMD\nflags\t\t: fpu avx2\n")
    assert cpu.cpuinfo(str(tmp_path / "amd")) == ("AuthenticAMD", frozenset({"fpu", "avx2"}))
    assert cpu.cpuinfo(str(tmp_path / "missing")) == ("", frozenset())
    assert cpu.mkl_tuned(str(tmp_path / "intel")) == torch.backends.mkl.is_available()
    assert not cpu.mkl_tuned(str(tmp_path / "amd"))
    for tuned in (True, False):  # Intel: stock products; elsewhere the swapped few-row product
        monkeypatch.setattr(cpu, "mkl_tuned", lambda path=cpu.SYSTEM, tuned=tuned: tuned)
        assert few_rows.wanted(3, torch.device("cpu")) is (not tuned)
        assert not few_rows.wanted(1, torch.device("cpu")) and not few_rows.wanted(9, torch.device("cpu"))
