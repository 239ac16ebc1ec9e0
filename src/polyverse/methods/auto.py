"""`auto`: picks, per step, between n-gram speculation and plain decoding, and the draft size.

It drafts from the prompt and the text so far (like prompt_lookup), and keeps an estimate of
alpha, the chance that each further draft token is accepted, per match length (1, 2, 3+
tokens of suffix matched), decayed so it follows the text as it changes. With the backend's
measured cost curve c(q) it drafts the k that maximises the expected tokens per second
E(k) / c(1 + k), where E(k) = 1 + alpha + ... + alpha^k, and drafts nothing when plain
decoding, 1 / c(1), is expected to be faster. So it is never much slower than `ar`.
"""

from __future__ import annotations

from typing import Sequence

from ..costs import CostCurve, cost_curve
from ..draft import Draft
from ..loop import Observation, Proposer
from ..ngrams import NgramIndex
from ..options import method_options, option
from ..registry import registry


@method_options("auto")
class AutoConfig:
    max_tokens: int = option(24, "most draft tokens per candidate", lo=1, hi=64, flag="--max-tokens")
    ngram: int = option(4, "longest match", lo=1, hi=16, flag="--ngram")  # longest suffix n-gram matched
    decay: float = option(0.9, "weight kept by old acceptance evidence at each update", above=0.0, hi=1.0)
    probe_every: int = option(8, "steps without drafting before one draft re-measures acceptance", lo=0)
    # 1 by default: a side branch rarely wins, and where passes of a few tokens cost about what one
    # does the cheapest feed pays most often
    candidates: int = option(1, "continuations per pass", lo=1, hi=16, flag="--candidates")


class Acceptance:
    """Decayed success / failure counts of draft tokens, with a Beta(hits, misses) prior."""

    def __init__(self, decay: float, hits: float = 1.0, misses: float = 1.0) -> None:
        self.decay = decay
        self.hits = hits
        self.misses = misses

    @property
    def alpha(self) -> float:
        return self.hits / (self.hits + self.misses)

    def update(self, accepted: int, drafted: int) -> None:
        self.hits = self.hits * self.decay + accepted
        self.misses = self.misses * self.decay + (1 if accepted < drafted else 0)


def best_length(alpha: float, available: int, curve: CostCurve, width: int = 1) -> int:
    """Draft length k in [0, available] maximising (1 + alpha + ... + alpha^k) / c(1 + width * k).

    ``width`` candidates of length k are fed together; only the best one is counted in the
    expected tokens (the others can only add). Example: alpha 0.9 on a flat curve -> the
    longest draft; alpha 0 -> 0 (plain decoding).
    """
    best_k, best_rate = 0, 1.0 / curve(1)
    expected, term = 1.0, 1.0
    for k in range(1, available + 1):
        term *= alpha
        expected += term
        rate = expected / curve(1 + width * k)
        if rate > best_rate:
            best_k, best_rate = k, rate
    return best_k


class AutoProposer(Proposer):
    def __init__(self, config: AutoConfig, curve: CostCurve) -> None:
        self.cfg = config
        self.curve = curve
        self.index = NgramIndex(config.ngram)
        # longer suffix matches predict better: a more hopeful prior for them
        self.stats = {n: Acceptance(config.decay, 2.0 if n > 1 else 1.0) for n in range(1, config.ngram + 1)}
        self.idle = 0
        self.last_bucket = 0

    def start(self, context: Sequence[int]) -> None:
        self.index = NgramIndex(self.cfg.ngram)
        self.index.extend(context)
        self.idle = 0

    def _candidates(self) -> tuple[int, list[list[int]]]:
        """(suffix length of the best match, continuations: best first, then other matches)."""
        found: list[list[int]] = []
        best_n = 0
        for n in range(min(self.cfg.ngram, len(self.index.tokens)), 0, -1):
            more = self.index.continuations(self.cfg.max_tokens, self.cfg.candidates, min_n=n)
            if more and not best_n:
                best_n = n
            for c in more:
                if c not in found:
                    found.append(c)
            if len(found) >= self.cfg.candidates:
                break
        return best_n, found[: self.cfg.candidates]

    def propose(self, context: Sequence[int]) -> Draft:
        self.index.extend(context)
        n, conts = self._candidates()
        self.last_bucket = 0
        width = len(conts)
        k = best_length(self.stats[n].alpha, len(conts[0]), self.curve, width) if conts else 0
        if conts and k == 0 and self.idle >= self.cfg.probe_every:
            k = min(len(conts[0]), 4)  # re-measure acceptance now and then
        if k == 0:
            self.idle += 1
            return Draft.empty()
        self.idle = 0
        self.last_bucket = n
        return Draft.tree([c[:k] for c in conts])

    def observe(self, obs: Observation) -> None:
        if self.last_bucket and len(obs.draft):
            self.stats[self.last_bucket].update(len(obs.verdict.accepted), max(obs.draft.depths()))


def make(config: AutoConfig, ctx) -> AutoProposer:
    return AutoProposer(config, cost_curve(ctx.model, ctx.backend))


registry.register("auto", AutoConfig, make,
                  "adaptive: n-gram speculation or plain decoding per step, draft size from measured pass costs")
