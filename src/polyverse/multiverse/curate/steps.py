"""GSM8K-style solutions as steps: the numbers each step computes and uses, and who needs whom.

A GSM8K reference answer is one step per line, calculator annotations ``<<48/2=24>>`` inline and a
last line ``#### 72``. Example::

    >>> sol = parse_solution("A is 2*3 = <<2*3=6>>6.\\nB is 4*5 = <<4*5=20>>20.\\nSo 6+20 = <<6+20=26>>26.\\n#### 26")
    >>> [sorted(s.computed) for s in sol.steps], sol.answer
    ([['6'], ['20'], ['26']], '#### 26')
    >>> dependencies(sol.steps, frozenset())
    (frozenset(), frozenset(), frozenset({0, 1}))
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation

CALC = re.compile(r"<<([^>]*)>>")  # a calculator annotation: "<<48/2=24>>"
NUM = re.compile(r"(?<![\d.,])(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?|(?<![\d.,])\.\d+")
FRAC = re.compile(r"(?<![\d.,/])(\d+)/(\d+)(?![\d/])")  # "1/4": a fraction is a number too
_AFTER_EQ = re.compile(r"=\s*-?\s*[$€£]?\s*$")  # what may stand between '=' and a result
# after a number: an operator and an operand, so "= 184 - 143" starts an expression, not a result
OPERATOR_NEXT = re.compile(r"\s*(?:[-+*/×÷^]|x(?=\s*[\d$.(]))\s*[\d$€£.(]")
_OP = r"(?:[+*/×÷^]|-(?![A-Za-z])|\bx\b)"  # "8-hour" is no subtraction
_OPERATION = re.compile(rf"\d\s*%?\s*{_OP}|{_OP}\s*[$€£(]?\s*\.?\d")  # an operator by a number
_EXPR_TAIL = re.compile(r"[\d\s.,$€£%()+\-*/×÷^x]*$")  # the arithmetic just before an "="
_LETTER = re.compile(r"(?<![A-Za-z'’])[A-Za-z](?![A-Za-z'’])")
_ANSWER = re.compile(r"^\s*####\s*(.+?)\s*$")
_WORDS = {w: str(i) for i, w in enumerate(
    "zero one two three four five six seven eight nine ten eleven twelve thirteen fourteen fifteen "
    "sixteen seventeen eighteen nineteen twenty".split())}


@dataclass(frozen=True)
class Step:
    """One solution step: its text (annotations stripped), the numbers it computes and it uses.

    ``results`` are the character spans of the computed numbers in ``text``.
    """

    raw: str
    text: str
    computed: frozenset[str]
    used: frozenset[str]
    results: tuple[tuple[int, int], ...]
    operation: bool = False  # it does arithmetic ("<<12=12>>12" restates a result: it does not)
    algebra: bool = False  # it works with a variable ("X*2 = $290"): its inputs are not all numbers

    @property
    def parallel_ok(self) -> bool:
        """May sit in a parallel block: computes a number by arithmetic on numbers only."""
        return bool(self.computed) and self.operation and not self.algebra


@dataclass(frozen=True)
class Solution:
    """The steps of a solution and its final answer line (``"#### 72"``) if it has one."""

    steps: tuple[Step, ...]
    answer: str | None

    @property
    def text(self) -> str:
        """The solution as plain prose: annotations stripped, one step a line, answer line last."""
        lines = [s.text for s in self.steps] + ([self.answer] if self.answer else [])
        return "\n".join(lines)


def norm_number(token: str) -> str:
    """Canonical form of a number token: ``"1,200.50" -> "1200.5"``, ``"12.0" -> "12"``."""
    try:
        d = Decimal(token.replace(",", ""))
    except InvalidOperation:
        return token
    d = d.normalize()
    return format(d, "f") if d == d.to_integral_value() else str(d)


def strip_calc(text: str) -> str:
    """Remove calculator annotations: ``"48/2 = <<48/2=24>>24" -> "48/2 = 24"``."""
    return CALC.sub("", text)


def question_numbers(question: str) -> frozenset[str]:
    """Numbers a question states, digits and the words zero..twenty: ``"two dogs, 3 cats" -> {2, 3}``."""
    nums = {norm_number(m.group()) for m in NUM.finditer(question)}
    nums |= {_WORDS[w] for w in re.findall(r"[a-z]+", question.lower()) if w in _WORDS}
    return frozenset(nums)


def has_variable(text: str) -> bool:
    """A lone letter next to ``=``, an operator or a coefficient: ``"X*2 = 290"``, ``"2p/5"``; the
    ``x`` of ``"4 x 3"`` and the letters of ``"t-shirts"`` are not variables."""
    for m in _LETTER.finditer(text):
        before, after = text[: m.start()].rstrip(), text[m.end():].lstrip()
        p, n = before[-1:], after[:1]
        if m.group() in "xX" and (p.isdigit() or p in ")%") and (n.isdigit() or n in "$(."):
            continue  # multiplication
        if text[m.end(): m.end() + 1] == "-" and text[m.end() + 1: m.end() + 2].isalpha():
            continue  # a hyphenated word
        if m.start() > 1 and text[m.start() - 1] == "-" and text[m.start() - 2].isalpha():
            continue
        coefficient = m.start() > 0 and text[m.start() - 1].isdigit() and not after[:1].isdigit()
        if (n and n in "=+-*/^)") or (p and p in "=+-*/(^") or coefficient:
            return True
    return False


def _numbers(text: str) -> set[str]:
    """Every number of ``text``, fractions also whole: ``"8 x 1/2" -> {"8", "1", "2", "1/2"}``."""
    return {norm_number(t) for t in NUM.findall(text)} | {f"{a}/{b}" for a, b in FRAC.findall(text)}


def _unannotate(raw: str) -> tuple[str, list[int], list[str]]:
    """(text without annotations, offsets where they stood, their expressions)."""
    parts, marks, exprs, pos = [], [], [], 0
    for m in CALC.finditer(raw):
        parts.append(raw[pos:m.start()])
        marks.append(sum(len(p) for p in parts))
        exprs.append(m.group(1))
        pos = m.end()
    parts.append(raw[pos:])
    return "".join(parts), marks, exprs


def parse_step(raw: str) -> Step:
    """Numbers of one step. Computed: a number after ``=`` that no operator follows, or after an
    annotation. Used: the operands (the arithmetic just before each ``=``, annotation inputs) and
    every other number mentioned that the step does not compute itself.

    >>> s = parse_step("Natalia sold 48+24 = <<48+24=72>>72 clips.")
    >>> s.text, sorted(s.computed), sorted(s.used)
    ('Natalia sold 48+24 = 72 clips.', ['72'], ['24', '48'])
    >>> sorted(parse_step("Lisa earned $30 - $15 = $15 more.").used)  # an operand equal to the result
    ['15', '30']
    """
    full, marks, exprs = _unannotate(raw)
    lead = len(full) - len(full.lstrip())
    computed: set[str] = set()
    spans: list[tuple[int, int]] = []
    mentioned: set[str] = set()
    for m in NUM.finditer(full):
        if spans and m.start() < spans[-1][1] + lead:
            continue  # the denominator of a fraction result
        frac = FRAC.match(full, m.start())
        end = frac.end() if frac else m.end()
        after_eq = bool(_AFTER_EQ.search(full[: m.start()])) and not OPERATOR_NEXT.match(full, end)
        if after_eq or any(a <= m.start() and full[a: m.start()].strip() in ("", "$", "-") for a in marks):
            computed.add(f"{frac.group(1)}/{frac.group(2)}" if frac else norm_number(m.group()))
            spans.append((m.start() - lead, end - lead))
        else:
            mentioned.add(norm_number(m.group()))
    mentioned |= {f"{a}/{b}" for a, b in FRAC.findall(full)}
    operands = set().union(*(_numbers(_EXPR_TAIL.search(full[: eq.start()]).group())
                             for eq in re.finditer("=", full)))
    for e in exprs:
        operands |= _numbers(e.split("=")[0])
        if "=" in e:
            computed |= _numbers(e.split("=")[-1])
    operation = bool(_OPERATION.search(full)) or any(_OPERATION.search(e.split("=")[0]) for e in exprs)
    return Step(raw, full.strip(), frozenset(computed), frozenset((mentioned - computed) | operands),
                tuple(spans), operation, has_variable(full) or any(has_variable(e) for e in exprs))


def parse_solution(answer: str) -> Solution:
    """Split a step-by-step answer into steps (non-empty lines) and the ``####`` answer line."""
    lines = [ln for ln in answer.strip().splitlines() if ln.strip()]
    final = None
    if lines and _ANSWER.match(lines[-1]):
        final = "#### " + strip_calc(_ANSWER.match(lines[-1]).group(1)).strip()
        lines = lines[:-1]
    return Solution(tuple(parse_step(ln) for ln in lines), final)


def dependencies(steps: tuple[Step, ...], given: frozenset[str]) -> tuple[frozenset[int], ...]:
    """For each step, the earlier steps it needs: it uses a number one of them computed (the latest
    such step) and that number is not among ``given`` (the question's numbers)."""
    return _links(steps, given)


def uses(steps: tuple[Step, ...]) -> tuple[frozenset[int], ...]:
    """Like ``dependencies`` but counting question numbers too: the loose relation used to pick
    the step that combines a parallel block's results."""
    return _links(steps, frozenset())


def _links(steps: tuple[Step, ...], given: frozenset[str]) -> tuple[frozenset[int], ...]:
    out = []
    for i, step in enumerate(steps):
        need = set()
        for num in step.used - given:
            for j in range(i - 1, -1, -1):
                if num in steps[j].computed:
                    need.add(j)
                    break
        out.append(frozenset(need))
    return tuple(out)


def is_stepwise(solution: Solution) -> bool:
    """GSM8K-like: at least two steps compute a number by arithmetic."""
    return sum(1 for s in solution.steps if s.parallel_ok) >= 2
