"""polyverse `ar` and `jacobi` against transformers `generate`, greedy (`polyverse bench ar-jacobi`).

Every contender runs each prompt in turn after one warm-up, so machine drift hits all alike; ratios
are taken per prompt against `generate`, then the median. Every output is also compared with
`generate`'s, since a greedy method that drifts from it is not lossless.

    polyverse bench ar-jacobi [--prompts 8] [--max-new-tokens 128] [--blocks 4,16]
"""

from __future__ import annotations

import json
import statistics
from typing import Callable

from .contenders import Contender
from .prompts import SHARED_DATA

FALLBACK = [
    "Write a Python function that checks whether a number is prime.",
    "Explain in three sentences why the sky is blue.",
    "List five fruits and one fact about each.",
    "What is the capital of France? Answer in one sentence.",
]
HEADER = f"{'method':<24}{'tok/s (median)':>16}{'x generate (median)':>22}{'tokens/pass':>13}{'outputs != generate':>22}"


def prompts(n: int) -> list[str]:
    """The first ``n`` GSM8K dev questions, or a few fixed prompts where the shared data is absent."""
    path = SHARED_DATA / "gsm8k_test_dev.jsonl"
    if path.exists():
        return [json.loads(line)["question"] for line in path.read_text().splitlines()[:n]]
    return (FALLBACK * n)[:n]


def contenders(blocks: list[int]) -> list[Contender]:
    return [Contender("generate"), Contender("polyverse ar", "ar")] + [
        Contender(f"polyverse jacobi n={b}", "jacobi", {"block": b}) for b in blocks
    ]


def compare(model, encoded: list[list[int]], blocks: list[int], max_new_tokens: int,
            tick: Callable[[str], None] | None = None) -> dict[str, dict]:
    """Per contender: tok/s and ratio to `generate` per prompt, tokens per pass, outputs unlike `generate`'s.
    ``tick`` gets one line per prompt done (every contender's rate on it)."""
    runners = contenders(blocks)
    for c in runners:  # warm-up
        c.run(model, encoded[0], 16)
    rows = {c.name: {"rates": [], "ratios": [], "per_pass": [], "mismatches": 0} for c in runners}
    for i, ids in enumerate(encoded):
        runs = {c.name: c.run(model, ids, max_new_tokens) for c in runners}
        ref, base_rate = runs["generate"].tokens, runs["generate"].rate
        for name, r in runs.items():
            rows[name]["rates"].append(r.rate)
            rows[name]["ratios"].append(r.rate / base_rate)
            rows[name]["per_pass"].append(r.tokens_per_pass)
            rows[name]["mismatches"] += r.tokens != ref
        if tick:
            tick(f"prompt {i + 1}/{len(encoded)}: " + ", ".join(f"{n} {rows[n]['rates'][-1]:.1f} tok/s" for n in rows))
    return rows


def table(rows: dict[str, dict]) -> list[str]:
    """The summary lines under HEADER: medians of tok/s and of the ratio, mean tokens per pass."""
    return [f"{name:<24}{statistics.median(r['rates']):>16.2f}{statistics.median(r['ratios']):>22.3f}"
            f"{statistics.mean(r['per_pass']):>13.3f}{r['mismatches']:>22}" for name, r in rows.items()]
