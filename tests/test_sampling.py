import pytest
import torch

from polyverse.config import GenerationConfig, SamplingConfig
from polyverse.errors import ConfigError
from polyverse.sampling import make_generator, sample, target_probs


def test_temperature_top_k_top_p():
    logits = torch.tensor([[2.0, 1.0, 0.0, -1.0]])
    p = target_probs(logits, SamplingConfig(1.0))
    assert torch.allclose(p, torch.softmax(logits, -1))
    pk = target_probs(logits, SamplingConfig(1.0, top_k=2))
    assert pk[0, 2:].sum() == 0
    assert torch.allclose(pk[0, :2], torch.softmax(logits[0, :2], -1))
    # softmax = [.644, .237, .087, .032]: top_p=0.7 keeps the first two, 0.5 only the first
    assert (target_probs(logits, SamplingConfig(1.0, top_p=0.7))[0] > 0).tolist() == [True, True, False, False]
    assert target_probs(logits, SamplingConfig(1.0, top_p=0.5))[0].tolist() == [1.0, 0.0, 0.0, 0.0]
    hot = target_probs(logits, SamplingConfig(0.5))
    assert hot[0, 0] > p[0, 0]


def test_greedy_is_not_a_temperature():
    with pytest.raises(ValueError):
        target_probs(torch.zeros(1, 3), SamplingConfig(0.0))


@pytest.mark.parametrize("kwargs", [dict(temperature=-0.1), dict(top_k=-1), dict(top_p=0.0), dict(top_p=1.5),
                                    dict(temperature=float("nan"))])
def test_bad_sampling_config(kwargs):
    with pytest.raises(ConfigError):
        SamplingConfig(**kwargs)


def test_bad_generation_config():
    with pytest.raises(ConfigError):
        GenerationConfig(max_new_tokens=0)
    with pytest.raises(ConfigError):
        GenerationConfig(stop=("",))


def test_seeded_generator_reproducible():
    p = torch.full((50,), 1 / 50)
    a = [sample(p, g) for g in [make_generator(7)] for _ in range(20)]
    b = [sample(p, g) for g in [make_generator(7)] for _ in range(20)]
    assert a == b


def test_tiny_temperature_and_top_p_give_the_top_token_not_nan():
    logits = torch.tensor([[3.0, 1.0, 3.0 - 1e-3, -2.0]])
    for cfg in (SamplingConfig(temperature=1e-38), SamplingConfig(temperature=5e-324),
                SamplingConfig(temperature=1.0, top_p=5e-324),
                SamplingConfig(temperature=1e-30, top_p=1e-300)):
        p = target_probs(logits, cfg)
        assert torch.isfinite(p).all() and p[0, 0] == 1.0 and p.sum() == 1.0, cfg
