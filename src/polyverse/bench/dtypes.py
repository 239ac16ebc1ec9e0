"""`polyverse bench dtypes`: how often greedy decoding in bf16 or int8 departs from fp32 greedy.

Each weight type is lossless in itself (every method equals that type's `ar`), but bf16 and int8
round the weights, so their greedy text can part from the fp32 model's where two tokens were nearly
tied. This measures it on the bench's data sets: `ar` in each type on the same prompts, the first
position where a type's tokens differ from fp32's, and the fp32 logit margin there (top logit minus
the logit of the token the other type chose): small margins mean near-ties, not a broken pass.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch


@dataclass(frozen=True)
class Departure:
    set_name: str
    prompt: int
    dtype: str
    position: int | None  # first differing new token; None = identical
    margin: float | None  # fp32 logit margin there


def first_difference(a: list[int], b: list[int]) -> int | None:
    """The first index where two token lists differ (a length difference counts), else None.

    >>> first_difference([1, 2, 3], [1, 2, 4]), first_difference([1, 2], [1, 2]), first_difference([1], [1, 5])
    (2, None, 1)
    """
    for i, (x, y) in enumerate(zip(a, b)):
        if x != y:
            return i
    return None if len(a) == len(b) else min(len(a), len(b))


def margin(hf_model, prompt: list[int], reference: list[int], position: int, other: int | None) -> float | None:
    """fp32 logit of the reference's token minus that of ``other`` at new-token ``position``."""
    if other is None or position >= len(reference):
        return None
    ids = torch.tensor([prompt + reference[:position]])  # [1, L]
    with torch.inference_mode():
        logits = hf_model(ids).logits[0, -1].float()  # [V]
    return float(logits[reference[position]] - logits[other])


def compare(models: dict[str, object], sets, max_new_tokens: int,
            tick: Callable[[str], None] | None = None) -> list[Departure]:
    """``models``: weight type -> loaded polyverse Model, "fp32" among them (the reference)."""
    out: list[Departure] = []
    reference = models["fp32"]
    for s in sets:
        for i, prompt in enumerate(s.prompts):
            ids = list(prompt.ids)
            runs = {}
            for name, m in models.items():
                if tick:
                    tick(f"{s.name} {i + 1}/{len(s.prompts)} {name}")
                runs[name] = list(m.generate(ids, method="ar", max_new_tokens=max_new_tokens).token_ids)
            for name, toks in runs.items():
                if name == "fp32":
                    continue
                pos = first_difference(runs["fp32"], toks)
                other = toks[pos] if pos is not None and pos < len(toks) else None
                gap = margin(reference.hf_model, ids, runs["fp32"], pos, other) if pos is not None else None
                out.append(Departure(s.name, i, name, pos, gap))
    return out


def markdown(rows: list[Departure], cpu: str, max_new_tokens: int) -> str:
    """Per set and type: prompts whose greedy output differs from fp32, the median first differing
    position and the largest fp32 margin at it."""
    lines = [f"Greedy `ar` in bf16 and int8 against fp32 greedy on {cpu}, {max_new_tokens} new tokens: prompts "
             "whose output differs, first differing new token, fp32 logit margin there.", "",
             "| set | type | differ | first difference (median) | largest margin |", "| --- | --- | ---: | ---: | ---: |"]
    keys = sorted({(r.set_name, r.dtype) for r in rows}, key=lambda k: (k[0], k[1]))
    for set_name, dtype in keys:
        group = [r for r in rows if r.set_name == set_name and r.dtype == dtype]
        diff = [r for r in group if r.position is not None]
        pos = sorted(r.position for r in diff)
        gaps = [r.margin for r in diff if r.margin is not None]
        med = f"{pos[len(pos) // 2]}" if pos else "-"
        top = f"{max(gaps):.3f}" if gaps else "-"
        lines.append(f"| {set_name} | {dtype} | {len(diff)}/{len(group)} | {med} | {top} |")
    return "\n".join(lines) + "\n"
