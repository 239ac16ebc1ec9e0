"""Grammar of Multiverse structured reasoning text (arXiv 2506.09991).

A document is free text that may hold ``<Think>`` blocks. A ``<Parallel>`` block
sits in ``<Think>``, in a ``<Path>``, or (leniently) at the top level::

    <Parallel>
    <Goal>
    <Outline>
    1: try a substitution
    </Outline>
    <Outline>
    2: try induction
    </Outline>
    </Goal>
    <Path>
    1: let u = x + 1 ...
    </Path>
    <Path>
    2: for n = 1 ...
    </Path>
    <Conclusion>
    both work; induction is shorter
    </Conclusion>
    </Parallel>

Numbering (as in the released examples): every block that is not inside a path
numbers its outlines 1, 2, ...; a block inside path ``n`` numbers them
``n.1``, ``n.2``, ..., and each such block restarts at ``n.1``. Path ``i``
carries the number of outline ``i``.

Layout: each tag sits on its own line. The one newline between a tag and its
neighbour (text or tag) is layout, not text: parse drops it, render puts it
back, so ``render(parse(x)) == x`` for text in that layout (all the released
examples are). Other whitespace is kept in Text nodes; whitespace between
the children of ``<Parallel>``/``<Goal>`` and around an outline's text is not.

Rules (``GrammarError.rule``, see RULES). Errors about an element give the
line of its opening tag; stray-text gives the line where the text starts.
An opening tag that can only follow the open element as its sibling (a
``<Path>`` or ``<Conclusion>`` while a ``<Path>`` is open) closes it, as
unclosed-tag, so one forgotten close tag is one error.

>>> doc = parse("<Think>\\nhm\\n</Think>")
>>> doc.body
(Think(body=(Text(text='hm'),)),)
>>> [e.rule for e in validate("<Parallel>\\n</Parallel>")]
['missing-goal', 'missing-conclusion']
"""

from __future__ import annotations

import re
from dataclasses import dataclass

TAGS: tuple[str, ...] = ("Think", "Parallel", "Goal", "Outline", "Path", "Conclusion")
RULES: tuple[str, ...] = (
    "unknown-tag",           # <Step>, </think>: a tag name not in TAGS
    "unclosed-tag",          # an element never closed
    "mismatched-tag",        # a closing tag with no open element of its name
    "misplaced-tag",         # e.g. <Parallel> in <Conclusion>, <Outline> in <Path>, <Think> in <Think>
    "stray-text",            # text directly in <Parallel> or <Goal>
    "missing-goal", "missing-conclusion",
    "child-order",           # not <Goal>, <Path>..., <Conclusion> (or a second Goal/Conclusion)
    "empty-goal",            # a <Goal> without <Outline>
    "paths-match-outlines",  # as many paths as outlines
    "outline-number", "path-number",  # missing or not number_of(i, parent)
    "empty-outline", "empty-path",    # no text after the number
)
_ALLOWED = {None: ("Think", "Parallel"), "Think": ("Parallel",), "Parallel": ("Goal", "Path", "Conclusion"),
            "Goal": ("Outline",), "Outline": (), "Path": ("Parallel",), "Conclusion": ()}
_CLOSED_BY = {"Outline": ("Outline",), "Goal": ("Path", "Conclusion"), "Path": ("Path", "Conclusion")}
_TAG = re.compile(r"<(/?)([A-Za-z][A-Za-z0-9_]*)>")  # "a <b", "x<1>", "<x, y>" stay text
_NUM = re.compile(r"\s*(\d+(?:\.\d+)*): ?")


class GrammarError(ValueError):
    """One rule violation; ``str(e)`` reads ``line 12: rule 'path-number': expected 2, got 3``."""

    def __init__(self, line: int, rule: str, message: str):
        super().__init__(f"line {line}: rule {rule!r}: {message}")
        self.line, self.rule, self.message = line, rule, message

    def __reduce__(self):
        return type(self), (self.line, self.rule, self.message)


@dataclass(frozen=True)
class Text:
    """Raw text, whitespace kept (minus the layout newlines next to tags)."""
    text: str


@dataclass(frozen=True)
class Outline:
    """``Outline("2.1", "check n = 1")`` is ``<Outline>\\n2.1: check n = 1\\n</Outline>``."""
    number: str
    text: str


@dataclass(frozen=True)
class Path:
    """A path; ``body`` is what follows its ``"2: "`` prefix (Text and nested Parallel)."""
    number: str
    body: tuple[Node, ...]


@dataclass(frozen=True)
class Parallel:
    """A block: one outline per path, then a conclusion (text)."""
    outlines: tuple[Outline, ...]
    paths: tuple[Path, ...]
    conclusion: tuple[Node, ...]


@dataclass(frozen=True)
class Think:
    body: tuple[Node, ...]


