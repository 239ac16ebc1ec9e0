"""SPACE evaluation: the adapted model's `space` decoding against `generate` of the original model.

Per prompt, side by side: transformers `generate` greedy of the original model (the speed
baseline and the original answer), `ar` greedy of the adapted model (the reference `space` must
equal, and the adapted answer), and `space` on the adapted model. Reported: mean accepted tokens
per pass (new tokens per forward pass), tokens/s ratio of `space` to the baseline, whether every
`space` output equals adapted `ar`, and GSM8K answer accuracy of the original and the adapted
model when the data rows carry GSM8K answers.
"""

from __future__ import annotations

import statistics
from typing import Callable, Sequence

from ...bench.contenders import Contender
from ...bench.runner import environment
from ...methods.space import trained_k
from ..cllm.evaluate import accuracy, grade


def evaluate(base, adapted, prompts: Sequence[tuple[str, list[int], str | None]], k: int | None, max_new_tokens: int,
             tick: Callable[[str], None] | None = None, adaptive: bool = True) -> dict:
    """prompts: (id, token ids, gold answer or None); k None = the adapter's own. Returns per-prompt
    figures and a summary."""
    k = k if k is not None else trained_k(adapted)
    gen, ar = Contender("generate"), Contender("ar", "ar")
    space = Contender("space", "space", {"k": k, "adaptive": adaptive})
    gen.run(base, prompts[0][1], 8)  # warm-up
    ar.run(adapted, prompts[0][1], 8)
    space.run(adapted, prompts[0][1], 8)
    rows = []
    for pid, ids, gold in prompts:
        g = gen.run(base, ids, max_new_tokens)
        a = ar.run(adapted, ids, max_new_tokens)
        s = space.run(adapted, ids, max_new_tokens)
        row = {"id": pid, "generate_rate": g.rate, "ar_rate": a.rate, "space_rate": s.rate,
               "space_per_pass": s.tokens_per_pass, "space_vs_generate": s.rate / g.rate if g.rate else 0.0,
               "equal_to_ar": s.tokens == a.tokens, "tokens": len(s.tokens), **grade(base, g.tokens, adapted, a.tokens, gold)}
        rows.append(row)
        if tick:
            tick(pid)
    summary = {
        "prompts": len(rows),
        "per_pass_mean": statistics.mean(r["space_per_pass"] for r in rows),
        "generate_rate_median": statistics.median(r["generate_rate"] for r in rows),
        "space_rate_median": statistics.median(r["space_rate"] for r in rows),
        "space_vs_generate_median": statistics.median(r["space_vs_generate"] for r in rows),
        "equal_to_ar": sum(r["equal_to_ar"] for r in rows),
    }
    summary.update(accuracy(rows))
    return {"summary": summary, "prompts": rows, "k": k, "adaptive": adaptive, "max_new_tokens": max_new_tokens,
            "environment": environment(base)}  # speed ratios depend on the CPU: record it
