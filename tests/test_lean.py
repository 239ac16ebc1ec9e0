"""The lean CPU pass (backends/cpu/lean): logits against transformers, rows independent of the pass
they share, every weight type and instruction set, its cache, and where it refuses to run."""

import os
from contextlib import contextmanager

import pytest
import torch
from transformers import GPT2Config, GPT2LMHeadModel

from polyverse.backends.cpu import lean, prepare
from polyverse.backends.transformers import TransformersBackend
from polyverse.draft import Draft
from polyverse.layout import Feed, chain_feed, draft_feed
from polyverse.models.tiny import tiny_model

ISAS = [i for i in ("avx512", "avx2") if lean.extension() is not None and lean.isa(env=None) is not None
        and (i == "avx2" or lean.isa(env=None) == "avx512")]
pytestmark = pytest.mark.skipif(not ISAS, reason="the lean pass does not build or run here")
CASES = [(d, i) for d in lean.DTYPES for i in ISAS]


@contextmanager
def instruction_set(isa):
    old = os.environ.get(lean.ISA)
    os.environ[lean.ISA] = isa
    try:
        yield
    finally:
        if old is None:
            os.environ.pop(lean.ISA, None)
        else:
            os.environ[lean.ISA] = old


def make(model, dtype, isa):
    with instruction_set(isa):
        return TransformersBackend(model, dtype=dtype, lean=True)


def test_isa_choice_follows_the_flags_and_the_environment():
    wide = frozenset(lean.AVX512_FLAGS + lean.AVX2_FLAGS)
    narrow = frozenset(lean.AVX2_FLAGS)
    assert lean.isa(wide, "") == "avx512"
    assert lean.isa(wide, "avx2") == "avx2"
    assert lean.isa(narrow, "") == "avx2"
    assert lean.isa(frozenset({"sse2"}), "") is None
    with pytest.raises(ValueError, match="lacks"):
        lean.isa(narrow, "avx512")
    with pytest.raises(ValueError, match="avx512 or avx2"):
        lean.isa(wide, "neon")
    assert lean.default_dtype(wide) == "bf16" and lean.default_dtype(frozenset({"sse2"})) == "fp32"


@pytest.mark.parametrize("isa", ISAS)
def test_fp32_logits_equal_transformers_logit_by_logit(isa):
    """The lean forward is the Llama forward: every logit of every position matches transformers'."""
    model = tiny_model(seed=2, vocab_size=100)
    ids = [5, 9, 3, 44, 17, 8, 8, 61, 2, 30, 11]
    with torch.inference_mode():
        ref = model(torch.tensor([ids])).logits[0]  # [L, V]
    be = make(model, "fp32", isa)
    got = be.forward(chain_feed(ids, 0)).full()  # [L, V]
    assert got.shape == ref.shape
    torch.testing.assert_close(got, ref, atol=2e-5, rtol=1e-5)


@pytest.mark.parametrize("dtype,isa", CASES)
def test_logits_stay_close_to_fp32_in_every_weight_type(dtype, isa):
    """bf16 and int8 round the weights: close to the fp32 logits, not equal (a check that the
    packing and the products are right, with a tolerance for the rounding)."""
    model = tiny_model(seed=2, vocab_size=100, init_scale=0.05)
    ids = [5, 9, 3, 44, 17, 8]
    with torch.inference_mode():
        ref = model(torch.tensor([ids])).logits[0]
    got = make(model, dtype, isa).forward(chain_feed(ids, 0)).full()
    tol = {"fp32": 1e-4, "bf16": 0.03, "int8": 0.06}[dtype] * ref.abs().max().item()
    assert (got - ref).abs().max().item() < tol


@pytest.mark.parametrize("dtype,isa", CASES)
def test_a_row_is_the_same_bits_in_any_pass(dtype, isa):
    """A draft tree's rows equal what one-token passes along each branch compute, bit for bit."""
    model = tiny_model(seed=4, vocab_size=100)
    prompt = [3, 7, 11, 13, 17]
    be = make(model, dtype, isa)
    be.forward(chain_feed(prompt[:-1], 0), logits_for=[])
    be.commit(range(len(prompt) - 1))
    draft = Draft((20, 21, 22, 30, 31), (-1, 0, 1, -1, 3))  # two branches: 20 21 22 and 30 31
    feed = draft_feed(prompt[-1], len(prompt) - 1, draft)
    tree = be.forward(feed).full()  # [6, V]
    be.commit([])
    for branch, rows in (([20, 21, 22], [0, 1, 2, 3]), ([30, 31], [0, 4, 5])):
        solo = make(model, dtype, isa)
        seq = prompt + branch
        for i, tok in enumerate(seq):
            out = solo.forward(chain_feed([tok], i))[0]
            solo.commit([0])
            j = i - (len(prompt) - 1)
            if j >= 0:
                assert torch.equal(out, tree[rows[j]]), (dtype, isa, branch, j)


