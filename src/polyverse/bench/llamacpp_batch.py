"""Does llama.cpp's own greedy choice depend on how many tokens a pass feeds?

Parallel decoding verifies a draft by feeding k tokens in one pass and reading the argmax of
each row. That is lossless only if a row of a k-token pass gives the argmax a one-token pass
gives. The transformers backend's row kernel sums every row in the same order whatever the row
count; llama.cpp promises no such thing (its batched products may take another kernel and order
of sums than its one-row path), so `auto` on the llama.cpp backend can write a different token
than llama.cpp greedy where the two best logits are nearly tied.

``measure`` checks it directly. For each prompt: the greedy continuation one token per pass (the
reference, as llama.cpp greedy writes it); then, for each k, the same continuation fed again
(teacher forced, so every position sees the reference context) k tokens per pass, every row's
argmax compared with the reference token. Reported per k: positions and prompts whose argmax
differs, the one-token pass's logit margin at the first difference (how near the tie was), the
largest logit difference seen at any row, and the largest against the first k measured (whether
passes of different sizes above one agree among themselves). Also whether feeding the whole
prompt in one pass (as llama.cpp's own tools do) changes the first token.

Example: ``polyverse bench llamacpp-batch --data mtbench-like --limit 10 -n 64 --ks 2,4,8,16``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np

from ..errors import ConfigError
from ..layout import chain_feed


@dataclass(frozen=True)
class BatchConfig:
    max_new_tokens: int = 64
    ks: tuple[int, ...] = (2, 4, 8, 16)

    def __post_init__(self) -> None:
        if self.max_new_tokens < 1:
            raise ConfigError(f"--max-new-tokens must be at least 1, got {self.max_new_tokens}")
        if not self.ks or min(self.ks) < 1:
            raise ConfigError("--ks takes positive pass sizes, e.g. 2,4,8,16")


def _rows(backend, tokens: Sequence[int], start: int) -> np.ndarray:
    """Logits of every row of one chain pass over ``tokens`` at positions start..; committed."""
    logits = backend.forward(chain_feed(list(tokens), start)).full()  # [q, V]
    backend.commit(range(len(tokens)))
    return logits.numpy()


def _prefill(backend, prompt: Sequence[int]) -> None:
    backend.reset()
    if len(prompt) > 1:
        backend.forward(chain_feed(list(prompt[:-1]), 0), logits_for=[])
        backend.commit(range(len(prompt) - 1))


def reference(backend, prompt: Sequence[int], max_new_tokens: int, eos: Sequence[int]) -> tuple[list[int], np.ndarray]:
    """(greedy tokens one token per pass, stopping after EOS; their logits [n, V])."""
    _prefill(backend, prompt)
    token, pos, out, rows = int(prompt[-1]), len(prompt) - 1, [], []
    stops = set(eos)
    while len(out) < max_new_tokens and pos < backend.max_length - 1:
        row = _rows(backend, [token], pos)[0]  # [V]
        rows.append(row)
        token = int(row.argmax())
        out.append(token)
        pos += 1
        if token in stops:
            break
    return out, np.stack(rows)


def batched(backend, prompt: Sequence[int], continuation: Sequence[int], k: int) -> np.ndarray:
    """Logits [n, V] of the continuation teacher-forced k tokens per pass (row i predicts token i)."""
    _prefill(backend, prompt)
    feed = [int(prompt[-1])] + [int(t) for t in continuation[:-1]]
    pos = len(prompt) - 1
    out = []
    for i in range(0, len(feed), k):
        out.append(_rows(backend, feed[i:i + k], pos + i))
    return np.concatenate(out)


def first_token_whole_prompt(backend, prompt: Sequence[int]) -> np.ndarray:
    """Logits [V] of the first new token when the whole prompt is fed in one pass."""
    backend.reset()
    return _rows(backend, prompt, 0)[-1]


def compare_prompt(backend, prompt: Sequence[int], cfg: BatchConfig, eos: Sequence[int]) -> dict:
    """The figures of one prompt: per k, the differing positions and the first one's margin."""
    ref, ref_logits = reference(backend, prompt, cfg.max_new_tokens, eos)
    out: dict = {"prompt_tokens": len(prompt), "new_tokens": len(ref), "ks": {}}
    first_got = None
    for k in cfg.ks:
        got = batched(backend, prompt, ref, k)  # [n, V]
        first_got = got if first_got is None else first_got
        arg = got.argmax(axis=1)
        diff = [i for i in range(len(ref)) if int(arg[i]) != ref[i]]
        first = None
        if diff:
            i = diff[0]
            first = {"position": i, "expected": ref[i], "got": int(arg[i]),
                     "margin": float(ref_logits[i, ref[i]] - ref_logits[i, int(arg[i])])}
        out["ks"][k] = {"differ": len(diff), "first": first,
                        "max_abs_logit_diff": float(np.abs(got - ref_logits).max()),
                        # against the first k measured: do passes of different sizes agree with each other?
                        "max_abs_diff_vs_first_k": float(np.abs(got - first_got).max())}
    try:
        whole = first_token_whole_prompt(backend, prompt)
        out["whole_prompt"] = {"same_first_token": int(whole.argmax()) == ref[0],
                               "max_abs_logit_diff": float(np.abs(whole - ref_logits[0]).max())}
    except ValueError:  # a prompt longer than one batch
        out["whole_prompt"] = None
    backend.reset()
    return out


