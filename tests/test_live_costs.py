"""The live cost curve: measured prices corrected by what decoding's passes cost, and who feeds it."""

from hypothesis import given, settings
from hypothesis import strategies as st

from polyverse.backends.transformers import TransformersBackend
from polyverse.config import GenerationConfig
from polyverse.costs import LIVE_EVERY, LIVE_LEAST, LIVE_WINDOW, CostCurve, LiveCurve
from polyverse.draft import Draft
from polyverse.loop import Proposer, decode
from polyverse.methods.auto import NgramBranch
from polyverse.methods.space import SpaceConfig, SpaceProposer
from polyverse.models.tiny import tiny_model

BASE = CostCurve((1, 4, 8), (0.010, 0.011, 0.012))


def fed(curve: LiveCurve, q: int, seconds: float, times: int) -> None:
    for _ in range(times):
        curve.observe(q, seconds)


def test_without_passes_the_prices_are_the_measured_ones():
    live = LiveCurve(BASE)
    assert [live(q) for q in (1, 2, 4, 8, 12)] == [BASE(q) for q in (1, 2, 4, 8, 12)]
    assert live.version == 0
    fed(live, 8, 0.5, LIVE_LEAST - 1)  # too few passes of a size to say anything
    assert live(8) == BASE(8)


def test_the_docstring_example():
    live = LiveCurve(BASE)
    fed(live, 8, 0.014, max(LIVE_LEAST, LIVE_EVERY))
    assert live.version >= 1
    assert abs(live(8) - 0.014) < 1e-12
    assert abs(live(4) - 0.011 * 14 / 12) < 1e-12  # scaled by the nearest size seen
    assert abs(live(1) - 0.010 * 14 / 12) < 1e-12


def test_a_size_seen_is_priced_by_its_median_and_old_passes_fall_out():
    live = LiveCurve(BASE)
    fed(live, 4, 0.020, LIVE_WINDOW - 1)
    fed(live, 4, 5.0, 1)  # one pass that met other work: the median does not move
    fed(live, 4, 0.020, LIVE_EVERY)
    assert abs(live(4) - 0.020) < 1e-12
    fed(live, 4, 0.030, LIVE_WINDOW)  # the machine slowed down: the window follows it
    assert abs(live(4) - 0.030) < 1e-12


def test_more_tokens_never_cost_less():
    live = LiveCurve(BASE)
    fed(live, 4, 0.020, 8)
    fed(live, 8, 0.015, 8)
    assert abs(live(4) - 0.0175) < 1e-12 and abs(live(8) - 0.0175) < 1e-12  # pooled, equally known
    assert live(12) >= live(8)


@settings(max_examples=50, deadline=None)
@given(st.lists(st.tuples(st.integers(1, 32), st.floats(1e-4, 1.0)), max_size=80))
def test_prices_stay_positive_and_rise_with_the_tokens_fed(passes):
    live = LiveCurve(BASE)
    for q, s in passes:
        live.observe(q, s)
    prices = [live(q) for q in range(1, 40)]
    assert all(p > 0 for p in prices)
    assert all(b >= a - 1e-15 for a, b in zip(prices, prices[1:]))


class Clock:
    """Stands for a live curve: keeps what each step fed and took."""

    def __init__(self):
        self.steps = []

    def observe(self, q, seconds):
        self.steps.append((q, seconds))


class Timed(Proposer):
    """Empty drafts, priced by a Clock; counts its steps."""

    def __init__(self):
        self.live = Clock()
        self.observed = 0

    def propose(self, context):
        return Draft.empty()

    def observe(self, obs):
        self.observed += 1


def test_a_lone_request_tells_its_proposers_live_curve_what_each_step_took():
    be = TransformersBackend(tiny_model(seed=0))
    p = Timed()
    list(decode(be, p, [1, 2, 3], GenerationConfig(max_new_tokens=5)))
    assert len(p.live.steps) == p.observed >= 3
    assert all(q == 1 and s > 0 for q, s in p.live.steps)  # empty drafts: one token fed a step


def test_requests_sharing_a_pass_are_not_told_its_time(tmp_path):
    import polyverse
    from polyverse.batching import Batch
    from polyverse.models.tiny import save_tiny

    model = polyverse.load(str(save_tiny(tmp_path / "model", seed=3)), progress=False)
    engine = Batch(None)
    requests = [model.request(text, method="ar", max_new_tokens=6, chat=False) for text in ("abcab", "cabca")]
    spies = []
    for key, r in enumerate(requests):
        spy = Timed()
        r.decoding.proposer = spy
        spies.append(spy)
        r.join(engine, key)
    for _ in range(4):
        engine.round()
    assert spies[0].observed >= 2 and all(not spy.live.steps for spy in spies)
    engine.remove(1)  # alone now: its steps are its own
    engine.round()
    assert spies[0].live.steps and all(s > 0 for _, s in spies[0].live.steps)


