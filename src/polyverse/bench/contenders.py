"""Contenders of a benchmark run: transformers `generate` peers and polyverse methods, timed alike."""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import torch


@dataclass
class Run:
    tokens: list[int]
    seconds: float  # the whole request, prefill included
    passes: int = 0  # decode forward passes (0: not known, e.g. a peer)
    accepted_per_pass: list[int] = field(default_factory=list)

    @property
    def rate(self) -> float:
        return len(self.tokens) / self.seconds if self.seconds > 0 else 0.0

    @property
    def tokens_per_pass(self) -> float:
        return len(self.tokens) / self.passes if self.passes else 1.0


@dataclass(frozen=True)
class Contender:
    """One row of the table. ``method`` names a polyverse method; None runs transformers
    `generate` with ``options`` as its keyword arguments (``assistant_model`` given as a
    loaded polyverse Model is passed on as its transformers model)."""

    name: str
    method: str | None = None
    options: dict = field(default_factory=dict)

    @property
    def is_peer(self) -> bool:
        return self.method is None

    def run(self, model, ids: list[int], max_new_tokens: int, temperature: float = 0.0, seed: int = 0) -> Run:
        if self.method is None:
            return hf_generate(model, ids, max_new_tokens, temperature, seed, **self.options)
        forget_prefixes(model)
        t0 = time.perf_counter()
        g = model.generate(list(ids), method=self.method, options=self.options, max_new_tokens=max_new_tokens,
                           temperature=temperature, seed=seed)
        return Run(list(g.token_ids), time.perf_counter() - t0, g.stats.passes, list(g.stats.accepted_per_pass))


def forget_prefixes(model) -> None:
    """Empty the model's store of computed prompt prefixes (``backends.cpu.prefix``): every row of a
    prompt would otherwise copy the cells the row before it computed for that very prompt and skip
    its prefill, which no peer does; each row prefills its whole prompt, as llama.cpp and
    transformers `generate` do."""
    prefixes = getattr(getattr(model.backend, "decode_model", None), "prefixes", None)
    if prefixes is not None:
        prefixes.clear()


def hf_generate(model, ids: list[int], max_new_tokens: int, temperature: float = 0.0, seed: int = 0, **kwargs) -> Run:
    """transformers `generate` on the same weights; stops at EOS like polyverse does."""
    inp = torch.tensor([list(ids)], device=model.hf_model.device)  # [1, n]
    if "assistant_model" in kwargs and hasattr(kwargs["assistant_model"], "hf_model"):
        kwargs["assistant_model"] = kwargs["assistant_model"].hf_model
    sampling = dict(do_sample=True, temperature=temperature, top_k=0, top_p=1.0) if temperature > 0 else dict(do_sample=False)
    if temperature > 0:
        torch.manual_seed(seed)
    t0 = time.perf_counter()
    with torch.inference_mode():
        out = model.hf_model.generate(inp, attention_mask=torch.ones_like(inp), max_new_tokens=max_new_tokens,
                                      pad_token_id=model.tokenizer.eos_token_id, **sampling, **kwargs)
    seconds = time.perf_counter() - t0
    tokens = out[0, len(ids):].tolist()
    eos = set(model.eos_token_ids)
    cut = next((i for i, t in enumerate(tokens) if t in eos), None)
    return Run(tokens[: cut + 1] if cut is not None else tokens, seconds)