@dataclass(frozen=True)
class Document:
    """Top level: Text, Think and Parallel nodes."""
    body: tuple[Node, ...]


Node = Text | Parallel | Think


def number_of(path_index: int, parent: str | None) -> str:
    """``number_of(2, None) == "2"``; ``number_of(1, "2") == "2.1"`` (1-based index)."""
    return f"{parent}.{path_index}" if parent else str(path_index)


@dataclass
class _El:  # a tag and what it holds, before the rules are checked
    name: str | None
    line: int
    items: list  # of _El and (raw text, line of its first character)


def _tree(text: str, errs: list) -> _El:
    root, pos, line = _El(None, 1, []), 0, 1
    stack = [root]

    def unclosed(el):
        errs.append(GrammarError(el.line, "unclosed-tag", f"<{el.name}> is never closed"))

    for m in _TAG.finditer(text):
        if m.start() > pos:
            stack[-1].items.append((text[pos:m.start()], line))
        line, pos = line + text.count("\n", pos, m.start()), m.end()
        close, name = m.groups()
        if name not in TAGS:
            errs.append(GrammarError(line, "unknown-tag", f"unknown tag {m.group()}"))
        elif not close:
            if name in _CLOSED_BY.get(stack[-1].name, ()):  # <Path> in an open <Path>: </Path> forgotten
                unclosed(stack.pop())
            stack[-1].items.append(el := _El(name, line, []))
            stack.append(el)
        elif any(el.name == name for el in stack):
            while stack[-1].name != name:
                unclosed(stack.pop())
            stack.pop()
        else:
            errs.append(GrammarError(line, "mismatched-tag", f"</{name}> closes nothing open"))
    if pos < len(text):
        stack[-1].items.append((text[pos:], line))
    while len(stack) > 1:
        unclosed(stack.pop())
    return root


def _texts(el: _El) -> list:
    """el's items with raw text turned into Text, minus the layout newlines next to tags."""
    out, items = [], el.items
    for i, it in enumerate(items):
        if isinstance(it, _El):
            out.append(it)
            continue
        raw = it[0]
        before = isinstance(items[i - 1], _El) if i else el.name is not None
        after = isinstance(items[i + 1], _El) if i + 1 < len(items) else el.name is not None
        if before and after and raw == "\n":
            continue  # just the newline between two tags
        raw = raw[1:] if before and raw.startswith("\n") else raw
        out.append(Text(raw[:-1] if after and raw.endswith("\n") else raw))
    return out


def _misplaced(kid: _El, el: _El) -> GrammarError:
    where = f"<{el.name}>" if el.name else "the top level"
    return GrammarError(kid.line, "misplaced-tag", f"<{kid.name}> may not appear in {where}")


def _body(el: _El, errs: list, number: str | None) -> tuple[Node, ...]:
    """Body of the document, a Think, Path, Conclusion or Outline; ``number``: the enclosing path's."""
    nodes = []
    for it in _texts(el):
        if isinstance(it, Text):
            nodes.append(it)
        elif it.name not in _ALLOWED[el.name]:
            errs.append(_misplaced(it, el))
        elif it.name == "Think":
            nodes.append(Think(_body(it, errs, None)))
        else:
            nodes.append(_parallel(it, errs, number))
    return tuple(nodes)


def _kids(el: _El, errs: list) -> list[_El]:
    """Children of a Parallel or Goal, which holds tags with only whitespace between them."""
    kids = []
    for it in el.items:
        if isinstance(it, _El):
            if it.name in _ALLOWED[el.name]:
                kids.append(it)
            else:
                errs.append(_misplaced(it, el))
        elif it[0].strip():
            raw, line = it
            line += raw.count("\n", 0, len(raw) - len(raw.lstrip()))
            errs.append(GrammarError(line, "stray-text", f"text directly in <{el.name}>: {raw.strip()[:40]!r}"))
    return kids


def _number(el: _El, text: str, want: str, errs: list) -> str:
    """Check that ``text`` (an outline's or path's) starts with ``want:``; return the text after it."""
    m, rule = _NUM.match(text), el.name.lower() + "-number"
    if not m:
        errs.append(GrammarError(el.line, rule, f"<{el.name}> must start with '{want}:'"))
    elif m.group(1) != want:
        errs.append(GrammarError(el.line, rule, f"expected {want}, got {m.group(1)}"))
    return text[m.end() if m else 0:]


