"""`ar`: plain autoregressive decoding, the reference every method must match."""

from __future__ import annotations

from typing import Sequence

from ..draft import Draft
from ..loop import Proposer
from ..options import method_options
from ..registry import registry


@method_options("ar")
class ARConfig:
    """Plain decoding has no options."""


class ARProposer(Proposer):
    """Proposes nothing: each pass feeds the pending token and yields one token."""

    forced_drafts = False  # the one-token reference, under a grammar too

    def propose(self, context: Sequence[int]) -> Draft:
        return Draft.empty()


def make(config: ARConfig, ctx) -> ARProposer:
    return ARProposer()


registry.register("ar", ARConfig, make, "plain autoregressive decoding: one token per pass (the reference)")
