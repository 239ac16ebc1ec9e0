"""`jacobi`: Jacobi (CLLM-style) decoding with a KV cache and prefix acceptance.

A block of n guessed tokens rides ahead of the pending token. One pass feeds the pending token
and the block; the longest prefix of the block that equals the target's own choice is accepted
(its KV kept, the rest dropped) plus one bonus token, so every pass yields at least one token.
The target's argmax at the rejected positions (conditioned on the old guesses) becomes the next
guess for them: the Jacobi fixed-point update. Verification is the shared one, so greedy output
equals AR greedy and sampled output has the AR distribution (the block is a deterministic draft).

With ``adaptive`` (the default, where the backend's pass costs are known) the block fed is sized
like `auto`'s drafts: a decayed estimate alpha of the chance that each further guess is accepted,
and the b <= n that maximises (1 + alpha + ... + alpha^b) / c(1 + b) on the measured cost curve
(none where plain decoding is faster, with a probe now and then to measure again); decoding greedily,
that curve is corrected by what its passes cost (``costs.LiveCurve``, as `auto` and `space` price
theirs), so that a curve measured at a bad moment does not size every block after it. A block longer
than its guesses are right adds rows and no tokens; where a pass of several tokens costs much more
than one (llama.cpp) it shrinks toward plain decoding.

Beside the block, a second branch may carry what the prompt and the text so far predict (an n-gram
match, as `auto` drafts it): `auto`'s own choice of its length, priced by what its rows add to the
block's pass on the backend's measured cost curve, so it is fed only where it pays. When the
accepted path runs through that branch, the rows after it are the next guesses: the same Jacobi
update, of the branch the text took.
"""

from __future__ import annotations

import math
from dataclasses import replace
from typing import Sequence

from ..batching.budget import Acceptance
from ..costs import CostCurve, LiveCurve, pricing
from ..draft import Draft
from ..logits import guesses
from ..loop import Observation, Proposer
from ..options import method_options, option
from ..registry import registry
from .auto import NgramBranch, best_length

PROBE_EVERY = 8  # passes without a block before a probe (at least; more where a probe costs more)
PROBE_TOKENS = 4  # a probe feeds at most this many guesses of the block
PROBE_SHARE = 0.02  # probes that all fail may cost at most this share of the plain passes between them


def probe_gap(curve: CostCurve, fed: int, every: int, share: float = PROBE_SHARE) -> int:
    """Steps without drafting before a probe feeding ``fed`` tokens: at least ``every``, and enough
    that the probe's extra cost, c(fed) / c(1) - 1 passes, is at most ``share`` of the gap.

    Example: every = 8 and a flat curve, c(5) = 1.05 c(1) -> 8; a steep one, c(5) = 2.1 c(1) ->
    ceil(1.1 / 0.02) = 55 steps.
    """
    extra = max(curve.relative(fed) - 1.0, 0.0)
    return max(every, math.ceil(extra / share - 1e-9))


DEFAULT_BLOCK = 16  # tokens guessed ahead per pass when neither the options nor the adapter say


@method_options("jacobi")
class JacobiConfig:
    # n: 16 to 32 in the CLLM paper; None = the block a CLLM adapter was trained for (trained_block)
    block: int | None = option(None, "tokens guessed per pass", lo=1, hi=256, flag="--block")
    ngram: int = option(4, "longest prompt or output n-gram matched for a second branch (0: the block alone)",
                        lo=0, hi=16, flag="--ngram")
    ngram_tokens: int = option(8, "most tokens in the n-gram branch", lo=1, hi=64)
    adaptive: bool = option(True, "feed as much of the block as its measured acceptance pays for")  # module doc
    # false: the blocks depend on the prompt and the measured curve alone, run after run
    live: bool = option(True, "correct the measured pass costs by what greedy steps cost (costs.LiveCurve)")


def continuation(draft: Draft, accepted: Sequence[int]) -> list[int]:
    """The nodes after an accepted path on the branch it took: from its last node (the root when
    nothing was accepted), each node's first child. The block comes first in a draft, so on the block
    this is the rest of the block.

    Example: block (a, b, c) and a branch (a, d) -> nodes 0 1 2 3, parents -1 0 1 0; accepted (0, 3)
    -> []; accepted (0,) -> [1, 2]; nothing accepted -> [0, 1, 2].
    """
    kids: dict[int, int] = {}
    for i, p in enumerate(draft.parents):
        kids.setdefault(p, i)
    out: list[int] = []
    node = accepted[-1] if accepted else -1
    while node in kids:
        node = kids[node]
        out.append(node)
    return out


