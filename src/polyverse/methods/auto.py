"""`auto`: picks, per step, between n-gram speculation and plain decoding, and the draft size.

It drafts from the prompt and the text so far (like prompt_lookup), and keeps an estimate of
alpha, the chance that each further draft token is accepted, per match length (1, 2, 3+
tokens of suffix matched), decayed so it follows the text as it changes. With the backend's
measured cost curve c(q) it drafts the k that maximises the expected tokens per second
E(k) / c(1 + k), where E(k) = 1 + alpha + ... + alpha^k, and drafts nothing when plain
decoding, 1 / c(1), is expected to be faster. So it is never much slower than `ar`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

from ..costs import CostCurve, cost_curve
from ..draft import Draft
from ..errors import ConfigError
from ..loop import Observation
from ..ngrams import NgramIndex


@dataclass(frozen=True)
class AutoConfig:
    max_tokens: int = 16  # most draft tokens in one pass
    ngram: int = 3  # longest suffix n-gram matched
    decay: float = 0.9  # weight kept by old acceptance evidence at each update
    probe_every: int = 8  # after this many steps without drafting, draft once to re-measure

    def __post_init__(self) -> None:
        if not isinstance(self.max_tokens, int) or not 1 <= self.max_tokens <= 64:
            raise ConfigError(f"auto max_tokens must be an integer in [1, 64], got {self.max_tokens!r}")
        if not isinstance(self.ngram, int) or not 1 <= self.ngram <= 16:
            raise ConfigError(f"auto ngram must be an integer in [1, 16], got {self.ngram!r}")
        if not 0.0 < self.decay <= 1.0:
            raise ConfigError(f"auto decay must be in (0, 1], got {self.decay}")


class Acceptance:
    """Decayed success / failure counts of draft tokens, with a Beta(1, 1) prior."""

    def __init__(self, decay: float) -> None:
        self.decay = decay
        self.hits = 1.0
        self.misses = 1.0

    @property
    def alpha(self) -> float:
        return self.hits / (self.hits + self.misses)

    def update(self, accepted: int, drafted: int) -> None:
        self.hits = self.hits * self.decay + accepted
        self.misses = self.misses * self.decay + (1 if accepted < drafted else 0)


def best_length(alpha: float, available: int, curve: CostCurve) -> int:
    """Draft length k in [0, available] maximising (1 + alpha + ... + alpha^k) / c(1 + k).

    Example: alpha 0.9 on a flat curve -> the longest draft; alpha 0 -> 0 (plain decoding).
    """
    best_k, best_rate = 0, 1.0 / curve(1)
    expected, term = 1.0, 1.0
    for k in range(1, available + 1):
        term *= alpha
        expected += term
        rate = expected / curve(1 + k)
        if rate > best_rate:
            best_k, best_rate = k, rate
    return best_k


class AutoProposer:
    def __init__(self, config: AutoConfig, curve: CostCurve) -> None:
        self.cfg = config
        self.curve = curve
        self.index = NgramIndex(config.ngram)
        self.stats = {n: Acceptance(config.decay) for n in range(1, config.ngram + 1)}
        self.idle = 0
        self.last_bucket = 0
        self.choices: dict[str, int] = {"ar": 0, "lookup": 0}

    def start(self, context: Sequence[int]) -> None:
        self.index = NgramIndex(self.cfg.ngram)
        self.index.extend(context)
        self.idle = 0

    def _match(self) -> tuple[int, list[int]]:
        """(length of the matched suffix, continuation) of the longest, most recent match."""
        for n in range(min(self.cfg.ngram, len(self.index.tokens)), 0, -1):
            found = self.index.continuations(self.cfg.max_tokens, 1, min_n=n)
            if found:
                return n, found[0]
        return 0, []

    def propose(self, context: Sequence[int]) -> Draft:
        self.index.extend(context)
        n, cont = self._match()
        self.last_bucket = 0
        if not cont:
            self.choices["ar"] += 1
            return Draft.empty()
        k = best_length(self.stats[n].alpha, len(cont), self.curve)
        if k == 0 and self.idle >= self.cfg.probe_every:
            k = min(len(cont), 4)  # re-measure acceptance now and then
        if k == 0:
            self.idle += 1
            self.choices["ar"] += 1
            return Draft.empty()
        self.idle = 0
        self.last_bucket = n
        self.choices["lookup"] += 1
        return Draft.chain(cont[:k])

    def observe(self, obs: Observation) -> None:
        if self.last_bucket and len(obs.draft):
            self.stats[self.last_bucket].update(len(obs.verdict.accepted), len(obs.draft))


def make(config: AutoConfig, ctx) -> AutoProposer:
    if ctx.model is not None:
        curve = cost_curve(ctx.model, ctx.backend)
    else:
        from ..costs import measure

        curve = measure(ctx.backend, context_len=32, reps=2)
    return AutoProposer(config, curve)
