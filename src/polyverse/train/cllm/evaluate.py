"""CLLM evaluation: Jacobi speed before and after the adapter, and how far greedy output moved.

Per prompt, side by side: transformers `generate` greedy of the original model (the speed
baseline and the original output), Jacobi on the original model, Jacobi on the adapted model
(its output is the adapted model's greedy output: Jacobi is lossless). Reported: mean accepted
tokens per Jacobi pass before and after, tokens/s ratios to the baseline, token agreement of
the adapted output with the original, and GSM8K answer accuracy before and after when the data
rows carry GSM8K answers (``#### N``).
"""

from __future__ import annotations

import re
import statistics
from typing import Callable, Sequence

from ...bench.contenders import Contender
from ...bench.runner import environment

_NUMBER = re.compile(r"-?\d[\d,]*(?:\.\d+)?")


def final_number(text: str) -> str | None:
    """The answer a GSM8K solution ends with: after '####' if present, else the last number.

    Example: "so she earns 9 * 2 = $18 a day." -> "18"; "#### 1,200" -> "1200".
    """
    part = text.split("####")[-1] if "####" in text else text
    nums = _NUMBER.findall(part)
    if not nums:
        return None
    n = nums[-1].replace(",", "").rstrip(".")
    if "." in n:
        n = n.rstrip("0").rstrip(".")
    return n


def agreement(a: Sequence[int], b: Sequence[int]) -> tuple[float, int]:
    """(share of positions of ``a`` where ``b`` has the same token, first differing position)."""
    if not a:
        return (1.0 if not b else 0.0), 0
    same = sum(1 for x, y in zip(a, b) if x == y)
    first = next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b)))
    return same / len(a), first


def grade(base, before: Sequence[int], adapted, after: Sequence[int], gold: str | None) -> dict:
    """{"correct_before", "correct_after"}: whether each output's final number is the gold answer
    ({} without a gold answer)."""
    if gold is None:
        return {}
    return {"correct_before": final_number(base.tokenizer.decode(before, skip_special_tokens=True)) == gold,
            "correct_after": final_number(adapted.tokenizer.decode(after, skip_special_tokens=True)) == gold}


def accuracy(rows: Sequence[dict]) -> dict:
    """{"accuracy_before", "accuracy_after"} over the graded rows ({} when none is graded)."""
    graded = [r for r in rows if "correct_before" in r]
    if not graded:
        return {}
    return {"accuracy_before": sum(r["correct_before"] for r in graded) / len(graded),
            "accuracy_after": sum(r["correct_after"] for r in graded) / len(graded)}


def evaluate(base, adapted, prompts: Sequence[tuple[str, list[int], str | None]], block: int, max_new_tokens: int,
             tick: Callable[[str], None] | None = None) -> dict:
    """prompts: (id, token ids, gold answer or None). Returns per-prompt figures and a summary."""
    # the whole block alone: what the fine-tune taught, without sizing or the n-gram branch's help
    gen, jac = Contender("generate"), Contender("jacobi", "jacobi", {"block": block, "ngram": 0, "adaptive": False})
    for m in (base, adapted):  # warm-up
        gen.run(m, prompts[0][1], 8)
        jac.run(m, prompts[0][1], 8)
    rows = []
    for pid, ids, gold in prompts:
        g = gen.run(base, ids, max_new_tokens)
        before = jac.run(base, ids, max_new_tokens)
        after = jac.run(adapted, ids, max_new_tokens)
        share, first = agreement(g.tokens, after.tokens)
        row = {"id": pid, "generate_rate": g.rate, "before_rate": before.rate, "after_rate": after.rate,
               "before_per_pass": before.tokens_per_pass, "after_per_pass": after.tokens_per_pass,
               "after_vs_generate": after.rate / g.rate if g.rate else 0.0,
               "agreement": share, "first_difference": first, **grade(base, g.tokens, adapted, after.tokens, gold)}
        rows.append(row)
        if tick:
            tick(pid)
    summary = {
        "prompts": len(rows),
        "per_pass_before": statistics.mean(r["before_per_pass"] for r in rows),
        "per_pass_after": statistics.mean(r["after_per_pass"] for r in rows),
        "generate_rate_median": statistics.median(r["generate_rate"] for r in rows),
        "jacobi_before_rate_median": statistics.median(r["before_rate"] for r in rows),
        "jacobi_after_rate_median": statistics.median(r["after_rate"] for r in rows),
        "after_vs_generate_median": statistics.median(r["after_vs_generate"] for r in rows),
        "agreement_mean": statistics.mean(r["agreement"] for r in rows),
    }
    summary.update(accuracy(rows))
    return {"summary": summary, "prompts": rows, "block": block, "max_new_tokens": max_new_tokens,
            "environment": environment(base)}  # speed ratios depend on the CPU: record it
