"""The target distribution p: temperature, top-k and top-p applied to logits; explicit randomness."""

from __future__ import annotations

import torch

from .config import SamplingConfig


def target_probs(logits: torch.Tensor, cfg: SamplingConfig) -> torch.Tensor:
    """[q, V] logits -> [q, V] float32 probabilities after temperature, top-k and top-p.

    Example: logits [[2, 1, 0]] with top_k=2, temperature=1 -> [[0.731, 0.269, 0]].
    Greedy (temperature 0) is not handled here: callers take the argmax instead.
    """
    if cfg.greedy:
        raise ValueError("target_probs is for sampling; greedy decoding takes the argmax")
    # shifted by each row's maximum first, and a temperature float32 cannot hold taken as its
    # smallest: a tiny temperature then sends the others to -inf, never the top to inf or 0/0 (nan)
    logits = logits.float()
    temperature = max(cfg.temperature, torch.finfo(torch.float32).tiny)
    scores = (logits - logits.max(dim=-1, keepdim=True).values) / temperature  # [q, V]
    if 0 < cfg.top_k < scores.shape[-1]:
        kth = torch.topk(scores, cfg.top_k, dim=-1).values[..., -1:]  # [q, 1]
        scores = scores.masked_fill(scores < kth, float("-inf"))
    probs = torch.softmax(scores, dim=-1)  # [q, V]
    if cfg.top_p < 1.0:
        sorted_p, order = torch.sort(probs, dim=-1, descending=True)  # [q, V]
        before = torch.cumsum(sorted_p, dim=-1) - sorted_p  # mass strictly above each entry
        drop_sorted = before >= cfg.top_p  # the smallest prefix reaching top_p is kept
        drop_sorted[..., 0] = False  # and the most likely token always, however small top_p is
        drop = torch.zeros_like(drop_sorted).scatter(-1, order, drop_sorted)
        probs = probs.masked_fill(drop, 0.0)
        probs = probs / probs.sum(dim=-1, keepdim=True)
    return probs


def make_generator(seed: int | None) -> torch.Generator:
    """A CPU generator: seeded for reproducible runs, from OS entropy when seed is None."""
    g = torch.Generator()
    if seed is None:
        g.seed()
    else:
        g.manual_seed(int(seed))
    return g


def sample(probs: torch.Tensor, generator: torch.Generator) -> int:
    """Draw one token id from a [V] distribution."""
    return int(torch.multinomial(probs, 1, generator=generator).item())


def uniform(generator: torch.Generator) -> float:
    """One draw from U[0, 1)."""
    return float(torch.rand((), generator=generator).item())
