"""One decode path: an engine-style method (a Runner) plugs in through the registry alone, and
the API builds text, statistics and the Generation for it exactly as for a proposer."""

import pytest

from polyverse import registry
from polyverse.errors import ConfigError
from polyverse.layout import chain_feed
from polyverse.loop import Runner, Step, StepStats, check_prompt, prefill
from polyverse.options import method_options, option


@method_options("pairs-test")
class PairsConfig:
    per_step: int = option(2, "tokens decoded before each Step is reported", lo=1, hi=4)


class PairsRunner:
    """Plain greedy decoding that schedules its own passes and reports them in groups."""

    def __init__(self, cfg, ctx):
        self.n, self.backend, self.gen = cfg.per_step, ctx.backend, ctx.generation

    def run(self, prompt):
        context = prefill(self.backend, prompt)
        produced = 0
        while True:
            tokens = []
            for _ in range(self.n):
                logits = self.backend.forward(chain_feed(context[-1:], len(context) - 1), logits_for=[0])
                self.backend.commit([0])
                tokens.append(int(logits[0].argmax()))
                context.append(tokens[-1])
                produced += 1
                if produced >= self.gen.max_new_tokens:
                    yield Step(tuple(tokens), StepStats(len(tokens), 0, len(tokens), 0.0), "length")
                    return
            yield Step(tuple(tokens), StepStats(len(tokens), 0, len(tokens), 0.0))


@pytest.fixture
def pairs():
    registry.register("pairs-test", PairsConfig, PairsRunner, "greedy, reported two tokens a step", runner=True)
    yield
    registry._methods.pop("pairs-test")


def test_a_runner_method_goes_through_the_same_api(tiny, pairs):
    ar = tiny.generate("abc abc", method="ar", max_new_tokens=9, chat=False)
    got = tiny.generate("abc abc", method="pairs-test", max_new_tokens=9, chat=False)
    assert got.token_ids == ar.token_ids and got.text == ar.text
    assert got.method == "pairs-test" and got.finish_reason == "length"
    assert got.stats.passes == 5 and got.stats.new_tokens == 9  # Steps of 2, 2, 2, 2, 1 tokens
    chunks = list(tiny.stream("abc abc", method="pairs-test", max_new_tokens=9, chat=False))
    assert "".join(c.text for c in chunks) == ar.text


def test_runner_options_are_checked_from_their_specs(tiny, pairs):
    with pytest.raises(ConfigError, match=r"pairs-test per_step must be an integer in \[1, 4\], got 7"):
        tiny.generate("abc", method="pairs-test", options={"per_step": 7})
    assert isinstance(registry.get("pairs-test").build(PairsConfig(), _ctx(tiny)), Runner)


def _ctx(model):
    from polyverse import MethodContext
    from polyverse.config import GenerationConfig

    return MethodContext(model.backend, GenerationConfig().sampling, None, model, GenerationConfig())


def test_the_one_prompt_check():
    with pytest.raises(ConfigError, match="the prompt is empty"):
        check_prompt([], 8)
    with pytest.raises(ConfigError, match="the prompt is 8 tokens long; the model's context holds 8"):
        check_prompt(list(range(8)), 8)
    check_prompt(list(range(7)), 8)


def test_the_builtin_methods_declare_their_contract():
    from polyverse.loop import Proposer

    for method in registry:
        assert method.runner == (method.name == "multiverse")
        for spec in method.specs():
            assert spec.help, f"{method.name}.{spec.name} has no help"
            assert spec.kind in (int, float, bool, str)
    from polyverse.methods.jacobi import JacobiProposer

    assert issubclass(JacobiProposer, Proposer) and JacobiProposer.reads_every_row
    assert Proposer.reads_every_row is False
