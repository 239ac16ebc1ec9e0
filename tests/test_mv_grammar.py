"""Tests of polyverse.multiverse.grammar on the released Multiverse examples and hand-made inputs."""

import doctest
import pickle
from pathlib import Path as FsPath

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from polyverse.multiverse import grammar
from polyverse.multiverse.grammar import (
    TAGS, Document, GrammarError, Outline, Parallel, Path, Text, Think, blocks, depth, number_of, parse,
    render, validate,
)

EXAMPLES = FsPath("/work/shared/data/multiverse_examples")
FILES = sorted(EXAMPLES.glob("*.xml")) if EXAMPLES.is_dir() else []
needs_examples = pytest.mark.skipif(not FILES, reason="no Multiverse examples on this machine")

# Every example read by hand: all 20 are valid (top-level blocks number from 1, nested blocks in
# path n from n.1, several nested blocks in one path each restart at n.1). A file listed here must
# give exactly these (line, rule) pairs; a file not listed must give none.
EXPECTED_ERRORS: dict[str, list[tuple[int, str]]] = {}

# (file, blocks, depth, the numbers of the paths holding the nested blocks), read by hand
EXAMPLE_SHAPES = {
    "1.xml": (11, 2, ["2", "1", "2", "1", "1", "1"]),
    "5.xml": (3, 2, ["1"]),
    "13.xml": (2, 1, []),
    "17.xml": (26, 2, ["2", "2", "2", "2", "1"]),
}

# A valid document with one nested block; line numbers on the right.
VALID = """<Think>
intro
<Parallel>
<Goal>
<Outline>
1: a
</Outline>
<Outline>
2: b
</Outline>
</Goal>
<Path>
1: do a
</Path>
<Path>
2: do b
<Parallel>
<Goal>
<Outline>
2.1: b1
</Outline>
</Goal>
<Path>
2.1: do b1
</Path>
<Conclusion>
b1 done
</Conclusion>
</Parallel>
</Path>
<Conclusion>
done
</Conclusion>
</Parallel>
answer
</Think>"""
#  1 <Think>   3 <Parallel>   5/8 <Outline>   12/15 <Path>   17 <Parallel> (in path 2)   19 <Outline> 2.1
# 23 <Path> 2.1   26 <Conclusion>   29 </Parallel>   31 <Conclusion>   34 </Parallel>   36 </Think>


def lines(text, drop=(), at=None, put=()):
    """VALID with 1-based lines ``drop`` removed and ``put`` lines inserted before line ``at``."""
    rows = text.split("\n")
    out = []
    for i, row in enumerate(rows, 1):
        if i == at:
            out += list(put)
        if i not in drop:
            out.append(row)
    return "\n".join(out)


def sub(old, new, count=1):
    assert old in VALID
    return VALID.replace(old, new, count)


def pairs(text):
    return [(e.line, e.rule) for e in validate(text)]


# ---------------------------------------------------------------- the released examples


@needs_examples
@pytest.mark.parametrize("path", FILES, ids=lambda p: p.name)
def test_example_validates_or_fails_as_expected(path):
    assert pairs(path.read_text()) == EXPECTED_ERRORS.get(path.name, [])


@needs_examples
@pytest.mark.parametrize("path", FILES, ids=lambda p: p.name)
def test_example_round_trips(path):
    text = path.read_text()
    if EXPECTED_ERRORS.get(path.name):
        pytest.skip("invalid example")
    doc = parse(text)
    assert render(doc) == text  # the examples are in canonical layout, byte for byte
    assert parse(render(doc)) == doc


@needs_examples
@pytest.mark.parametrize("name", sorted(EXAMPLE_SHAPES))
def test_example_shapes(name):
    doc = parse((EXAMPLES / name).read_text())
    n_blocks, n_depth, parents = EXAMPLE_SHAPES[name]
    found = blocks(doc)
    assert len(found) == n_blocks and depth(doc) == n_depth
    assert [p for p, _ in found if p is not None] == parents
    for parent, block in found:  # numbering as the examples do it
        assert [o.number for o in block.outlines] == [number_of(i, parent) for i in range(1, len(block.outlines) + 1)]
        assert [p.number for p in block.paths] == [o.number for o in block.outlines]


