"""The SPACE data transform: chat samples, some cut at a random point and followed by [MASK]s.

A sample is (prompt ids, response ids); the loss is on the response only. With probability p a
sample is cut after c response tokens (c drawn uniformly from 0 .. len(response) - 1) and k + 1
[MASK] tokens are appended; their labels are the true next tokens. With the usual shift (the
logits at position i predict the label at i + 1) the last real token predicts response[c] as in
plain decoding, and mask j (j = 0 .. k - 1) predicts response[c + j + 1]: the mask at position x
stands in for the unknown token at x and predicts the token at x + 1, which is what
``--method space`` reads from its mask groups. The other samples stay ordinary AR samples.

Example: prompt (p1, p2), response (a, b, c, d), cut at c = 1, k = 2 ->
input (p1, p2, a, M, M, M), labels (-100, -100, a, b, c, d).
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import torch

from ...adapters import grow_embeddings
from ...errors import ConfigError
from ...methods.space import MASK_TOKEN

IGNORE = -100
_CALC = re.compile(r"<<[^>]*>>")  # GSM8K calculator annotations: "48/2 = <<48/2=24>>24"


@dataclass(frozen=True)
class Sample:
    prompt: tuple[int, ...]
    response: tuple[int, ...]


def transform(sample: Sample, rng: random.Random, k: int, p: float, mask_id: int) -> tuple[list[int], list[int]]:
    """(input ids, labels) of one training sample; labels are -100 where no loss is taken."""
    prompt, resp = list(sample.prompt), list(sample.response)
    if resp and rng.random() < p:
        c = rng.randrange(len(resp))
        future = resp[c : c + k + 1]
        ids = prompt + resp[:c] + [mask_id] * (k + 1)
        labels = [IGNORE] * len(prompt) + resp[:c] + future + [IGNORE] * (k + 1 - len(future))
        return ids, labels
    return prompt + resp, [IGNORE] * len(prompt) + resp


def collate(rows: Sequence[tuple[list[int], list[int]]], pad_id: int = 0) -> dict[str, torch.Tensor]:
    """Right-padded batch: input_ids [B, L], attention_mask [B, L], labels [B, L] (-100 on padding)."""
    L = max(len(ids) for ids, _ in rows)
    out = {
        "input_ids": torch.full((len(rows), L), pad_id, dtype=torch.long),
        "attention_mask": torch.zeros((len(rows), L), dtype=torch.long),
        "labels": torch.full((len(rows), L), IGNORE, dtype=torch.long),
    }
    for b, (ids, labels) in enumerate(rows):
        out["input_ids"][b, : len(ids)] = torch.tensor(ids)
        out["attention_mask"][b, : len(ids)] = 1
        out["labels"][b, : len(labels)] = torch.tensor(labels)
    return out


def chat_sample(tokenizer, question: str, answer: str, max_len: int = 512) -> Sample:
    """Chat-formatted (prompt, response) ids: the response is the assistant turn with its end."""
    msgs = [{"role": "user", "content": question}]
    prompt = _ids(tokenizer.apply_chat_template(msgs, add_generation_prompt=True, tokenize=True))
    full = _ids(tokenizer.apply_chat_template(msgs + [{"role": "assistant", "content": answer}], tokenize=True))
    if full[: len(prompt)] != prompt:
        raise ConfigError("the chat template does not extend the prompt with the answer; cannot split the sample")
    response = full[len(prompt):]
    # drop trailing newlines after the end-of-turn token: the model stops at end-of-turn
    while response and tokenizer.decode(response[-1:]).strip() == "" and len(response) > 1:
        response = response[:-1]
    return Sample(tuple(prompt[-max_len:]), tuple(response[: max_len]))


def _ids(out) -> list[int]:
    ids = out["input_ids"] if hasattr(out, "keys") else out
    return [int(t) for t in ids]


def gsm8k_answer(text: str) -> str:
    """A GSM8K reference solution as plain prose: calculator annotations removed."""
    return _CALC.sub("", text).strip()


def read_samples(path: Path, tokenizer, limit: int = 0, max_len: int = 512) -> list[Sample]:
    """Samples from JSONL rows with ``question`` and ``answer`` (GSM8K) or ``prompt`` and ``response``."""
    from ..common import jsonl_rows

    out: list[Sample] = []
    for n, row in jsonl_rows(path):
        if "question" in row and "answer" in row:
            q, a = str(row["question"]), gsm8k_answer(str(row["answer"]))
        elif "prompt" in row and "response" in row:
            q, a = str(row["prompt"]), str(row["response"])
        else:
            raise ConfigError(f"{path}:{n}: needs 'question' and 'answer' (or 'prompt' and 'response')")
        out.append(chat_sample(tokenizer, q, a, max_len))
        if limit and len(out) >= limit:
            break
    if not out:
        raise ConfigError(f"{path} holds no samples")
    return out


def add_mask_token(model, tokenizer) -> int:
    """Add the [MASK] special token; its embedding row is the mean of the existing rows.

    With tied input and output embeddings (SmolLM2) the same row is the LM-head row. Returns
    the token id. Idempotent: a model that has the token already is left as it is.
    """
    vocab = tokenizer.get_vocab()
    if MASK_TOKEN in vocab and vocab[MASK_TOKEN] < model.get_input_embeddings().weight.shape[0]:
        return vocab[MASK_TOKEN]
    tokenizer.add_tokens([MASK_TOKEN], special_tokens=True)
    mask_id = tokenizer.convert_tokens_to_ids(MASK_TOKEN)
    grow_embeddings(model, max(mask_id + 1, model.get_input_embeddings().weight.shape[0]))
    return mask_id
