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
        a.update(4, 4)  # accepted, draft depth
    assert a.alpha > 0.9
    for _ in range(30):
        a.update(0, 4)
    assert a.alpha < 0.5  # old evidence decays


def test_measure_gives_a_positive_curve_and_leaves_the_backend_empty():
    be = TransformersBackend(tiny_model(seed=0))
    c = measure(be, context_len=16, reps=2, sizes=(1, 4, 8))
    assert c.sizes == (1, 4, 8) and all(s > 0 for s in c.seconds)
    assert be.length == 0


def test_measure_over_several_context_lengths():
    be = TransformersBackend(tiny_model(seed=0))
    c = measure(be, context_len=(8, 24, 10_000), reps=1, sizes=(1, 4, 64))  # the longest is cut to fit
    assert c.sizes == (1, 4, 64) and all(s > 0 for s in c.seconds)
    assert be.length == 0


def test_measure_reads_what_its_passes_are_asked_for():
    """The plain curve reads each pass's first row; ``every`` asks for every row at once (as SPACE's
    passes do), and the context and drafts continue a repeated run of tokens."""
    be = TransformersBackend(tiny_model(seed=0))
    asked, fed = [], []
    forward = be.forward

    def spy(feed, logits_for=None):
        asked.append(None if logits_for is None else list(logits_for))
        fed.append(feed)
        return forward(feed, logits_for)

    be.forward = spy
    measure(be, context_len=40, reps=1, sizes=(1, 4))
    passes = [(a, f) for a, f in zip(asked, fed) if a != []]  # the context's prefill asks for no row
    assert passes and all(a is None for a, _ in passes)
    asked.clear(), fed.clear()
    measure(be, context_len=40, reps=1, sizes=(1, 4), every=True)
    passes = [(a, f) for a, f in zip(asked, fed) if a != []]
    assert passes and all(a == list(range(len(f))) for a, f in passes)
    prefill = next(f for a, f in zip(asked, fed) if a == [])
    period = list(prefill.tokens[:24])
    assert list(prefill.tokens) == (period * 2)[:40]  # a run of 24 tokens, repeated
    four = next(f for a, f in passes if len(f) == 4)
    assert list(four.tokens) == [period[(39 + i) % 24] for i in range(4)]  # the drafts continue it


# relative pass costs of a curve like llama.cpp's: its one-row path is a faster kernel than its batched one
STEEP = CostCurve((1, 2, 3, 4, 6, 8, 12, 16, 24, 32), (1.0, 1.66, 1.77, 1.92, 2.25, 2.82, 3.56, 4.26, 6.18, 7.8))
FLAT = CostCurve((1, 32), (1.0, 1.1))


def test_a_steep_curve_needs_high_acceptance_to_draft():
    assert best_length(0.5, 24, STEEP) == 0  # at most 2 tokens expected, never worth what a draft pass costs
    assert best_length(0.9, 10, STEEP) >= 4
    assert best_length(0.6, 10, FLAT) >= 1


def test_probes_are_spaced_by_what_a_failed_probe_costs():
    from polyverse.methods.jacobi import probe_gap

    assert probe_gap(FLAT, 5, 8) == 8
    assert probe_gap(STEEP, 5, 8) == 55  # c(5) = 2.085: 1.085 passes lost per failed probe, at most 2% of the gap
    assert probe_gap(STEEP, 5, 100) == 100 and probe_gap(FLAT, 1, 0) == 0


