"""Multiverse SFT: LoRA (default) with the tag tokens' rows trained in full, every batch under
Multiverse Attention and its positions; the loop and checkpoints are ``train.common``'s."""

from __future__ import annotations

import random
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import torch
import torch.nn.functional as F

from ...errors import ConfigError
from .. import common
from .data import IGNORE, TAGS, Sample, add_tag_tokens, collate


@dataclass(frozen=True)
class MultiverseFitConfig:
    steps: int = 150
    batch: int = 4
    accumulate: int = 1
    lr: float = 3e-4
    lora: bool = True
    lora_rank: int = 8
    lora_alpha: int = 16
    save_every: int = 25
    seed: int = 0
    precision: str = "fp32"  # or "bf16": mixed precision (faster on CPUs with avx512_bf16, and on GPUs)
    schedule: str = "constant"  # or "linear" / "cosine": decay from step decay_from to 0 (common.lr_at)
    decay_from: int = 0

    def __post_init__(self) -> None:
        common.check_config(self, ("steps", "batch", "accumulate", "save_every", "lora_rank", "lora_alpha"))


def losses(model, batch: dict[str, torch.Tensor], tag_ids: Sequence[int]) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """(mean cross-entropy over response tokens, {"ce": that, "tags": on the tag tokens only})."""
    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                   position_ids=batch["position_ids"]).logits  # [B, L, V]
    pred = logits[:, :-1].float()  # [B, L-1, V]: row i predicts label i + 1 (training order)
    labels = batch["labels"][:, 1:]  # [B, L-1]
    ce = F.cross_entropy(pred.transpose(1, 2), labels, ignore_index=IGNORE, reduction="none")  # [B, L-1]
    valid = labels != IGNORE
    if not valid.any():
        raise ConfigError("a batch without response tokens")
    total = ce[valid].mean()
    is_tag = valid & torch.isin(labels, torch.tensor(list(tag_ids), device=labels.device))
    tags = ce[is_tag].mean().detach() if is_tag.any() else torch.tensor(0.0)
    return total, {"ce": total.detach(), "tags": tags}


def fit(model, tokenizer, samples: Sequence[Sample], out: Path, cfg: MultiverseFitConfig,
        resume: bool = False, tick=None, stop_after: int | None = None):
    """Train on samples tokenised with the tag tokens (``add_tag_tokens`` first); returns (model, history, tag ids)."""
    tag_ids = add_tag_tokens(model, tokenizer)  # idempotent: the ids of the tokens the samples use
    if not samples:
        raise ConfigError("no samples to train on")
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0

    def batch_fn(step: int, micro: int) -> dict[str, torch.Tensor]:
        rng = random.Random(f"{cfg.seed}/{step}/{micro}")
        return collate([rng.choice(samples) for _ in range(cfg.batch)], pad)

    trained, history = common.run(model, cfg, out, batch_fn, lambda m, b: losses(m, b, tag_ids), resume=resume,
                                  tick=tick, stop_after=stop_after, token_ids=tag_ids if cfg.lora else ())
    return trained, history, tag_ids


def meta(tokenizer, cfg: MultiverseFitConfig, data: str, n: int) -> dict:
    """What goes into polyverse.json: the added plain tokens and the vocabulary size, how it was made."""
    return {"pipeline": "multiverse", "plain_tokens": list(TAGS), "vocab_size": len(tokenizer),
            "data": data, "samples": n, "config": cfg.__dict__}
