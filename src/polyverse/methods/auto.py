"""`auto`: picks, per step, between n-gram speculation and plain decoding, and the draft size.

It drafts from the prompt and the text so far (like prompt_lookup). At every step it notes what its
best continuation predicted; the tokens written next say how many of those predictions were right,
whether or not they were fed. The *run* (tokens in a row the continuations predicted, up to the
last step) marks text being copied: a continuation that has just predicted four tokens in a row
predicts the next far more often than a fresh match does. So auto keeps alpha, the chance that
each further draft token is accepted, per run length (0, 1, 2, 3, 4+), decayed so it follows the
text as it changes, and learns it from every step: a fed draft tells how deep it was accepted, a
step that fed none tells whether the continuation's first token was right. With the backend's
measured cost curve c(q) it drafts the k that maximises the expected tokens per second
E(k) / c(1 + k), where E(k) = 1 + alpha + ... + alpha^k is the expected number of tokens the
pass writes, and drafts nothing when plain decoding, 1 / c(1), is expected to be faster. So it
is never much slower than `ar`, and needs no probe drafts to keep alpha current.

The curve decides how much acceptance drafting needs. Where a pass of several tokens costs about
what one does (the transformers backend's row kernel) a coin-flip draft pays; where a 2-token pass
costs much more than a one-token pass (llama.cpp, whose one-row path is a separate, faster kernel),
drafting pays only with a high expected acceptance (c(2) = 1.7 c(1) needs alpha > 0.7 for one
token), which on such a curve only a long run earns.
"""

from __future__ import annotations

from typing import Sequence

from ..batching.budget import Acceptance
from ..costs import CostCurve, LiveCurve, pricing
from ..draft import Draft
from ..heads import Drafter, for_model
from ..loop import Observation, Proposer
from ..ngrams import NgramIndex
from ..options import method_options, option
from ..registry import registry
from .head_branch import HeadBranch


@method_options("auto")
class AutoConfig:
    max_tokens: int = option(24, "most draft tokens per candidate", lo=1, hi=64, flag="--max-tokens")
    ngram: int = option(8, "longest match", lo=1, hi=16, flag="--ngram")  # longest suffix n-gram matched
    decay: float = option(0.9, "weight kept by old acceptance evidence at each update", above=0.0, hi=1.0)
    # 1 by default: a side branch rarely wins, and where passes of a few tokens cost about what one
    # does the cheapest feed pays most often
    candidates: int = option(1, "continuations per pass", lo=1, hi=16, flag="--candidates")
    head: bool = option(True, "draft with the model's shipped draft head where there is nothing to copy")
    # false: the drafts depend on the prompt and the measured curve alone, run after run
    live: bool = option(True, "correct the measured pass costs by what greedy steps cost (costs.LiveCurve)")


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


def expected_tokens(alpha: float, k: int) -> float:
    """Tokens a pass with a k-token draft writes, each draft token accepted with chance alpha:
    1 + alpha + ... + alpha^k (the bonus token and the accepted ones)."""
    return sum(alpha ** j for j in range(k + 1))


RUNS = 4  # run lengths with an estimate of their own; longer runs share the last one


