"""Contenders of a benchmark run: transformers `generate` peers and polyverse methods, timed alike."""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import torch


@dataclass
class Run:
    tokens: list[int]
    seconds: float
    tokens_per_pass: float = 1.0

    @property
    def rate(self) -> float:
        return len(self.tokens) / self.seconds if self.seconds > 0 else 0.0


@dataclass(frozen=True)
class Contender:
    name: str
    method: str | None = None  # a polyverse method; None = transformers generate
    options: dict = field(default_factory=dict)  # method options, or generate kwargs

    def run(self, model, ids: list[int], max_new_tokens: int) -> Run:
        if self.method is None:
            return hf_generate(model, ids, max_new_tokens, **self.options)
        t0 = time.perf_counter()
        g = model.generate(ids, method=self.method, options=self.options, max_new_tokens=max_new_tokens)
        return Run(list(g.token_ids), time.perf_counter() - t0, g.stats.mean_accepted)


def hf_generate(model, ids: list[int], max_new_tokens: int, **kwargs) -> Run:
    """transformers `generate`, greedy, on the same weights; stops at EOS like polyverse does."""
    inp = torch.tensor([ids])
    t0 = time.perf_counter()
    with torch.inference_mode():
        out = model.hf_model.generate(inp, attention_mask=torch.ones_like(inp), max_new_tokens=max_new_tokens,
                                      do_sample=False, pad_token_id=model.tokenizer.eos_token_id, **kwargs)
    seconds = time.perf_counter() - t0
    tokens = out[0, len(ids):].tolist()
    return Run(tokens, seconds)
