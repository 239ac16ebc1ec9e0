"""Benchmark (not a test): polyverse `ar` and `jacobi` against transformers `generate`, greedy.

Measured side by side in one run on the bundled SmolLM2-135M-Instruct: a warm-up first, then
for each prompt every contender in turn (so machine drift hits all alike); ratios are per prompt
against `generate`, then the median. Also checks that every output equals `generate`'s.

    python bench/ar_jacobi.py [--prompts 8] [--max-new-tokens 128] [--blocks 4,16]
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch

import polyverse
from polyverse.bench.contenders import Contender

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "gsm8k_test_dev.jsonl"
FALLBACK = [
    "Write a Python function that checks whether a number is prime.",
    "Explain in three sentences why the sky is blue.",
    "List five fruits and one fact about each.",
    "What is the capital of France? Answer in one sentence.",
]


def prompts(n: int) -> list[str]:
    if DATA.exists():
        rows = [json.loads(line)["question"] for line in DATA.read_text().splitlines()[:n]]
        return rows
    return (FALLBACK * n)[:n]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--prompts", type=int, default=8)
    ap.add_argument("--max-new-tokens", type=int, default=128)
    ap.add_argument("--blocks", default="4,16", help="Jacobi block sizes, comma separated")
    args = ap.parse_args()

    t0 = time.perf_counter()
    model = polyverse.load()
    load_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    model = polyverse.load()
    reload_s = time.perf_counter() - t0
    print(f"load: {load_s:.2f} s, second load {reload_s:.2f} s; torch threads {torch.get_num_threads()}")

    contenders = [Contender("generate"), Contender("polyverse ar", "ar")] + [
        Contender(f"polyverse jacobi n={b}", "jacobi", {"block": int(b)}) for b in args.blocks.split(",")
    ]
    encoded = [model.encode(p, chat=True) for p in prompts(args.prompts)]
    for c in contenders:  # warm-up
        c.run(model, encoded[0], 16)

    rates: dict[str, list[float]] = {c.name: [] for c in contenders}
    ratios: dict[str, list[float]] = {c.name: [] for c in contenders}
    per_pass: dict[str, list[float]] = {c.name: [] for c in contenders}
    mismatches: dict[str, int] = {c.name: 0 for c in contenders}
    for i, ids in enumerate(encoded):
        runs = {c.name: c.run(model, ids, args.max_new_tokens) for c in contenders}
        ref, base_rate = runs["generate"].tokens, runs["generate"].rate
        for name, r in runs.items():
            rates[name].append(r.rate)
            ratios[name].append(r.rate / base_rate)
            per_pass[name].append(r.tokens_per_pass)
            mismatches[name] += r.tokens != ref
        print(f"prompt {i + 1}/{len(encoded)}: " + ", ".join(f"{n} {rates[n][-1]:.1f} tok/s" for n in rates), flush=True)

    print(f"\n{len(encoded)} GSM8K prompts, {args.max_new_tokens} new tokens max, greedy, fp32, "
          f"{torch.get_num_threads()} threads")
    print(f"{'method':<24}{'tok/s (median)':>16}{'x generate (median)':>22}{'tokens/pass':>13}{'outputs != generate':>22}")
    for name in rates:
        print(f"{name:<24}{statistics.median(rates[name]):>16.2f}{statistics.median(ratios[name]):>22.3f}"
              f"{statistics.mean(per_pass[name]):>13.3f}{mismatches[name]:>22}")


if __name__ == "__main__":
    main()
