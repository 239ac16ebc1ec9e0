"""Multiverse Attention: mask and positions from branch labels, against hand-drawn cases."""

import torch

from polyverse.multiverse import attention
from polyverse.multiverse.sequence import encode, pieces
from polyverse.models.tiny import char_tokenizer

T, P1, P2 = (), ((0, 1),), ((0, 2),)
N21, N22 = ((0, 2), (0, 1)), ((0, 2), (0, 2))


def test_siblings_are_hidden_and_goal_conclusion_see_all():
    # prompt, goal | path 1 (2 tokens) | path 2 (1 token) | conclusion
    labels = [T, T, P1, P1, P2, T]
    want = [
        [1, 0, 0, 0, 0, 0],
        [1, 1, 0, 0, 0, 0],
        [1, 1, 1, 0, 0, 0],
        [1, 1, 1, 1, 0, 0],
        [1, 1, 0, 0, 1, 0],  # path 2 does not see path 1
        [1, 1, 1, 1, 1, 1],  # the conclusion sees everything
    ]
    assert attention.mask(labels).int().tolist() == want
    assert attention.positions(labels) == [0, 1, 2, 3, 2, 4]


def test_nested_block_positions_and_visibility():
    # trunk 2 | path 1: 1 | path 2: 1, nested 2.1: 3, nested 2.2: 1, path-2 conclusion: 1 | conclusion 1
    labels = [T, T, P1, P2, N21, N21, N21, N22, P2, T]
    assert attention.positions(labels) == [0, 1, 2, 2, 3, 4, 5, 3, 6, 7]
    m = attention.mask(labels)
    assert not m[7, 4] and not m[7, 6]  # 2.2 does not see 2.1
    assert not m[4, 2] and not m[7, 2]  # nested paths do not see path 1
    assert m[8, 4:8].all() and not m[8, 2]  # path 2 after its block sees 2.1 and 2.2, not path 1
    assert m[9].all()  # the final conclusion sees everything
    assert attention.positions(labels, start=10)[0] == 10


def test_second_block_starts_after_the_first_merged():
    labels = [T, P1, P1, P1, P2, T, ((1, 1),), ((1, 2),), T]
    assert attention.positions(labels) == [0, 1, 2, 3, 1, 4, 5, 5, 6]
    m = attention.mask(labels)
    assert m[6, 1:5].all()  # a path of block 1 sees both paths of block 0 (merged)
    assert not m[7, 6]


def test_additive_mask_values():
    add = attention.additive([T, P1, P2])
    assert add.shape == (1, 1, 3, 3)
    assert add[0, 0, 2, 1] == torch.finfo(torch.float32).min and add[0, 0, 2, 0] == 0


def test_pieces_cut_where_the_engine_cuts_and_join_back():
    text = ("go\n<Parallel>\n<Goal>\n<Outline>\n1: a\n</Outline>\n<Outline>\n2: b\n</Outline>\n</Goal>\n"
            "<Path>\n1: x\n</Path>\n<Path>\n2: y\n</Path>\n<Conclusion>\nc\n</Conclusion>\n</Parallel>\nend")
    parts = pieces(text)
    assert "".join(p.text for p in parts) == text
    assert [(p.label, p.forced) for p in parts] == [
        (T, False), (P1, True), (P1, False), (P2, True), (P2, False), (T, True), (T, False), (T, True), (T, False)]
    assert parts[1].text == "\n<Path>\n1:" and parts[2].text == " x\n</Path>"
    ids, labels, forced = encode(parts, char_tokenizer())
    assert len(ids) == len(text) and labels.count(P1) == len("\n<Path>\n1: x\n</Path>")
