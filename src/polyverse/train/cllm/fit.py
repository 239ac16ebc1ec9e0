"""CLLM fit: consistency + AR loss on collected Jacobi trajectories, LoRA by default.

Each example is one block record and one of its intermediate states, drawn by a generator seeded
from (seed, step, micro-batch). The loop, checkpoints, resume and LoRA wrapping are the shared
ones of ``polyverse.train.common``.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch

from ...errors import ConfigError
from .. import common
from .collect import Trajectory
from .losses import ar_loss, consistency_loss, consistency_mask


@dataclass(frozen=True)
class FitConfig:
    steps: int = 200  # optimizer steps
    batch: int = 1  # examples per micro-batch
    accumulate: int = 4  # micro-batches per optimizer step
    lr: float = 2e-4
    ar_weight: float = 10.0  # AR : consistency = 10 : 1 (the released CLLM models)
    consistency_weight: float = 1.0
    label_smoothing: float = 0.1
    lora: bool = True  # False: full fine-tune
    lora_rank: int = 16
    lora_alpha: int = 32
    save_every: int = 50
    seed: int = 0
    max_context: int = 1024  # longer contexts are cut from the left
    precision: str = "fp32"  # or "bf16": mixed precision (faster on CPUs with avx512_bf16, and on GPUs)

    def __post_init__(self) -> None:
        common.check_config(self, ("steps", "batch", "accumulate", "save_every", "lora_rank", "lora_alpha", "max_context"))
        if self.ar_weight < 0 or self.consistency_weight < 0 or self.ar_weight + self.consistency_weight == 0:
            raise ConfigError("loss weights must be >= 0 and not both 0")
        if not 0 <= self.label_smoothing < 1:
            raise ConfigError(f"label_smoothing must be in [0, 1), got {self.label_smoothing}")


def example(record: Trajectory, rng: random.Random, max_context: int) -> dict:
    """One training example: student input (context + a state), teacher input (context + fixed
    point), the block rows, AR labels and the consistency mask.

    Row j of the block (j < m = len(fixed)) is the logit row at position len(context) - 1 + j,
    which predicts block token j from the context and the block's first j tokens.
    """
    ctx = list(record.context[-max_context:])
    fixed = list(record.fixed)
    m = len(fixed)
    inter = record.states[:-1] or record.states  # the last state fed is the fixed point itself
    state = list(rng.choice(inter))[:m]
    return {
        "student": ctx + state,
        "teacher": ctx + fixed,
        "start": len(ctx) - 1,
        "labels": fixed,
        "mask": consistency_mask(state, fixed, m),
    }


def collate(examples: list[dict], pad_id: int = 0) -> dict[str, torch.Tensor]:
    """Right-padded batch: ids [B, L], attention [B, L], block row index [B, n], labels [B, n]
    (-100 on padding), consistency mask [B, n] (False on padding)."""
    L = max(len(e["teacher"]) for e in examples)
    n = max(len(e["labels"]) for e in examples)
    B = len(examples)
    out = {
        "student": torch.full((B, L), pad_id, dtype=torch.long),
        "teacher": torch.full((B, L), pad_id, dtype=torch.long),
        "attention": torch.zeros((B, L), dtype=torch.long),
        "rows": torch.zeros((B, n), dtype=torch.long),
        "labels": torch.full((B, n), -100, dtype=torch.long),
        "mask": torch.zeros((B, n), dtype=torch.bool),
    }
    for b, e in enumerate(examples):
        k, m = len(e["teacher"]), len(e["labels"])
        out["student"][b, :k] = torch.tensor(e["student"])
        out["teacher"][b, :k] = torch.tensor(e["teacher"])
        out["attention"][b, :k] = 1
        out["rows"][b, :m] = torch.arange(e["start"], e["start"] + m)
        out["rows"][b, m:] = e["start"]  # padding rows point anywhere valid; masked out
        out["labels"][b, :m] = torch.tensor(e["labels"])
        out["mask"][b, :m] = torch.tensor(e["mask"], dtype=torch.bool)
    return out


def losses(model, batch: dict[str, torch.Tensor], cfg: FitConfig) -> tuple[torch.Tensor, torch.Tensor]:
    """(AR loss, consistency loss) of one batch; both carry gradients to the trainable weights."""
    idx = batch["rows"]  # [B, n]
    t_logits = model(input_ids=batch["teacher"], attention_mask=batch["attention"]).logits  # [B, L, V]
    t_rows = torch.gather(t_logits, 1, idx[..., None].expand(-1, -1, t_logits.shape[-1]))  # [B, n, V]
    s_logits = model(input_ids=batch["student"], attention_mask=batch["attention"]).logits  # [B, L, V]
    s_rows = torch.gather(s_logits, 1, idx[..., None].expand(-1, -1, s_logits.shape[-1]))  # [B, n, V]
    ar = ar_loss(t_rows, batch["labels"], cfg.label_smoothing)
    cons = consistency_loss(s_rows, t_rows, batch["mask"])  # teacher rows detached inside
    return ar, cons


def fit(model, records: list[Trajectory], out: Path, cfg: FitConfig, resume: bool = False,
        tick: Callable[[int, dict[str, float]], None] | None = None, stop_after: int | None = None):
    """Train ``model`` (a transformers causal LM) on ``records``; returns (trained model, history).

    ``stop_after`` ends the run after that many steps of this call (as if killed), for tests.
    history: one {"step", "ar", "consistency"} per optimizer step.
    """
    if not records:
        raise ConfigError("no trajectories to train on")

    def batch_fn(step: int, micro: int) -> dict[str, torch.Tensor]:
        rng = random.Random(f"{cfg.seed}/{step}/{micro}")
        return collate([example(rng.choice(records), rng, cfg.max_context) for _ in range(cfg.batch)], 0)

    def loss_fn(m, batch):
        ar, cons = losses(m, batch, cfg)
        return cfg.ar_weight * ar + cfg.consistency_weight * cons, {"ar": ar, "consistency": cons}

    return common.run(model, cfg, out, batch_fn, loss_fn, resume=resume, tick=tick, stop_after=stop_after)
