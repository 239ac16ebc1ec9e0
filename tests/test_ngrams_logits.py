"""NgramIndex continuations (including self-overlapping copies) and on-demand logits."""

import pytest
import torch
from hypothesis import given, settings, strategies as st

from polyverse.backends.cpu.head import Projection
from polyverse.logits import Logits
from polyverse.ngrams import NgramIndex


def test_periodic_text_continues_through_the_copy():
    idx = NgramIndex(3)
    idx.extend([7, 8, 7, 8])
    assert idx.continuations(6, 3) == [[7, 8, 7, 8, 7, 8]]


def test_longest_match_first_then_most_recent():
    idx = NgramIndex(3)
    idx.extend([1, 2, 3, 9, 2, 4, 1, 2])
    # (1, 2) ends at 1 -> [3, 9, 2]; then 1-gram (2) ends at 4 -> [4, 1, 2]
    assert idx.continuations(3, 5) == [[3, 9, 2], [4, 1, 2]]


def test_no_match_no_continuation():
    idx = NgramIndex(2)
    idx.extend([1, 2, 3])
    assert idx.continuations(4, 2) == []


@settings(max_examples=60, deadline=None)
@given(st.lists(st.integers(0, 3), min_size=2, max_size=40), st.integers(1, 12))
def test_continuation_is_what_a_repeat_of_the_match_would_write(tokens, k):
    """Following a match ending at e means the text from e+1 repeats: token i of the copy equals
    text[e + 1 + i] of the text extended by the copy itself."""
    idx = NgramIndex(3)
    idx.extend(tokens)
    for cont in idx.continuations(k, 10):
        assert 1 <= len(cont) <= k
        ok = False
        for e in range(len(tokens) - 1):
            ext = list(tokens)
            src = e + 1
            for t in cont:
                if ext[src] != t:
                    break
                ext.append(t)
                src += 1
            else:
                if tokens[e] == tokens[-1]:
                    ok = True
        assert ok


def test_lazy_logits_match_the_full_projection():
    torch.manual_seed(0)
    head = torch.nn.Linear(16, 50, bias=False)
    hidden = torch.randn(20, 16)
    full = head(hidden).detach()
    lazy = Logits(hidden, Projection(head), 50)
    assert torch.allclose(lazy[0], full[0], atol=1e-5)
    assert lazy.computed() == 2  # the first read projects its row and the next
    assert torch.allclose(lazy[3], full[3], atol=1e-5)
    assert lazy.computed() == 2 + 8  # later misses project a block
    assert torch.allclose(lazy[1], full[1], atol=1e-5)
    assert lazy.computed() == 2 + 8
    assert torch.allclose(lazy[:], full, atol=1e-5)


def test_lazy_rows_read_out_of_order_are_their_own_rows():
    torch.manual_seed(2)
    head = torch.nn.Linear(8, 30, bias=False)
    hidden = torch.randn(10, 8)
    full = head(hidden).detach()
    for order in ([5, 3, 4], [2, 4, 3, 5], [7, 8, 9]):  # runs of rows go through a view, others not
        assert torch.allclose(Logits(hidden, Projection(head), 30)[order], full[order], atol=1e-5)


def test_projection_follows_weight_updates():
    head = torch.nn.Linear(4, 6, bias=False)
    proj = Projection(head)
    h = torch.randn(1, 4)
    proj(h)
    with torch.no_grad():
        head.weight.mul_(2.0)
    assert torch.allclose(proj(h), head(h).detach(), atol=1e-6)


@pytest.mark.parametrize("tuned", [False, True])  # weight @ hidden.T (AMD) or the stock head (Intel's MKL)
@pytest.mark.parametrize("rows", [1, 2, 5, 9])
def test_projection_matches_the_head_for_any_row_count(rows, tuned, monkeypatch):
    from polyverse.backends.cpu import features as cpu

    monkeypatch.setattr(cpu, "mkl_tuned", lambda path=cpu.SYSTEM: tuned)
    torch.manual_seed(rows)
    head = torch.nn.Linear(12, 40, bias=False)
    h = torch.randn(rows, 12)
    proj = Projection(head)
    assert proj.fast is (not tuned)
    out = proj(h)
    assert out.shape == (rows, 40) and out.is_contiguous() and out.dtype == torch.float32
    assert torch.allclose(out, head(h).detach(), atol=1e-5)


