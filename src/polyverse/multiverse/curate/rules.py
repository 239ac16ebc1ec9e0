"""Rule-based converter: a GSM8K step-by-step answer -> Multiverse-structured text.

A maximal run of >= 2 steps that compute a number by arithmetic (``Step.parallel_ok``) and need
none of each other becomes a ``<Parallel>`` block: one outline and one path per step, the path
holding the step's own text, and a conclusion holding the first later step that combines >= 2 of
them (else a one-line summary "So we have ..."). Other steps stay plain text. Example::

    A is 2*3 = <<2*3=6>>6.          <Think>
    B is 4*5 = <<4*5=20>>20.   ->   Let's think in parallel.
    So 6+20 = <<6+20=26>>26.        <Parallel> ... 1: A is 2*3 = 6. ... 2: B is 4*5 = 20. ...
    #### 26                         <Conclusion> So 6+20 = 26. </Conclusion> </Parallel> </Think> #### 26
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from ...errors import ConfigError
from ..grammar import Document, Outline, Parallel, Path, Text, Think, render
from .steps import CALC, NUM, OPERATOR_NEXT, Solution, Step, dependencies, parse_solution, question_numbers, uses

NO_BLOCK = "no independent steps"


class NotConvertible(ValueError):
    """The rules found nothing to run in parallel; ``str(e)`` is the reject reason."""


@dataclass(frozen=True)
class RulesConfig:
    """Options of the rule-based converter.

    cue: a line written before each ``<Parallel>`` ("" for none); the released examples have one.
    question_given: when True, a step using a number that the question also states does not depend
        on the earlier step that computed it (more blocks, some wrong: "2*2" after "1*2 = 2" with
        "two" in the question); False (default) counts every use of an earlier result.
    min_paths: the fewest steps a block holds.
    """

    cue: str = "Let's think in parallel."
    question_given: bool = False
    min_paths: int = 2

    def __post_init__(self):
        if self.min_paths < 2:
            raise ConfigError(f"min_paths must be at least 2, got {self.min_paths}")
        if "\n" in self.cue or "<" in self.cue:
            raise ConfigError(f"the cue must be one line without tags, got {self.cue!r}")


@dataclass(frozen=True)
class Block:
    """Step indices of one parallel block and of the step that concludes it (None: a summary)."""

    steps: tuple[int, ...]
    conclusion: int | None


def find_blocks(steps: tuple[Step, ...], needs: tuple[frozenset[int], ...],
                loose: tuple[frozenset[int], ...], min_paths: int = 2) -> list[int | Block]:
    """The steps in output order: a plain step index or a Block.

    ``needs``: the dependencies that forbid two steps sharing a block; ``loose``: the relation that
    picks a conclusion, the first later step using >= 2 of the block's steps (if it uses none of
    the steps between, since it moves up to the block).

    >>> s = parse_solution("a 1+1 = 2\\nb 3+4 = 7\\nc 2*7 = 14\\nd 14+1 = 15").steps
    >>> find_blocks(s, uses(s), uses(s))
    [Block(steps=(0, 1), conclusion=2), 3]
    """
    out: list[int | Block] = []
    rest = list(range(len(steps)))
    while rest:
        run = [rest[0]] if steps[rest[0]].parallel_ok else []
        for j in rest[1:] if run else ():
            if not steps[j].parallel_ok or needs[j] & set(run):
                break
            run.append(j)
        if len(run) < min_paths:
            out.append(rest.pop(0))
            continue
        rest = rest[len(run):]
        concl = None
        for n, k in enumerate(rest):
            if len(loose[k] & set(run)) >= 2:
                concl = None if loose[k] & set(rest[:n]) else k
                break
        out.append(Block(tuple(run), concl))
        rest = [k for k in rest if k != concl]
    return out


_EQ_CALC = re.compile(r"\s*=\s*-?\s*[$€£]?\s*<<[^>]*>>\s*-?(?:" + NUM.pattern + r")(?:/\d+)?")
_CALC_EXPR = re.compile(r"<<([^=>]*)=[^>]*>>\s*-?(?:" + NUM.pattern + r")(?:/\d+)?")
_EQ_NUM = re.compile(r"\s*=\s*-?\s*[$€£]?\s*(?:" + NUM.pattern + r")(?:/\d+)?")


def outline_text(step: Step) -> str:
    """What a step works out, without its results: every ``= result`` is dropped and an annotated
    bare result becomes its expression.

    >>> outline_text(parse_solution("Weng earns 12/60 = $<<12/60=0.2>>0.2 per minute.").steps[0])
    'Weng earns 12/60 per minute.'
    >>> outline_text(parse_solution("He has <<3*4=12>>12 apples").steps[0])
    'He has 3*4 apples'
    """
    text = _EQ_CALC.sub("", step.raw)
    text = _CALC_EXPR.sub(lambda m: m.group(1).strip(), text)
    text = CALC.sub("", text)
    text = _EQ_NUM.sub(lambda m: m.group() if OPERATOR_NEXT.match(text, m.end()) else "", text)
    text = re.sub(r"\s+([.,;:!?])", r"\1", " ".join(text.split()))
    text = re.sub(r"\b([A-Za-z]+) \1\b", r"\1", text)  # "240 students = 40 students" -> "240 students"
    return text or step.text


def result_phrase(step: Step) -> str:
    """A step's last result with the words after it, to the end of its clause: ``"$0.2 per minute"``."""
    if not step.results:
        return step.text.rstrip(" .")
    start, end = step.results[-1]
    if start and step.text[start - 1] in "$€£":
        start -= 1
    tail = re.split(r"[.,;!?](?:\s|$)", step.text[end:], maxsplit=1)[0]
    return (step.text[start:end] + tail).strip()