def simulate(curve, accept, steps: int = 400, prop=None) -> tuple[float, int]:
    """Drive `auto`'s proposer over text from the alphabet 1..7 (a match always exists): at step i
    the target writes what the best continuation predicts where ``accept(i)`` (the draft accepted
    whole), else a token it does not predict (the draft rejected at its root). Returns (passes' cost
    beyond plain decoding, in passes; steps that drafted)."""
    from polyverse.draft import Draft
    from polyverse.loop import Observation
    from polyverse.methods.auto import AutoConfig, AutoProposer
    from polyverse.verify import Verdict

    text = [1, 2, 3, 4, 5, 6, 7] * 4
    prop = prop or AutoProposer(AutoConfig(), curve)
    prop.start(tuple(text))
    extra, drafting = 0.0, 0
    for i in range(steps):
        draft = prop.propose(tuple(text))
        extra += curve.relative(1 + len(draft)) - 1
        drafting += bool(len(draft))
        right = accept(i) if callable(accept) else accept
        n = len(draft) if right else 0
        pred = prop.predicted
        if right:
            text += pred[: n + 1] if len(pred) > n else pred + [text[-7]]
        else:
            text.append(pred[0] % 7 + 1 if pred else 1)
        prop.observe(Observation(draft, Verdict(tuple(range(n)), tuple(text[-(n + 1):])), None, tuple(text)))
    return extra, drafting


def test_auto_falls_back_to_one_token_passes_where_drafts_fail_on_a_steep_curve():
    extra, drafting = simulate(STEEP, accept=False)
    assert extra <= 0.03 * 400 and drafting <= 0.03 * 400  # a few passes to learn, then none
    extra, _ = simulate(FLAT, accept=False)
    assert extra <= 0.005 * 400  # where drafts cost little it drafts while alpha beats that little


def test_auto_drafts_long_where_drafts_succeed():
    _, drafting = simulate(STEEP, accept=True, steps=50)
    assert drafting >= 45


def test_auto_learns_from_steps_that_draft_nothing():
    """After a stretch of text its continuations miss, auto drafts nothing; once they predict the
    text again, the tokens written by plain passes show it and drafting resumes within a few steps,
    with no probe draft in between."""
    from polyverse.methods.auto import AutoConfig, AutoProposer

    prop = AutoProposer(AutoConfig(), STEEP)
    _, drafting = simulate(STEEP, accept=False, steps=100, prop=prop)
    assert drafting <= 3
    _, drafting = simulate(STEEP, accept=True, steps=20, prop=prop)  # start() keeps the estimates
    assert drafting >= 12


def test_the_run_counts_predicted_tokens_and_a_plain_step_is_evidence():
    from polyverse.methods.auto import AutoConfig, AutoProposer

    prop = AutoProposer(AutoConfig(), STEEP)
    text = [1, 2, 3, 9, 1, 2, 3]
    prop.start(tuple(text))
    assert not prop.propose(tuple(text)) and prop.predicted[:2] == [9, 1] and prop.last_bucket == 0
    before = prop.stats[0].alpha
    prop.propose(tuple(text + [9]))  # the plain step wrote what the continuation predicted
    assert prop.run == 1 and prop.stats[0].alpha > before and prop.last_bucket == 1
    prop.propose(tuple(text + [9, 1, 2, 3, 9, 1]))  # a draft's worth of predicted tokens
    assert prop.run == 6 and prop.last_bucket == 4
    before = prop.stats[4].alpha
    prop.propose(tuple(text + [9, 1, 2, 3, 9, 1, 5]))  # a miss ends the run
    assert prop.run == 0 and prop.stats[4].alpha < before


def test_kept_costs_give_the_same_choice():
    for alpha in (0.0, 0.4, 0.7, 0.95):
        for width in (1, 3):
            kept = [STEEP(1 + width * k) for k in range(25)]
            assert best_length(alpha, 10, STEEP, width, kept) == best_length(alpha, 10, STEEP, width)


def test_curves_go_where_polyverse_costs_says_else_to_the_cache(monkeypatch, tmp_path):
    from polyverse.costs import costs_dir

    monkeypatch.setenv("POLYVERSE_COSTS", str(tmp_path / "curves"))
    assert costs_dir() == tmp_path / "curves"
    monkeypatch.delenv("POLYVERSE_COSTS")
    monkeypatch.setenv("POLYVERSE_CACHE", str(tmp_path / "cache"))
    assert costs_dir() == tmp_path / "cache" / "costs"
