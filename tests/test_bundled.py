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


METHODS = [
    ("lookahead", {"window": 4, "ngram": 3, "guesses": 4}),
    ("prompt_lookup", {}),
    ("early_exit", {"layers": 8, "k": 3}),
    ("draft", {"model": "SmolLM2-135M-Instruct", "k": 4}),
    ("auto", {}),
]


@pytest.fixture(scope="module")
def references(bundled):
    return {p: bundled.generate(p, method="ar", max_new_tokens=64).token_ids for p in PROMPTS}


@pytest.mark.bundled
@pytest.mark.parametrize("method,options", METHODS)
def test_every_method_greedy_equals_ar_on_the_bundled_model(bundled, references, method, options):
    for prompt in PROMPTS:
        got = bundled.generate(prompt, method=method, options=options, max_new_tokens=64)
        assert got.token_ids == references[prompt], f"{method} diverged on {prompt[:30]!r}"


@pytest.mark.bundled
def test_space_with_the_shipped_adapter_equals_ar_of_the_adapted_model(bundled):
    import polyverse
    from polyverse.errors import ConfigError

    with pytest.raises(ConfigError, match="SPACE adapter"):
        bundled.generate(PROMPTS[1], method="space", max_new_tokens=4)  # no [MASK] in the plain model
    from polyverse.costs import CostCurve

    adapted = polyverse.load(adapter="space-gsm8k", progress=False)
    # priced by a fixed flat curve (every pass costs the same), not by passes timed beside the rest
    # of the suite, SPACE feeds its proposals, so the pass count below says whether they are accepted
    adapted.resources["cost_curve_every"] = CostCurve((1, 64), (1.0, 1.0))
    for prompt in PROMPTS:
        ar = adapted.generate(prompt, method="ar", max_new_tokens=64)
        for k in (2, 5):
            got = adapted.generate(prompt, method="space", options={"k": k, "live": False}, max_new_tokens=64)
            assert got.token_ids == ar.token_ids, f"space k={k} diverged on {prompt[:30]!r}"
        assert got.stats.passes < ar.stats.passes  # the trained masks do get proposals accepted


@pytest.mark.bundled
def test_multiverse_adapter_writes_a_block_and_parallel_equals_sequential():
    """The shipped Multiverse SFT forks on the real model; scheduling the paths in parallel or one
    after another writes the same tokens (the paths see the same context either way)."""
    import polyverse
    from polyverse.multiverse.grammar import validate

    m = polyverse.load(adapter="multiverse-gsm8k", progress=False)
    q = PROMPTS[1]
    par = m.generate(q, method="multiverse", max_new_tokens=200)
    seq = m.generate(q, method="multiverse", options={"parallel": False}, max_new_tokens=200)
    assert "<Parallel>" in par.text and "</Parallel>" in par.text
    assert par.token_ids == seq.token_ids
    assert par.stats.passes < seq.stats.passes
    block = par.text[par.text.index("<Parallel>"):par.text.index("</Parallel>") + len("</Parallel>")]
    assert validate(block) == []


@pytest.mark.bundled
def test_multiverse_guided_mode_is_valid_structure_on_the_bundled_model(bundled):
    from polyverse.multiverse.grammar import validate

    g = bundled.generate("Give three tips for sleeping well.", method="multiverse",
                         options={"guided": True, "max_path_tokens": 40}, max_new_tokens=640)
    assert g.text.startswith("<Parallel>") and validate(g.text) == []
    assert g.stats.mean_accepted > 1.5  # the paths are decoded together
