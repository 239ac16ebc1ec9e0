"""Every method must be lossless: greedy identical to AR greedy, sampling with the AR distribution."""

import os
from collections import Counter
from functools import lru_cache

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from polyverse import registry
from polyverse.backends.cpu import lean
from polyverse.backends.cpu.lean import ISA
from polyverse.backends.transformers import TransformersBackend
from polyverse.config import GenerationConfig, SamplingConfig
from polyverse.layout import chain_feed
from polyverse.loop import decode
from polyverse.methods.draft_model import DraftModelProposer
from polyverse.models.tiny import tiny_model
from polyverse.registry import MethodContext
from polyverse.sampling import make_generator

from stats_util import Z_REJECT, chi_square_z

# every method with options to test it under (each must equal `ar`)
LOSSLESS_CASES = [
    ("jacobi", {"block": 1}), ("jacobi", {"block": 4}), ("jacobi", {"block": 16}),
    ("lookahead", {"window": 3, "ngram": 3, "guesses": 2}), ("lookahead", {"window": 5, "ngram": 4, "guesses": 5}),
    ("prompt_lookup", {}), ("prompt_lookup", {"num_tokens": 3, "ngram": 1, "candidates": 1}),
    ("early_exit", {"layers": 1, "k": 3}),
    ("draft", {"k": 4}),
    ("auto", {}),
    ("space", {"k": 2, "mask_id": 7}), ("space", {"k": 4, "mask_id": 7}),
]


@lru_cache(maxsize=None)
def model(seed: int, vocab: int):
    return tiny_model(seed=seed, vocab_size=vocab)


def make_proposer(method, options, be, cfg, gen):
    if method == "draft":
        # a second tiny model with the same vocabulary drafts for the target
        draft = model(99, be.vocab_size)
        return DraftModelProposer(TransformersBackend(draft), options.get("k", 4), cfg.sampling, gen)
    spec = registry.get(method)
    return spec.factory(spec.make_config(options), MethodContext(be, cfg.sampling, gen))


# the lean CPU pass in each weight type (and the AVX2 build of it): lossless within each
WEIGHTS = [None, ("fp32", "avx512"), ("bf16", "avx512"), ("int8", "avx512"), ("bf16", "avx2"), ("int8", "avx2")]


def backend(m, weights=None):
    """The transformers pass (weights None), or the lean pass in (weight type, instruction set)."""
    if weights is None:
        return TransformersBackend(m, lean=False)
    dtype, isa = weights
    if not lean_available(isa):
        pytest.skip(f"the lean pass's {isa} build does not run here")
    old = os.environ.get(ISA)
    os.environ[ISA] = isa
    try:
        return TransformersBackend(m, dtype=dtype, lean=True)
    finally:
        if old is None:
            os.environ.pop(ISA, None)
        else:
            os.environ[ISA] = old


def lean_available(isa):
    try:
        return lean.extension() is not None and lean.isa(env=isa) == isa
    except ValueError:
        return False


def run(method, options, m, prompt, cfg, seed=0, weights=None):
    be = backend(m, weights)
    gen = make_generator(seed)
    proposer = make_proposer(method, options, be, cfg, gen)
    steps = list(decode(be, proposer, prompt, cfg, gen))
    return [t for s in steps for t in s.tokens], steps


# a tiny model, a prompt, a budget and a method case: what the greedy suites draw
GREEDY_RUNS = dict(
    seed=st.integers(0, 7),
    vocab=st.sampled_from([8, 100]),
    prompt=st.lists(st.integers(3, 7), min_size=1, max_size=24),
    max_new=st.integers(1, 48),
    case=st.sampled_from(LOSSLESS_CASES),
)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(**GREEDY_RUNS)
def test_greedy_equals_ar(seed, vocab, prompt, max_new, case):
    m = model(seed, vocab)
    cfg = GenerationConfig(max_new_tokens=max_new)
    ar, _ = run("ar", {}, m, prompt, cfg)
    got, _ = run(*case, m, prompt, cfg)
    assert got == ar


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(**GREEDY_RUNS, weights=st.sampled_from(WEIGHTS[1:]))
def test_greedy_equals_ar_per_weight_type(seed, vocab, prompt, max_new, case, weights):
    """On the lean pass every method's greedy output is that weight type's own `ar` output."""
    m = model(seed, vocab)
    cfg = GenerationConfig(max_new_tokens=max_new)
    ar, _ = run("ar", {}, m, prompt, cfg, weights=weights)
    got, _ = run(*case, m, prompt, cfg, weights=weights)
    assert got == ar


@pytest.mark.parametrize("method,options", LOSSLESS_CASES[1:])
def test_guesses_are_both_accepted_and_rejected(method, options):
    if method == "auto":
        pytest.skip("auto may rightly decline to draft; its acceptance is checked in the sampling test")
    accepted = drafted = passes = produced = 0
    for seed in range(6):
        cfg = GenerationConfig(max_new_tokens=40)
        _, steps = run(method, options, model(seed, 8), [3, 4, 5, 6], cfg)
        accepted += sum(s.stats.accepted - 1 for s in steps)
        drafted += sum(s.stats.drafted for s in steps)
        passes += len(steps)
        produced += sum(len(s.tokens) for s in steps)
    assert accepted > 0, "no guess was ever accepted: the test does not exercise acceptance"
    assert accepted < drafted, "every guess was accepted: the test does not exercise rejection"
    assert passes < produced  # more than one token per pass on average