def summary(steps: list[Step]) -> str:
    """``"So we have 24 clips in May and $0.2 per minute."``"""
    parts = [result_phrase(s) for s in steps]
    joined = parts[0] if len(parts) == 1 else ", ".join(parts[:-1]) + " and " + parts[-1]
    return f"So we have {joined}."


def convert(question: str, answer: str, cfg: RulesConfig = RulesConfig()) -> Document:
    """The structured document of a GSM8K answer; raises NotConvertible("no independent steps")."""
    sol = parse_solution(answer)
    steps = sol.steps
    given = question_numbers(question) if cfg.question_given else frozenset()
    order = find_blocks(steps, dependencies(steps, given), uses(steps), cfg.min_paths)
    if not any(isinstance(item, Block) for item in order):
        raise NotConvertible(NO_BLOCK)
    return _document(sol, order, cfg.cue)


def _document(sol: Solution, order: list[int | Block], cue: str) -> Document:
    body: list = []
    lines: list[str] = []

    def flush():
        if lines:
            body.append(Text("\n".join(lines)))
            lines.clear()

    for item in order:
        if isinstance(item, int):
            lines.append(sol.steps[item].text)
            continue
        if cue:
            lines.append(cue)
        flush()
        run = [sol.steps[i] for i in item.steps]
        nums = [str(n) for n in range(1, len(run) + 1)]
        concl = sol.steps[item.conclusion].text if item.conclusion is not None else summary(run)
        body.append(Parallel(
            tuple(Outline(n, outline_text(s)) for n, s in zip(nums, run)),
            tuple(Path(n, (Text(s.text),)) for n, s in zip(nums, run)),
            (Text(concl),),
        ))
    flush()
    return Document((Think(tuple(body)),) + ((Text(sol.answer),) if sol.answer else ()))


def convert_text(question: str, answer: str, cfg: RulesConfig = RulesConfig()) -> str:
    """``render(convert(...))``: the structured text."""
    return render(convert(question, answer, cfg))