def test_space_prices_by_the_live_curve_it_is_given():
    live = LiveCurve(BASE)
    assert SpaceProposer(SpaceConfig(k=1, ngram=0), mask_id=99, cost=live, curve=live).live is live
    assert SpaceProposer(SpaceConfig(k=1, ngram=0), mask_id=99, cost=BASE, curve=BASE).live is None


def test_the_ngram_branch_is_priced_again_when_the_live_prices_change():
    live = LiveCurve(BASE)
    branch = NgramBranch(live, ngram=2, tokens=4)
    context = [5, 6, 7, 8, 5, 6, 7, 8, 5, 6]
    branch.start(context)
    branch.propose(context, beside=2)
    before = branch.priced[2]
    fed(live, 3, 0.5, max(LIVE_LEAST, LIVE_EVERY))  # a pass of 3 tokens is dear now
    branch.propose(context, beside=2)
    assert branch.priced[2] is not before and branch.priced[2](1) == live(3)


def test_only_a_greedy_space_request_is_priced_live():
    """A sampled request's drafts decide how its random stream is read: they must not follow timing."""
    from polyverse.config import SamplingConfig
    from polyverse.methods.space import make
    from polyverse.registry import MethodContext

    be = TransformersBackend(tiny_model(seed=0))
    config = SpaceConfig(k=2, mask_id=7)
    greedy = make(config, MethodContext(be, SamplingConfig()))
    sampled = make(config, MethodContext(be, SamplingConfig(temperature=0.8)))
    assert isinstance(greedy.live, LiveCurve) and greedy.cost is greedy.live
    assert sampled.live is None and isinstance(sampled.cost, CostCurve)
    fixed = make(SpaceConfig(k=2, mask_id=7, live=False), MethodContext(be, SamplingConfig()))
    assert fixed.live is None and isinstance(fixed.cost, CostCurve)


def test_auto_prices_greedy_requests_live_unless_told_not_to():
    from polyverse.config import SamplingConfig
    from polyverse.methods.auto import AutoConfig, make
    from polyverse.registry import MethodContext

    be = TransformersBackend(tiny_model(seed=0))
    assert isinstance(make(AutoConfig(), MethodContext(be, SamplingConfig())).live, LiveCurve)
    assert make(AutoConfig(), MethodContext(be, SamplingConfig(temperature=0.5))).live is None
    assert make(AutoConfig(live=False), MethodContext(be, SamplingConfig())).live is None


def test_auto_reads_the_live_prices_again_when_they_change():
    from polyverse.methods.auto import AutoConfig, AutoProposer

    live = LiveCurve(CostCurve((1, 2, 32), (0.01, 0.0101, 0.0132)))  # nearly flat: a long draft pays
    p = AutoProposer(AutoConfig(max_tokens=8), live)
    context = [5, 6, 7, 8, 9] * 4
    p.start(context)
    for bucket in p.stats:  # every run length predicts well
        for _ in range(20):
            bucket.update(4, 4)
    assert len(p.propose(context)) > 0
    for q in range(2, 10):  # a draft of any length costs two plain passes and more
        fed(live, q, 0.02 + 0.01 * q, max(LIVE_LEAST, LIVE_EVERY))
    fed(live, 1, 0.01, max(LIVE_LEAST, LIVE_EVERY))
    assert len(p.propose(context)) < 8


def test_monotone_pools_adjacent_violators():
    from polyverse.costs import monotone

    assert monotone([10, 14, 12, 13], [1, 1, 3, 1]) == [10, 12.5, 12.5, 13]  # the docstring's example
    assert monotone([1, 2, 3], [1, 1, 1]) == [1, 2, 3]
    assert monotone([3, 2, 1], [1, 1, 1]) == [2, 2, 2]
    assert monotone([], []) == []


@settings(max_examples=100, deadline=None)
@given(st.lists(st.tuples(st.floats(0, 100), st.integers(1, 16)), max_size=20))
def test_monotone_rises_and_keeps_the_weighted_mean(pairs):
    from polyverse.costs import monotone

    values, weights = [v for v, _ in pairs], [w for _, w in pairs]
    out = monotone(values, weights)
    assert len(out) == len(values)
    assert all(b >= a - 1e-9 for a, b in zip(out, out[1:]))
    total = sum(weights)
    if total:
        assert abs(sum(o * w for o, w in zip(out, weights)) - sum(v * w for v, w in zip(values, weights))) < 1e-6 * max(1.0, total * 100)


def test_a_size_between_two_seen_is_never_dearer_than_the_larger():
    steep = CostCurve((1, 2, 4, 8), (1.0, 2.0, 3.0, 4.0))
    live = LiveCurve(steep)
    fed(live, 1, 1.0, LIVE_WINDOW)
    fed(live, 8, 1.2, LIVE_WINDOW)  # decoding finds 8 tokens cheap where the measurement did not
    assert live(8) == 1.2
    assert live(2) == 1.2 and live(4) == 1.2  # scaled as the nearest seen (1) would make them 2 and 3
