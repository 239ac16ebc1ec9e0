"""Jacobi decoding with an n-gram branch beside the block: layout, the update after either branch, losslessness."""

import torch

from polyverse.config import GenerationConfig, SamplingConfig
from polyverse.costs import CostCurve, LiveCurve
from polyverse.draft import Draft
from polyverse.loop import Observation, decode
from polyverse.methods.ar import ARProposer
from polyverse.methods.jacobi import JacobiConfig, JacobiProposer, continuation
from polyverse.verify import verify_greedy

FLAT = CostCurve((1, 64), (0.01, 0.01))  # every pass size costs the same: the branch always pays
STEEP = CostCurve((1, 4, 5), (0.01, 0.01, 1.0))  # past the block of 3, a token costs 100 passes


def test_continuation_follows_the_branch_the_path_took():
    d = Draft.tree([[1, 2, 3], [1, 4, 5]])  # block 0 1 2; branch 3 4 below node 0
    assert continuation(d, ()) == [0, 1, 2]
    assert continuation(d, (0,)) == [1, 2]
    assert continuation(d, (0, 3)) == [4]
    assert continuation(d, (0, 3, 4)) == []
    assert continuation(Draft.empty(), ()) == []


def _observe(proposer, draft, argmax_rows, context):
    """An observation whose logits row r has its largest value at argmax_rows[r]."""
    logits = torch.zeros(len(draft) + 1, 50)  # [1 + len(draft), V]
    for r, t in enumerate(argmax_rows):
        logits[r, t] = 1.0
    verdict = verify_greedy(draft, logits)
    proposer.observe(Observation(draft, verdict, logits, tuple(context) + verdict.tokens))
    return verdict


def test_the_branch_is_fed_where_it_pays_and_its_rows_become_the_next_guesses():
    context = [7, 1, 2, 3, 4, 1, 2, 3]  # the text predicts 4 1 2 3 after the last 3
    jac = JacobiProposer(JacobiConfig(block=3, ngram=3, ngram_tokens=4), FLAT)
    jac.start(context)
    draft = jac.propose(context)
    assert draft.tokens[:3] == (3, 3, 3)  # the block: the pending token repeated, nothing guessed yet
    assert draft.tokens[3:] == (4, 1, 2, 3) and draft.parents[3] == -1  # the branch below the root
    # the target writes 4 1 2 then 9: rows 0, 4, 5, 6 (root, branch nodes 3, 4, 5) say 4, 1, 2, 9
    rows = [4, 0, 0, 0, 1, 2, 9, 11]
    verdict = _observe(jac, draft, rows, context)
    assert verdict.accepted == (3, 4, 5) and verdict.tokens == (4, 1, 2, 9)
    assert jac.guess == [11]  # the branch's row after the accepted path (fed 3, rejected): its update


def test_without_a_paying_branch_it_is_the_plain_block():
    context = [7, 1, 2, 3, 4, 1, 2, 3]
    for jac in (JacobiProposer(JacobiConfig(block=3, ngram=3), STEEP),
                JacobiProposer(JacobiConfig(block=3, ngram=0), FLAT),
                JacobiProposer(JacobiConfig(block=3))):
        jac.start(context)
        draft = jac.propose(context)
        assert draft == Draft.chain([3, 3, 3])
        verdict = _observe(jac, draft, [3, 5, 6, 8], context)
        assert verdict.tokens == (3, 5)  # block node 0 accepted, bonus 5
        assert jac.guess == [6, 8]  # rows 2 and 3: the block's own update


def test_greedy_with_the_branch_equals_ar(tiny):
    be = tiny.backend
    vocab = be.vocab_size
    cfg = GenerationConfig(max_new_tokens=40)
    g = torch.Generator().manual_seed(3)
    for _ in range(4):
        period = torch.randint(0, vocab, (5,), generator=g).tolist()
        prompt = period * 4  # repeats, so the n-gram branch has matches to feed
        ar = [t for s in decode(be, ARProposer(), prompt, cfg) for t in s.tokens]
        jac = JacobiProposer(JacobiConfig(block=4, ngram=3), FLAT)
        steps = list(decode(be, jac, prompt, cfg))
        assert [t for s in steps for t in s.tokens] == ar
        assert any(s.stats.fed > 5 for s in steps)  # the branch rode along


