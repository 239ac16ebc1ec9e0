"""Trainer plumbing shared by the pipelines (CLLM, SPACE): LoRA wrapping, checkpoints, the loop.

The loop asks the pipeline for micro-batch ``(step, micro)`` and for its loss; the data order is
therefore a function of the step, and a run resumed from a checkpoint continues exactly as an
uninterrupted one. Checkpoints (trainable weights, optimizer state, step, history) are written
every ``save_every`` steps under ``OUT/checkpoints/step-N``.

Training runs through ``accelerate``: on one CPU or GPU as a plain process, and on many GPUs with
the same code under ``accelerate launch --config_file fsdp.yaml -m polyverse.cli train ...``
(or ``torchrun``), FSDP configured in the accelerate file.
"""

from __future__ import annotations

import json
import math
import shutil
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Protocol, Sequence

import torch

from ..errors import ConfigError

LORA_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


class LoopConfig(Protocol):
    steps: int
    accumulate: int
    lr: float
    lora: bool
    lora_rank: int
    lora_alpha: int
    save_every: int
    seed: int
    precision: str  # "fp32", or "bf16": matmuls under bf16 autocast (weights and optimizer stay fp32)
    schedule: str  # learning rate: "constant", or held until ``decay_from`` then "linear" / "cosine" to 0
    decay_from: int  # optimizer step where the decay starts (0: over the whole run)


PRECISIONS = ("fp32", "bf16")
SCHEDULES = ("constant", "linear", "cosine")


def jsonl_rows(path: Path):
    """(line number, object) of each non-empty line of a JSONL data file; clear errors otherwise."""
    if not path.is_file():
        raise ConfigError(f"no data file {path}")
    with path.open() as fh:
        for n, line in enumerate(fh, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as exc:
                raise ConfigError(f"{path}:{n}: not JSON ({exc.msg})") from None
            if not isinstance(row, dict):
                raise ConfigError(f"{path}:{n}: expected an object")
            yield n, row


def check_config(cfg, names: Sequence[str]) -> None:
    """The loop settings every trainer shares: ``names`` positive integers, lr > 0, a known precision."""
    for name in names:
        v = getattr(cfg, name)
        if not isinstance(v, int) or v < 1:
            raise ConfigError(f"{name} must be a positive integer, got {v!r}")
    if not cfg.lr > 0:
        raise ConfigError(f"lr must be > 0, got {cfg.lr}")
    if cfg.precision not in PRECISIONS:
        raise ConfigError(f"precision must be one of {', '.join(PRECISIONS)}, got {cfg.precision!r}")
    if cfg.schedule not in SCHEDULES:
        raise ConfigError(f"schedule must be one of {', '.join(SCHEDULES)}, got {cfg.schedule!r}")
    if not isinstance(cfg.decay_from, int) or not 0 <= cfg.decay_from < cfg.steps:
        raise ConfigError(f"decay_from must be an integer in [0, steps), got {cfg.decay_from!r}")


def lr_at(cfg: LoopConfig, step: int) -> float:
    """Learning rate of the optimizer step that takes the run from ``step`` to ``step + 1``.

    Warmup-free warmup-stable-decay: ``cfg.lr`` until ``decay_from``, then a linear or cosine decay
    that would reach 0 at ``cfg.steps``. A function of the step alone, so a resumed run follows the
    same curve, and a decay can branch off a constant-rate checkpoint (resume it with more steps).
    """
    if cfg.schedule == "constant" or step < cfg.decay_from:
        return cfg.lr
    frac = (step - cfg.decay_from) / (cfg.steps - cfg.decay_from)  # in [0, 1) for step < steps
    scale = 1.0 - frac if cfg.schedule == "linear" else 0.5 * (1.0 + math.cos(math.pi * frac))
    return cfg.lr * scale


def trainable(model, cfg: LoopConfig, token_ids: Sequence[int] = ()):
    """The model to train: LoRA-wrapped (peft), or the model itself for a full fine-tune.

    ``token_ids``: embedding rows trained in full alongside LoRA (new special tokens); with tied
    input and output embeddings that row is the LM-head row too.
    """
    if not cfg.lora:
        for p in model.parameters():
            p.requires_grad_(True)
        return model
    from peft import LoraConfig, get_peft_model

    names = {n.rsplit(".", 1)[-1] for n, _ in model.named_modules()}
    targets = [t for t in LORA_TARGETS if t in names]
    if not targets:
        raise ConfigError(f"no LoRA target modules ({', '.join(LORA_TARGETS)}) in this model")
    extra = {"trainable_token_indices": _token_modules(model, token_ids)} if token_ids else {}
    lcfg = LoraConfig(r=cfg.lora_rank, lora_alpha=cfg.lora_alpha, lora_dropout=0.0, target_modules=targets,
                      task_type="CAUSAL_LM", **extra)
    return get_peft_model(model, lcfg)


def _token_modules(model, token_ids: Sequence[int]) -> dict[str, list[int]]:
    """Embedding modules whose ``token_ids`` rows train in full: the input embedding, and the LM
    head too when it is not tied to it (a tied head shares the row)."""
    names = {id(m): n for n, m in model.named_modules()}
    emb, head = model.get_input_embeddings(), model.get_output_embeddings()
    out = {names[id(emb)].rsplit(".", 1)[-1]: list(token_ids)}
    if head is not None and head.weight.data_ptr() != emb.weight.data_ptr():
        out[names[id(head)].rsplit(".", 1)[-1]] = list(token_ids)
    return out


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


Batch = dict[str, torch.Tensor]


@contextmanager
def one_thread():
    """Run small CPU tensor work (building a batch) on one thread, then restore the count.

    A batch is built from many small tensor ops; with several threads each op pays the thread
    pool's start and sync, which on a busy machine, or one running several fits at once, dominates
    the step (figures in BENCHMARKS.md).
    """
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def run(model, cfg: LoopConfig, out: Path, batch_fn: Callable[[int, int], Batch],
        loss_fn: Callable[[object, Batch], tuple[torch.Tensor, dict[str, torch.Tensor]]],
        resume: bool = False, tick: Callable[[int, dict[str, float]], None] | None = None,
        stop_after: int | None = None, token_ids: Sequence[int] = ()):
    """Train; returns (trained model, history).

    batch_fn(step, micro) -> the micro-batch (a function of its arguments only);
    loss_fn(model, batch) -> (loss to minimise, named parts to log).
    ``stop_after`` ends the run after that many steps of this call (as if killed), for tests.
    history: one {"step", "lr", **parts} per optimizer step, parts averaged over the micro-batches.
    """
    from accelerate import Accelerator

    torch.manual_seed(cfg.seed)
    model = trainable(model, cfg, token_ids)
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=0.0)
    acc = Accelerator(gradient_accumulation_steps=cfg.accumulate)
    # bf16: the loss under autocast (faster on CPUs with avx512_bf16 and on GPUs); a
    # local autocast rather than accelerate's process-wide mixed_precision, which one process cannot change
    autocast = torch.autocast(acc.device.type, dtype=torch.bfloat16, enabled=cfg.precision == "bf16")
    model, optimizer = acc.prepare(model, optimizer)
    step, history = 0, []
    out.mkdir(parents=True, exist_ok=True)
    if resume:
        ckpt = latest_checkpoint(out)
        if ckpt is not None:
            step, history = load_checkpoint(ckpt, acc.unwrap_model(model), optimizer)
    ran = 0
    while step < cfg.steps:
        lr = lr_at(cfg, step)
        for group in optimizer.param_groups:
            group["lr"] = lr
        sums: dict[str, float] = {}
        for micro in range(cfg.accumulate):
            with one_thread():
                cpu_batch = batch_fn(step, micro)
            batch = {k: v.to(acc.device) for k, v in cpu_batch.items()}
            with acc.accumulate(model):
                with autocast:
                    loss, parts = loss_fn(model, batch)
                acc.backward(loss)
                optimizer.step()
                optimizer.zero_grad()
            for k, v in parts.items():
                sums[k] = sums.get(k, 0.0) + float(v.detach()) / cfg.accumulate
        step += 1
        ran += 1
        history.append({"step": step, "lr": lr, **{k: round(v, 6) for k, v in sums.items()}})
        if tick:
            tick(step, sums)
        if step % cfg.save_every == 0 or step == cfg.steps:
            if acc.is_main_process:
                save_checkpoint(out / "checkpoints" / f"step-{step}", acc.unwrap_model(model), optimizer, step, history)
        if stop_after is not None and ran >= stop_after:
            break
    model.eval()
    return acc.unwrap_model(model), history


