"""Self-distillation data: the model's own greedy answers to a set of questions.

A draft that learns to predict the model's own continuation is accepted far more often than one
that learns reference answers written by people (SPACE, CLLM and Medusa-style training all gain
from it). ``distill`` decodes each question greedily with a lossless method (so the text is the
model's greedy output, fast) and appends one JSONL row per question:

    {"id": "12", "prompt": <question>, "response": <answer text>, "finish": "eos" | "stop" | "length"}

The file is the ``prompt``/``response`` format that ``polyverse train space fit --data`` reads;
rows cut by the token budget (``finish == "length"``) are read there without an end of turn (the
model's greedy text goes on past the budget, often in a loop, which is what decoding meets too). Each row is one synced write, so a killed run resumes at
the first question not yet written; a torn last line is cut off. Rows are written in the
questions' order (answers that finish early wait for the earlier ones), so the file is the same
however many questions were decoded together, in one process or sharded over a cluster.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

from ..errors import ConfigError
from ..offline.ordered import in_order
from .cllm.collect import _append

TRUNCATED = "length"


@dataclass(frozen=True)
class DistillConfig:
    max_new_tokens: int = 256
    method: str = "auto"  # any lossless method: greedy output equals plain greedy
    concurrency: int = 16  # questions decoded together, sharing each pass (each answer is what it is alone)

    def __post_init__(self) -> None:
        if not isinstance(self.concurrency, int) or self.concurrency < 1:
            raise ConfigError(f"--concurrency must be at least 1, got {self.concurrency!r}")
        if not isinstance(self.max_new_tokens, int) or self.max_new_tokens < 1:
            raise ConfigError(f"--max-new-tokens must be at least 1, got {self.max_new_tokens!r}")


def done_ids(path: Path) -> set[str]:
    """Ids already written; a torn last line (a killed write) is cut off first."""
    if not path.exists():
        return set()
    data = path.read_bytes()
    end = data.rfind(b"\n") + 1
    if end < len(data):
        with path.open("r+b") as f:
            f.truncate(end)
    return {str(json.loads(line)["id"]) for line in data[:end].splitlines() if line.strip()}


def answers(model, questions: Sequence[str], cfg: DistillConfig, chat: bool | None):
    """(index, Generation) of each question's greedy answer, in the questions' order (decoded
    ``cfg.concurrency`` at a time: answers that finish early wait for the earlier ones)."""
    return in_order(model.generate_many(list(questions), method=cfg.method, chat=chat,
                                        max_new_tokens=cfg.max_new_tokens, concurrency=cfg.concurrency))


def answer_line(qid: str, question: str, gen) -> str:
    """One output row: the question and the model's answer."""
    return json.dumps({"id": qid, "prompt": question, "response": gen.text, "finish": gen.finish_reason}) + "\n"


def distill(model, questions: Sequence[tuple[str, str]], out: Path, cfg: DistillConfig, chat: bool | None = None,
            tick: Callable[[str, str], None] | None = None) -> dict:
    """Greedy answers of ``model`` (a ``polyverse.Model``) to (id, question) pairs not yet in ``out``.

    Returns counts: written, skipped (already there), truncated (written but cut by the budget).
    """
    out.parent.mkdir(parents=True, exist_ok=True)
    done = done_ids(out)
    counts = {"written": 0, "skipped": 0, "truncated": 0}
    todo = []
    for qid, question in questions:
        if qid in done:
            counts["skipped"] += 1
            if tick:
                tick(qid, "skipped")
        else:
            todo.append((qid, question))
            done.add(qid)
    for i, gen in answers(model, [q for _, q in todo], cfg, chat):  # each written as soon as it can be
        qid, question = todo[i]
        _append(out, [answer_line(qid, question, gen)])
        counts["written"] += 1
        counts["truncated"] += gen.finish_reason == TRUNCATED
        if tick:
            tick(qid, gen.finish_reason)
    return counts
