"""The wall-clock test of the Multiverse claim: the same structured content, paths in parallel
against the same tokens written sequentially, for 2, 4 and 8 paths.

The prompt ends with a Goal of n outlines, so the engine forks at once. Every path is written
greedily to exactly ``path_tokens`` tokens (end-of-text and tag tokens are not allowed inside a
path, so that all runs carry the same amount of content), then a short Conclusion. The parallel
run and the sequential run (``parallel=False``: one logits row per pass) must write identical
tokens; the script checks it. It also times one pass of the two layouts the engine could use for
n open paths: flattened (one sequence, a branch mask) against batched (n rows, the prefix cache
copied n times), which is the measurement behind the engine's choice.

    polyverse bench multiverse --paths 2,4,8 --path-tokens 64 --out bench-out/multiverse.json
"""

from __future__ import annotations

import statistics
import time
from dataclasses import dataclass

import torch
from transformers import DynamicCache

from ..backends.transformers import cache_kwarg
from ..config import GenerationConfig
from ..multiverse.engine import Engine, MultiverseConfig, tag_tokens

QUESTION = "Plan a relaxed weekend in a city you have never visited. Cover each part of the plan."
TOPICS = ("Getting there", "Where to stay", "What to eat", "The budget", "The weather",
          "Things to do", "What to pack", "Staying safe")


@dataclass(frozen=True)
class Row:
    paths: int
    tokens: int  # tokens written (all paths, seeds and conclusion)
    sequential_length: int  # positions advanced: the longest chain
    parallel_seconds: float
    sequential_seconds: float
    parallel_passes: int
    sequential_passes: int
    same_tokens: bool
    flat_pass_ms: float  # one pass with n path tokens, flattened
    batched_pass_ms: float  # one pass with n path tokens, batched [n, 1]

    @property
    def degree(self) -> float:
        return self.tokens / self.sequential_length

    @property
    def speedup(self) -> float:
        return self.sequential_seconds / self.parallel_seconds


def goal_prompt(model, n: int) -> list[int]:
    """Chat prompt, then the opening of the answer up to the Goal's end (n outlines)."""
    head = model.encode(QUESTION, chat=True)
    outlines = "".join(f"<Outline>\n{i + 1}: {TOPICS[i % len(TOPICS)]}\n</Outline>\n" for i in range(n))
    body = f"<Parallel>\n<Goal>\n{outlines}</Goal>"
    return head + model.tokenizer(body, add_special_tokens=False)["input_ids"]


def _picker(model):
    """Greedy, with end-of-text and tag tokens banned inside paths: every path runs to its budget."""
    banned = torch.cat([tag_tokens(model.tokenizer, model.backend.vocab_size), torch.tensor(model.eos_token_ids)])

    def pick(br, row):
        if br.kind == "path":
            row = row.clone()
            row[banned] = float("-inf")
        return int(torch.argmax(row))

    return pick


def run_once(model, prompt, n: int, path_tokens: int, parallel: bool) -> tuple[list[int], float, int, int]:
    cfg = MultiverseConfig(max_paths=max(n, 1), max_path_tokens=path_tokens, parallel=parallel)
    budget = path_tokens + 24  # the paths, then a short conclusion
    engine = Engine(model.backend, model.tokenizer, cfg, GenerationConfig(max_new_tokens=budget, eos_token_ids=model.eos_token_ids),
                    pick=_picker(model))
    t0 = time.perf_counter()
    for _ in engine.run(prompt):
        pass
    seconds = time.perf_counter() - t0
    toks, _ = engine.flat()
    return toks[len(prompt):], seconds, engine.sequential_length(), engine.passes


