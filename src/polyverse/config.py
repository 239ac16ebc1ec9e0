"""Frozen, validated configuration shared by every method."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from .errors import ConfigError
from .shaping import Penalties


@dataclass(frozen=True)
class SamplingConfig:
    """How the target distribution p is formed from logits.

    temperature == 0 is an exact argmax branch (greedy), not a tiny temperature.
    top_k == 0 and top_p == 1.0 switch those filters off.
    """

    temperature: float = 0.0
    top_k: int = 0
    top_p: float = 1.0

    def __post_init__(self) -> None:
        if not self.temperature >= 0.0:  # also rejects NaN
            raise ConfigError(f"temperature must be >= 0, got {self.temperature}")
        if self.top_k < 0:
            raise ConfigError(f"top_k must be >= 0, got {self.top_k}")
        if not 0.0 < self.top_p <= 1.0:
            raise ConfigError(f"top_p must be in (0, 1], got {self.top_p}")

    @property
    def greedy(self) -> bool:
        return self.temperature == 0.0


MAX_TOP_LOGPROBS = 20  # OpenAI's ceiling for top_logprobs


@dataclass(frozen=True)
class GenerationConfig:
    """What to generate: length, stopping, sampling and the seed of the random stream."""

    max_new_tokens: int = 128
    sampling: SamplingConfig = field(default_factory=SamplingConfig)
    seed: int | None = None
    stop: tuple[str, ...] = ()
    eos_token_ids: tuple[int, ...] = ()
    logprobs: int | None = None  # None: none; k: each output token's log-probability and the k likeliest
    penalties: Penalties = field(default_factory=Penalties)  # presence / frequency penalties, logit bias
    grammar: Any = None  # a ``grammar.Grammar`` the output follows (structured output), or None
    forced_drafts: bool = True  # draft the tokens the grammar forces (off only to measure what they bring)

    def __post_init__(self) -> None:
        if self.max_new_tokens < 1:
            raise ConfigError(f"max_new_tokens must be >= 1, got {self.max_new_tokens}")
        if self.logprobs is not None and not 0 <= self.logprobs <= MAX_TOP_LOGPROBS:
            raise ConfigError(f"logprobs must be in 0..{MAX_TOP_LOGPROBS} (top tokens per position), got {self.logprobs}")
        if any(not s for s in self.stop):
            raise ConfigError("stop strings must not be empty")
