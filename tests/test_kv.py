"""The in-place KV cache layer (``backends.kv``) against transformers' ``DynamicLayer``."""

import copy

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from transformers import DynamicCache
from transformers.cache_utils import DynamicLayer

from polyverse import registry
from polyverse.backends.kv import GrowingLayer, capacity_for, growing_cache
from polyverse.backends.transformers import TransformersBackend
from polyverse.config import GenerationConfig
from polyverse.draft import Draft
from polyverse.layout import chain_feed, draft_feed
from polyverse.logits import Logits
from polyverse.loop import decode
from polyverse.models.tiny import tiny_model
from polyverse.registry import MethodContext
from polyverse.sampling import make_generator

B, H, D, DV = 1, 2, 4, 3  # values with a head size of their own, as some models have


def states(g: torch.Generator, q: int) -> tuple[torch.Tensor, torch.Tensor]:
    return torch.randn(B, H, q, D, generator=g), torch.randn(B, H, q, DV, generator=g)  # [B, H, q, D], [B, H, q, DV]


def keep_reference(layer: DynamicLayer, start: int, index: list[int]) -> None:
    """What the backend did before: rebuild the tensors from the committed and the kept entries."""
    rows = torch.tensor(list(range(start)) + [start + i for i in index], dtype=torch.long)
    layer.keys = layer.keys.index_select(-2, rows)
    layer.values = layer.values.index_select(-2, rows)


def assert_same(ours: GrowingLayer, ref: DynamicLayer) -> None:
    assert ours.get_seq_length() == ref.get_seq_length()
    assert ours.get_mask_sizes(3) == ref.get_mask_sizes(3)
    if ref.get_seq_length():
        assert torch.equal(ours.keys, ref.keys) and torch.equal(ours.values, ref.values)


# an operation: ("update", q), ("crop", n), ("keep", pending, picks) or ("reset",)
OPS = st.one_of(
    st.tuples(st.just("update"), st.integers(1, 7)),
    st.tuples(st.just("crop"), st.integers(0, 9)),
    st.tuples(st.just("keep"), st.integers(1, 6), st.lists(st.integers(0, 5), max_size=6)),
    st.tuples(st.just("reset")),
)


@settings(max_examples=200, deadline=None)
@given(ops=st.lists(OPS, min_size=1, max_size=30), least=st.integers(1, 8), seed=st.integers(0, 1000))
def test_layer_matches_dynamic_layer(ops, least, seed):
    g = torch.Generator().manual_seed(seed)
    ours, ref = GrowingLayer(max_length=64, least=least), DynamicLayer()
    for op in ops:
        if op[0] == "update":
            k, v = states(g, op[1])
            got, want = ours.update(k, v), ref.update(k, v)
            assert torch.equal(got[0], want[0]) and torch.equal(got[1], want[1])
        elif op[0] == "crop":
            if not ref.get_seq_length():
                continue  # transformers 5.17's DynamicLayer cannot crop an empty layer (5.25 can)
            ours.crop(-op[1])
            ref.crop(-op[1])
        elif op[0] == "keep":  # a pass of `pending` entries, then a subset of them kept
            k, v = states(g, op[1])
            ours.update(k, v)
            ref.update(k, v)
            start = ref.get_seq_length() - op[1]
            picks = sorted({i for i in op[2] if i < op[1]})
            ours.keep(start, torch.tensor(picks, dtype=torch.long))
            keep_reference(ref, start, picks)
        else:
            ours.reset()
            ref.reset()
        assert_same(ours, ref)


def test_keep_example():
    layer = GrowingLayer(least=8)
    k = torch.arange(7.0).view(1, 1, 7, 1)  # [1, 1, 7, 1]: entry i holds i
    layer.update(k, -k)
    layer.keep(4, torch.tensor([0, 2]))
    assert layer.keys.flatten().tolist() == [0, 1, 2, 3, 4, 6]
    assert layer.values.flatten().tolist() == [0, -1, -2, -3, -4, -6]
    assert layer.get_seq_length() == 6 and layer.capacity == 8


def test_growth_doubles_keeps_the_entries_and_stops_at_the_context_window():
    g = torch.Generator().manual_seed(0)
    layer, ref = GrowingLayer(max_length=20, least=4), DynamicLayer()
    caps = []
    for q in [3, 1, 1, 2, 5, 6, 4]:
        k, v = states(g, q)
        layer.update(k, v)
        ref.update(k, v)
        caps.append(layer.capacity)
        assert_same(layer, ref)
    assert caps == [4, 4, 8, 8, 16, 20, 22]  # doubled, capped at 20, then exactly what one update needs
    assert capacity_for(300, 256, 2048) == 512 and capacity_for(3000, 2048, 2048) == 3000


def test_a_pass_copies_no_more_than_its_own_states():
    """The point of the layer: an update within the capacity writes into the buffer, no new storage."""
    g = torch.Generator().manual_seed(1)
    layer = GrowingLayer(least=32)
    layer.update(*states(g, 10))
    ptr = layer._k.data_ptr()
    keys, values = layer.update(*states(g, 9))
    assert layer._k.data_ptr() == ptr and keys.data_ptr() == ptr  # a view of the same buffer
    assert keys.shape == (B, H, 19, D) and values.shape == (B, H, 19, DV)
    layer.crop(-5)
    assert layer._k.data_ptr() == ptr and layer.get_seq_length() == 14


