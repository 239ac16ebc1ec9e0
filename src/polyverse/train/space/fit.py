"""SPACE fit: semi-autoregressive SFT on chat samples, LoRA by default, the [MASK] row trained in full.

Micro-batch (step, micro) is drawn by a generator seeded from (seed, step, micro), so resuming
from a checkpoint continues as an uninterrupted run; the loop, checkpoints and LoRA wrapping are
the shared ones of ``polyverse.train.common``.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import torch
import torch.nn.functional as F

from ...errors import ConfigError
from .. import common
from .data import IGNORE, Sample, add_mask_token, collate, collate_packed, pack, transform


@dataclass(frozen=True)
class SpaceFitConfig:
    steps: int = 300  # optimizer steps
    batch: int = 4  # samples per micro-batch
    accumulate: int = 1  # micro-batches per optimizer step
    lr: float = 3e-4
    k: int = 5  # masks proposed per group (k + 1 masks appended to a cut sample)
    p: float = 0.5  # share of samples cut and given masks (the single-cut transform, groups = 0)
    groups: int = 0  # > 0: whole samples, each with up to this many k-mask groups at random cuts (``pack``)
    lora: bool = True  # False: full fine-tune
    lora_rank: int = 16
    lora_alpha: int = 32
    save_every: int = 50
    seed: int = 0
    precision: str = "fp32"  # or "bf16": mixed precision (faster on CPUs with avx512_bf16, and on GPUs)
    schedule: str = "constant"  # or "linear" / "cosine": decay from step decay_from to 0 (common.lr_at)
    decay_from: int = 0

    def __post_init__(self) -> None:
        common.check_config(self, ("steps", "batch", "accumulate", "k", "save_every", "lora_rank", "lora_alpha"))
        if not 0.0 <= self.p <= 1.0:
            raise ConfigError(f"p must be in [0, 1], got {self.p}")
        if not isinstance(self.groups, int) or self.groups < 0:
            raise ConfigError(f"groups must be 0 (single cut) or a positive integer, got {self.groups!r}")


def losses(model, batch: dict[str, torch.Tensor], mask_id: int) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """(mean cross-entropy over all labelled tokens, {"ar": on tokens predicted from real tokens,
    "mask": on tokens predicted from [MASK] inputs}).

    A batch with ``labels`` (``collate``) is shifted as usual; one with ``targets`` (``collate_packed``)
    is row-aligned and carries its own positions and 4D mask."""
    if "targets" in batch:
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                       position_ids=batch["position_ids"]).logits  # [B, L, V]
        pred, labels, from_mask = logits.float(), batch["targets"], batch["input_ids"] == mask_id  # row i -> targets[i]
    else:
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits  # [B, L, V]
        pred = logits[:, :-1].float()  # [B, L-1, V]: row i predicts label i + 1
        labels = batch["labels"][:, 1:]  # [B, L-1]
        from_mask = batch["input_ids"][:, :-1] == mask_id  # [B, L-1]
    ce = F.cross_entropy(pred.transpose(1, 2), labels, ignore_index=IGNORE, reduction="none")  # [B, L-1]
    valid = labels != IGNORE
    total = ce[valid].mean() if valid.any() else ce.sum() * 0.0
    parts = {}
    for name, sel in (("ar", valid & ~from_mask), ("mask", valid & from_mask)):
        parts[name] = ce[sel].mean().detach() if sel.any() else torch.tensor(0.0)
    return total, parts


def fit(model, tokenizer, samples: Sequence[Sample], out: Path, cfg: SpaceFitConfig, resume: bool = False,
        tick: Callable[[int, dict[str, float]], None] | None = None, stop_after: int | None = None):
    """Add [MASK] to ``model`` and ``tokenizer`` and train; returns (trained model, history, mask id).

    history: one {"step", "lr", "ar", "mask"} per optimizer step (cross-entropies of the two kinds of rows).
    """
    if not samples:
        raise ConfigError("no samples to train on")
    mask_id = add_mask_token(model, tokenizer)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0

    def batch_fn(step: int, micro: int) -> dict[str, torch.Tensor]:
        rng = random.Random(f"{cfg.seed}/{step}/{micro}")
        if cfg.groups:
            return collate_packed([pack(rng.choice(samples), rng, cfg.k, cfg.groups, mask_id) for _ in range(cfg.batch)],
                                  cfg.k, pad)
        return collate([transform(rng.choice(samples), rng, cfg.k, cfg.p, mask_id) for _ in range(cfg.batch)], pad)

    trained, history = common.run(model, cfg, out, batch_fn, lambda m, b: losses(m, b, mask_id), resume=resume,
                                  tick=tick, stop_after=stop_after, token_ids=[mask_id] if cfg.lora else ())
    return trained, history, mask_id
