"""The five LLM stages that turn a sequential chain of thought into Multiverse structure.

1 summary tree -> 2 dependency analysis -> 3 reformat (tags over summaries) -> 4 refill (original
sentences back in) -> 5 Goal outlines, Conclusions and self-contained paths. Each stage's prompt
holds the previous stage's output; the last output is the candidate structured text.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from .llm import LLM

_INTRO = ("We are rewriting a step-by-step solution so that its independent parts can be worked out "
          "in parallel. This is stage {n} of 5.\n\n")
_FRAME = "{title}:\n----- begin -----\n{body}\n----- end -----\n"

SUMMARY = _INTRO + (
    "Task: summary tree. Summarise the reasoning below as a numbered, hierarchical outline of its "
    "steps: top-level steps numbered 1, 2, 3, ...; sub-steps 1.1, 1.2, ... under their step. One line "
    "per step, at most 15 words, in the order the reasoning takes. Reply with the outline only.\n\n"
    "{problem}" + _FRAME.format(title="Reasoning", body="{original}"))

DEPENDENCIES = _INTRO + (
    "Task: dependency analysis. For every step of the outline, name the earlier steps whose results "
    "it needs, one line each, as `3: needs 1, 2` or `2: needs none`. Then name the groups of steps that "
    "need nothing from each other and could be done at the same time, as `Independent groups: {{2, 3}}; "
    "{{5, 6}}` (or `Independent groups: none`). Reply with the analysis only.\n\n"
    "{problem}" + _FRAME.format(title="Reasoning", body="{original}") + "\n"
    + _FRAME.format(title="Outline", body="{summary}"))

REFORMAT = _INTRO + (
    "Task: reformat. Write the outline as a structured plan that follows the dependency analysis. "
    "Each group of independent steps becomes a block, every tag on its own line:\n"
    "<Parallel>\n<Path>\n1: summary of the first step of the group\n</Path>\n<Path>\n"
    "2: summary of the second\n</Path>\n</Parallel>\n"
    "A path may hold several dependent steps, and a block inside path 2 numbers its paths 2.1, 2.2. "
    "Steps outside any group stay plain lines, in order. Keep the summaries; add no <Goal> or "
    "<Conclusion> yet. Reply with the plan only.\n\n"
    + _FRAME.format(title="Outline", body="{summary}") + "\n"
    + _FRAME.format(title="Dependency analysis", body="{dependencies}"))

REFILL = _INTRO + (
    "Task: refill. In the plan below every line is a summary. Replace each summary by the sentences "
    "of the original reasoning it stands for, copied word for word. Every sentence of the reasoning "
    "appears exactly once. Keep the tags and the path numbers (`1: `, `2.1: `) where they are. Reply "
    "with the filled plan only.\n\n"
    + _FRAME.format(title="Plan", body="{reformat}") + "\n"
    + _FRAME.format(title="Original reasoning", body="{original}"))

FINALIZE = _INTRO + (
    "Task: goals and conclusions. Complete every <Parallel> block of the text below:\n"
    "- right after <Parallel>, add <Goal> holding one <Outline> per path, numbered like its path "
    "(`1: ...`), each one sentence saying what that path works out;\n"
    "- after the last </Path> of the block, add <Conclusion> with one or two sentences that combine "
    "the paths' results;\n"
    "- make every path self-contained: it may not use a result of a sibling path; if it needs a fact "
    "from before the block, restate it briefly.\n"
    "Wrap the reasoning in <Think> and </Think> and put the final answer line after </Think>. Every "
    "tag goes on its own line. Change nothing else. Reply with the final text only.\n\n"
    + _FRAME.format(title="Text", body="{refill}"))

PROMPTS: tuple[tuple[str, str], ...] = (
    ("summary", SUMMARY), ("dependencies", DEPENDENCIES), ("reformat", REFORMAT),
    ("refill", REFILL), ("final", FINALIZE),
)


@dataclass(frozen=True)
class StageConfig:
    """Token budgets: ``max_tokens`` caps every stage; a stage asks for ``base`` tokens plus
    ``per_char`` per character of the original (stages 4 and 5 rewrite it whole: twice as many)."""

    max_tokens: int = 4096
    base: int = 256
    per_char: float = 0.25

    def budget(self, stage: str, original: str) -> int:
        scale = 2.0 if stage in ("refill", "final") else 1.0
        return min(self.max_tokens, int(self.base + scale * self.per_char * len(original)))


@dataclass(frozen=True)
class Trace:
    """Every stage's output by name, in order; ``final`` is the candidate structured text."""

    outputs: tuple[tuple[str, str], ...]

    @property
    def final(self) -> str:
        return self.outputs[-1][1] if self.outputs else ""


def clean(reply: str) -> str:
    """A reply without a Markdown code fence around it and without surrounding blank lines."""
    text = reply.strip()
    fenced = re.fullmatch(r"```[\w-]*\n(.*?)\n?```", text, flags=re.S)
    return (fenced.group(1) if fenced else text).strip()


def structured_part(reply: str) -> str:
    """From ``<Think>`` (or, failing that, the first ``<Parallel>``) to the end: drops chatter before."""
    text = clean(reply)
    for tag in ("<Think>", "<Parallel>"):
        if tag in text:
            return text[text.index(tag):].strip()
    return text


def run_stages(llm: LLM, original: str, question: str | None = None, cfg: StageConfig = StageConfig()) -> Trace:
    """Run the five stages on ``original``; LLM errors propagate (see ``llm.LLMError``)."""
    fields = {"original": original, "problem": f"Problem: {question.strip()}\n\n" if question else ""}
    outputs: list[tuple[str, str]] = []
    for n, (name, template) in enumerate(PROMPTS, 1):
        reply = llm.complete(template.format(n=n, **fields), cfg.budget(name, original))
        fields[name] = structured_part(reply) if name == "final" else clean(reply)
        outputs.append((name, fields[name]))
    return Trace(tuple(outputs))
