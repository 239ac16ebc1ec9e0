"""Grouped-query attention on the cache as it is, for the decode view's multi-token passes on CPU.

SmolLM2 has 9 query heads over 3 key/value heads. Given a mask and more than one query row,
transformers' sdpa attention first repeats the key/value heads to the query heads, which copies
every layer's whole cache on every pass, then calls torch's sdpa. torch's sdpa can read the
grouped heads itself (``enable_gqa``), with bit-identical results and no copy. One-row passes
already skip the copy in transformers, and GPU kernels would fall back to the math path with a
mask, so both keep transformers' own path.

``grouped_sdpa`` is transformers' sdpa attention with that one change. It is registered under
``NAME`` through transformers' public ``AttentionInterface`` (and, for the masks, the
``AttentionMaskInterface`` under sdpa's mask function), and only the prepared decode view's own
copy of the config names it (``prepare``): the model as loaded keeps ``sdpa``, so ``generate``
peers and training run unchanged.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from transformers import AttentionInterface, AttentionMaskInterface
from transformers.integrations.sdpa_attention import sdpa_attention_forward
from transformers.masking_utils import sdpa_mask

NAME = "polyverse_grouped_sdpa"
STOCK = "sdpa"  # the implementation ``grouped_sdpa`` stands in for


def grouped_sdpa(module: torch.nn.Module, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                 attention_mask: torch.Tensor | None, dropout: float = 0.0, scaling: float | None = None,
                 is_causal: bool | None = None, **kwargs) -> tuple[torch.Tensor, None]:
    """transformers' ``sdpa_attention_forward``, reading grouped key/value heads directly on CPU.

    query [B, Hq, q, D], key and value [B, Hkv, kv, D] with Hq = groups * Hkv -> (attention
    output [B, q, Hq, D], None). Calls of one query row, on other devices, without groups, or with
    options beyond plain attention (a position bias, soft-capping) go to transformers' function.

    Example: SmolLM2, a 16-token pass over 300 cached tokens: query [1, 9, 16, 64], key [1, 3, 316,
    64] -> output [1, 16, 9, 64], the same bits as transformers' own sdpa with TRANSFORMERS_SDPA_FORCE_GQA=1.
    """
    q = query.shape[2]
    if (q <= 1 or getattr(module, "num_key_value_groups", 1) <= 1 or not query.is_cpu
            or kwargs.get("position_bias") is not None or kwargs.get("softcap") is not None
            or kwargs.get("output_attentions", False)):
        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling,
                                      is_causal=is_causal, **kwargs)
    causal = is_causal if is_causal is not None else getattr(module, "is_causal", True)
    causal = bool(attention_mask is None and causal)
    if causal and key.shape[2] > q:  # as transformers: a causal prefill without a mask sees its own rows only
        key, value = key[:, :, :q, :], value[:, :, :q, :]
    out = F.scaled_dot_product_attention(query, key, value, attn_mask=attention_mask, dropout_p=dropout, scale=scaling,
                                         is_causal=causal, enable_gqa=True)  # [B, Hq, q, D]
    return out.transpose(1, 2).contiguous(), None  # [B, q, Hq, D]


def register() -> str:
    """Make ``NAME`` known to transformers (idempotent); returns it."""
    AttentionInterface.register(NAME, grouped_sdpa)
    AttentionMaskInterface.register(NAME, sdpa_mask)
    return NAME


def applies(model: torch.nn.Module, device: torch.device) -> bool:
    """Whether ``model``'s passes on ``device`` gain from ``grouped_sdpa``: on CPU, with transformers'
    sdpa attention, and some attention layer with more query heads than key/value heads."""
    config = getattr(model, "config", None)
    return (device.type == "cpu" and getattr(config, "_attn_implementation", None) == STOCK
            and not getattr(config, "sub_configs", None)
            and any(getattr(m, "num_key_value_groups", 1) > 1 for m in model.modules()))