@needs_examples
def test_example_first_block_content():
    doc = parse((EXAMPLES / "1.xml").read_text())
    (think,) = doc.body
    first = blocks(doc)[0][1]
    assert isinstance(think, Think) and think.body[0].text.startswith("Okay, so I have to prove")
    assert think.body[0].text.endswith("Let's think in parallel.")
    assert first.outlines[0] == Outline("1", "Attempt to apply the Cauchy-Schwarz inequality directly to the integral $I$.")
    assert first.paths[0].body[0].text.startswith("Maybe Cauchy-Schwarz on $I$?\n")
    assert first.paths[1].body[0].text.endswith("Let's think in parallel.")
    assert isinstance(first.paths[1].body[1], Parallel) and first.paths[1].body[2].text.startswith("Wait, perhaps.")
    assert first.conclusion[0].text.startswith("Direct application of Cauchy-Schwarz")


@needs_examples
def test_math_with_less_than_is_text():
    text = (EXAMPLES / "3.xml").read_text()
    assert "<k <1" in text and validate(text) == []


# Real files broken on purpose: the lines come from the file.
@needs_examples
@pytest.mark.parametrize("drop, put_at, put, expected", [
    ({58}, None, (), [(56, "unclosed-tag")]),  # 1.xml: the </Path> of path 2.2 removed
    ({22, 23, 24}, None, (), [(17, "paths-match-outlines"), (22, "outline-number")]),  # outline 2 removed
    ((), 29, ("stray note",), [(29, "stray-text")]),  # between </Goal> and <Path>
    ({256, 257, 258}, None, (), [(119, "missing-conclusion")]),  # second block's conclusion removed
    ({729}, None, (), [(469, "unclosed-tag"), (729, "stray-text")]),  # last </Parallel> removed: the
    # text after it is now in the block
])
def test_broken_real_example(drop, put_at, put, expected):
    text = (EXAMPLES / "1.xml").read_text()
    rows = text.split("\n")
    assert rows[57] == "</Path>" and rows[728] == "</Parallel>" and rows[255] == "<Conclusion>"
    assert pairs(lines(text, drop, put_at, put)) == expected


# ---------------------------------------------------------------- the hand-made document


def test_valid_document():
    doc = parse(VALID)
    assert validate(VALID) == [] and render(doc) == VALID and depth(doc) == 2
    (think,) = doc.body
    outer = think.body[1]
    inner = outer.paths[1].body[1]
    assert think.body[0] == Text("intro") and think.body[2] == Text("answer")
    assert outer.outlines == (Outline("1", "a"), Outline("2", "b"))
    assert outer.paths[0] == Path("1", (Text("do a"),))
    assert outer.paths[1].body[0] == Text("do b") and len(outer.paths[1].body) == 2
    assert inner == Parallel((Outline("2.1", "b1"),), (Path("2.1", (Text("do b1"),)),), (Text("b1 done"),))
    assert outer.conclusion == (Text("done"),)
    assert blocks(doc) == [(None, outer), ("2", inner)]


def test_render_of_built_document_is_canonical():
    doc = Document((Text("q"), Parallel((Outline("1", "x"),), (Path("1", (Text("y"),)),), (Text("z"),))))
    assert render(doc) == ("q\n<Parallel>\n<Goal>\n<Outline>\n1: x\n</Outline>\n</Goal>\n<Path>\n1: y\n"
                           "</Path>\n<Conclusion>\nz\n</Conclusion>\n</Parallel>")
    assert parse(render(doc)) == doc


def test_parallel_at_top_level_without_think():
    text = lines(VALID, drop={1, 2, 35, 36})
    doc = parse(text)
    assert isinstance(doc.body[0], Parallel) and len(doc.body) == 1 and render(doc) == text


