"""Draft heads (``head.py``): shipped ones live in subfolders of this package, one per target model.

A head belongs to the exact weights it was trained on: its ``polyverse.json`` records the target's
fingerprint (``fingerprint``), and a model whose weights differ (another model, or the same one with
an adapter merged) gets no head rather than a head that guesses badly.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from .head import META, Drafter, DraftHead, HeadShape

SHIPPED = Path(__file__).resolve().parent

__all__ = ["Drafter", "DraftHead", "HeadShape", "fingerprint", "shipped", "for_model", "bind"]


def fingerprint(hf_model) -> list[float]:
    """A few sums of the target's input embeddings: equal (to rounding) only for the same weights."""
    w = hf_model.get_input_embeddings().weight.detach()
    rows = w[:: max(1, w.shape[0] // 8)][:8].double()  # [8, H]
    return [round(float(s), 4) for s in rows.sum(dim=-1)]


def _matches(meta: dict, hf_model) -> bool:
    want = meta.get("fingerprint")
    if not want or int(meta.get("hidden", -1)) != hf_model.config.hidden_size:
        return False
    got = fingerprint(hf_model)
    return len(got) == len(want) and all(abs(a - b) <= 1e-2 for a, b in zip(got, want))


def shipped() -> list[Path]:
    return sorted(p for p in SHIPPED.iterdir() if (p / META).is_file())


def bind(folder: Path, hf_model, kind: str | None = None) -> Drafter:
    """The head in ``folder`` on ``hf_model``'s embeddings and LM head (``kind``: ``Drafter``'s)."""
    head, _ = DraftHead.load(folder)
    embed = hf_model.get_input_embeddings().weight.detach()
    return Drafter(head, embed, hf_model.get_output_embeddings().weight.detach(), kind)


def for_model(model: Any, folders: "list[Path] | None" = None) -> Drafter | None:
    """The shipped head trained on ``model``'s weights (a polyverse Model), bound and cached in its
    resources (``folders``: where to look instead of the shipped heads); None when there is none
    (another model, an adapter merged, the llama.cpp backend)."""
    if "draft_head" in model.resources:
        return model.resources["draft_head"]
    from ..backends.transformers import TransformersBackend

    drafter = None
    hf = getattr(model, "hf_model", None)
    # llama.cpp's passes return logits only: a head there would have no hidden state to start from
    if hf is not None and not model.adapter and isinstance(model.backend, TransformersBackend):
        for folder in shipped() if folders is None else folders:
            if _matches(json.loads((folder / META).read_text()), hf):
                lean = getattr(model.backend, "lean", None)  # the head's products in the pass's weight type
                drafter = bind(folder, hf, getattr(lean, "dtype", None))
                break
    model.resources["draft_head"] = drafter
    return drafter