class AutoProposer(Proposer):
    def __init__(self, config: AutoConfig, curve: "CostCurve | LiveCurve", drafter: "Drafter | None" = None) -> None:
        self.cfg = config
        self.curve = curve
        self.live = curve if isinstance(curve, LiveCurve) else None  # the loop tells it what each pass cost
        self.priced_at = 0  # the live curve's version the kept costs were read at
        # the draft head's guesses, fed instead of the n-gram draft when they promise more tokens per second
        self.head = HeadBranch(drafter, curve, config.decay, config.max_tokens) if drafter is not None else None
        self.index = NgramIndex(config.ngram)
        # a longer run predicts better: a more hopeful prior for it
        self.stats = [Acceptance(config.decay, 1.0 + run / 2, 1.0) for run in range(RUNS + 1)]
        self.run = 0  # tokens in a row the best continuations predicted, up to the last proposal
        self.predicted: list[int] = []  # the best continuation at the last proposal
        self.seen = 0  # context length at the last proposal
        self.last_bucket: int | None = None  # run bucket whose alpha priced the last proposal (None: no match)
        self.drafted = False  # whether the last proposal fed the n-gram draft
        self.branch: list[list[int]] = []  # that draft's continuations
        self.beside = False  # whether the head's guesses were fed beside it
        self.verified = False  # whether a fed draft or branch of the last proposal has been credited
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
        if self.last_bucket is None or not branch:
            return
        self.stats[self.last_bucket].update(_common(branch, tokens), len(branch))
        self.verified = True

    def costs(self, width: int) -> list[float]:
        if width not in self._costs:
            self._costs[width] = [self.curve(1 + width * k) for k in range(self.cfg.max_tokens + 1)]
        return self._costs[width]

    def start(self, context: Sequence[int]) -> None:
        self.index = NgramIndex(self.cfg.ngram)
        self.index.extend(context)
        self.run, self.predicted, self.seen = 0, [], len(context)
        self.last_bucket, self.drafted, self.verified = None, False, False
        if self.head is not None:
            self.head.start(context)

    def _written(self, context: Sequence[int]) -> None:
        """Evidence from the tokens written since the last proposal: the run goes on while they are
        what its continuation predicted; a step that verified no draft still tells whether the
        continuation's first token was right."""
        new = context[self.seen:]
        self.seen = len(context)
        if not new:
            return
        right = _common(self.predicted, new)
        if self.last_bucket is not None and not self.verified:
            self.stats[self.last_bucket].update(min(right, 1), 1)
        self.run = self.run + right if right == len(new) else 0

    def propose(self, context: Sequence[int]) -> Draft:
        if self.live is not None and self.live.version != self.priced_at:
            self.priced_at, self._costs = self.live.version, {}
        self._written(context)
        self.index.extend(context)
        conts = self.index.continuations(self.cfg.max_tokens, self.cfg.candidates)  # the longest match's first
        self.predicted = conts[0] if conts else []
        self.last_bucket = min(self.run, RUNS) if conts else None
        self.drafted = self.verified = self.beside = False
        k, rate = 0, 1.0 / self.costs(1)[0]
        if conts:
            width = len(conts)
            alpha = self.stats[self.last_bucket].alpha
            costs = self.costs(width)
            k = best_length(alpha, len(conts[0]), self.curve, width, costs)
            rate = expected_tokens(alpha, k) / costs[k]
        self.branch = [c[:k] for c in conts] if k else []  # the n-gram draft, if fed
        if self.head is not None:
            self.head.written(context)
            guesses, head_rate = self.head.propose(context) if self.head.could_beat(rate) else ([], 0.0)
            if guesses:
                both = self._both(guesses)
                if both > max(rate, head_rate):  # both, side by side: the n-gram's rows and the head's
                    self.head.drafts += 1
                    self.drafted = self.beside = True
                    return Draft.tree(self.branch + [guesses])
                if head_rate > rate:
                    self.head.drafts += 1
                    return Draft.chain(guesses) if self.head.alt is None else Draft.tree([guesses, [self.head.alt]])
        if k == 0:
            return Draft.empty()
        self.drafted = True
        return Draft.tree(self.branch)

    def _both(self, guesses: list[int]) -> float:
        """Expected tokens per second of the n-gram draft and the head's guesses fed together, where
        they start differently (then at most one of them is accepted, and the chances add)."""
        if not self.branch or any(b[0] == guesses[0] for b in self.branch):
            return 0.0
        alpha = self.stats[self.last_bucket].alpha
        k = max(len(b) for b in self.branch)
        expected = expected_tokens(alpha, k) + sum(self.head.chances)
        return expected / self.curve(1 + sum(len(b) for b in self.branch) + len(guesses))

    def acceptance(self) -> float | None:
        """Alpha that priced the last draft (None when it drafted nothing)."""
        return self.stats[self.last_bucket].alpha if self.drafted else None

    def observe(self, obs: Observation) -> None:
        if self.head is not None:
            self.head.observe(obs.logits, obs.verdict.accepted)
        if self.drafted and len(obs.draft):
            if self.beside:  # the head's guesses beside it: credited with what its own branch carried
                self.credit(self.branch[0], obs.verdict.tokens)
            else:
                self.stats[self.last_bucket].update(len(obs.verdict.accepted), max(obs.draft.depths()))
            self.verified = True


class NgramBranch:
    """`auto`'s n-gram draft as a branch beside another method's draft (`jacobi`'s block, `space`'s
    layout): its length is `auto`'s choice, priced by what its rows add to that draft's pass
    (``CostCurve.beyond``), and it is credited with what the target wrote, whichever branch carried it."""

    def __init__(self, curve: CostCurve, ngram: int, tokens: int) -> None:
        self.curve = curve
        self.most = tokens + 1  # the branch's rows with the root's, the most it adds to a pass
        self.priced: dict[int, CostCurve] = {}  # rows of the other draft -> the branch's costs beyond them
        self.version = getattr(curve, "version", 0)  # a LiveCurve's prices change: priced again then
        self.auto = AutoProposer(AutoConfig(max_tokens=tokens, ngram=ngram), curve)
        self.tokens: list[int] = []  # the branch proposed last (empty: none fed)

    def start(self, context: Sequence[int]) -> None:
        self.auto.start(context)

    def propose(self, context: Sequence[int], beside: int) -> list[int]:
        """The branch to feed beside a draft of ``beside`` nodes; empty where it does not pay."""
        version = getattr(self.curve, "version", 0)
        if version != self.version:
            self.priced, self.version = {}, version
        if beside not in self.priced:
            self.priced[beside] = self.curve.beyond(beside, self.most)
        self.auto.reprice(self.priced[beside])
        self.tokens = list(self.auto.propose(context).tokens)
        return self.tokens

    def credit(self, written: Sequence[int]) -> None:
        """The pass wrote ``written`` (accepted tokens and the bonus)."""
        self.auto.credit(self.tokens, written)


def _common(a: Sequence[int], b: Sequence[int]) -> int:
    """Length of the common prefix of ``a`` and ``b``."""
    n = 0
    while n < min(len(a), len(b)) and a[n] == b[n]:
        n += 1
    return n


def make(config: AutoConfig, ctx) -> AutoProposer:
    drafter = for_model(ctx.model) if config.head and ctx.model is not None else None
    return AutoProposer(config, pricing(ctx, config.live), drafter)


registry.register("auto", AutoConfig, make,
                  "adaptive: n-gram speculation or plain decoding per step, draft size from measured pass costs")
