"""The backend protocol: one forward pass over a feed, and operations on the KV cache.

A backend holds a committed context (KV entries of tokens that are part of the output).
``forward`` appends the feed's entries as *pending*; ``commit`` keeps a chosen subset of the
pending entries (those of the accepted path) and drops the rest. Visibility is given by the
feed's branches (parents), never as a raw mask, so that backends other than transformers
(llama.cpp sequence ids) can serve the same methods. Every cell belongs to a set of sequence
ids (0 unless a feed says otherwise); a fed token sees the cells of its own sequence.
"""

from __future__ import annotations

from typing import Protocol, Sequence, runtime_checkable

import torch

from ..layout import Feed


@runtime_checkable
class Backend(Protocol):
    vocab_size: int
    max_length: int  # the model's context window, in tokens

    @property
    def length(self) -> int:
        """Number of committed KV entries."""

    def forward(self, feed: Feed, logits_for: Sequence[int] | None = None) -> torch.Tensor:
        """Run one pass; returns float32 logits [len(logits_for), V] (all feed rows when None).

        The feed's entries stay pending until ``commit``; a second forward commits nothing
        implicitly and is an error.
        """

    def commit(self, keep: Sequence[int]) -> None:
        """Keep the pending entries at these feed indices (ascending), drop the other pending ones."""

    def copy_seq(self, src: int, dst: int) -> None:
        """Every committed cell of sequence ``src`` joins sequence ``dst`` too (shares a prefix)."""

    def drop_seq(self, seq: int) -> None:
        """No committed cell belongs to ``seq`` any more."""

    def truncate(self, length: int) -> None:
        """Drop committed entries beyond ``length`` (and any pending ones)."""

    def fork(self) -> "Backend":
        """An independent copy of this backend's committed state (same weights, copied cache)."""

    def reset(self) -> None:
        """Forget every entry."""
