"""polyverse's proposers inside vLLM's CPU build (``integrations.vllm``), on the bundled model:
greedy output equal to vLLM greedy's, alone and in a batch. `make test-vllm` runs these in vLLM's
own environment (`make vllm-env`); they are left out of the main suite (``-m vllm``)."""

from __future__ import annotations

import pytest

from polyverse.bench.vllm_server import find_vllm_python

PYTHON = find_vllm_python(None)
pytestmark = [pytest.mark.vllm, pytest.mark.bundled,
              pytest.mark.skipif(PYTHON is None, reason="no vLLM environment (.venv-vllm): `make vllm-env` makes it")]

PROMPTS = [
    "Rewrite this list with every item in capitals: apple, banana, cherry, apple, banana, cherry.",
    "def add(a, b):\n    return a + b\n\ndef sub(a, b):\n",
    "Why is the sky blue?",
]


@pytest.fixture(scope="module")
def jobs(bundled):
    from polyverse.bench.vllm_peer import run_job
    from polyverse.models.load import resolve

    sets = {"mixed": [bundled.encode(p, True) for p in PROMPTS]}
    base = {"model": str(resolve("SmolLM2-135M-Instruct")), "dtype": "float32", "max_model_len": 1024,
            "max_tokens": 48, "sets": sets, "batch": 6}
    specs = {"greedy": None,
             "auto": {"method": "custom_class", "model": "polyverse.integrations.vllm.Auto", "num_speculative_tokens": 6},
             "prompt_lookup": {"method": "custom_class", "model": "polyverse.integrations.vllm.PromptLookup",
                               "num_speculative_tokens": 6}}
    return {name: run_job(PYTHON, {**base, "speculative": spec}, timeout=900) for name, spec in specs.items()}


@pytest.mark.parametrize("name", ["auto", "prompt_lookup"])
def test_the_proposer_leaves_vllm_greedy_output_unchanged(jobs, name):
    greedy, got = jobs["greedy"], jobs[name]
    assert [r["tokens"] for r in got["single"]["mixed"]] == [r["tokens"] for r in greedy["single"]["mixed"]]
    assert got["batch"]["tokens"] == greedy["batch"]["tokens"]
    assert all(len(r["tokens"]) > 0 for r in got["single"]["mixed"])
