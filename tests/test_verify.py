from collections import Counter

import torch

from polyverse.draft import Draft
from polyverse.sampling import make_generator, sample
from polyverse.verify import verify_greedy, verify_sampled

from stats_util import Z_REJECT, chi_square_z


def one_hot_logits(targets, vocab=8):
    logits = torch.zeros(len(targets), vocab)
    for i, t in enumerate(targets):
        logits[i, t] = 5.0
    return logits


def test_greedy_chain_prefix_and_bonus():
    d = Draft.chain([5, 7, 6])
    v = verify_greedy(d, one_hot_logits([5, 7, 3, 4]))
    assert v.accepted == (0, 1)
    assert v.tokens == (5, 7, 3)


def test_greedy_all_accepted_gets_bonus():
    d = Draft.chain([5, 7])
    v = verify_greedy(d, one_hot_logits([5, 7, 1]))
    assert v.tokens == (5, 7, 1)


def test_greedy_first_rejected_gives_one_token():
    v = verify_greedy(Draft.chain([5, 7]), one_hot_logits([2, 7, 1]))
    assert v.accepted == () and v.tokens == (2,)


def test_greedy_tree_takes_matching_branch():
    # root children: 4 (node 0) and 5 (node 1); node 1 has child 6 (node 2); node 0 has child 6 (node 3)
    d = Draft((4, 5, 6, 6), (-1, -1, 1, 0))
    # rows: root, n0, n1, n2, n3 ; target picks 5 then 6 then 2
    v = verify_greedy(d, one_hot_logits([5, 0, 6, 2, 0]))
    assert v.accepted == (1, 2)
    assert v.tokens == (5, 6, 2)


def _run(trials, fn):
    g = make_generator(1234)
    return [fn(g) for _ in range(trials)]


def test_sampled_chain_is_lossless():
    p = torch.tensor([
        [0.1, 0.5, 0.2, 0.2],   # root row: first token
        [0.3, 0.3, 0.3, 0.1],   # after draft token 1
        [0.25, 0.25, 0.25, 0.25],
    ])
    d = Draft.chain([1, 3])
    outs = _run(20000, lambda g: verify_sampled(d, p, g).tokens)
    first = Counter(o[0] for o in outs)
    assert chi_square_z(first, dict(enumerate(p[0].tolist()))) < Z_REJECT
    second = Counter(o[1] for o in outs if o[0] == 1)
    assert chi_square_z(second, dict(enumerate(p[1].tolist()))) < Z_REJECT
    # the draft was both accepted and rejected
    assert 0 < sum(o[0] == 1 for o in outs) < len(outs)


def test_sampled_multi_candidate_with_draft_probs_is_lossless():
    p = torch.tensor([[0.05, 0.15, 0.6, 0.2], [0.25] * 4, [0.25] * 4])
    q = torch.tensor([[0.5, 0.3, 0.1, 0.1], [0.4, 0.4, 0.1, 0.1]])

    def trial(g):
        toks = (sample(q[0], g), sample(q[1], g))
        d = Draft(toks, (-1, -1), probs=q)
        return verify_sampled(d, p, g).tokens[0]

    first = Counter(_run(20000, trial))
    assert chi_square_z(first, dict(enumerate(p[0].tolist()))) < Z_REJECT


def test_sampled_deterministic_siblings_are_lossless():
    p = torch.tensor([[0.1, 0.4, 0.3, 0.2], [0.25] * 4, [0.25] * 4])
    d = Draft((1, 2), (-1, -1))
    first = Counter(_run(20000, lambda g: verify_sampled(d, p, g).tokens[0]))
    assert chi_square_z(first, dict(enumerate(p[0].tolist()))) < Z_REJECT


def test_chi_square_detects_a_lossy_verifier():
    """The check above can fail: a verifier that always accepts the draft is caught."""
    p = torch.tensor([[0.1, 0.5, 0.2, 0.2]])
    outs = Counter(1 if i % 2 else int(torch.multinomial(p[0], 1)) for i in range(20000))
    assert chi_square_z(outs, dict(enumerate(p[0].tolist()))) > Z_REJECT
