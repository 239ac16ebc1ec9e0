"""`prompt_lookup`: draft by copying what followed earlier occurrences of the current suffix.

The last n tokens (n = ngram down to 1) are looked up in the prompt and the text so far; the
tokens that followed each match are candidate continuations, merged into a tree and verified
together in one pass. No second model, no training: strong on input-grounded tasks (rewriting,
editing code, summarising) where the output copies spans of the input.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

from ..draft import Draft
from ..errors import ConfigError
from ..loop import Observation
from ..ngrams import NgramIndex


@dataclass(frozen=True)
class PromptLookupConfig:
    num_tokens: int = 10  # most tokens drafted per candidate
    ngram: int = 3  # longest suffix n-gram matched
    candidates: int = 3  # most continuations verified at once (as a tree)

    def __post_init__(self) -> None:
        for name, lo, hi in (("num_tokens", 1, 128), ("ngram", 1, 16), ("candidates", 1, 64)):
            v = getattr(self, name)
            if not isinstance(v, int) or not lo <= v <= hi:
                raise ConfigError(f"prompt_lookup {name} must be an integer in [{lo}, {hi}], got {v!r}")


class PromptLookupProposer:
    def __init__(self, config: PromptLookupConfig) -> None:
        self.cfg = config
        self.index = NgramIndex(config.ngram)

    def start(self, context: Sequence[int]) -> None:
        self.index = NgramIndex(self.cfg.ngram)
        self.index.extend(context)

    def propose(self, context: Sequence[int]) -> Draft:
        self.index.extend(context)
        return Draft.tree(self.index.continuations(self.cfg.num_tokens, self.cfg.candidates))

    def observe(self, obs: Observation) -> None:
        pass


def make(config: PromptLookupConfig, ctx) -> PromptLookupProposer:
    return PromptLookupProposer(config)