def test_text_outside_think_and_trailing_newline_kept():
    text = "Question?\n" + VALID + "\nThe answer is 4.\n"
    doc = parse(text)
    assert doc.body[0] == Text("Question?") and doc.body[2] == Text("The answer is 4.\n")
    assert render(doc) == text


def test_layout_whitespace_is_lenient_and_stable():
    text = "\n".join("  " + row if row.startswith("<") else row for row in VALID.split("\n"))
    text = text.replace("</Outline>\n", "</Outline>\n\n").replace("<Path>\n2: ", "<Path>2:")
    assert validate(text) == []
    doc = parse(text)
    assert [o.text for o in blocks(doc)[0][1].outlines] == ["a", "b"]
    assert parse(render(doc)) == doc and render(parse(render(doc))) == render(doc)


def test_path_may_start_with_nested_block_after_its_number():
    text = sub("2: do b\n<Parallel>", "2: \n<Parallel>").replace("</Parallel>\n</Path>", "</Parallel>\nthen b\n</Path>")
    doc = parse(text)
    path = doc.body[0].body[1].paths[1]
    assert isinstance(path.body[0], Parallel) and path.body[1] == Text("then b")
    assert render(doc) == text


def test_number_of():
    assert number_of(2, None) == "2" and number_of(1, "2") == "2.1" and number_of(3, "2.1") == "2.1.3"


def test_depth_and_blocks_of_plain_text():
    doc = parse("just text, a<b and b>c")
    assert doc == Document((Text("just text, a<b and b>c"),)) and depth(doc) == 0 and blocks(doc) == []


def test_depth_three():
    text = sub("2.1: do b1\n", "2.1: do b1\n<Parallel>\n<Goal>\n<Outline>\n2.1.1: c\n</Outline>\n</Goal>\n"
                               "<Path>\n2.1.1: do c\n</Path>\n<Conclusion>\n</Conclusion>\n</Parallel>\n")
    doc = parse(text)
    assert depth(doc) == 3 and [p for p, _ in blocks(doc)] == [None, "2", "2.1"] and render(doc) == text


def test_tags_constant_and_module_doctest():
    assert TAGS == ("Think", "Parallel", "Goal", "Outline", "Path", "Conclusion")
    assert doctest.testmod(grammar).failed == 0


# ---------------------------------------------------------------- one test per rule


def test_grammar_error_format():
    err = GrammarError(12, "paths-match-outlines", "3 outlines but 2 paths")
    assert isinstance(err, ValueError)
    assert str(err) == "line 12: rule 'paths-match-outlines': 3 outlines but 2 paths"
    assert (err.line, err.rule, err.message) == (12, "paths-match-outlines", "3 outlines but 2 paths")
    back = pickle.loads(pickle.dumps(err))
    assert (back.line, back.rule, str(back)) == (12, "paths-match-outlines", str(err))


