"""One sample through the LLM stages (falling back to the rules), and a whole JSONL file of them."""

from __future__ import annotations

from dataclasses import dataclass, field

from ...errors import ConfigError
from ..grammar import parse, render
from .checks import Verdict, check
from .llm import LLM, LLMError, LLMUnavailable
from .rules import NotConvertible, RulesConfig, convert_text
from .stages import StageConfig, run_stages, structured_part
from .steps import CALC, is_stepwise, parse_solution

NOT_STEPWISE = "not GSM8K-like step-by-step text, which the rule-based converter needs"


@dataclass(frozen=True)
class CurateConfig:
    """``threshold``: the largest content distance kept; options of the rules and the LLM stages."""

    threshold: float = 0.35
    rules: RulesConfig = field(default_factory=RulesConfig)
    stages: StageConfig = field(default_factory=StageConfig)

    def __post_init__(self):
        if not 0.0 < self.threshold <= 1.0:
            raise ConfigError(f"the distance threshold must be in (0, 1], got {self.threshold}")


@dataclass(frozen=True)
class Sample:
    """One input: ``original`` is the chain of thought without calculator annotations, ``raw`` with
    them (what the rules read); ``gsm8k``: a question/answer row."""

    id: str
    original: str
    question: str | None = None
    raw: str = ""
    gsm8k: bool = False


@dataclass(frozen=True)
class Outcome:
    """What became of a sample: ``method`` "llm" or "rules" when kept, else None with a ``reason``."""

    structured: str | None
    method: str | None
    distance: float | None
    reason: str | None


def sample_from_row(row: object, line: int) -> Sample:
    """A Sample from a JSONL object with ``text``, or ``question`` and ``answer`` (GSM8K);
    the id is the row's ``id`` or else its line number. Raises ValueError naming what is missing."""
    if not isinstance(row, dict):
        raise ValueError(f"expected a JSON object, got {type(row).__name__}")
    sid = str(row.get("id", line))
    question = row.get("question") if isinstance(row.get("question"), str) else None
    for key, gsm8k in (("text", False), ("answer", True)):
        raw = row.get(key)
        if isinstance(raw, str) and raw.strip():
            if gsm8k and question is None:
                break
            original = parse_solution(raw).text if gsm8k else CALC.sub("", raw).strip()
            return Sample(sid, original, question, raw, gsm8k)
    raise ValueError("no non-empty 'text', nor 'question' with 'answer'")


def rules_apply(sample: Sample) -> bool:
    """GSM8K-like: a question/answer row, an answer line ``#### x``, or two steps doing arithmetic."""
    sol = parse_solution(sample.raw or sample.original)
    return sample.gsm8k or sol.answer is not None or is_stepwise(sol)


def _llm_attempt(sample: Sample, llm: LLM, cfg: CurateConfig) -> tuple[str | None, Verdict]:
    try:
        trace = run_stages(llm, sample.original, sample.question, cfg.stages)
    except LLMUnavailable:
        raise
    except LLMError as exc:
        return None, Verdict(None, str(exc))  # "the LLM endpoint ... did not answer within 120 s"
    text = structured_part(trace.final)
    verdict = check(sample.original, text, cfg.threshold, cfg.rules.cue)
    if verdict.reason and verdict.reason.startswith("grammar"):
        return text, verdict
    text = render(parse(text))  # canonical layout, then the checks again on what is written
    return text, check(sample.original, text, cfg.threshold, cfg.rules.cue)


def _rules_attempt(sample: Sample, cfg: CurateConfig) -> tuple[str | None, Verdict]:
    if not rules_apply(sample):
        return None, Verdict(None, NOT_STEPWISE)
    try:
        text = convert_text(sample.question or "", sample.raw or sample.original, cfg.rules)
    except NotConvertible as exc:
        return None, Verdict(None, str(exc))
    return text, check(sample.original, text, cfg.threshold, cfg.rules.cue)


def curate_sample(sample: Sample, llm: LLM | None, cfg: CurateConfig = CurateConfig()) -> Outcome:
    """The LLM stages first (when an LLM is given), then the rules if the LLM's text fails a check
    and the sample is GSM8K-like. Rejected: the reason of each attempt, ``"llm: ...; rules: ..."``.

    LLMUnavailable propagates: an LLM that cannot be reached would fail every sample.
    """
    tried: list[tuple[str, str | None, Verdict]] = []
    if llm is not None:
        text, verdict = _llm_attempt(sample, llm, cfg)
        if verdict.ok:
            return Outcome(text, "llm", verdict.distance, None)
        tried.append(("llm", text, verdict))
    if llm is None or rules_apply(sample):
        text, verdict = _rules_attempt(sample, cfg)
        if verdict.ok:
            return Outcome(text, "rules", verdict.distance, None)
        tried.append(("rules", text, verdict))
    if len(tried) == 1:
        reason = tried[0][2].reason
    else:
        reason = "; ".join(f"{name}: {v.reason}" for name, _, v in tried)
    structured = next((t for _, t, _ in tried if t is not None), None)
    return Outcome(structured, None, next((v.distance for _, t, v in tried if t is not None), None), reason)
