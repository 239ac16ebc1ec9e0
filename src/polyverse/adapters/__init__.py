"""Adapters: weights trained by the polyverse pipelines, applied on top of a base model at load.

An adapter is a folder with ``polyverse.json`` (how it was made) and either peft LoRA files
(adapter_config.json, adapter_model.safetensors) or a full ``model.safetensors``. Adapters
shipped with the package live in subfolders of this package and are named by folder name
(``--adapter cllm-gsm8k``); anything else is a path.
"""

from __future__ import annotations

import json
from pathlib import Path

from ..errors import ConfigError

SHIPPED = Path(__file__).resolve().parent


def shipped() -> list[str]:
    return sorted(p.name for p in SHIPPED.iterdir() if (p / "polyverse.json").is_file())


def resolve(name_or_path: str) -> Path:
    """The folder of a shipped adapter name or an adapter path."""
    p = SHIPPED / name_or_path
    if "/" not in name_or_path and (p / "polyverse.json").is_file():
        return p
    p = Path(name_or_path).expanduser()
    if not p.is_dir():
        names = ", ".join(shipped()) or "none"
        raise ConfigError(f"adapter '{name_or_path}' not found: not a folder, nor a shipped adapter ({names})")
    if not (p / "adapter_config.json").is_file() and not (p / "model.safetensors").is_file():
        raise ConfigError(f"{p} is not an adapter: no adapter_config.json or model.safetensors")
    return p


def info(path: Path) -> dict:
    meta = path / "polyverse.json"
    return json.loads(meta.read_text()) if meta.is_file() else {}


def add_tokens(hf_model, tokenizer, path: Path) -> None:
    """Special tokens the adapter was trained with (``added_tokens`` in polyverse.json, e.g. SPACE's
    [MASK]): added to the tokenizer, and the embeddings grown to ``vocab_size`` before its weights load."""
    meta = info(path)
    tokens = list(meta.get("added_tokens", []))
    plain = list(meta.get("plain_tokens", []))  # kept in decoded text (Multiverse tags)
    if not tokens and not plain:
        return
    if tokenizer is not None:
        if tokens:
            tokenizer.add_tokens(tokens, special_tokens=True)
        if plain:
            tokenizer.add_tokens(plain, special_tokens=False)
    size = int(meta.get("vocab_size", 0))
    if size > hf_model.get_input_embeddings().weight.shape[0]:
        grow_embeddings(hf_model, size)


def grow_embeddings(hf_model, size: int) -> None:
    """Resize the vocabulary to ``size``; new input and output rows start as the mean of the old ones."""
    import torch

    old = hf_model.get_input_embeddings().weight.shape[0]
    hf_model.resize_token_embeddings(size, mean_resizing=False)
    with torch.no_grad():
        for layer in (hf_model.get_input_embeddings(), hf_model.get_output_embeddings()):
            if layer is not None:
                layer.weight[old:] = layer.weight[:old].mean(0)


def apply(hf_model, name_or_path: str, tokenizer=None):
    """The base model with the adapter's weights merged in (plain transformers model, same speed).

    ``tokenizer`` receives the adapter's added special tokens, if it has any. The adapter's
    metadata (``info``) is the polyverse Model's ``adapter``: methods read defaults from it.
    """
    path = resolve(name_or_path)
    add_tokens(hf_model, tokenizer, path)
    model = _merge_lora(hf_model, path) if (path / "adapter_config.json").is_file() else _load_full(hf_model, path)
    model.eval()
    return model


def _merge_lora(hf_model, path: Path):
    import warnings

    from peft import PeftModel

    try:
        with warnings.catch_warnings():  # peft calls a transformers API deprecated in v5
            warnings.simplefilter("ignore", FutureWarning)
            return PeftModel.from_pretrained(hf_model, str(path)).merge_and_unload()
    except (ValueError, RuntimeError, KeyError) as exc:
        raise ConfigError(f"adapter {path} does not fit this model: {str(exc).splitlines()[0]}") from None


def _load_full(hf_model, path: Path):
    from safetensors.torch import load_model

    try:
        load_model(hf_model, str(path / "model.safetensors"))
    except (RuntimeError, KeyError) as exc:
        raise ConfigError(f"adapter {path} does not fit this model: {str(exc).splitlines()[0]}") from None
    return hf_model
