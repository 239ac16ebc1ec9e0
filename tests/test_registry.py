"""A user plugs in their own proposer without touching the loop; output stays lossless."""

import pytest

import polyverse
from polyverse import Draft, Proposer, registry
from polyverse.errors import ConfigError, PolyverseError
from polyverse.options import method_options, option


@method_options("echo-test")
class EchoConfig:
    k: int = option(3, "copies of the pending token drafted per pass", lo=1, hi=8)


class EchoProposer(Proposer):
    """Guesses that the pending token repeats k times: often wrong, sometimes right."""

    def __init__(self, k):
        self.k = k

    def propose(self, context):
        return Draft.chain([context[-1]] * self.k)

    def observe(self, obs):
        assert obs.logits.shape[0] == len(obs.draft) + 1


@pytest.fixture
def echo():
    registry.register("echo-test", EchoConfig, lambda cfg, ctx: EchoProposer(cfg.k), "test method")
    yield
    registry._methods.pop("echo-test")


def test_user_method_plugs_in_and_is_lossless(tiny, echo):
    assert "echo-test" in registry.names()
    ar = tiny.generate("aaaa bbbb", method="ar", max_new_tokens=40, chat=False)
    got = tiny.generate("aaaa bbbb", method="echo-test", options={"k": 2}, max_new_tokens=40, chat=False)
    assert got.token_ids == ar.token_ids
    assert got.stats.drafted == 2 * got.stats.passes


def test_unknown_method_and_option(tiny):
    with pytest.raises(PolyverseError, match="unknown method 'nope'"):
        tiny.generate("x", method="nope")
    with pytest.raises(ConfigError, match="has no option"):
        tiny.generate("x", method="jacobi", options={"window": 3})
    with pytest.raises(ConfigError, match="block"):
        tiny.generate("x", method="jacobi", options={"block": 0})


def test_builtin_methods_listed():
    assert {"ar", "jacobi"} <= set(polyverse.registry.names())


def test_every_numeric_option_of_a_builtin_method_is_bounded():
    """A server takes options from any client: none may scale a request's work without a ceiling."""
    from polyverse.options import specs

    for name in polyverse.registry.names():
        for spec in specs(polyverse.registry.get(name).config_cls):
            if spec.kind in (int, float):
                assert spec.hi is not None, f"{name} {spec.name} has no upper bound"
                assert spec.lo is not None or spec.above is not None, f"{name} {spec.name} has no lower bound"
