import pytest
import torch

from polyverse.draft import Draft
from polyverse.layout import Feed, additive_mask, chain_feed, draft_feed, is_plain_chain, visibility, visible


def test_draft_depths_and_children():
    #      root
    #     /    \
    #    a(0)  b(1)
    #    |      |
    #    c(2)  d(3)
    #    |
    #    e(4)
    d = Draft((10, 11, 12, 13, 14), (-1, -1, 0, 1, 2))
    assert d.depths() == (1, 1, 2, 2, 3)
    assert d.children(-1) == [0, 1]
    assert d.children(0) == [2]
    assert d.children(4) == []


def test_draft_rejects_bad_parents():
    with pytest.raises(ValueError):
        Draft((1, 2), (-1, 1))  # a node can't be its own parent
    with pytest.raises(ValueError):
        Draft((1, 2), (-1,))


def test_pruned_keeps_valid_parents():
    d = Draft((10, 11, 12, 13, 14), (-1, -1, 0, 1, 2))
    p = d.pruned(2)
    assert p.tokens == (10, 11, 12, 13)
    assert p.parents == (-1, -1, 0, 1)
    assert d.pruned(0) == Draft.empty()


def test_draft_feed_positions_hand_drawn():
    # pending x=9 at position 4; draft {1, 2 -> 3}
    f = draft_feed(9, 4, Draft((1, 2, 3), (-1, -1, 1)))
    assert f.tokens == (9, 1, 2, 3)
    assert f.positions == (4, 5, 5, 6)
    assert f.parents == (-1, 0, 0, 2)


def test_visibility_hand_drawn():
    # feed: r, a(r), b(r), c(b)
    vis = visibility((-1, 0, 0, 2)).int().tolist()
    assert vis == [
        [1, 0, 0, 0],
        [1, 1, 0, 0],
        [1, 0, 1, 0],
        [1, 0, 1, 1],
    ]


def test_additive_mask_sees_context_and_own_branch():
    m = additive_mask((-1, 0, 0), past=2)
    assert m.shape == (1, 1, 3, 5)
    hidden = (m[0, 0] < 0).int().tolist()
    assert hidden == [
        [0, 0, 0, 1, 1],
        [0, 0, 0, 0, 1],
        [0, 0, 0, 1, 0],
    ]
    assert m.min() == torch.finfo(torch.float32).min


def test_visible_is_what_the_additive_mask_leaves_open():
    context = torch.tensor([[True, False], [True, True], [False, True]])  # [q, past]
    for ctx in (None, context):
        for parents in ((-1, 0, 0), (-1, 0, 1), (-1, -1, 1)):
            assert torch.equal(visible(parents, 2, ctx), additive_mask(parents, 2, context=ctx)[0, 0] == 0)
    assert visible((-1, 0, 0), 2, context)[2].tolist() == [False, True, True, False, True]
    with pytest.raises(ValueError, match="context visibility"):
        visible((-1, 0), 2, context)


def test_chain_detection():
    assert is_plain_chain(chain_feed([1, 2, 3], 5), past=5)
    assert not is_plain_chain(chain_feed([1, 2, 3], 5), past=4)
    assert not is_plain_chain(Feed((1, 2), (5, 6), (-1, -1)), past=5)


def test_node_map_follows_nodes_the_loop_pruned_renumbered_or_added():
    from polyverse import Draft

    mine = Draft.chain([5, 6, 7])
    assert mine.node_map(mine) == {0: 0, 1: 1, 2: 2}
    assert mine.node_map(Draft((5, 9, 6), (-1, -1, 0))) == {0: 0, 1: 2}  # 7 cut, a forced 9 added before 6
    assert mine.node_map(Draft.chain([5, 6])) == {0: 0, 1: 1}  # the budget cut the deepest
    assert mine.node_map(Draft.chain([9, 5])) == {}  # a 5 below 9 is another path