def test_eos_stops_and_max_new_tokens_bounds():
    m = model(2, 8)
    ar, _ = run("ar", {}, m, [3, 4], GenerationConfig(max_new_tokens=30))
    eos = ar[5]
    cfg = GenerationConfig(max_new_tokens=30, eos_token_ids=(eos,))
    for method, options in [("ar", {})] + LOSSLESS_CASES:
        got, steps = run(method, options, m, [3, 4], cfg)
        assert got == ar[: ar.index(eos) + 1], method
        assert got == ar[: ar.index(eos) + 1]
        assert steps[-1].finish_reason == "eos"
        got, steps = run(method, options, m, [3, 4], GenerationConfig(max_new_tokens=7))
        assert len(got) == 7 and steps[-1].finish_reason == "length"


@pytest.mark.parametrize("method,options", [("ar", {})] + LOSSLESS_CASES[1::2])
def test_sampling_with_a_seed_is_reproducible(method, options):
    m = model(1, 100)
    cfg = GenerationConfig(max_new_tokens=30, sampling=SamplingConfig(1.0, top_k=20, top_p=0.95))
    a, _ = run(method, options, m, [5, 6, 7], cfg, seed=42)
    b, _ = run(method, options, m, [5, 6, 7], cfg, seed=42)
    c, _ = run(method, options, m, [5, 6, 7], cfg, seed=43)
    assert a == b
    assert a != c


def last_logits(m, weights):
    """seqs [S, L] -> the logits of each one's last position [S, V], from the model itself (weights
    None) or from the lean pass in that weight type."""
    if weights is None:
        return lambda seqs: m(input_ids=seqs).logits[:, -1]
    be = backend(m, weights)

    def run(seqs):
        rows = []
        for seq in seqs.tolist():
            be.reset()
            rows.append(be.forward(chain_feed(seq, 0))[len(seq) - 1])
        be.reset()
        return torch.stack(rows)  # [S, V]
    return run


@torch.no_grad()
def exact_distribution(m, prompt, temperature, length=3, weights=None):
    """P(t1..t_length | prompt) of AR sampling, enumerated exactly over a small vocabulary."""
    logits = last_logits(m, weights)
    seqs = torch.tensor([prompt])  # [1, L]
    probs = torch.ones(1)  # [S]
    for _ in range(length):
        nxt = torch.softmax(logits(seqs) / temperature, -1)  # [S, V]
        vocab = nxt.shape[-1]
        probs = (probs[:, None] * nxt).reshape(-1)  # [S * V]
        seqs = torch.cat([seqs.repeat_interleave(vocab, 0), torch.arange(vocab).repeat(seqs.shape[0])[:, None]], 1)
    start = len(prompt)
    return {tuple(s[start:].tolist()): float(p) for s, p in zip(seqs, probs)}


def sample_runs(method, options, m, prompt, temperature, n, length=3, weights=None):
    cfg = GenerationConfig(max_new_tokens=length, sampling=SamplingConfig(temperature))
    be = backend(m, weights)
    gen = make_generator(2024)
    counts: Counter = Counter()
    accepted = 0
    for _ in range(n):
        proposer = make_proposer(method, options, be, cfg, gen)
        steps = list(decode(be, proposer, prompt, cfg, gen))
        counts[tuple(t for s in steps for t in s.tokens)] += 1
        accepted += sum(s.stats.accepted - 1 for s in steps)
    return counts, accepted


PROMPT = [3, 5, 4, 3, 5, 4]


SAMPLING_CASES = [
    ("ar", {}), ("jacobi", {"block": 3}), ("lookahead", {"window": 3, "ngram": 3, "guesses": 2}),
    ("prompt_lookup", {"num_tokens": 3}), ("early_exit", {"layers": 1, "k": 2}), ("draft", {"k": 2}), ("auto", {}),
    ("space", {"k": 2, "mask_id": 7}),
]


@pytest.mark.parametrize("method,options", SAMPLING_CASES)
def test_sampling_matches_the_ar_distribution(method, options):
    m = model(4, 8)
    exact = exact_distribution(m, PROMPT, 1.0)
    counts, accepted = sample_runs(method, options, m, PROMPT, 1.0, 3000)
    assert chi_square_z(counts, exact) < Z_REJECT
    if method != "ar":
        # a good share of the tokens came from accepted draft tokens
        assert accepted > 200, accepted


@pytest.mark.parametrize("weights", [("bf16", "avx512"), ("int8", "avx2")])
@pytest.mark.parametrize("method,options", [("jacobi", {"block": 3}), ("auto", {})])
def test_sampling_matches_the_ar_distribution_per_weight_type(method, options, weights):
    """Sampling on the lean pass follows that weight type's own AR distribution."""
    m = model(4, 8)
    exact = exact_distribution(m, PROMPT, 1.0, weights=weights)
    counts, accepted = sample_runs(method, options, m, PROMPT, 1.0, 3000, weights=weights)
    assert chi_square_z(counts, exact) < Z_REJECT
    assert accepted > 200, accepted


def test_distribution_check_has_power():
    """Samples at the wrong temperature must be rejected by the same check."""
    m = model(4, 8)
    exact = exact_distribution(m, PROMPT, 1.0)
    counts, _ = sample_runs("ar", {}, m, PROMPT, 0.7, 3000)
    assert chi_square_z(counts, exact) > Z_REJECT