class JacobiProposer(Proposer):
    reads_every_row = True  # observe takes the argmax of every row after the accepted ones: one head product

    def __init__(self, config: JacobiConfig, curve: "CostCurve | LiveCurve | None" = None) -> None:
        """``curve``: the backend's pass costs; without it the whole block goes alone."""
        self.live = curve if isinstance(curve, LiveCurve) else None  # the loop tells it what each pass cost
        self.n = config.block if config.block is not None else DEFAULT_BLOCK
        self.guess: list[int] = []
        self.sizing = curve if config.adaptive else None  # sizes the block
        self.accept = Acceptance()
        self.idle = 0  # passes without a block (a probe measures acceptance again)
        self.b = self.n  # the block fed last
        self.ngrams: NgramBranch | None = None
        if curve is not None and config.ngram > 0:
            self.ngrams = NgramBranch(curve, config.ngram, config.ngram_tokens)

    def start(self, context: Sequence[int]) -> None:
        self.guess = []
        self.accept = Acceptance()
        self.idle = 0
        if self.ngrams is not None:
            self.ngrams.start(context)

    def block_size(self) -> int:
        """How much of the block to feed: all of it without a cost curve, else ``auto``'s choice."""
        if self.sizing is None:
            return self.n
        b = best_length(self.accept.alpha, self.n, self.sizing)
        if b == 0:
            probe = min(self.n, PROBE_TOKENS)
            if self.idle >= probe_gap(self.sizing, 1 + probe, PROBE_EVERY):
                b = probe
        self.idle = 0 if b else self.idle + 1
        return b

    def propose(self, context: Sequence[int]) -> Draft:
        """The current block, padded with its last guess (or the pending token) to the size fed, and
        the n-gram branch where it pays.

        Example: n = 4, leftover guesses [7, 8] -> chain (7, 8, 8, 8).
        """
        self.b = b = self.block_size()
        guess = self.guess[:b]
        filler = guess[-1] if guess else int(context[-1])
        block = guess + [filler] * (b - len(guess))
        branch = self.ngrams.propose(context, b) if self.ngrams is not None else []
        return Draft.tree([block, branch]) if branch else Draft.chain(block)

    def observe(self, obs: Observation) -> None:
        """Keep the Jacobi update of the positions after the bonus token, on the branch the accepted
        path took (the loop may also have cut the block short or added a grammar's forced tokens).

        Example: block (a, b, c, d) with a accepted and bonus x at the block's 2nd position:
        rows 2..4 of the logits (fed b, c, d) predict the 3rd to 5th positions -> next guesses.
        """
        if self.ngrams is not None:
            self.ngrams.credit(obs.verdict.tokens)
        if self.b:  # how far the block's own guesses held: the path's leading nodes 0, 1, .. inside it
            held = 0
            for node in obs.verdict.accepted:
                if node != held or node >= self.b:
                    break
                held += 1
            self.accept.update(held, self.b)
        rest = continuation(obs.draft, obs.verdict.accepted)
        if not rest:
            self.guess = []
            return
        self.guess = guesses(obs.logits, [r + 1 for r in rest])  # [len(rest)]


def trained_block(model, default: int = DEFAULT_BLOCK) -> int:
    """The block a CLLM adapter of a loaded model was trained for (its ``polyverse.json``), else ``default``:
    a consistency fine-tune fixes the tokens of the blocks it saw, and each deeper guess costs a fed token."""
    meta = model.adapter if model is not None else {}
    block = meta.get("block") if meta.get("method") == "cllm" else None
    return block if isinstance(block, int) and 1 <= block <= 256 else default


def make(config: JacobiConfig, ctx) -> JacobiProposer:
    if config.block is None:
        config = replace(config, block=trained_block(ctx.model))
    wanted = config.adaptive or config.ngram > 0
    curve = pricing(ctx, config.live) if wanted and getattr(ctx, "backend", None) is not None else None
    return JacobiProposer(config, curve)


registry.register("jacobi", JacobiConfig, make, "Jacobi / CLLM decoding: refine a block of guesses in parallel")
