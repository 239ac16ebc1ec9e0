"""`prompt_lookup`: draft by copying what followed earlier occurrences of the current suffix.

The last n tokens (n = ngram down to 1) are looked up in the prompt and the text so far; the
tokens that followed each match are candidate continuations, merged into a tree and verified
together in one pass. No second model, no training: strong on input-grounded tasks (rewriting,
editing code, summarising) where the output copies spans of the input.
"""

from __future__ import annotations

from typing import Sequence

from ..draft import Draft
from ..loop import Proposer
from ..ngrams import NgramIndex
from ..options import method_options, option
from ..registry import registry


@method_options("prompt_lookup")
class PromptLookupConfig:
    num_tokens: int = option(10, "tokens drafted per candidate", lo=1, hi=128, flag="--num-tokens")
    ngram: int = option(3, "longest match", lo=1, hi=16, flag="--ngram")  # longest suffix n-gram matched
    candidates: int = option(3, "continuations per pass", lo=1, hi=64, flag="--candidates")  # verified as a tree


class PromptLookupProposer(Proposer):
    def __init__(self, config: PromptLookupConfig) -> None:
        self.cfg = config
        self.index = NgramIndex(config.ngram)

    def start(self, context: Sequence[int]) -> None:
        self.index = NgramIndex(self.cfg.ngram)
        self.index.extend(context)

    def propose(self, context: Sequence[int]) -> Draft:
        self.index.extend(context)
        return Draft.tree(self.index.continuations(self.cfg.num_tokens, self.cfg.candidates))


def make(config: PromptLookupConfig, ctx) -> PromptLookupProposer:
    return PromptLookupProposer(config)


registry.register("prompt_lookup", PromptLookupConfig, make,
                  "copy what followed earlier matches of the last n-gram (prompt and output), as a tree")
