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
from . import packed
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
    schedule: str = "constant"  # or "linear" / "cosine": decay from step decay_from to 0 (common.lr_at)
    decay_from: int = 0
    groups: int = 0  # > 0: packed samples (``packed``), a whole answer and up to this many n-token states each
    block: int = 8  # n: tokens per packed state (the Jacobi block the adapter is made for)
    refine: float = 0.0  # share of packed micro-batches whose states first get one Jacobi update by the model
    max_len: int = 160  # packed: answer tokens kept per sample

    def __post_init__(self) -> None:
        common.check_config(self, ("steps", "batch", "accumulate", "save_every", "lora_rank", "lora_alpha", "max_context"))
        if self.ar_weight < 0 or self.consistency_weight < 0 or self.ar_weight + self.consistency_weight == 0:
            raise ConfigError("loss weights must be >= 0 and not both 0")
        if not isinstance(self.groups, int) or self.groups < 0:
            raise ConfigError(f"groups must be 0 (one state per example) or a positive integer, got {self.groups!r}")
        if not isinstance(self.block, int) or not 2 <= self.block <= 128:
            raise ConfigError(f"block must be an integer in [2, 128], got {self.block!r}")
        if not 0.0 <= self.refine <= 1.0:
            raise ConfigError(f"refine must be in [0, 1], got {self.refine}")
        if not isinstance(self.max_len, int) or self.max_len < 2:
            raise ConfigError(f"max_len must be an integer of at least 2, got {self.max_len!r}")
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


def packed_losses(model, batch: dict[str, torch.Tensor], cfg: FitConfig) -> tuple[torch.Tensor, torch.Tensor]:
    """(AR loss on the answer rows, consistency loss on the trained group rows) of a packed batch
    (``packed.collate``); a batch flagged ``refine`` first gets one Jacobi update of its states."""
    kw = {"attention_mask": batch["attention_mask"], "position_ids": batch["position_ids"]}
    if bool(batch["refine"]):
        with torch.no_grad():
            packed.refine(batch, model(input_ids=batch["input_ids"], **kw).logits, cfg.block)
    logits = model(input_ids=batch["input_ids"], **kw).logits  # [B, L, V]
    ar = ar_loss(logits, batch["targets"], cfg.label_smoothing)
    rows = batch["teacher"] >= 0  # [B, L]
    b, _ = rows.nonzero(as_tuple=True)  # [R]
    student = logits[rows]  # [R, V]
    teacher = logits[b, batch["teacher"][rows]]  # [R, V]: the real rows of the same pass (detached in the loss)
    cons = consistency_loss(student[None], teacher[None], torch.ones((1, student.shape[0]), dtype=torch.bool, device=student.device))
    return ar, cons


def fit(model, records: list[Trajectory] | list[packed.JacobiSample], out: Path, cfg: FitConfig, resume: bool = False,
        tick: Callable[[int, dict[str, float]], None] | None = None, stop_after: int | None = None):
    """Train ``model`` (a transformers causal LM) on ``records``; returns (trained model, history).

    records: trajectories, or (``cfg.groups`` > 0 only) packed samples such as distilled answers.
    ``stop_after`` ends the run after that many steps of this call (as if killed), for tests.
    history: one {"step", "lr", "ar", "consistency"} per optimizer step.
    """
    if not records:
        raise ConfigError("no trajectories to train on")
    if cfg.groups:
        return _fit_packed(model, records, out, cfg, resume, tick, stop_after)
    if not isinstance(records[0], Trajectory):
        raise ConfigError("samples without recorded states need packed training (groups > 0)")

    def batch_fn(step: int, micro: int) -> dict[str, torch.Tensor]:
        rng = random.Random(f"{cfg.seed}/{step}/{micro}")
        return collate([example(rng.choice(records), rng, cfg.max_context) for _ in range(cfg.batch)], 0)

    def loss_fn(m, batch):
        ar, cons = losses(m, batch, cfg)
        return cfg.ar_weight * ar + cfg.consistency_weight * cons, {"ar": ar, "consistency": cons}

    return common.run(model, cfg, out, batch_fn, loss_fn, resume=resume, tick=tick, stop_after=stop_after)


def _fit_packed(model, records, out: Path, cfg: FitConfig, resume: bool, tick, stop_after):
    samples = records if isinstance(records[0], packed.JacobiSample) else packed.from_trajectories(records, cfg.max_len)
    samples = [packed.JacobiSample(s.prompt[-cfg.max_context:], s.response[: cfg.max_len],
                                   tuple((a - max(0, len(s.prompt) - cfg.max_context), st) for a, st in s.states))
               for s in samples]

    def batch_fn(step: int, micro: int) -> dict[str, torch.Tensor]:
        rng = random.Random(f"{cfg.seed}/{step}/{micro}")
        rows = [packed.pack(rng.choice(samples), rng, cfg.block, cfg.groups) for _ in range(cfg.batch)]
        return {**packed.collate(rows, cfg.block), "refine": torch.tensor(rng.random() < cfg.refine)}

    def loss_fn(m, batch):
        ar, cons = packed_losses(m, batch, cfg)
        return cfg.ar_weight * ar + cfg.consistency_weight * cons, {"ar": ar, "consistency": cons}

    return common.run(model, cfg, out, batch_fn, loss_fn, resume=resume, tick=tick, stop_after=stop_after)
