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

``pack`` is the denser variant (``--groups G``): every sample stays whole and up to G groups of k
masks are appended after it, each anchored at its own cut and laid out exactly as the decoder lays
out a group below a candidate: the group at cut c sits at the positions of response[c], ...,
response[c + k - 1], sees the prompt, response[:c] and the earlier masks of its own group, and
nothing else sees it. Mask j of that group is trained to predict response[c + j + 1]. One forward
pass then trains AR on the whole response and G * k mask predictions instead of k.

Example: prompt (p1), response (a, b, c), k = 2, cuts (0, 1) -> input (p1, a, b, c, M, M, M, M),
positions (0, 1, 2, 3, 1, 2, 2, 3), targets (a, b, c, -100, b, c, c, -100): row i predicts targets[i].
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


@dataclass(frozen=True)
class Packed:
    ids: tuple[int, ...]  # [L]: prompt + response + groups of k masks
    targets: tuple[int, ...]  # [L]: the token row i is trained to predict (-100: none)
    positions: tuple[int, ...]  # [L]
    n_real: int  # prompt + response tokens; the groups follow
    anchors: tuple[int, ...]  # index (among the real tokens) each group's first mask stands for


def group_positions(n_real: int, anchors: Sequence[int], k: int) -> list[int]:
    """Positions [L] of ``group_layout``: the real tokens in order, then a .. a + k - 1 per anchor a."""
    for a in anchors:
        if not 0 <= a <= n_real:
            raise ConfigError(f"group anchor {a} is outside 0..{n_real}")
    return list(range(n_real)) + [a + j for a in anchors for j in range(k)]


def group_layout(n_real: int, anchors: Sequence[int], k: int) -> tuple[list[int], torch.Tensor]:
    """Positions [L] and visibility [L, L] (row sees column) of n_real real tokens followed by one
    group of k masks per anchor; the group at anchor a stands at positions a .. a + k - 1 and sees
    the real tokens before a and its own earlier masks. Real tokens are causal among themselves.

    Built with a few whole-matrix comparisons (a training step builds one per sample: a loop of small
    tensor ops per group cost milliseconds each on a busy many-threaded machine).

    Example: n_real 3, anchors (1,), k 2 -> positions (0, 1, 2, 1, 2); row 3 sees columns 0, 3;
    row 4 sees 0, 3, 4.
    """
    positions = group_positions(n_real, anchors, k)
    L = len(positions)
    idx = torch.arange(L)  # [L]
    is_group = idx >= n_real  # [L]
    group = torch.where(is_group, (idx - n_real) // k, -1)  # [L]: the group a row belongs to, -1 for real rows
    anchor = torch.tensor([0, *anchors], dtype=torch.long)[group + 1]  # [L]
    real_limit = torch.where(is_group, anchor, idx + 1)  # [L]: a row sees real columns below this
    sees_real = (idx[None, :] < n_real) & (idx[None, :] < real_limit[:, None])  # [L, L]
    same_group = is_group[:, None] & (group[:, None] == group[None, :]) & (idx[None, :] <= idx[:, None])  # [L, L]
    return positions, sees_real | same_group


def pack(sample: Sample, rng: random.Random, k: int, groups: int, mask_id: int) -> Packed:
    """The whole sample plus up to ``groups`` mask groups at distinct random cuts (see module doc)."""
    prompt, resp = list(sample.prompt), list(sample.response)
    n = len(resp)
    cuts = sorted(rng.sample(range(n - 1), min(groups, n - 1))) if n > 1 else []
    ids = prompt + resp + [mask_id] * (k * len(cuts))
    targets = [IGNORE] * (len(prompt) - 1) + resp + [IGNORE]
    if not prompt:
        targets = resp[1:] + [IGNORE]
    for c in cuts:
        targets.extend(resp[c + j + 1] if c + j + 1 < n else IGNORE for j in range(k))
    anchors = tuple(len(prompt) + c for c in cuts)
    positions = group_positions(len(prompt) + n, anchors, k)
    return Packed(tuple(ids), tuple(targets), tuple(positions), len(prompt) + n, anchors)


def collate_packed(rows: Sequence[Packed], k: int, pad_id: int = 0) -> dict[str, torch.Tensor]:
    """Right-padded batch of packed samples: input_ids, targets, position_ids [B, L] and the 4D additive
    attention mask [B, 1, L, L] (0 visible, dtype min hidden; padding rows see only themselves)."""
    L = max(len(r.ids) for r in rows)
    b = len(rows)
    out = {
        "input_ids": torch.full((b, L), pad_id, dtype=torch.long),
        "targets": torch.full((b, L), IGNORE, dtype=torch.long),
        "position_ids": torch.zeros((b, L), dtype=torch.long),
        "attention_mask": torch.full((b, 1, L, L), torch.finfo(torch.float32).min),
    }
    for i, r in enumerate(rows):
        n = len(r.ids)
        out["input_ids"][i, :n] = torch.tensor(r.ids)
        out["targets"][i, :n] = torch.tensor(r.targets)
        out["position_ids"][i, :n] = torch.tensor(r.positions)
        open_groups(out["attention_mask"][i, 0], r.n_real, r.anchors, k)
    return out


def open_groups(mask: torch.Tensor, n_real: int, anchors: Sequence[int], k: int) -> None:
    """Open ``group_layout``'s visibility in one row's additive mask [L, L] (filled with dtype min);
    the padding rows after the sample see only themselves."""
    _, vis = group_layout(n_real, anchors, k)
    n = vis.shape[0]
    mask[:n, :n].masked_fill_(vis, 0.0)
    idx = torch.arange(n, mask.shape[0])
    mask[idx, idx] = 0.0


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
        sample = chat_sample(tokenizer, q, a, max_len)
        if row.get("finish") == "length":  # cut by a budget (``polyverse train distill``): no end of turn
            sample = Sample(sample.prompt, sample.response[:-1])
        out.append(sample)
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
