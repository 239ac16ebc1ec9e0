"""Self-distillation in batches: many questions per ``generate`` call, for a GPU.

``distill`` decodes one question at a time with a lossless method, which is what a CPU affords
and keeps the text exactly the model's greedy output. On a GPU one question at a time leaves the
chip idle: here questions are left-padded into batches and decoded together by transformers'
greedy ``generate``. Padding and batching change the float sums a little, so on a near tie a row
can pick the other token than unbatched greedy would; the text is still the model's own greedy
answer up to that rounding, which is what self-distillation needs. Rows carry ``"batched": true`` to say so.

The rows and the resume rule are ``distill``'s: one synced write per batch, ids already written
are skipped, a torn last line is cut off.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Callable, Sequence

import torch

from ..errors import ConfigError
from .cllm.collect import _append
from .distill import TRUNCATED, DistillConfig, done_ids


def left_pad(rows: Sequence[Sequence[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Token rows left-padded to one length: ids [B, L] and attention [B, L] (0 on padding).

    Example: ((5, 6), (7,)) with pad 0 -> ids ((5, 6), (0, 7)), attention ((1, 1), (0, 1)).
    """
    if not rows or any(not r for r in rows):
        raise ConfigError("every prompt needs at least one token")
    L = max(len(r) for r in rows)
    ids = torch.full((len(rows), L), pad_id, dtype=torch.long)
    attention = torch.zeros((len(rows), L), dtype=torch.long)
    for b, r in enumerate(rows):
        ids[b, L - len(r):] = torch.tensor(list(r))
        attention[b, L - len(r):] = 1
    return ids, attention


def cut_answer(new: Sequence[int], eos_ids: Sequence[int]) -> tuple[list[int], str]:
    """A generated row up to (not including) its first end token, and why it ended.

    Example: (4, 9, 2, 0, 0) with eos (2,) -> ([4, 9], "eos"); (4, 9) -> ([4, 9], "length").
    """
    for i, t in enumerate(new):
        if t in eos_ids:
            return list(new[:i]), "eos"
    return list(new), TRUNCATED


def distill_batched(model, questions: Sequence[tuple[str, str]], out: Path, cfg: DistillConfig, batch: int,
                    chat: bool | None = None, tick: Callable[[str, str], None] | None = None) -> dict:
    """Greedy answers of ``model`` (a ``polyverse.Model`` on any device) to (id, question) pairs not
    yet in ``out``, ``batch`` questions per ``generate`` call. Returns counts as ``distill``."""
    if not isinstance(batch, int) or batch < 1:
        raise ConfigError(f"--batch must be at least 1, got {batch!r}")
    out.parent.mkdir(parents=True, exist_ok=True)
    done = done_ids(out)
    counts = {"written": 0, "skipped": 0, "truncated": 0}
    todo = []
    for qid, question in questions:
        if qid in done:
            counts["skipped"] += 1
            if tick:
                tick(qid, "skipped")
        else:
            todo.append((qid, question))
    hf, tok = model.hf_model, model.tokenizer
    eos = tuple(model.eos_token_ids)
    pad = tok.pad_token_id if tok.pad_token_id is not None else eos[0]
    device = next(hf.parameters()).device
    for start in range(0, len(todo), batch):
        part = todo[start:start + batch]
        ids, attention = left_pad([model.encode(q, chat) for _, q in part], pad)  # [B, L]
        with torch.inference_mode():
            gen = hf.generate(input_ids=ids.to(device), attention_mask=attention.to(device), do_sample=False,
                              max_new_tokens=cfg.max_new_tokens, pad_token_id=pad, eos_token_id=list(eos))
        lines = []
        for (qid, question), row in zip(part, gen[:, ids.shape[1]:].tolist()):  # [B, new]
            answer, finish = cut_answer(row, eos)
            text = tok.decode(answer, skip_special_tokens=True)
            lines.append(json.dumps({"id": qid, "prompt": question, "response": text, "finish": finish,
                                     "batched": True}) + "\n")
            counts["truncated"] += finish == TRUNCATED
        _append(out, lines)
        counts["written"] += len(part)
        if tick:
            for qid, _ in part:
                tick(qid, "written")
    return counts
