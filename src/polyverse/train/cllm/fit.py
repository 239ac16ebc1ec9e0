"""CLLM fit: consistency + AR loss on collected Jacobi trajectories, LoRA by default.

Each example is one block record and one of its intermediate states, drawn by a generator seeded
from (seed, step, micro-batch): the data order is a function of the step, so a run resumed from a
checkpoint continues exactly as an uninterrupted one. Checkpoints (trainable weights, optimizer
state, step) are written every ``save_every`` steps under ``OUT/checkpoints/``.

Training runs through ``accelerate``: on one CPU or GPU as a plain process, and on many GPUs with
the same code under ``accelerate launch --config_file fsdp.yaml -m polyverse.cli train cllm fit ...``
(or ``torchrun``), FSDP configured in the accelerate file.
"""

from __future__ import annotations

import json
import random
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch

from ...errors import ConfigError
from .collect import Trajectory
from .losses import ar_loss, consistency_loss, consistency_mask

LORA_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


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

    def __post_init__(self) -> None:
        for name in ("steps", "batch", "accumulate", "save_every", "lora_rank", "lora_alpha", "max_context"):
            v = getattr(self, name)
            if not isinstance(v, int) or v < 1:
                raise ConfigError(f"{name} must be a positive integer, got {v!r}")
        if not self.lr > 0:
            raise ConfigError(f"lr must be > 0, got {self.lr}")
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


def trainable(model, cfg: FitConfig):
    """The model to train: a LoRA-wrapped copy (peft), or the model itself for a full fine-tune."""
    if not cfg.lora:
        for p in model.parameters():
            p.requires_grad_(True)
        return model
    from peft import LoraConfig, get_peft_model

    names = {n.rsplit(".", 1)[-1] for n, _ in model.named_modules()}
    targets = [t for t in LORA_TARGETS if t in names]
    if not targets:
        raise ConfigError(f"no LoRA target modules ({', '.join(LORA_TARGETS)}) in this model")
    lcfg = LoraConfig(r=cfg.lora_rank, lora_alpha=cfg.lora_alpha, lora_dropout=0.0, target_modules=targets,
                      task_type="CAUSAL_LM")
    return get_peft_model(model, lcfg)


def _trainable_state(model) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}


def save_checkpoint(path: Path, model, optimizer, step: int, history: list) -> None:
    from safetensors.torch import save_file

    tmp = path.with_name(path.name + ".tmp")
    tmp.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in _trainable_state(model).items()}, str(tmp / "weights.safetensors"))
    torch.save(optimizer.state_dict(), tmp / "optimizer.pt")
    (tmp / "state.json").write_text(json.dumps({"step": step, "history": history}))
    if path.exists():
        import shutil

        shutil.rmtree(path)
    tmp.rename(path)


def latest_checkpoint(out: Path) -> Path | None:
    ckpts = sorted((out / "checkpoints").glob("step-*"), key=lambda p: int(p.name.split("-")[1]))
    return ckpts[-1] if ckpts else None


def load_checkpoint(path: Path, model, optimizer) -> tuple[int, list]:
    from safetensors.torch import load_file

    weights = load_file(str(path / "weights.safetensors"))
    params = dict(model.named_parameters())
    missing = [k for k in weights if k not in params]
    if missing:
        raise ConfigError(f"checkpoint {path} does not fit this model (e.g. {missing[0]})")
    with torch.no_grad():
        for k, v in weights.items():
            params[k].copy_(v)
    optimizer.load_state_dict(torch.load(path / "optimizer.pt", weights_only=True))
    state = json.loads((path / "state.json").read_text())
    return int(state["step"]), list(state["history"])


def fit(model, records: list[Trajectory], out: Path, cfg: FitConfig, resume: bool = False,
        tick: Callable[[int, float, float], None] | None = None, stop_after: int | None = None):
    """Train ``model`` (a transformers causal LM) on ``records``; returns (trained model, history).

    ``stop_after`` ends the run after that many steps of this call (as if killed), for tests.
    history: one {"step", "ar", "consistency"} per optimizer step.
    """
    from accelerate import Accelerator

    if not records:
        raise ConfigError("no trajectories to train on")
    torch.manual_seed(cfg.seed)
    model = trainable(model, cfg)
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=0.0)
    acc = Accelerator(gradient_accumulation_steps=cfg.accumulate)
    model, optimizer = acc.prepare(model, optimizer)
    step, history = 0, []
    out.mkdir(parents=True, exist_ok=True)
    if resume:
        ckpt = latest_checkpoint(out)
        if ckpt is not None:
            step, history = load_checkpoint(ckpt, acc.unwrap_model(model), optimizer)
    pad = 0
    ran = 0
    while step < cfg.steps:
        ar_sum = cons_sum = 0.0
        for micro in range(cfg.accumulate):
            rng = random.Random(f"{cfg.seed}/{step}/{micro}")
            batch = collate([example(rng.choice(records), rng, cfg.max_context) for _ in range(cfg.batch)], pad)
            batch = {k: v.to(acc.device) for k, v in batch.items()}
            with acc.accumulate(model):
                ar, cons = losses(model, batch, cfg)
                loss = cfg.ar_weight * ar + cfg.consistency_weight * cons
                acc.backward(loss)
                optimizer.step()
                optimizer.zero_grad()
            ar_sum += float(ar.detach()) / cfg.accumulate
            cons_sum += float(cons.detach()) / cfg.accumulate
        step += 1
        ran += 1
        history.append({"step": step, "ar": round(ar_sum, 6), "consistency": round(cons_sum, 6)})
        if tick:
            tick(step, ar_sum, cons_sum)
        if step % cfg.save_every == 0 or step == cfg.steps:
            if acc.is_main_process:
                save_checkpoint(out / "checkpoints" / f"step-{step}", acc.unwrap_model(model), optimizer, step, history)
        if stop_after is not None and ran >= stop_after:
            break
    model.eval()
    return acc.unwrap_model(model), history


def save_adapter(model, out: Path, meta: dict) -> None:
    """The trained weights as safetensors plus ``polyverse.json`` saying how they were made.

    LoRA: peft's adapter files (adapter_model.safetensors, adapter_config.json). Full fine-tune:
    model.safetensors with the full state.
    """
    out.mkdir(parents=True, exist_ok=True)
    if hasattr(model, "peft_config"):
        model.save_pretrained(str(out), safe_serialization=True)
        kind = "lora"
    else:
        from safetensors.torch import save_model

        save_model(model, str(out / "model.safetensors"))  # tied weights stored once
        kind = "full"
    doc = {"kind": kind, "date": time.strftime("%Y-%m-%d"), **meta}
    (out / "polyverse.json").write_text(json.dumps(doc, indent=1, default=str))