def pass_costs(model, prompt, n: int, repeats: int = 7) -> tuple[float, float]:
    """Median ms of one decode pass of n path tokens: flattened (1 x n, masked) vs batched (n x 1)."""
    hf = model.hf_model
    key = cache_kwarg(hf)
    ids = torch.tensor([prompt])
    with torch.inference_mode():
        base = DynamicCache(config=hf.config)
        hf(input_ids=ids, **{key: base}, use_cache=True)
        past = ids.shape[1]
        flat_ms, batch_ms = [], []
        tok = torch.full((1, n), int(prompt[-1]))
        for _ in range(repeats):
            # flattened: n tokens at the same position, each seeing the prefix and itself only
            vis = torch.ones(n, past + n, dtype=torch.bool)
            vis[:, past:] = torch.eye(n, dtype=torch.bool)
            mask = torch.zeros(n, past + n).masked_fill(~vis, torch.finfo(torch.float32).min)[None, None]
            t0 = time.perf_counter()
            hf(input_ids=tok, position_ids=torch.full((1, n), past), attention_mask=mask, **{key: base},
               use_cache=True, logits_to_keep=n)
            flat_ms.append((time.perf_counter() - t0) * 1000)
            base.crop(-n)
            # batched: the prefix cache copied n times, one token per row
            cache = _repeat(base, n, hf)
            t0 = time.perf_counter()
            hf(input_ids=tok.T, position_ids=torch.full((n, 1), past), **{key: cache}, use_cache=True,
               logits_to_keep=1)
            batch_ms.append((time.perf_counter() - t0) * 1000)
    return statistics.median(flat_ms), statistics.median(batch_ms)


def _repeat(cache: DynamicCache, n: int, hf) -> DynamicCache:
    """A copy of a batch-1 cache with its rows repeated n times (what a batched fork must do)."""
    out = DynamicCache(config=hf.config)
    for i, layer in enumerate(cache.layers):
        out.update(layer.keys.repeat(n, 1, 1, 1), layer.values.repeat(n, 1, 1, 1), i)
    return out


def measure(model, paths=(2, 4, 8), path_tokens: int = 64, tick=None) -> list[Row]:
    rows = []
    warm = goal_prompt(model, 2)
    run_once(model, warm, 2, 16, True)  # warm-up
    for n in paths:
        prompt = goal_prompt(model, n)
        par_toks, par_s, seq_len, par_passes = run_once(model, prompt, n, path_tokens, True)
        if tick:
            tick(f"{n} paths: sequential")
        seq_toks, seq_s, _, seq_passes = run_once(model, prompt, n, path_tokens, False)
        flat_ms, batch_ms = pass_costs(model, prompt, n)
        rows.append(Row(n, len(par_toks), seq_len, par_s, seq_s, par_passes, seq_passes, par_toks == seq_toks, flat_ms, batch_ms))
        if tick:
            tick(f"{n} paths: done")
    return rows


def table(rows: list[Row]) -> list[list[str]]:
    out = []
    for r in rows:
        out.append([
            str(r.paths), str(r.tokens), str(r.sequential_length), f"{r.degree:.2f}",
            f"{r.tokens / r.sequential_seconds:.1f}", f"{r.tokens / r.parallel_seconds:.1f}", f"{r.speedup:.2f}x",
            f"{r.sequential_passes} / {r.parallel_passes}", "yes" if r.same_tokens else "NO",
            f"{r.flat_pass_ms:.0f} / {r.batched_pass_ms:.0f}",
        ])
    return out


HEADER = ["paths", "tokens", "seq. length", "parallelism", "sequential tok/s", "parallel tok/s", "speedup",
          "passes seq / par", "same tokens", "pass ms flat / batched"]


GUIDED_PROMPTS = (
    "What are good ways to stay healthy?",
    "Tom has 3 apples and buys 5 more. Then he gives 2 away. How many apples does he have?",
    "Compare cats and dogs as pets.",
    "Write a short plan for learning to play the guitar.",
    "Explain how a bicycle works.",
    "What should I check before buying a used car?",
    "Give three ideas for a birthday party.",
    "How can a small town reduce its energy use?",
    "Summarise the pros and cons of working from home.",
    "Write a Python function that returns the largest of three numbers, and explain it.",
)


def guided_validity(model, prompts=GUIDED_PROMPTS, max_new_tokens: int = 320, path_tokens: int = 64, tick=None) -> dict:
    """Training-free mode on varied prompts: how many answers are valid Multiverse structure."""
    from ..multiverse.grammar import validate

    rows = []
    for p in prompts:
        g = model.generate(p, method="multiverse", options={"guided": True, "max_path_tokens": path_tokens},
                           max_new_tokens=max_new_tokens)
        errors = [str(e) for e in validate(g.text)]
        rows.append({"prompt": p, "valid": not errors and "<Parallel>" in g.text, "errors": errors,
                     "paths": g.text.count("<Path>"), "tokens_per_pass": round(g.stats.mean_accepted, 3),
                     "tokens_per_second": round(g.stats.tokens_per_second, 2), "text": g.text})
        if tick:
            tick(p[:40])
    return {"valid": sum(r["valid"] for r in rows), "n": len(rows), "rows": rows}