RULE_CASES = {
    "unknown-tag": (sub("intro", "intro <Step> here"), [(2, "unknown-tag")]),
    "unknown-tag-lowercase-think": (sub("answer", "answer\n</think>"), [(36, "unknown-tag")]),
    "unclosed-tag-before-sibling": (lines(VALID, drop={14}), [(12, "unclosed-tag")]),
    "unclosed-tag-at-end": (lines(VALID, drop={36}), [(1, "unclosed-tag")]),
    "unclosed-tag-closed-by-parent": (lines(VALID, drop={21}), [(19, "unclosed-tag")]),
    "unclosed-tag-last-path-before-conclusion": (lines(VALID, drop={30}), [(15, "unclosed-tag")]),
    "unclosed-tag-goal-before-path": (lines(VALID, drop={11}), [(4, "unclosed-tag")]),
    "mismatched-tag-in-path": (sub("1: do a", "1: do a\n</Outline>"), [(14, "mismatched-tag")]),
    "mismatched-tag": (sub("b1 done\n</Conclusion>", "b1 done\n</Goal>"),
                       [(26, "unclosed-tag"), (28, "mismatched-tag")]),
    "misplaced-tag-think-in-conclusion": (sub("b1 done", "<Think>\nhm\n</Think>"), [(27, "misplaced-tag")]),
    "misplaced-tag-parallel-in-conclusion": (sub("done\n</Conclusion>\n</Parallel>\nanswer",
                                                 "<Parallel>\n</Parallel>\n</Conclusion>\n</Parallel>\nanswer"),
                                             [(32, "misplaced-tag")]),
    "misplaced-tag-outline-in-path": (sub("1: do a", "1: do a\n<Outline>\n3: c\n</Outline>"), [(14, "misplaced-tag")]),
    "misplaced-tag-goal-in-think": (sub("intro", "intro\n<Goal>\n</Goal>"), [(3, "misplaced-tag")]),
    "misplaced-tag-think-in-think": (sub("intro", "<Think>\n</Think>"), [(2, "misplaced-tag")]),
    "stray-text-in-parallel": (lines(VALID, at=12, put=["", "  a note"]), [(13, "stray-text")]),
    "stray-text-in-goal": (sub("</Outline>\n<Outline>\n2: b", "</Outline> x\n<Outline>\n2: b"), [(7, "stray-text")]),
    "missing-goal": (lines(VALID, drop={18, 19, 20, 21, 22}), [(17, "missing-goal")]),
    "missing-conclusion": (lines(VALID, drop={26, 27, 28}), [(17, "missing-conclusion")]),
    "child-order-conclusion-before-path": (sub("<Path>\n2.1: do b1\n</Path>\n<Conclusion>\nb1 done\n</Conclusion>",
                                               "<Conclusion>\nb1 done\n</Conclusion>\n<Path>\n2.1: do b1\n</Path>"),
                                           [(26, "child-order")]),
    "child-order-goal-after-path": (sub("<Goal>\n<Outline>\n2.1: b1\n</Outline>\n</Goal>\n<Path>\n2.1: do b1\n</Path>",
                                        "<Path>\n2.1: do b1\n</Path>\n<Goal>\n<Outline>\n2.1: b1\n</Outline>\n</Goal>"),
                                    [(21, "child-order")]),
    "child-order-second-goal": (lines(VALID, at=26, put=["<Goal>", "</Goal>"]), [(26, "child-order")]),
    "empty-goal": (lines(VALID, drop={19, 20, 21}), [(18, "empty-goal")]),
    "paths-match-outlines": (lines(VALID, drop=set(range(15, 31))), [(3, "paths-match-outlines")]),
    "outline-number-wrong": (sub("2: b", "3: b"), [(8, "outline-number")]),
    "outline-number-missing": (sub("2: b", "b"), [(8, "outline-number")]),
    "outline-number-nested": (sub("2.1: b1", "1: b1"), [(19, "outline-number")]),
    "path-number-wrong": (sub("2.1: do b1", "2.2: do b1"), [(23, "path-number")]),
    "path-number-missing": (sub("1: do a", "do a"), [(12, "path-number")]),
    "path-number-top-does-not-cascade": (sub("2: do b", "3: do b"), [(15, "path-number")]),
    "empty-outline": (sub("1: a", "1: "), [(5, "empty-outline")]),
    "empty-path": (sub("1: do a", "1:"), [(12, "empty-path")]),
}


@pytest.mark.parametrize("name", sorted(RULE_CASES))
def test_rule(name):
    text, expected = RULE_CASES[name]
    assert pairs(text) == expected
    with pytest.raises(GrammarError) as info:
        parse(text)
    assert (info.value.line, info.value.rule) == expected[0]


def test_every_rule_has_a_case():
    assert {rule for _, expected in RULE_CASES.values() for _, rule in expected} == set(grammar.RULES)


def test_validate_reports_all_in_line_order_and_parse_raises_first():
    text = sub("2.1: do b1", "2.2: do b1").replace("1: a", "1: ").replace("intro", "intro <X>")
    assert pairs(text) == [(2, "unknown-tag"), (5, "empty-outline"), (23, "path-number")]
    with pytest.raises(GrammarError, match=r"^line 2: rule 'unknown-tag': "):
        parse(text)


