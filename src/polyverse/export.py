"""`polyverse export gguf`: a Llama-family model (adapters merged) as a GGUF file for llama.cpp.

Weights come from the loaded transformers model, so a LoRA adapter (CLLM, SPACE, Multiverse) is
already merged in. The metadata (architecture numbers, tokenizer, chat template) comes from the
model's own GGUF, with the tokens an adapter added appended to the vocabulary. Tensor names follow
llama.cpp's Llama layout; q and k rows are regrouped into llama.cpp's rotary order (inside each head
llama.cpp rotates adjacent pairs of dimensions, transformers' Llama rotates dimension i with i + d/2).
Norm weights stay F32; the rest is F16 or Q8_0. An adapter's ``polyverse.json`` travels as the string
key ``polyverse.adapter``, so methods on llama.cpp keep the defaults it was trained for (Jacobi's block,
SPACE's k).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from .errors import ConfigError

TYPES = ("f16", "q8_0", "q4_1")
_QUANT = {"q8_0": "Q8_0", "q4_1": "Q4_1"}  # gguf-py quantizes these itself (blocks of 32)
ADAPTER_KEY = "polyverse.adapter"
_SKIP = {ADAPTER_KEY, "GGUF.version", "GGUF.tensor_count", "GGUF.kv_count", "general.file_type",
         "general.quantization_version", "tokenizer.ggml.tokens", "tokenizer.ggml.token_type", "llama.vocab_size"}
_NAMES = {
    "self_attn.q_proj": "attn_q", "self_attn.k_proj": "attn_k", "self_attn.v_proj": "attn_v",
    "self_attn.o_proj": "attn_output", "mlp.gate_proj": "ffn_gate", "mlp.up_proj": "ffn_up",
    "mlp.down_proj": "ffn_down", "input_layernorm": "attn_norm", "post_attention_layernorm": "ffn_norm",
}


def rope_order(w: np.ndarray, heads: int) -> np.ndarray:
    """[heads * d, n] rows of a q or k projection, per head from transformers' halves to adjacent pairs.

    >>> rope_order(np.arange(4)[:, None], 1)[:, 0].tolist()
    [0, 2, 1, 3]
    """
    d = w.shape[0] // heads
    return w.reshape(heads, 2, d // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def gguf_name(hf_name: str) -> str | None:
    """transformers parameter name -> llama.cpp tensor name (None: not exported)."""
    if hf_name == "model.embed_tokens.weight":
        return "token_embd.weight"
    if hf_name == "model.norm.weight":
        return "output_norm.weight"
    if hf_name == "lm_head.weight":
        return "output.weight"
    parts = hf_name.split(".")
    if parts[:2] == ["model", "layers"]:
        inner = ".".join(parts[3:-1])
        if inner in _NAMES:
            return f"blk.{parts[2]}.{_NAMES[inner]}.{parts[-1]}"
    return None


def export_gguf(model, out: Path, qtype: str = "f16", source: Path | None = None,
                tick: Callable[[str], None] | None = None) -> Path:
    """Write ``model`` (a polyverse Model on transformers) as GGUF; ``source``: its original GGUF."""
    import gguf

    if qtype not in TYPES:
        raise ConfigError(f"--type must be one of {', '.join(TYPES)}, got '{qtype}'")
    hf = model.hf_model
    cfg = hf.config
    if getattr(cfg, "model_type", "") != "llama":
        raise ConfigError(f"export writes Llama-family models; this one is '{getattr(cfg, 'model_type', '?')}'")
    if source is None or not Path(source).is_file():
        raise ConfigError("export needs the model's original GGUF for its tokenizer metadata (the bundled model has one)")
    reader = gguf.GGUFReader(str(source))
    writer = gguf.GGUFWriter(str(out), "llama")
    for key, field in reader.fields.items():
        if key in _SKIP or key == "general.architecture":
            continue
        sub = field.types[-1] if len(field.types) > 1 else None
        writer.add_key_value(key, field.contents(), field.types[0], sub)
    tokens = list(reader.fields["tokenizer.ggml.tokens"].contents())
    kinds = list(reader.fields["tokenizer.ggml.token_type"].contents())
    vocab = hf.get_input_embeddings().weight.shape[0]
    added = model.tokenizer.convert_ids_to_tokens(list(range(len(tokens), vocab)))
    special = set(model.tokenizer.all_special_tokens)
    for tok in added:  # tokens an adapter added: [MASK] (control), Multiverse tags (user-defined)
        tokens.append(tok)
        kinds.append(int(gguf.TokenType.CONTROL if tok in special else gguf.TokenType.USER_DEFINED))
    writer.add_token_list(tokens)
    writer.add_token_types(kinds)
    writer.add_vocab_size(vocab)
    ftype = {"f16": gguf.LlamaFileType.MOSTLY_F16, "q8_0": gguf.LlamaFileType.MOSTLY_Q8_0,
             "q4_1": gguf.LlamaFileType.MOSTLY_Q4_1}[qtype]
    writer.add_file_type(int(ftype))
    writer.add_quantization_version(gguf.GGML_QUANT_VERSION)
    meta = model.adapter
    if meta:
        writer.add_string(ADAPTER_KEY, json.dumps(meta))
    heads, kv_heads = cfg.num_attention_heads, cfg.num_key_value_heads
    tied = bool(getattr(cfg, "tie_word_embeddings", False))
    with torch.no_grad():
        for name, param in hf.state_dict().items():
            target = gguf_name(name)
            if target is None or (tied and target == "output.weight"):
                continue
            w = param.detach().float().cpu().numpy()
            if target.endswith("attn_q.weight"):
                w = rope_order(w, heads)
            elif target.endswith("attn_k.weight"):
                w = rope_order(w, kv_heads)
            if w.ndim == 1:
                writer.add_tensor(target, w.astype(np.float32))
            elif qtype == "f16":
                writer.add_tensor(target, w.astype(np.float16))
            else:
                kind = gguf.GGMLQuantizationType[_QUANT[qtype]]
                q = gguf.quants.quantize(w, kind)
                writer.add_tensor(target, q, raw_shape=q.shape, raw_dtype=kind)
            if tick:
                tick(target)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return out


def adapter_info(text: str | None) -> dict | None:
    """The ``polyverse.json`` stored under ADAPTER_KEY in an exported GGUF (its text), or None."""
    try:
        meta = json.loads(text) if text else None
    except ValueError:
        return None
    return meta if isinstance(meta, dict) else None
