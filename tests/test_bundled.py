"""Lossless on the real model: greedy jacobi equals greedy ar on chat prompts (bundled SmolLM2)."""

import pytest

PROMPTS = [
    "Write a Python function that checks whether a number is prime.",
    "Natalia sold clips to 48 of her friends in April, and then she sold half as many clips in May. "
    "How many clips did Natalia sell altogether in April and May?",
    "Explain in three sentences why the sky is blue.",
]


@pytest.mark.bundled
@pytest.mark.parametrize("prompt", PROMPTS)
def test_jacobi_greedy_equals_ar_on_the_bundled_model(bundled, prompt):
    ar = bundled.generate(prompt, method="ar", max_new_tokens=64)
    assert len(ar.token_ids) == 64 or ar.finish_reason == "eos"
    for block in (4, 16):
        jac = bundled.generate(prompt, method="jacobi", options={"block": block}, max_new_tokens=64)
        assert jac.token_ids == ar.token_ids, f"block {block} diverged"
        assert jac.text == ar.text
        assert jac.stats.passes <= ar.stats.passes