def test_fork_owns_its_buffers():
    g = torch.Generator().manual_seed(2)
    layer = GrowingLayer(least=16)
    layer.update(*states(g, 5))
    before = layer.keys.clone(), layer.values.clone()
    other = copy.deepcopy(layer)
    assert other._k.data_ptr() != layer._k.data_ptr() and other._v.data_ptr() != layer._v.data_ptr()
    assert other.capacity == layer.capacity
    assert torch.equal(other.keys, before[0]) and torch.equal(other.values, before[1])
    other.crop(-2)
    other.update(*states(g, 4))  # overwrites entries 3.. of the fork's buffer only
    other.keep(3, torch.tensor([1]))
    assert torch.equal(layer.keys, before[0]) and torch.equal(layer.values, before[1])
    assert layer.get_seq_length() == 5 and other.get_seq_length() == 4


def test_growing_cache_replaces_only_plain_dynamic_layers():
    m = tiny_model(seed=1)
    cache = growing_cache(m.config, 512)
    assert isinstance(cache, DynamicCache)
    assert len(cache.layers) == m.config.num_hidden_layers
    assert all(type(layer) is GrowingLayer for layer in cache.layers)
    cfg = copy.deepcopy(m.config)
    cfg.sliding_window, cfg.layer_types = 8, ["sliding_attention", "full_attention"]
    mixed = growing_cache(cfg, 512)
    assert type(mixed.layers[0]) is not GrowingLayer and type(mixed.layers[1]) is GrowingLayer


# the backend: the new cache against the DynamicCache it replaces ---------------------------------


@pytest.fixture(scope="module")
def model():
    return tiny_model(seed=11)


def backends(model, least=2):
    """The backend as it is (growing from ``least`` entries) and one on a plain DynamicCache; a
    reset (the decode loop starts with one) makes each a fresh cache of its own kind again."""
    new, old = TransformersBackend(model), TransformersBackend(model)
    on_reset(new, lambda: growing_cache(model.config, new.max_length, least=least))
    on_reset(old, lambda: DynamicCache(config=model.config))
    return new, old


def on_reset(be, make) -> None:
    reset = be.reset

    def fresh():
        reset()
        be.cache = make()

    be.reset = fresh
    fresh()


def test_backend_operations_give_the_logits_of_the_dynamic_cache(model):
    new, old = backends(model)
    ctx = [5, 17, 42, 8, 9, 33]
    log = []
    for be in (new, old):
        out = []
        out.append(be.forward(chain_feed(ctx[:-1], 0), logits_for=[4]))
        be.commit(range(5))
        draft = Draft((20, 21, 30, 31, 32), (-1, 0, -1, 2, 3))
        out.append(be.forward(draft_feed(ctx[-1], 5, draft), logits_for=range(6)))
        be.commit([0, 3, 4, 5])  # the pending token and the second branch: not a prefix
        fork = be.fork()
        out.append(be.forward(chain_feed([7, 8, 9], 9), logits_for=range(3)))
        be.commit([0, 1])
        out.append(fork.forward(chain_feed([11], 9), logits_for=[0]))  # the fork sees none of it
        fork.commit([0])
        be.truncate(7)
        out.append(be.forward(draft_feed(3, 7, Draft((4, 5, 6), (-1, -1, 1))), logits_for=range(4)))
        be.commit([0, 2, 3])
        out.append(be.forward(chain_feed(list(range(40, 60)), 10), logits_for=range(20)))  # past a few doublings
        be.commit(range(20))
        out.append(fork.forward(chain_feed([12, 13], 10), logits_for=range(2)))
        log.append(out)
    for a, b in zip(*log):
        assert isinstance(a, Logits) and torch.equal(a.full(), b.full())
    assert new.cache.layers[0].capacity >= 30 and new.cache.layers[0].get_seq_length() == 30


def recording(be):
    """The backend, its pass outputs (hidden states where the head runs lazily) and commits recorded."""
    seen, commits = [], []
    forward, commit = be.forward, be.commit

    def recorded_forward(feed, logits_for=None):
        out = forward(feed, logits_for)
        seen.append(out.hidden.clone())  # hidden states where the head runs lazily, else the logits
        return out

    def recorded_commit(keep):
        commits.append(list(keep))
        commit(commits[-1])

    be.forward, be.commit = recorded_forward, recorded_commit
    return seen, commits


@pytest.mark.parametrize("seed", [0, 1])
@pytest.mark.parametrize("method,options", [
    ("ar", {}), ("jacobi", {"block": 4, "live": False}), ("lookahead", {"window": 3, "ngram": 3, "guesses": 2}),
    ("space", {"k": 2, "mask_id": 7, "live": False}), ("prompt_lookup", {}),  # drafts that do not follow timing
])
def test_greedy_decoding_is_that_of_the_dynamic_cache(method, options, seed):
    m = tiny_model(seed=seed, vocab_size=8)  # a small vocabulary: guesses are often accepted
    cfg = GenerationConfig(max_new_tokens=40)
    runs = []
    new, old = backends(m)
    for be in (new, old):
        gen = make_generator(0)
        spec = registry.get(method)
        proposer = spec.factory(spec.make_config(options), MethodContext(be, cfg.sampling, gen))
        seen, commits = recording(be)  # after the factory: space measures its cost curve once per model
        tokens = [t for s in decode(be, proposer, [3, 4, 5, 3, 4], cfg, gen) for t in s.tokens]
        runs.append((tokens, seen, commits))
    assert type(new.cache.layers[0]) is GrowingLayer and type(old.cache.layers[0]) is DynamicLayer
    (tokens, seen, commits), (ref_tokens, ref_seen, ref_commits) = runs
    assert tokens == ref_tokens and commits == ref_commits
    assert len(seen) == len(ref_seen) and all(torch.equal(a, b) for a, b in zip(seen, ref_seen))
    if method in ("lookahead", "space", "prompt_lookup"):  # the in-place keep was exercised
        assert any(keep != list(range(len(keep))) for keep in commits)