def measure(backend, prompts: Sequence[Sequence[int]], cfg: BatchConfig, eos: Sequence[int],
            tick: Callable[[str], None] | None = None) -> dict:
    """Every prompt's figures and a summary per k (see the module docstring)."""
    per = []
    for j, p in enumerate(prompts):
        per.append(compare_prompt(backend, p, cfg, eos))
        if tick:
            tick(f"prompt {j + 1}/{len(prompts)}")
    summary = {}
    for k in cfg.ks:
        rows = [r["ks"][k] for r in per]
        margins = [r["first"]["margin"] for r in rows if r["first"]]
        summary[k] = {"positions": sum(r["new_tokens"] for r in per), "differ": sum(r["differ"] for r in rows),
                      "prompts_differ": sum(1 for r in rows if r["differ"]), "prompts": len(per),
                      "first_margins": [round(m, 5) for m in margins],
                      "max_abs_logit_diff": max(r["max_abs_logit_diff"] for r in rows),
                      "max_abs_diff_vs_first_k": max(r["max_abs_diff_vs_first_k"] for r in rows)}
    whole = [r["whole_prompt"] for r in per if r["whole_prompt"]]
    return {"config": {"max_new_tokens": cfg.max_new_tokens, "ks": list(cfg.ks)}, "summary": summary,
            "whole_prompt": {"prompts_first_token_differs": sum(1 for w in whole if not w["same_first_token"]),
                             "max_abs_logit_diff": max((w["max_abs_logit_diff"] for w in whole), default=None),
                             "prompts": len(whole)},
            "prompts": per}


def header(doc: dict) -> str:
    first = doc["config"]["ks"][0]
    return (f"k  positions  argmax differs  prompts differing  first-difference margins  max |logit diff|  "
            f"max |diff| vs k={first}")


def table(doc: dict) -> list[str]:
    """One line per pass size k (argmax and logits against one token per pass, logits against the first k)."""
    lines = []
    for k, s in doc["summary"].items():
        margins = ", ".join(f"{m:.4f}" for m in s["first_margins"]) or "-"
        lines.append(f"{k:<2} {s['positions']:>10} {s['differ']:>15} {s['prompts_differ']:>9}/{s['prompts']:<8} "
                     f"{margins:<25} {s['max_abs_logit_diff']:>16.2e}  {s['max_abs_diff_vs_first_k']:.2e}")
    return lines