def test_int8_products_are_the_same_bits_on_both_instruction_sets():
    if "avx512" not in ISAS:
        pytest.skip("no AVX-512 here")
    ext = lean.extension()
    g = torch.Generator().manual_seed(0)
    w, x = torch.randn(96, 128, generator=g), torch.randn(7, 128, generator=g)
    wide, narrow = ext.linear(x, w, lean.KINDS["int8"], True), ext.linear(x, w, lean.KINDS["int8"], False)
    assert torch.equal(wide, narrow)
    assert (wide - x @ w.t()).abs().max() < 0.05 * (x @ w.t()).abs().max()


@pytest.mark.parametrize("dtype", lean.DTYPES)
def test_products_match_a_reference_and_are_row_independent(dtype):
    ext = lean.extension()
    g = torch.Generator().manual_seed(1)
    w, x = torch.randn(64, 96, generator=g), torch.randn(30, 96, generator=g)
    ref = x @ w.t()
    for isa in ISAS:
        rowwise = torch.cat([ext.linear(x[i:i + 1], w, lean.KINDS[dtype], isa == "avx512") for i in range(30)])
        # 30 rows: sweeps of several sizes; 13 and 16: bf16's one sweep of 16 columns at a time;
        # 1 and 2: int8's sweeps of both halves of a panel at once
        for m in (30, 16, 13, 2):
            y = ext.linear(x[:m], w, lean.KINDS[dtype], isa == "avx512")
            assert torch.equal(y, rowwise[:m]), (isa, m)
        tol = {"fp32": 1e-4, "bf16": 0.02, "int8": 0.05}[dtype] * ref.abs().max().item()
        assert (rowwise - ref).abs().max().item() < tol  # every row, as each pass size computes it


def test_cache_keeps_crops_grows_and_forks():
    model = tiny_model(seed=1, vocab_size=100)
    isa = ISAS[0]
    be = make(model, "fp32", isa)
    be.cache.least = 4  # small capacity: growth is exercised
    ids = list(range(3, 34))
    n = len(ids) - 1  # the prompt's cells end just before a key tile's edge: the kept ones cross it
    be.forward(chain_feed(ids[:n], 0), logits_for=[])
    be.commit(range(n))
    draft = Draft((40, 41, 42), (-1, -1, 1))
    be.forward(draft_feed(ids[n], n, draft), logits_for=[])
    be.commit([0, 2, 3])  # the pending token, then 41 -> 42: the middle kept, 40 dropped
    assert be.length == n + 3 and be.cache.length == n + 3
    other = be.fork()
    nxt = be.forward(chain_feed([50], n + 3))[0]
    be.commit([0])
    ref = make(model, "fp32", isa)
    ref.forward(chain_feed(ids[: n + 1] + [41, 42, 50], 0), logits_for=[])
    ref.commit(range(n + 4))
    assert torch.equal(be.cache.keys(n + 4), ref.cache.keys(n + 4))
    want = ref.forward(chain_feed([51], n + 4))  # a pass after the same context
    got = be.forward(chain_feed([51], n + 4))
    assert torch.equal(got[0], want[0])
    # the fork kept its own copy: the state before token 50
    assert other.length == n + 3 and torch.equal(other.forward(chain_feed([50], n + 3))[0], nxt)
    be.truncate(4)
    assert be.length == 4 and be.cache.length == 4


