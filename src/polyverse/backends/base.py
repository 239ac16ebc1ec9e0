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
from ..logits import Logits


@runtime_checkable
class Backend(Protocol):
    vocab_size: int
    max_length: int  # the model's context window, in tokens

    @property
    def length(self) -> int:
        """Number of committed KV entries."""

    @property
    def torch_model(self) -> torch.nn.Module | None:
        """The torch module this backend runs, as loaded (early-exit drafting cuts its layers), or
        None where the backend runs no torch module (llama.cpp)."""

    def forward(self, feed: Feed, logits_for: Sequence[int] | None = None) -> Logits:
        """Run one pass; returns float32 logits [len(logits_for), V] (all feed rows when None), as
        ``Logits``: rows by int, slice or list, iterable, ``full()``.

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

    def session(self) -> "Backend":
        """A new backend with an empty cache over the same weights (and whatever was prepared for them
        once, shared), for one request among several decoding at once."""

    def moved(self, device: torch.device) -> "Backend":
        """Move the weights to ``device`` and return a backend that decodes there; a ConfigError
        where this backend cannot move."""

    # optional: ``forward_many(parts)``, a static method: one pass over several sessions of the same
    # weights, parts of (session, feed, logits_for) -> one Logits per part (``forward_many`` below),
    # and ``shares_passes``, True where it really runs them in one pass

    def cost_key(self) -> str:
        """What identifies this backend's pass costs apart from the model's name: its kind, weights
        and where they run (e.g. "transformers|134515008|torch.float32|cpu")."""


def forward_many(parts: Sequence[tuple[Backend, Feed, Sequence[int] | None]]) -> list[Logits]:
    """One pass over several requests: each part is (a session backend, its feed, the logits rows it
    reads), as ``Backend.forward`` takes them; returns one ``Logits`` per part. Each part's rows see
    only its own session's cells, and their logits are those a pass of its own would give (the
    backend's products sum each row alone). Backends that can batch sessions of the same weights
    define ``forward_many`` as a static method; the others run a pass per part.

    Example: parts [(a, feed of 3 tokens, None), (b, feed of 1 token, [0])] -> [Logits 3 x V, Logits 1 x V].
    """
    if not parts:
        return []
    kind = type(parts[0][0])
    many = getattr(kind, "forward_many", None)
    if many is not None and all(type(b) is kind for b, _, _ in parts):
        return many(parts)
    return [b.forward(feed, rows) for b, feed, rows in parts]