def _parallel(el: _El, errs: list, parent: str | None) -> Parallel:
    kids, rank, prev = _kids(el, errs), {"Goal": 0, "Path": 1, "Conclusion": 2}, -1
    for kid in kids:
        if rank[kid.name] < prev or rank[kid.name] == prev != 1:
            errs.append(GrammarError(kid.line, "child-order", f"<{kid.name}> out of place: "
                                     "want one <Goal>, the <Path>s, one <Conclusion>"))
        prev = max(prev, rank[kid.name])
    goal, paths, concl = ([k for k in kids if k.name == n] for n in ("Goal", "Path", "Conclusion"))
    if not goal:
        errs.append(GrammarError(el.line, "missing-goal", "<Parallel> has no <Goal>"))
    if not concl:
        errs.append(GrammarError(el.line, "missing-conclusion", "<Parallel> has no <Conclusion>"))
    outlines = _goal(goal[0], errs, parent) if goal else ()
    if outlines and len(outlines) != len(paths):
        errs.append(GrammarError(el.line, "paths-match-outlines", f"{len(outlines)} outlines but {len(paths)} paths"))
    return Parallel(outlines, tuple(_path(p, number_of(i, parent), errs) for i, p in enumerate(paths, 1)),
                    _body(concl[0], errs, None) if concl else ())


def _goal(el: _El, errs: list, parent: str | None) -> tuple[Outline, ...]:
    kids = _kids(el, errs)
    if not kids:
        errs.append(GrammarError(el.line, "empty-goal", "<Goal> holds no <Outline>"))
    outlines = []
    for i, kid in enumerate(kids, 1):
        number = number_of(i, parent)
        text = _number(kid, "".join(t.text for t in _body(kid, errs, None)), number, errs).strip()
        if not text:
            errs.append(GrammarError(kid.line, "empty-outline", "<Outline> has no text"))
        outlines.append(Outline(number, text))
    return tuple(outlines)


def _path(el: _El, number: str, errs: list) -> Path:
    raw = el.items[0][0] if el.items and not isinstance(el.items[0], _El) else ""
    _number(el, raw, number, errs)
    body = list(_body(el, errs, number))
    if _NUM.match(raw) and isinstance(body[0], Text):  # drop the "2: " prefix
        rest = body[0].text[_NUM.match(body[0].text).end():]
        body[:1] = [Text(rest)] if rest else []
    if not any(isinstance(n, Text) and n.text.strip() for n in body):
        errs.append(GrammarError(el.line, "empty-path", "<Path> has no text"))
    return Path(number, tuple(body))


def _check(text: str) -> tuple[Document, list[GrammarError]]:
    errs: list[GrammarError] = []
    doc = Document(_body(_tree(text, errs), errs, None))
    return doc, sorted(errs, key=lambda e: e.line)


def parse(text: str) -> Document:
    """Parse ``text``; raise the GrammarError with the smallest line if any rule is broken."""
    doc, errs = _check(text)
    if errs:
        raise errs[0]
    return doc


def validate(text: str) -> list[GrammarError]:
    """Every violation in ``text``, by line ([] = valid). Never raises for a str."""
    return _check(text)[1]


def _pieces(nodes) -> list[str]:
    out = []
    for n in nodes:
        if isinstance(n, Text):
            out.append(n.text)
        elif isinstance(n, Think):
            out += ["<Think>", *_pieces(n.body), "</Think>"]
        else:
            out += ["<Parallel>", "<Goal>"]
            for o in n.outlines:
                out += ["<Outline>", f"{o.number}: {o.text}", "</Outline>"]
            out.append("</Goal>")
            for p in n.paths:
                first = bool(p.body) and isinstance(p.body[0], Text)  # the text after "2: "
                head, rest = (p.body[0].text, p.body[1:]) if first else ("", p.body)
                out += ["<Path>", f"{p.number}: {head}", *_pieces(rest), "</Path>"]
            out += ["<Conclusion>", *_pieces(n.conclusion), "</Conclusion>", "</Parallel>"]
    return out


def render(doc: Document) -> str:
    """Canonical text, every tag on its own line.

    ``parse(render(doc)) == doc`` for every valid document with no two Text nodes in a row (they
    come back as one), no Text("") first in a Path body, outline texts stripped, and not ``(Text(""),)``
    as the whole document. ``render(parse(x))`` differs from x only in layout whitespace.
    """
    return "\n".join(_pieces(doc.body))


def blocks(doc: Document) -> list[tuple[str | None, Parallel]]:
    """Every Parallel in document order, with the number of the path holding it (None if none)."""
    out: list[tuple[str | None, Parallel]] = []

    def walk(nodes, parent):
        for n in nodes:
            if isinstance(n, Think):
                walk(n.body, parent)
            elif isinstance(n, Parallel):
                out.append((parent, n))
                for p in n.paths:
                    walk(p.body, p.number)

    walk(doc.body, None)
    return out


def depth(doc: Document) -> int:
    """Deepest nesting of Parallel blocks: 0 without any, 1 without nesting."""
    def d(nodes) -> int:
        return max((d(n.body) if isinstance(n, Think) else 1 + max((d(p.body) for p in n.paths), default=0)
                    for n in nodes if not isinstance(n, Text)), default=0)
    return d(doc.body)