def test_cache_cells_move_between_key_tiles():
    cache = lean.LeanCache(2, 3, 5, least=4)
    cache.reserve(20)
    assert cache.capacity % lean.KEY_TILE == 0 and cache.k.shape == (2, 3, cache.capacity // lean.KEY_TILE, 5, lean.KEY_TILE)
    cache.k.copy_(torch.randn(cache.k.shape))
    cache.v.copy_(torch.randn(cache.v.shape))
    cache.length = 20
    keys, values = cache.keys(20), cache.v[:, :, :20].clone()
    assert keys.shape == (2, 3, 5, 20)
    for c in (0, 17):  # cell c's keys sit in tile c // KEY_TILE, lane c % KEY_TILE
        assert torch.equal(keys[..., c], cache.k[:, :, c // lean.KEY_TILE, :, c % lean.KEY_TILE])
    cache.keep(12, torch.tensor([1, 5, 7]))  # cells 13, 17, 19 -> 12, 13, 14
    assert cache.length == 15
    assert torch.equal(cache.keys(15), torch.cat([keys[..., :12], keys[..., [13, 17, 19]]], dim=-1))
    assert torch.equal(cache.v[:, :, :15], torch.cat([values[:, :, :12], values[:, :, [13, 17, 19]]], dim=2))
    cache.reserve(100)  # grown: the used cells copied over
    assert cache.capacity >= 100 and torch.equal(cache.keys(15), torch.cat([keys[..., :12], keys[..., [13, 17, 19]]], dim=-1))
    other = lean.LeanCache(2, 3, 5)
    other.load_head(cache.head(13), 13)
    assert other.length == 13 and torch.equal(other.keys(13), cache.keys(13))
    assert torch.equal(other.pos[:13], torch.arange(13))


def test_multiverse_sequences_see_their_own_cells():
    """Cells of another sequence are hidden: a token in sequence 1 sees what a plain pass would."""
    model = tiny_model(seed=6, vocab_size=100)
    be = make(model, "bf16", ISAS[0])
    be.forward(chain_feed([3, 4, 5], 0), logits_for=[])
    be.commit(range(3))
    be.copy_seq(0, 1)
    be.forward(Feed((7,), (3,), (-1,), ((0,),)), logits_for=[])  # 7 only in sequence 0
    be.commit([0])
    got = be.forward(Feed((9,), (3,), (-1,), ((1,),)))[0]  # sequence 1: sees 3 4 5, not 7
    be.commit([0])
    plain = make(model, "bf16", ISAS[0])
    plain.forward(chain_feed([3, 4, 5], 0), logits_for=[])
    plain.commit(range(3))
    assert torch.equal(got, plain.forward(chain_feed([9], 3))[0])


def test_other_architectures_keep_the_transformers_pass():
    gpt2 = GPT2LMHeadModel(GPT2Config(n_layer=1, n_embd=64, n_head=2, vocab_size=50, n_positions=64)).eval()
    assert "model type" in lean.unsupported(gpt2)
    assert prepare.choose_lean(gpt2, "fp32") is None  # fp32: the transformers pass stands in
    with pytest.raises(ValueError, match="bf16 weights run only in the lean CPU pass"):
        prepare.choose_lean(gpt2, "bf16")
    with pytest.raises(ValueError, match="unknown weight type"):
        prepare.choose_lean(tiny_model(), "fp8")
    assert prepare.choose_lean(tiny_model(), None) is None  # a toy model: not worth a build by default
    be = TransformersBackend(gpt2, dtype="fp32")
    assert be.lean is None and be.weights == "fp32"


@pytest.mark.parametrize("dtype", lean.DTYPES)
def test_a_merge_reads_cells_in_position_order_whatever_the_schedule(dtype):
    """Two paths decoded in the same passes (cells interleaved) or one after the other (cells
    apart): a token that sees both after the merge gets the same bits either way."""
    model = tiny_model(seed=8, vocab_size=100)

    def conclusion(parallel):
        be = make(model, dtype, ISAS[0])
        be.forward(chain_feed([3, 4, 5], 0), logits_for=[])
        be.commit(range(3))
        be.copy_seq(0, 1)
        be.copy_seq(0, 2)
        paths = {1: [20, 21, 22], 2: [30, 31, 32]}
        if parallel:
            for step in range(3):
                be.forward(Feed((paths[1][step], paths[2][step]), (3 + step, 3 + step), (-1, -1), ((1,), (2,))),
                           logits_for=[])
                be.commit([0, 1])
        else:
            for seq, toks in paths.items():
                for step, tok in enumerate(toks):
                    be.forward(Feed((tok,), (3 + step,), (-1,), ((seq,),)), logits_for=[])
                    be.commit([0])
        be.copy_seq(1, 0)
        be.copy_seq(2, 0)
        return be.forward(Feed((40,), (6,), (-1,), ((0,),)))[0]

    assert torch.equal(conclusion(True), conclusion(False))


def test_every_included_header_is_in_the_extension_digest():
    """A header left out of ``HEADERS`` would not rebuild the extension when it changes."""
    import re

    included = set()
    for path in (lean.SOURCE, *lean.HEADERS):
        included |= set(re.findall(r'#include "([^"]+)"', path.read_text()))
    assert included == {h.name for h in lean.HEADERS}
