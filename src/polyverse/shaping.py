"""Shaping the target distribution: logit bias, presence and frequency penalties, and a grammar.

Each changes the logits the next token is chosen from, as a function of the output written before
it. In a speculative pass the row of a draft node continues the output *and the draft path above
the node*, so each row is shaped as that sequence would be: the penalties count the path's tokens
too and the grammar walks the path. Verification then checks the draft against exactly the
distribution plain decoding would use at that point, which keeps every method lossless under
shaping (greedy identical to shaped ``ar``, sampling with the same shaped distribution).

Before the pass a deterministic draft is cut where the grammar refuses it (such a node could never
be accepted), and the tokens the grammar forces next are added as one more candidate: they are
certain wherever the model's own tokenization agrees, so a method drafts them without guessing.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch

from .draft import Draft
from .errors import ConfigError

MAX_PENALTY = 2.0  # OpenAI's range for presence and frequency penalties: -2 .. 2
MAX_BIAS = 100.0  # and for logit_bias values: -100 .. 100
MAX_BIASED = 300  # tokens one request may bias


@dataclass(frozen=True)
class Penalties:
    """OpenAI's presence and frequency penalties and logit bias: the logit of token t is raised by
    ``bias[t]`` and lowered by ``presence * [count(t) > 0] + frequency * count(t)``, where count(t) is how
    often t occurs in the output so far (not the prompt)."""

    presence: float = 0.0
    frequency: float = 0.0
    logit_bias: tuple[tuple[int, float], ...] = ()  # (token id, bias), sorted by id

    def __post_init__(self) -> None:
        for name in ("presence", "frequency"):
            value = getattr(self, name)
            if not -MAX_PENALTY <= value <= MAX_PENALTY:
                raise ConfigError(f"{name}_penalty must be in -{MAX_PENALTY:g}..{MAX_PENALTY:g}, got {value}")
        if len(self.logit_bias) > MAX_BIASED:
            raise ConfigError(f"logit_bias sets {len(self.logit_bias)} tokens; at most {MAX_BIASED}")
        for token, bias in self.logit_bias:
            if token < 0:
                raise ConfigError(f"logit_bias names token id {token}: ids are >= 0")
            if not -MAX_BIAS <= bias <= MAX_BIAS:
                raise ConfigError(f"logit_bias of token {token} is {bias}; biases are in -{MAX_BIAS:g}..{MAX_BIAS:g}")

    @classmethod
    def of(cls, presence: float = 0.0, frequency: float = 0.0, logit_bias=None) -> "Penalties":
        """From API arguments: ``logit_bias`` a mapping of token id (int or its decimal string) to bias."""
        items = []
        for key, value in dict(logit_bias or {}).items():
            try:
                token = int(key)
            except (TypeError, ValueError):
                raise ConfigError(f"logit_bias keys are token ids, got {key!r}") from None
            items.append((token, float(value)))
        return cls(float(presence), float(frequency), tuple(sorted(items)))

    def __bool__(self) -> bool:
        return bool(self.presence or self.frequency or self.logit_bias)

    def check_vocab(self, vocab: int) -> None:
        """Raise ConfigError when ``logit_bias`` names a token outside a vocabulary of ``vocab`` ids."""
        bad = next((t for t, _ in self.logit_bias if t >= vocab), None)
        if bad is not None:
            raise ConfigError(f"logit_bias names token id {bad}, outside the vocabulary (0 to {vocab - 1})")


class Shaper:
    """One request's shaping: ``penalties`` (or none) and a ``grammar.GrammarState`` (or none), over
    logits rows of width ``vocab``. ``advance`` moves it with the request's accepted output."""

    def __init__(self, vocab: int, penalties: Penalties | None = None, grammar=None, forced_drafts: bool = True) -> None:
        self.vocab = vocab
        self.penalties = penalties if penalties else None
        self.grammar = grammar
        self.forced_drafts = forced_drafts
        self.counts = torch.zeros(vocab)  # [V] occurrences of each token in the output so far
        self.bias = None
        if self.penalties and self.penalties.logit_bias:
            self.penalties.check_vocab(vocab)
            self.bias = torch.zeros(vocab)  # [V]
            for token, value in self.penalties.logit_bias:
                self.bias[token] = value

    def draft(self, draft: Draft, max_depth: int) -> Draft:
        """A deterministic ``draft`` cut where the grammar refuses it, with the grammar's forced tokens
        added as a candidate, no node deeper than ``max_depth``.

        A sampled draft (with probabilities q) is left whole: verification must reject its refused
        tokens itself, because the residual it then samples from, max(0, p - q), is what keeps the
        output distributed as p; dropping the node would sample from p instead, which is biased.
        A deterministic draft's refused token would be rejected for certain with p unchanged, so
        cutting it changes nothing but the cost of the pass."""
        if self.grammar is None or draft.probs is not None:
            return draft
        if len(draft):
            draft = draft.only(self._allowed(draft))
        if self.forced_drafts and max_depth > 0:
            forced = self.grammar.forced()[:max_depth]
            if forced:
                draft = Draft.tree([forced], base=draft)
        return draft

    def _allowed(self, draft: Draft) -> list[int]:
        """Nodes whose whole path from the root the grammar allows, in draft order."""
        paths = draft.paths()
        leaves = set(range(len(draft))) - {p for p in draft.parents if p >= 0}
        ok: set[int] = set()
        for leaf in sorted(leaves):
            nodes = paths[leaf]
            good = self.grammar.valid([draft.tokens[i] for i in nodes])
            ok.update(nodes[:good])
        return sorted(ok)

    def rows(self, logits, draft: Draft) -> "ShapedRows":
        """The pass's logits (row 0 the pending token, row i + 1 draft node i) as verification reads them."""
        return ShapedRows(logits, draft, self)

    def shape(self, row: torch.Tensor, path: Sequence[int]) -> torch.Tensor:
        """One row's logits [V] after the output so far followed by ``path``: biased, penalised, masked."""
        row = row.float().clone()
        if self.bias is not None:
            row += self.bias
        if self.penalties and (self.penalties.presence or self.penalties.frequency):
            counts = self.counts
            if path:
                counts = counts + torch.bincount(torch.tensor(list(path)), minlength=self.vocab)[: self.vocab]
            row -= self.penalties.frequency * counts + self.penalties.presence * (counts > 0).float()
        if self.grammar is not None:
            row.masked_fill_(~self.grammar.mask(path), float("-inf"))
        return row

    def advance(self, tokens: Sequence[int]) -> None:
        """The request's accepted output tokens of the last pass."""
        if tokens:
            self.counts += torch.bincount(torch.tensor([int(t) for t in tokens]), minlength=self.vocab)[: self.vocab]
        if self.grammar is not None:
            self.grammar.advance(tokens)


class ShapedRows:
    """A pass's logits with each row shaped for its own path, computed when first read. Indexing as
    ``logits.Logits``: an int gives a row [V], a list of ints [k, V]."""

    def __init__(self, logits, draft: Draft, shaper: Shaper) -> None:
        self.logits = logits
        self.shaper = shaper
        paths = draft.paths()
        self.paths = [()] + [tuple(draft.tokens[i] for i in p) for p in paths]  # per feed row
        self._rows: dict[int, torch.Tensor] = {}

    def __len__(self) -> int:
        return len(self.logits)

    @property
    def shape(self) -> tuple[int, int]:
        return (len(self), self.shaper.vocab)

    def __getitem__(self, idx) -> torch.Tensor:
        if isinstance(idx, int):
            if idx < 0:
                idx += len(self)
            if idx not in self._rows:
                self._rows[idx] = self.shaper.shape(self.logits[idx], self.paths[idx])
            return self._rows[idx]  # [V]
        rows = list(range(len(self)))[idx] if isinstance(idx, slice) else [int(i) for i in idx]
        if not rows:
            return torch.empty(0, self.shaper.vocab)
        return torch.stack([self[r] for r in rows])  # [len(rows), V]
