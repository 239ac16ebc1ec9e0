"""Multiverse SFT data: curated structured answers as chat samples with branch labels.

The tags become tokens of their own, added as plain (not special) tokens so that decoding keeps
them; each new embedding row starts as the mean of the rows of the sub-words the tag was split
into before (``</Path>`` -> ``</``, ``Path``, ``>``). The response is cut into pieces exactly as
the engine cuts it (``multiverse.sequence``), so training and decoding see the same tokens with
the same labels, hence the same mask and positions.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import torch

from ...errors import ConfigError
from ...multiverse import attention
from ...multiverse.attention import Label
from ...multiverse.sequence import encode, pieces

TAGS = tuple(f"<{c}{t}>" for t in ("Think", "Parallel", "Goal", "Outline", "Path", "Conclusion") for c in ("", "/"))
IGNORE = -100


@dataclass(frozen=True)
class Sample:
    prompt: tuple[int, ...]
    response: tuple[int, ...]
    labels: tuple[Label, ...]  # branch label of every response token


def add_tag_tokens(model, tokenizer) -> list[int]:
    """Add the tag tokens (idempotent); returns their ids in TAGS order."""
    vocab = tokenizer.get_vocab()
    emb = model.get_input_embeddings().weight
    if all(t in vocab and vocab[t] < emb.shape[0] for t in TAGS):
        return [vocab[t] for t in TAGS]
    parts = {t: tokenizer(t, add_special_tokens=False)["input_ids"] for t in TAGS}  # before adding
    tokenizer.add_tokens(list(TAGS), special_tokens=False)
    ids = [tokenizer.convert_tokens_to_ids(t) for t in TAGS]
    old = emb.shape[0]
    model.resize_token_embeddings(max(max(ids) + 1, old), mean_resizing=False)
    with torch.no_grad():
        for layer in {id(l): l for l in (model.get_input_embeddings(), model.get_output_embeddings()) if l is not None}.values():
            for tag, i in zip(TAGS, ids):
                if i >= old:
                    layer.weight[i] = layer.weight[parts[tag]].mean(0)
    return ids


def structured_sample(tokenizer, question: str, structured: str, max_len: int = 768) -> Sample:
    """Chat prompt, then the structured answer cut into engine pieces and the end-of-turn tokens."""
    msgs = [{"role": "user", "content": question}]
    out = tokenizer.apply_chat_template(msgs, add_generation_prompt=True, tokenize=True)
    prompt = [int(t) for t in (out["input_ids"] if hasattr(out, "keys") else out)]
    ids, labels, _ = encode(pieces(structured), tokenizer)
    if tokenizer.eos_token_id is not None:
        ids.append(int(tokenizer.eos_token_id))
        labels.append(())
    if len(prompt) + len(ids) > max_len:
        raise ConfigError(f"sample of {len(prompt) + len(ids)} tokens is longer than {max_len}")
    return Sample(tuple(prompt), tuple(ids), tuple(labels))


def read_curated(path: Path, tokenizer, limit: int = 0, max_len: int = 768) -> list[Sample]:
    """Samples from ``polyverse curate`` output rows (``question`` + ``structured``); too long ones are skipped."""
    from ..common import jsonl_rows

    if not path.is_file():
        raise ConfigError(f"no curated data file {path} (make it with `polyverse curate`)")
    out: list[Sample] = []
    for n, row in jsonl_rows(path):
        if "structured" not in row:
            raise ConfigError(f"{path}:{n}: needs 'structured' (and 'question')")
        try:
            out.append(structured_sample(tokenizer, str(row.get("question", "")), str(row["structured"]), max_len))
        except ConfigError:
            continue  # longer than max_len
        if limit and len(out) >= limit:
            break
    if not out:
        raise ConfigError(f"{path} holds no usable samples")
    return out


def collate(rows: Sequence[Sample], pad_id: int = 0) -> dict[str, torch.Tensor]:
    """Right-padded batch: input_ids, labels (IGNORE on prompt and padding), position_ids and the
    4D additive Multiverse Attention mask [B, 1, L, L] (padding rows see only themselves)."""
    length = max(len(r.prompt) + len(r.response) for r in rows)
    b = len(rows)
    out = {
        "input_ids": torch.full((b, length), pad_id, dtype=torch.long),
        "labels": torch.full((b, length), IGNORE, dtype=torch.long),
        "position_ids": torch.zeros((b, length), dtype=torch.long),
        "attention_mask": torch.full((b, 1, length, length), torch.finfo(torch.float32).min),
    }
    for i, r in enumerate(rows):
        labels = [()] * len(r.prompt) + list(r.labels)
        n = len(labels)
        out["input_ids"][i, :n] = torch.tensor(r.prompt + r.response)
        out["labels"][i, len(r.prompt):n] = torch.tensor(r.response)
        out["position_ids"][i, :n] = torch.tensor(attention.positions(labels))
        out["attention_mask"][i, 0, :n, :n].masked_fill_(attention.mask(labels), 0.0)
        idx = torch.arange(n, length)
        out["attention_mask"][i, 0, idx, idx] = 0.0
    return out