STORE_DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


def save_adapter(model, out: Path, meta: dict, store: str = "fp32") -> None:
    """The trained weights as safetensors plus ``polyverse.json`` saying how they were made.

    LoRA: peft's adapter files (adapter_model.safetensors, adapter_config.json), its floating
    tensors stored as ``store`` (fp16 halves a shipped adapter; loading merges them into the model
    in its own dtype). Full fine-tune: model.safetensors with the full state.
    """
    if store not in STORE_DTYPES:
        raise ConfigError(f"store must be one of {', '.join(STORE_DTYPES)}, got {store!r}")
    out.mkdir(parents=True, exist_ok=True)
    if hasattr(model, "peft_config"):
        # trained token rows are in the adapter itself; never the whole embedding (and no hub look-up)
        model.save_pretrained(str(out), safe_serialization=True, save_embedding_layers=False)
        if store != "fp32":
            from safetensors.torch import load_file, save_file

            path = out / "adapter_model.safetensors"
            weights = load_file(str(path))
            save_file({k: v.to(STORE_DTYPES[store]) if v.is_floating_point() else v for k, v in weights.items()},
                      str(path), metadata={"format": "pt"})
        kind = "lora"
    else:
        from safetensors.torch import save_model

        save_model(model, str(out / "model.safetensors"))  # tied weights stored once
        kind = "full"
    doc = {"kind": kind, "date": time.strftime("%Y-%m-%d"), **({"store": store} if kind == "lora" else {}), **meta}
    (out / "polyverse.json").write_text(json.dumps(doc, indent=1, default=str))
