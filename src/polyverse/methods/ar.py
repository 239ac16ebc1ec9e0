"""`ar`: plain autoregressive decoding, the reference every method must match."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

from ..draft import Draft
from ..loop import Observation


@dataclass(frozen=True)
class ARConfig:
    """Plain decoding has no options."""


class ARProposer:
    """Proposes nothing: each pass feeds the pending token and yields one token."""

    def start(self, context: Sequence[int]) -> None:
        pass

    def propose(self, context: Sequence[int]) -> Draft:
        return Draft.empty()

    def observe(self, obs: Observation) -> None:
        pass


def make(config: ARConfig, ctx) -> ARProposer:
    return ARProposer()
