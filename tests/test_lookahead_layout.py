"""The lookahead layout against a hand-drawn case: W = 3, N = 3, G = 2."""

from polyverse.layout import draft_feed, visibility
from polyverse.methods.lookahead import LookaheadConfig, LookaheadProposer, window_draft
from polyverse.draft import Draft


def test_window_tree_hand_drawn():
    # level 0: a b c ; level 1: d e f   (W = 3, N = 3 -> 2 levels)
    d = window_draft([[10, 11, 12], [13, 14, 15]])
    assert d.tokens == (10, 11, 12, 13, 14, 15)
    assert d.parents == (-1, 0, 1, 0, 1, 2)


def test_lookahead_feed_positions_and_visibility_hand_drawn():
    # pending token x = 7 at position 20; window as above; the pool holds two 3-grams starting
    # with 7: (7, 30, 31) and (7, 40, 41)  -> G = 2 guesses (30, 31) and (40, 41)
    p = LookaheadProposer(LookaheadConfig(window=3, ngram=3, guesses=2, prompt_pool=False))
    p.start([1, 2, 3])
    p.levels = [[10, 11, 12], [13, 14, 15]]
    p.pool.add(7, (40, 41))
    p.pool.add(7, (30, 31))  # most recent first
    draft = p.propose([1, 2, 7])
    feed = draft_feed(7, 20, draft)
    #            x   a   b   c   d   e   f   g1  g1' g2  g2'
    assert feed.tokens == (7, 10, 11, 12, 13, 14, 15, 30, 31, 40, 41)
    assert feed.positions == (20, 21, 22, 23, 22, 23, 24, 21, 22, 21, 22)
    vis = visibility(feed.parents).int().tolist()
    expected = [
        # x  a  b  c  d  e  f g1 g1' g2 g2'
        [1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0],  # x
        [1, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0],  # a   level 0 col 0
        [1, 1, 1, 0, 0, 0, 0, 0, 0, 0, 0],  # b   level 0 col 1
        [1, 1, 1, 1, 0, 0, 0, 0, 0, 0, 0],  # c   level 0 col 2
        [1, 1, 0, 0, 1, 0, 0, 0, 0, 0, 0],  # d   level 1 col 0: level-0 col 0, itself
        [1, 1, 1, 0, 0, 1, 0, 0, 0, 0, 0],  # e   level 1 col 1: level-0 cols 0-1, itself
        [1, 1, 1, 1, 0, 0, 1, 0, 0, 0, 0],  # f   level 1 col 2: level-0 cols 0-2, itself
        [1, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0],  # g1  guess 1, sees only x
        [1, 0, 0, 0, 0, 0, 0, 1, 1, 0, 0],  # g1'
        [1, 0, 0, 0, 0, 0, 0, 0, 0, 1, 0],  # g2  guess 2, not guess 1
        [1, 0, 0, 0, 0, 0, 0, 0, 0, 1, 1],  # g2'
    ]
    assert vis == expected


def test_guess_sharing_a_window_prefix_is_merged():
    p = LookaheadProposer(LookaheadConfig(window=2, ngram=2, guesses=1, prompt_pool=False))
    p.start([1])
    p.levels = [[10, 11]]
    p.pool.add(7, (10,))
    draft = p.propose([7])
    assert draft == Draft((10, 11), (-1, 0))  # the guess (10,) is the window's first node


def test_pool_update_from_window_columns():
    import torch

    from polyverse.loop import Observation
    from polyverse.verify import Verdict

    p = LookaheadProposer(LookaheadConfig(window=2, ngram=3, guesses=2, prompt_pool=False))
    p.start([1])
    p.levels = [[10, 11], [12, 13]]
    draft = p.propose([7])
    logits = torch.zeros(len(draft) + 1, 50)
    logits[2 + 1, 20] = 1.0  # last level col 0 (node 2, feed row 3) predicts 20
    logits[3 + 1, 21] = 1.0  # last level col 1 (node 3, feed row 4) predicts 21
    p.observe(Observation(draft, Verdict((), (5,)), logits, (7, 5)))
    assert p.pool.get(10, 2) == [(12, 20)]
    assert p.pool.get(11, 2) == [(13, 21)]
    assert p.levels == [[12, 13], [20, 21]]
