"""Penalties and logit bias: OpenAI's formula, applied per row with the draft path counted, and every
method lossless under them (greedy identical to penalised `ar`, sampling with its distribution)."""

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from polyverse import ConfigError, Draft, Penalties
from polyverse.config import GenerationConfig, SamplingConfig
from polyverse.shaping import Shaper

from stats_util import Z_REJECT, chi_square_z
from test_grammar import exact_shaped, run, sample_counts
from test_lossless import LOSSLESS_CASES, PROMPT, model


def test_the_formula_counts_the_output_and_the_path():
    shaper = Shaper(5, Penalties.of(presence=0.5, frequency=0.25, logit_bias={"4": 3.0, 0: -1.0}))
    shaper.advance([1, 1, 2])
    row = shaper.shape(torch.zeros(5), path=(2, 3))
    # token: bias - presence * [count > 0] - frequency * count; counts 0:0 1:2 2:2 3:1 4:0
    assert row.tolist() == [-1.0, -0.5 - 0.5, -0.5 - 0.5, -0.5 - 0.25, 3.0]
    assert shaper.shape(torch.zeros(5), ()).tolist() == [-1.0, -1.0, -0.75, 0.0, 3.0]


def test_rows_of_a_tree_count_their_own_paths():
    shaper = Shaper(4, Penalties(presence=1.0))
    draft = Draft((1, 2, 3), (-1, 0, -1))  # "1 2" and "3"
    rows = shaper.rows(torch.zeros(4, 4), draft)
    assert rows[0].tolist() == [0, 0, 0, 0]
    assert rows[2].tolist() == [0, -1, -1, 0]  # below "1 2"
    assert rows[3].tolist() == [0, 0, 0, -1]  # below "3"


@pytest.mark.parametrize("kwargs,problem", [
    (dict(presence=2.5), "presence_penalty must be in"), (dict(frequency=-3), "frequency_penalty must be in"),
    (dict(logit_bias={"x": 1}), "keys are token ids"), (dict(logit_bias={5: 101}), "biases are in"),
    (dict(logit_bias={-1: 1}), "ids are >= 0"), (dict(logit_bias={i: 1 for i in range(301)}), "at most 300"),
])
def test_bad_values_are_refused(kwargs, problem):
    with pytest.raises(ConfigError, match=problem):
        Penalties.of(**kwargs)


def test_api_arguments_become_sorted_ids():
    assert Penalties.of(0.5, 0.25, {"7": 1, 3: -2}) == Penalties(0.5, 0.25, ((3, -2.0), (7, 1.0)))


def test_a_bias_outside_the_vocabulary_is_refused():
    with pytest.raises(ConfigError, match="outside the vocabulary"):
        Penalties.of(logit_bias={8: 1.0}).check_vocab(8)
    with pytest.raises(ConfigError, match="outside the vocabulary"):
        Shaper(8, Penalties.of(logit_bias={8: 1.0}))


PENALTIES = [Penalties(presence=1.5), Penalties(frequency=0.7), Penalties.of(0.4, 0.4, {4: 2.0, 6: -100.0})]


@settings(max_examples=50, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(seed=st.integers(0, 7), penalties=st.sampled_from(PENALTIES),
       prompt=st.lists(st.integers(3, 7), min_size=1, max_size=16), max_new=st.integers(1, 32),
       case=st.sampled_from(LOSSLESS_CASES))
def test_greedy_under_penalties_equals_penalised_ar(seed, penalties, prompt, max_new, case):
    m = model(seed, 8)
    cfg = GenerationConfig(max_new_tokens=max_new, penalties=penalties)
    want, _ = run("ar", {}, m, prompt, cfg)
    got, _ = run(*case, m, prompt, cfg)
    assert got == want
    if dict(penalties.logit_bias).get(6) == -100.0:
        assert 6 not in want  # a bias of -100 bans the token


def test_penalties_change_the_output():
    m = model(3, 8)
    plain, _ = run("ar", {}, m, PROMPT, GenerationConfig(max_new_tokens=16))
    shaped, _ = run("ar", {}, m, PROMPT, GenerationConfig(max_new_tokens=16, penalties=Penalties(frequency=2.0)))
    assert plain != shaped
    assert max(shaped.count(t) for t in set(shaped)) < max(plain.count(t) for t in set(plain))


@pytest.mark.parametrize("method,options", [("auto", {}), ("lookahead", {"window": 3, "ngram": 3, "guesses": 2})])
def test_sampling_under_penalties_has_the_penalised_distribution(method, options):
    m = model(4, 8)
    penalties = Penalties.of(presence=1.0, frequency=0.5, logit_bias={5: 1.5})
    exact = exact_shaped(m, PROMPT, lambda: Shaper(8, penalties))
    cfg = GenerationConfig(max_new_tokens=3, sampling=SamplingConfig(1.0), penalties=penalties)
    counts, accepted = sample_counts(method, options, m, PROMPT, cfg, 1500)
    assert chi_square_z(counts, exact) < Z_REJECT
    assert accepted > 100, accepted