def test_paths_match_outlines_message():
    (err,) = validate(lines(VALID, drop=set(range(15, 31))))
    assert err.message == "2 outlines but 1 paths"


# ---------------------------------------------------------------- properties

TEXT = st.text(alphabet="ab xyz019:.>$\\\n\t", max_size=12)  # no '<', so never a tag
LINE = st.builds(lambda a, b: (a + b).strip(), st.text(alphabet="abxyz", min_size=1, max_size=3), TEXT)


@st.composite
def _seq(draw, parallels):
    """The given blocks with optional text before, between and after them (never two texts in a row)."""
    out = [Text(draw(TEXT))] if draw(st.booleans()) else []
    for block in parallels:
        out.append(block)
        if draw(st.booleans()):
            out.append(Text(draw(TEXT)))
    return tuple(out)


@st.composite
def parallels(draw, parent=None, level=1):
    n = draw(st.integers(1, 4))
    outlines = tuple(Outline(number_of(i, parent), draw(LINE)) for i in range(1, n + 1))
    paths = []
    for i in range(1, n + 1):
        number = number_of(i, parent)
        nested = [draw(parallels(number, level + 1)) for _ in range(draw(st.integers(0, 2 if level < 2 else 0)))]
        head = Text(draw(st.builds(str.__add__, TEXT, LINE)))  # the path's text after "2: ", never blank
        rest = draw(_seq(nested))
        paths.append(Path(number, (head, *rest[1:]) if rest and isinstance(rest[0], Text) else (head, *rest)))
    conclusion = draw(st.one_of(st.just(()), TEXT.map(lambda t: (Text(t),))))
    return Parallel(outlines, tuple(paths), conclusion)


@st.composite
def documents(draw):
    top = [draw(parallels()) for _ in range(draw(st.integers(0, 2)))]
    if draw(st.booleans()):  # with <Think>
        think = Think(draw(_seq(top)))
        return Document(tuple(n for n in (draw(st.none() | TEXT.map(Text)), think, draw(st.none() | TEXT.map(Text)))
                              if n is not None))
    body = draw(_seq(top or [draw(parallels())]))  # training-free mode: blocks at the top level
    return Document(body)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(documents())
def test_render_parse_round_trip(doc):
    text = render(doc)
    assert validate(text) == []
    assert parse(text) == doc
    assert depth(doc) <= 2
    assert all(p is None or p.count(".") == 0 for p, _ in blocks(doc))


PIECES = st.sampled_from([f"<{t}>" for t in TAGS] + [f"</{t}>" for t in TAGS] +
                         ["\n", "1: ", "2: ", "1.1: ", "x", " ", "<Foo>", "a<b", "\r\n"])


@settings(max_examples=150, deadline=None)
@given(st.lists(PIECES, max_size=40).map("".join))
def test_validate_never_raises_and_agrees_with_parse(text):
    errors = validate(text)
    assert all(isinstance(e, GrammarError) and e.line >= 1 for e in errors)
    assert [e.line for e in errors] == sorted(e.line for e in errors)
    try:
        doc = parse(text)
    except GrammarError as err:
        assert errors and (err.line, err.rule) == (errors[0].line, errors[0].rule)
    else:
        assert errors == [] and parse(render(doc)) == doc


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(documents(), st.data())
def test_damaged_documents_are_reported_not_crashed(doc, data):
    rows = render(doc).split("\n")
    i = data.draw(st.integers(0, len(rows) - 1))
    damaged = "\n".join(rows[:i] + rows[i + 1:]) if data.draw(st.booleans()) else "\n".join(rows[:i] + [rows[i]] + rows[i:])
    errors = validate(damaged)
    assert all(1 <= e.line <= len(rows) + 1 for e in errors)
    if rows[i].startswith("<"):  # dropping or doubling a tag line always breaks the grammar
        assert errors
