"""Does the model write Multiverse structure? Valid-<Parallel> rate on held-out questions."""

from __future__ import annotations

from ...multiverse.grammar import validate


def structured(text: str) -> tuple[bool, bool]:
    """(writes a <Parallel> block, the whole answer is valid structure with at least one block)."""
    has = "<Parallel>" in text
    return has, has and not validate(text)


def rate(model, questions, max_new_tokens: int = 256, tick=None) -> dict:
    """Greedy multiverse decoding of each question; the share that emits (valid) structure."""
    rows = []
    for q in questions:
        g = model.generate(q, method="multiverse", max_new_tokens=max_new_tokens)
        has, valid = structured(g.text)
        rows.append({"question": q, "text": g.text, "parallel": has, "valid": valid,
                     "tokens_per_pass": round(g.stats.mean_accepted, 3)})
        if tick:
            tick(q)
    n = max(len(rows), 1)
    return {"n": len(rows), "parallel_rate": sum(r["parallel"] for r in rows) / n,
            "valid_rate": sum(r["valid"] for r in rows) / n, "rows": rows}
