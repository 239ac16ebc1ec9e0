"""Structured text -> labelled pieces -> tokens with branch labels, cut where the engine cuts.

The engine forks a block right after ``</Goal>``, starts every path with the forced seed
``PATH_SEED`` (e.g. "\\n<Path>\\n2:"), ends a path at ``</Path>``, starts the Conclusion with
``CONCLUSION_SEED`` and closes the block with ``PARALLEL_CLOSE``. Cutting canonical text at the
same places and tokenising each piece on its own gives exactly the tokens the engine feeds, so
training (``attention``) and decoding agree token for token.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from .attention import Label

PATH_SEED = "\n<Path>\n{number}:"
CONCLUSION_SEED = "\n<Conclusion>\n"
PARALLEL_CLOSE = "\n</Parallel>"
GOAL_END, PATH_END, CONCLUSION_END = "</Goal>", "</Path>", "</Conclusion>"

_EVENTS = re.compile(r"</Goal>|<Path>\s*(?P<num>\d+(?:\.\d+)*):|</Path>|<Conclusion>\n?|</Conclusion>|</Parallel>")


@dataclass(frozen=True)
class Piece:
    text: str
    label: Label
    forced: bool  # written by the engine (a seed or a closing tag), not chosen by the model


def pieces(text: str) -> list[Piece]:
    """Cut structured text into pieces on branches; the text of all pieces joined is ``text``.

    >>> [(p.text, p.label, p.forced) for p in pieces("a</Goal>\\n<Path>\\n1: x</Path>\\n<Conclusion>\\nc</Conclusion>\\n</Parallel>z")]
    ... # doctest: +NORMALIZE_WHITESPACE
    [('a</Goal>', (), False), ('\\n<Path>\\n1:', ((0, 1),), True), (' x</Path>', ((0, 1),), False),
     ('\\n<Conclusion>\\n', (), True), ('c</Conclusion>', (), False), ('\\n</Parallel>', (), True), ('z', (), False)]
    """
    out: list[Piece] = []
    stack: list[Label] = [()]  # the branch being written, innermost last
    blocks: dict[Label, int] = {}  # blocks opened on each branch
    paths: list[int] = []  # paths opened in each open block
    at = 0

    def emit(end: int, label: Label, forced: bool) -> None:
        nonlocal at
        if end > at:
            out.append(Piece(text[at:end], label, forced))
        at = end

    for m in _EVENTS.finditer(text):
        tag = m.group(0)
        if tag == GOAL_END:
            emit(m.end(), stack[-1], False)
            blocks[stack[-1]] = blocks.get(stack[-1], -1) + 1
            paths.append(0)
        elif tag.startswith("<Path>"):
            if not paths:
                raise ValueError(f"<Path> outside a Parallel block at character {m.start()}")
            paths[-1] += 1
            parent = stack[-1]
            label = parent + ((blocks[parent], paths[-1]),)
            emit(m.end(), label, True)
            stack.append(label)
        elif tag == PATH_END:
            if len(stack) < 2:
                raise ValueError(f"</Path> without <Path> at character {m.start()}")
            emit(m.end(), stack.pop(), False)
        elif tag.startswith("<Conclusion>"):
            emit(m.end(), stack[-1], True)
        elif tag == CONCLUSION_END:
            emit(m.end(), stack[-1], False)
        else:  # </Parallel>
            emit(m.end(), stack[-1], True)
            if paths:
                paths.pop()
    emit(len(text), stack[-1], False)
    return out


def encode(parts: list[Piece], tokenizer) -> tuple[list[int], list[Label], list[bool]]:
    """Tokenise each piece on its own: token ids, their branch labels and forced flags."""
    ids: list[int] = []
    labels: list[Label] = []
    forced: list[bool] = []
    for piece in parts:
        toks = tokenizer(piece.text, add_special_tokens=False)["input_ids"]
        ids.extend(int(t) for t in toks)
        labels.extend([piece.label] * len(toks))
        forced.extend([piece.forced] * len(toks))
    return ids, labels, forced
