from polyverse.backends.transformers import TransformersBackend
from polyverse.costs import CostCurve, measure
from polyverse.methods.auto import Acceptance, best_length
from polyverse.models.tiny import tiny_model


def test_curve_interpolates_and_extrapolates():
    c = CostCurve((1, 4, 8), (0.06, 0.09, 0.10))
    assert abs(c(2) - 0.07) < 1e-12
    assert c(1) == 0.06 and c(8) == 0.10
    assert abs(c(20) - 0.13) < 1e-12  # extrapolated along the last segment
    assert abs(c.relative(4) - 1.5) < 1e-12


def test_best_length_follows_acceptance_and_cost():
    flat = CostCurve((1, 64), (0.06, 0.0601))
    steep = CostCurve((1, 2, 64), (0.06, 0.12, 3.84))  # every token costs a full pass
    assert best_length(0.9, 10, flat) == 10
    assert best_length(0.0, 10, flat) == 0
    assert best_length(0.9, 10, steep) == 0  # drafting never pays when tokens cost a pass each
    assert best_length(0.5, 10, flat, width=4) >= 1


def test_acceptance_estimate_moves_with_evidence():
    a = Acceptance(decay=0.9)
    assert a.alpha == 0.5
    for _ in range(10):
        a.update(accepted=4, drafted=4)
    assert a.alpha > 0.9
    for _ in range(30):
        a.update(accepted=0, drafted=4)
    assert a.alpha < 0.5  # old evidence decays


def test_measure_gives_a_positive_curve_and_leaves_the_backend_empty():
    be = TransformersBackend(tiny_model(seed=0))
    c = measure(be, context_len=16, reps=2, sizes=(1, 4, 8))
    assert c.sizes == (1, 4, 8) and all(s > 0 for s in c.seconds)
    assert be.length == 0