def test_the_block_shrinks_when_its_guesses_fail_and_grows_back_when_they_hold():
    pricey = CostCurve((1, 64), (0.01, 0.073))  # each fed token adds a tenth of a pass
    jac = JacobiProposer(JacobiConfig(block=6, ngram=0), pricey)
    context = [1, 2, 3]
    jac.start(context)
    sizes = []
    for _ in range(12):  # nothing the block guesses is ever right: row r says what node r is not
        draft = jac.propose(context)
        sizes.append(len(draft))
        _observe(jac, draft, [(t + 1) % 50 for t in draft.tokens] + [40], context)
    assert sizes[0] > 1 and sizes[-1] <= 1
    for _ in range(40):  # now every guess holds: a probe (after enough plain passes) finds it out
        draft = jac.propose(context)
        rows = list(draft.tokens) + [40]
        _observe(jac, draft, rows, context)
        sizes.append(len(draft))
    assert 0 in sizes[12:] and sizes[-1] == 6
    fixed = JacobiProposer(JacobiConfig(block=6, ngram=0, adaptive=False), pricey)
    fixed.start(context)
    assert len(fixed.propose(context)) == 6


def test_where_a_pass_of_two_costs_two_passes_jacobi_is_plain_decoding(tiny):
    be = tiny.backend
    linear = CostCurve((1, 64), (0.01, 0.64))
    cfg = GenerationConfig(max_new_tokens=24)
    prompt = [5, 9, 14, 3]
    ar = [t for s in decode(be, ARProposer(), prompt, cfg) for t in s.tokens]
    steps = list(decode(be, JacobiProposer(JacobiConfig(block=4, ngram=0), linear), prompt, cfg))
    assert [t for s in steps for t in s.tokens] == ar
    assert all(s.stats.fed == 1 for s in steps)  # no block paid for itself, and no probe came yet


def test_the_factory_prices_the_block_unless_asked_for_the_whole_block(tiny):
    from polyverse.methods.jacobi import make
    from polyverse.registry import MethodContext

    ctx = MethodContext(tiny.backend, SamplingConfig(), None, tiny)
    assert make(JacobiConfig(block=4, ngram=0), ctx).sizing is not None  # sized, no branch
    assert make(JacobiConfig(block=4), ctx).ngrams is not None
    whole = make(JacobiConfig(block=4, ngram=0, adaptive=False), ctx)
    assert whole.sizing is None and whole.ngrams is None


def test_greedy_blocks_are_priced_by_what_passes_cost_and_sampled_ones_by_the_measured_curve(tiny):
    from polyverse.methods.jacobi import make
    from polyverse.registry import MethodContext

    greedy = make(JacobiConfig(block=4), MethodContext(tiny.backend, SamplingConfig(), None, tiny))
    assert isinstance(greedy.sizing, LiveCurve) and greedy.live is greedy.sizing
    sampled = make(JacobiConfig(block=4), MethodContext(tiny.backend, SamplingConfig(temperature=0.7), None, tiny))
    assert isinstance(sampled.sizing, CostCurve) and sampled.live is None
    fixed = make(JacobiConfig(block=4, live=False), MethodContext(tiny.backend, SamplingConfig(), None, tiny))
    assert isinstance(fixed.sizing, CostCurve)


def test_a_block_priced_too_dear_by_the_measured_curve_grows_once_greedy_passes_show_it_cheap():
    # measured: each guess fed adds 40% to a pass, so a block of guesses accepted half the time does
    # not pay; decoding then pays as much for every size it feeds
    steep = CostCurve((1, 2, 3, 4, 5), (1.0, 1.6, 2.0, 2.4, 2.8))
    live = LiveCurve(steep)
    prop = JacobiProposer(JacobiConfig(block=4, ngram=0), live)
    for _ in range(20):
        prop.accept.update(1, 5)  # alpha 0.5
    assert prop.block_size() == 0
    assert prop.live is live  # the loop tells it what each of the request's own passes took
    for q in (1, 2, 3, 4, 5):  # passes of every size cost the same as decoding runs them
        for _ in range(4):
            live.observe(q, 2.0)
    assert prop.block_size() == 4
