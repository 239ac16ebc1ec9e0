"""The two checks every structured sample passes: the grammar, and content kept from the original.

Content check: the structured text minus what structuring adds (tags, outline and path numbers,
the Goal outlines, the cue lines, and Conclusion lines that are not copied from the original) is
compared with the original by normalised Levenshtein distance (0 = same text, 1 = nothing shared),
both whitespace-normalised. Example::

    >>> original = "A is 6.\\nB is 20."
    >>> structured = ("<Think>\\n<Parallel>\\n<Goal>\\n<Outline>\\n1: find A\\n</Outline>\\n<Outline>\\n"
    ...               "2: find B\\n</Outline>\\n</Goal>\\n<Path>\\n1: A is 6.\\n</Path>\\n<Path>\\n"
    ...               "2: B is 20.\\n</Path>\\n<Conclusion>\\nSo 6 and 20.\\n</Conclusion>\\n</Parallel>\\n</Think>")
    >>> content(parse(structured), original), distance(original, structured)
    ('A is 6. B is 20.', 0.0)
"""

from __future__ import annotations

from dataclasses import dataclass

from rapidfuzz.distance import Levenshtein

from ..grammar import Document, GrammarError, Parallel, Text, Think, blocks, parse, validate


@dataclass(frozen=True)
class Verdict:
    """Outcome of both checks: ``reason`` is None when the text passes."""

    distance: float | None
    reason: str | None

    @property
    def ok(self) -> bool:
        return self.reason is None


def squash(text: str) -> str:
    """Whitespace-normalised text: runs of spaces and newlines become one space."""
    return " ".join(text.split())


def content(doc: Document, original: str, cue: str = "Let's think in parallel.") -> str:
    """The text of ``doc`` that should come from ``original`` (see the module docstring)."""
    orig = squash(original)
    out: list[str] = []

    def lines(text: str, keep) -> None:
        out.extend(ln for ln in text.splitlines() if ln.strip() and keep(squash(ln)))

    def walk(nodes, in_conclusion: bool = False) -> None:
        for n in nodes:
            if isinstance(n, Text):
                if in_conclusion:
                    lines(n.text, lambda s: s in orig)
                else:
                    lines(n.text, lambda s: s != squash(cue) or s in orig)
            elif isinstance(n, Think):
                walk(n.body, in_conclusion)
            elif isinstance(n, Parallel):
                for p in n.paths:
                    walk(p.body)
                walk(n.conclusion, True)

    walk(doc.body)
    return squash("\n".join(out))


def distance(original: str, structured: str, cue: str = "Let's think in parallel.") -> float:
    """Normalised edit distance between ``original`` and the content of ``structured`` (must parse)."""
    return float(Levenshtein.normalized_distance(squash(original), content(parse(structured), original, cue)))


def grammar_reason(errors: list[GrammarError]) -> str:
    """``"grammar: line 3: rule 'path-number': expected 2, got 3 (+1 more)"``"""
    more = f" (+{len(errors) - 1} more)" if len(errors) > 1 else ""
    return f"grammar: {errors[0]}{more}"


def check(original: str, structured: str, threshold: float, cue: str = "Let's think in parallel.") -> Verdict:
    """Grammar first (its first error is the reason), then one parallel block at least, then the
    content distance against ``threshold``: ``"content distance 0.52 > 0.35"``."""
    errors = validate(structured)
    if errors:
        return Verdict(None, grammar_reason(errors))
    doc = parse(structured)
    d = float(Levenshtein.normalized_distance(squash(original), content(doc, original, cue)))
    if not blocks(doc):
        return Verdict(d, "no parallel block")
    if d > threshold:
        shown = f"{d:.2f}" if round(d, 2) > threshold else f"{d:.4f}"  # never "0.35 > 0.35"
        return Verdict(d, f"content distance {shown} > {threshold:g}")
    return Verdict(d, None)
