"""`jacobi`: Jacobi (CLLM-style) decoding with a KV cache and prefix acceptance.

A block of n guessed tokens rides ahead of the pending token. One pass feeds the pending token
and the block; the longest prefix of the block that equals the target's own choice is accepted
(its KV kept, the rest dropped) plus one bonus token, so every pass yields at least one token.
The target's argmax at the rejected positions (conditioned on the old guesses) becomes the next
guess for them: the Jacobi fixed-point update. Verification is the shared one, so greedy output
equals AR greedy and sampled output has the AR distribution (the block is a deterministic draft).
"""

from __future__ import annotations

from dataclasses import replace
from typing import Sequence

from ..draft import Draft
from ..loop import Observation, Proposer
from ..options import method_options, option
from ..registry import registry


DEFAULT_BLOCK = 16  # tokens guessed ahead per pass when neither the options nor the adapter say


@method_options("jacobi")
class JacobiConfig:
    # n: 16 to 32 in the CLLM paper; None = the block a CLLM adapter was trained for (trained_block)
    block: int | None = option(None, "tokens guessed per pass", lo=1, hi=256, flag="--block")


class JacobiProposer(Proposer):
    reads_every_row = True  # observe takes the argmax of every row after the accepted ones: one head product

    def __init__(self, config: JacobiConfig) -> None:
        self.n = config.block if config.block is not None else DEFAULT_BLOCK
        self.guess: list[int] = []

    def start(self, context: Sequence[int]) -> None:
        self.guess = []

    def propose(self, context: Sequence[int]) -> Draft:
        """The current block, padded with its last guess (or the pending token) to n tokens.

        Example: n = 4, leftover guesses [7, 8] -> chain (7, 8, 8, 8).
        """
        guess = self.guess[: self.n]
        filler = guess[-1] if guess else int(context[-1])
        return Draft.chain(guess + [filler] * (self.n - len(guess)))

    def observe(self, obs: Observation) -> None:
        """Keep the Jacobi update of the positions after the bonus token.

        Example: block (a, b, c, d) with a accepted and bonus x at the block's 2nd position:
        rows 2..4 of the logits (fed b, c, d) predict the 3rd to 5th positions -> next guesses.
        """
        k = len(obs.verdict.accepted)
        # the block as fed: the loop may have cut it short (the budget, a grammar) or added a branch
        # after it (a grammar's forced tokens); a path through such a branch leaves nothing to refine
        fed = next((i for i, p in enumerate(obs.draft.parents) if p != i - 1), len(obs.draft))
        if tuple(obs.verdict.accepted) != tuple(range(k)) or k >= fed:
            self.guess = []
            return
        self.guess = obs.logits[k + 1 : fed + 1].argmax(dim=-1).tolist()  # [fed - k]


def trained_block(model, default: int = DEFAULT_BLOCK) -> int:
    """The block a CLLM adapter of a loaded model was trained for (its ``polyverse.json``), else ``default``:
    a consistency fine-tune fixes the tokens of the blocks it saw, and each deeper guess costs a fed token."""
    meta = model.adapter if model is not None else {}
    block = meta.get("block") if meta.get("method") == "cllm" else None
    return block if isinstance(block, int) and 1 <= block <= 256 else default


def make(config: JacobiConfig, ctx) -> JacobiProposer:
    if config.block is None:
        config = replace(config, block=trained_block(ctx.model))
    return JacobiProposer(config)


registry.register("jacobi", JacobiConfig, make, "Jacobi / CLLM decoding: refine a block of guesses in parallel")
