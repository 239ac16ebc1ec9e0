"""Tiny random Llama-style models built in code, for tests and demos (no downloads).

The tokenizer is character level over printable ASCII, so any text prompt works, and it
carries a small chat template so chat formatting can be tested too.
"""

from __future__ import annotations

import string
from pathlib import Path

import torch
from tokenizers import Tokenizer, decoders, models
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

SPECIALS = ["<unk>", "<s>", "</s>"]
CHAT_TEMPLATE = (
    "{% for m in messages %}<s>{{ m['role'] }}: {{ m['content'] }}\n{% endfor %}"
    "{% if add_generation_prompt %}<s>assistant: {% endif %}"
)


def char_tokenizer() -> PreTrainedTokenizerFast:
    """Character-level tokenizer: ids 0-2 are <unk> <s> </s>, then printable ASCII."""
    chars = [c for c in string.printable if c not in "\r\x0b\x0c"]
    vocab = {tok: i for i, tok in enumerate(SPECIALS + chars)}
    core = Tokenizer(models.BPE(vocab=vocab, merges=[], unk_token="<unk>"))
    core.decoder = decoders.Fuse()
    tok = PreTrainedTokenizerFast(tokenizer_object=core, unk_token="<unk>", bos_token="<s>", eos_token="</s>")
    tok.chat_template = CHAT_TEMPLATE
    return tok


def tiny_model(
    seed: int = 0,
    vocab_size: int = 100,
    hidden: int = 64,
    layers: int = 2,
    heads: int = 4,
    kv_heads: int = 2,
    max_positions: int = 512,
    init_scale: float = 0.3,
) -> LlamaForCausalLM:
    """A random LlamaForCausalLM in fp32 eval mode, reproducible from ``seed``.

    ``init_scale`` (the init std) is larger than a trained model's so that the output
    distribution is peaked: greedy runs have clear argmax margins and repeat themselves, which
    gives Jacobi guesses a real chance to be accepted.
    """
    cfg = LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=hidden,
        intermediate_size=hidden * 2,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=kv_heads,
        max_position_embeddings=max_positions,
        initializer_range=init_scale,
        bos_token_id=1,
        eos_token_id=2,
        pad_token_id=2,
        tie_word_embeddings=False,
        attn_implementation="sdpa",
    )
    g = torch.Generator().manual_seed(seed)
    model = LlamaForCausalLM(cfg)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("norm.weight"):
                continue
            p.copy_(torch.randn(p.shape, generator=g) * init_scale)
    return model.eval()


def save_tiny(path: str | Path, seed: int = 0, **kwargs) -> Path:
    """Write a tiny model and its tokenizer as a Hugging Face directory that polyverse.load reads."""
    path = Path(path)
    tiny_model(seed=seed, **kwargs).save_pretrained(path)
    char_tokenizer().save_pretrained(path)
    return path