def test_a_packed_head_is_used_on_any_cpu_when_asked(monkeypatch):
    from polyverse.backends.cpu import features as cpu
    from polyverse.backends.cpu import packed

    if not packed.available(torch.device("cpu"), torch.float32):
        pytest.skip("this torch has no oneDNN packed products")
    torch.manual_seed(0)
    head = torch.nn.Linear(12, 40, bias=False)
    h = torch.randn(3, 12)
    for tuned in (True, False):  # the vendor rule picks the unpacked product, not whether a store asked for is used
        monkeypatch.setattr(cpu, "mkl_tuned", lambda path=cpu.SYSTEM, tuned=tuned: tuned)
        store = packed.PackedWeights()
        with torch.inference_mode():  # as in a pass
            out = Projection(head, store)(h)
        assert len(store) == 1 and torch.allclose(out, head(h).detach(), atol=1e-5)


def test_logits_of_computed_rows_index_like_the_tensor():
    full = torch.randn(5, 7)
    logits = Logits.of(full)
    assert len(logits) == 5 and logits.shape == (5, 7) and logits.computed() == 5
    assert torch.equal(logits[1], full[1]) and torch.equal(logits[-1], full[4])
    assert torch.equal(logits[2:], full[2:]) and torch.equal(logits[[3, 0]], full[[3, 0]])
    assert torch.equal(torch.stack(list(logits)), full) and torch.equal(logits.full(), full)
    assert logits[[]].shape == (0, 7) and len(Logits.of(torch.empty(0, 7))) == 0
    with pytest.raises(IndexError):
        logits[5]


def test_lazy_logits_index_iterate_and_read_every_row_once():
    torch.manual_seed(1)
    head = torch.nn.Linear(6, 11, bias=False)
    hidden = torch.randn(12, 6)
    calls = []
    lazy = Logits(hidden, lambda h: calls.append(len(h)) or head(h), 11)
    rows = list(lazy)
    assert len(rows) == 12 and torch.allclose(torch.stack(rows), head(hidden).detach(), atol=1e-6)
    assert sum(calls) == 12 and torch.equal(lazy[[2, 5]], torch.stack([rows[2], rows[5]]))


def test_the_core_logits_module_imports_no_backend():
    import ast
    import inspect

    import polyverse.logits as core

    tree = ast.parse(inspect.getsource(core))
    modules = [n.module or "" for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)]
    modules += [a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names]
    assert not [m for m in modules if "backends" in m]


_SPECIAL = st.sampled_from([float("nan"), float("inf"), float("-inf"), 0.0, -0.0, 1.0, 1.0])


@settings(max_examples=200, deadline=None)
@given(st.lists(st.one_of(_SPECIAL, st.floats(-4, 4, width=32)), min_size=1, max_size=64))
def test_first_max_chooses_what_torch_argmax_chooses(values):
    """Ties, NaNs and infinities: the numpy search gives torch's index (the verifier's greedy token)."""
    from polyverse.logits import first_max

    row = torch.tensor(values, dtype=torch.float32)  # [V]
    assert first_max(row) == int(row.argmax())
    assert first_max(row.double()) == int(row.double().argmax())  # another type: torch's own search
    logits = Logits.of(row.unsqueeze(0))
    assert logits.top(0) == int(row.argmax())


def test_first_maxes_of_rows_with_ties_and_nans_and_a_padded_head():
    from polyverse.logits import first_maxes

    torch.manual_seed(0)
    x = torch.randn(12, 70)
    x[1, [5, 9, 40]] = 9.0  # equal largest values: the first
    x[2, 0] = 9.0  # the first column
    x[3, 59] = 9.0  # the last column
    x[4, 60] = 99.0  # beyond the vocabulary (a head padded to 70 columns): not a candidate
    x[5, [7, 30]] = float("nan")  # a NaN: the first one
    x[6, 0] = float("nan")
    x[7, :] = float("-inf")
    x[8, 3] = float("inf")
    rows = x[:, :60]  # not contiguous, as the lean head's [m, V] view of its padded product
    want = [int(r.argmax()) for r in rows]
    assert want[1] == 5 and want[5] == 7 and want[3] == 59
    assert first_maxes(rows) == want
    assert first_maxes(torch.empty(0, 60)) == []
