"""`auto`: picks, per step, between n-gram speculation and plain decoding, and the draft size.

It drafts from the prompt and the text so far (like prompt_lookup), and keeps an estimate of
alpha, the chance that each further draft token is accepted, per match length (1, 2, 3+
tokens of suffix matched), decayed so it follows the text as it changes. With the backend's
measured cost curve c(q) it drafts the k that maximises the expected tokens per second
E(k) / c(1 + k), where E(k) = 1 + alpha + ... + alpha^k is the expected number of tokens the
pass writes, and drafts nothing when plain decoding, 1 / c(1), is expected to be faster. So it
is never much slower than `ar`.

The curve decides how much acceptance drafting needs. Where a pass of several tokens costs about
what one does (the transformers backend's row kernel) a coin-flip draft pays; where a 2-token pass
costs much more than a one-token pass (llama.cpp, whose one-row path is a separate, faster kernel),
drafting pays only with a high expected acceptance (c(2) = 1.7 c(1) needs alpha > 0.7 for one
token), and low-acceptance text falls back to one-token passes.
While it does not draft, a probe now and then re-measures acceptance; a probe that fails costs
c(1 + k) - c(1), so probes come at least ``probe_every`` steps apart and far enough apart that
failing ones cost at most PROBE_SHARE of the plain passes between them.
"""

from __future__ import annotations

import math

from typing import Sequence

from ..batching.budget import Acceptance
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
    probe_every: int = option(8, "steps without drafting before one draft re-measures acceptance (at least: "
                              "more where a draft pass costs much more than a plain one)", lo=0, hi=4096)
    # 1 by default: a side branch rarely wins, and where passes of a few tokens cost about what one
    # does the cheapest feed pays most often
    candidates: int = option(1, "continuations per pass", lo=1, hi=16, flag="--candidates")


PROBE_TOKENS = 4  # a probe drafts at most this many tokens per candidate
PROBE_SHARE = 0.02  # probes that all fail may cost at most this share of the plain passes between them


def probe_gap(curve: CostCurve, fed: int, every: int, share: float = PROBE_SHARE) -> int:
    """Steps without drafting before a probe feeding ``fed`` tokens: at least ``every``, and enough
    that the probe's extra cost, c(fed) / c(1) - 1 passes, is at most ``share`` of the gap.

    Example: every = 8 and a flat curve, c(5) = 1.05 c(1) -> 8; a steep one, c(5) = 2.1 c(1) ->
    ceil(1.1 / 0.02) = 55 steps.
    """
    extra = max(curve.relative(fed) - 1.0, 0.0)
    return max(every, math.ceil(extra / share - 1e-9))


def best_length(alpha: float, available: int, curve: CostCurve, width: int = 1,
                costs: Sequence[float] | None = None) -> int:
    """Draft length k in [0, available] maximising (1 + alpha + ... + alpha^k) / c(1 + width * k).

    ``width`` candidates of length k are fed together; only the best one is counted in the
    expected tokens (the others can only add). ``costs``: c(1 + width * k) for k = 0 .. at least
    ``available``, when the caller keeps them (the decision runs every step). Example: alpha 0.9 on
    a flat curve -> the longest draft; alpha 0 -> 0 (plain decoding).
    """
    if costs is None:
        costs = [curve(1 + width * k) for k in range(available + 1)]
    best_k, best_rate = 0, 1.0 / costs[0]
    expected, term = 1.0, 1.0
    for k in range(1, available + 1):
        term *= alpha
        expected += term
        rate = expected / costs[k]
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
        self._costs: dict[int, list[float]] = {}  # width -> c(1 + width * k), k = 0 .. max_tokens

    def reprice(self, curve: CostCurve) -> None:
        """Price the next drafts on ``curve`` (a branch beside another method's draft: ``CostCurve.beyond``)."""
        if curve is not self.curve:
            self.curve = curve
            self._costs = {}

    def credit(self, branch: Sequence[int], tokens: Sequence[int]) -> None:
        """Acceptance evidence for a ``branch`` fed beside another method's draft: the target wrote
        ``tokens`` (accepted and bonus), whichever branch carried them.

        Example: branch (4, 1, 2), tokens (4, 1, 9) -> 2 of 3 accepted.
        """
        if not self.last_bucket or not branch:
            return
        hit = 0
        while hit < min(len(branch), len(tokens)) and branch[hit] == tokens[hit]:
            hit += 1
        self.stats[self.last_bucket].update(hit, len(branch))

    def costs(self, width: int) -> list[float]:
        if width not in self._costs:
            self._costs[width] = [self.curve(1 + width * k) for k in range(self.cfg.max_tokens + 1)]
        return self._costs[width]

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
        k = best_length(self.stats[n].alpha, len(conts[0]), self.curve, width, self.costs(width)) if conts else 0
        if conts and k == 0:  # re-measure acceptance now and then, as often as the curve affords
            probe = min(len(conts[0]), PROBE_TOKENS)
            if self.idle >= probe_gap(self.curve, 1 + width * probe, self.cfg.probe_every):
                k = probe
        if k == 0:
            self.idle += 1
            return Draft.empty()
        self.idle = 0
        self.last_bucket = n
        return Draft.tree([c[:k] for c in conts])

    def acceptance(self) -> float | None:
        """Alpha of the match length the last draft came from (None when it drafted nothing)."""
        return self.stats[self.last_bucket].alpha if self.last_bucket else None

    def observe(self, obs: Observation) -> None:
        if self.last_bucket and len(obs.draft):
            self.stats[self.last_bucket].update(len(obs.verdict.accepted), max(obs.draft.depths()))


def make(config: AutoConfig, ctx) -> AutoProposer:
    return AutoProposer(config, cost_curve(ctx.model, ctx.backend))


registry.register("auto", AutoConfig, make,
                  "adaptive: n-gram speculation or plain decoding per step, draft size from measured pass costs")
