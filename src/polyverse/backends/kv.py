"""A KV cache layer that grows in place, for the transformers backend.

transformers' ``DynamicLayer.update`` concatenates the whole cache with the new states on every
pass (``torch.cat``), so each pass copies every layer's keys and values once more: a cost that
grows with the context. ``GrowingLayer`` keeps key/value buffers [B, H, capacity, D] and a length
instead: a pass writes its states into the free slice and gets views [B, H, length, D] back
(strided, last dimension contiguous: torch's CPU flash sdpa reads them as they are, no copy, same
time and bit-identical output as on contiguous tensors); the buffers are copied only when the
capacity runs out, which doubles it (up to the model's context window), so a long decode copies
its cache O(log n) times instead of once per pass. Dropping entries is a length change.

The cost of a pass's cache updates then stays flat as the context grows instead of growing with
it; a whole pass gains a few percent on long contexts (figures in BENCHMARKS.md and the git history).

Everything transformers reads or writes through ``keys`` / ``values`` still works: they are
properties over the buffers, and assigning them (offloading, beam reordering, batch selection)
adopts the assigned tensor as the new buffer.
"""

from __future__ import annotations

import copy
from functools import partial

import torch
from transformers import DynamicCache
from transformers.cache_utils import DynamicLayer

MIN_CAPACITY = 256  # entries allocated at least on the first update (about 12 MB for SmolLM2's 30 layers)


def capacity_for(needed: int, current: int, limit: int | None, least: int = MIN_CAPACITY) -> int:
    """The new capacity when ``needed`` entries do not fit in ``current``: doubled (at least
    ``least``), never above ``limit`` unless ``needed`` itself is.

    >>> capacity_for(300, 256, 2048), capacity_for(1500, 1024, 2048), capacity_for(3000, 2048, 2048)
    (512, 2048, 3000)
    >>> capacity_for(5, 0, 2048, least=4), capacity_for(1800, 1024, 2048)
    (5, 2048)
    """
    grown = max(2 * current, least)
    if limit:
        grown = min(grown, limit)
    return max(grown, needed)


class GrowingLayer(DynamicLayer):
    """``DynamicLayer`` with preallocated buffers: same contents, same lengths, no per-pass copy.

    ``max_length``: the capacity never grows past it unless one update needs more (the model's
    ``max_position_embeddings``; None = no cap). ``least``: the capacity of the first allocation
    at least (tests use a small one to exercise growth).
    """

    def __init__(self, max_length: int | None = None, least: int = MIN_CAPACITY, **kwargs) -> None:
        self._k: torch.Tensor | None = None  # [B, H, capacity, Dk]
        self._v: torch.Tensor | None = None  # [B, H, capacity, Dv]
        self._len = 0
        self.max_length = max_length
        self.least = least
        super().__init__(**kwargs)

    # keys/values as DynamicLayer has them: the used part of the buffers ----------------------------

    @property
    def keys(self) -> torch.Tensor | None:
        return None if self._k is None else self._k[..., : self._len, :]  # [B, H, length, Dk]

    @keys.setter
    def keys(self, tensor: torch.Tensor | None) -> None:
        self._k = tensor
        self._len = _length(tensor)

    @property
    def values(self) -> torch.Tensor | None:
        return None if self._v is None else self._v[..., : self._len, :]  # [B, H, length, Dv]

    @values.setter
    def values(self, tensor: torch.Tensor | None) -> None:
        self._v = tensor
        self._len = _length(tensor)

    @property
    def capacity(self) -> int:
        return 0 if self._k is None else self._k.shape[-2]

    # the cache layer interface ------------------------------------------------------------------

    def lazy_initialization(self, key_states: torch.Tensor, value_states: torch.Tensor) -> None:
        self.dtype, self.device = key_states.dtype, key_states.device
        self._k = key_states.new_empty((*key_states.shape[:-2], 0, key_states.shape[-1]))  # [B, H, 0, Dk]
        self._v = value_states.new_empty((*value_states.shape[:-2], 0, value_states.shape[-1]))  # [B, H, 0, Dv]
        self._len = 0
        self.is_initialized = True

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args, **kwargs) -> tuple[torch.Tensor, torch.Tensor]:
        """Write the new states [B, H, q, D] after the cached ones; return views of all of them."""
        if not self.is_initialized:
            self.lazy_initialization(key_states, value_states)
        start = self._len
        end = start + key_states.shape[-2]
        if end > self.capacity:
            self._reserve(end)
        self._k[..., start:end, :].copy_(key_states)
        self._v[..., start:end, :].copy_(value_states)
        self._len = end
        return self.keys, self.values  # [B, H, end, D] views of the buffers

    def get_seq_length(self) -> int:
        return self._len if self.is_initialized else 0

    def crop(self, tokens_to_remove: int) -> None:
        """Drop the last ``-tokens_to_remove`` entries: a length change, the buffers stay."""
        if tokens_to_remove > 0:  # DynamicLayer's own handling (an error in 5.25, an absolute length before)
            super().crop(tokens_to_remove)
            return
        if tokens_to_remove == 0 or not self.is_initialized:
            return
        self._len = max(0, self._len + tokens_to_remove)

    def keep(self, start: int, index: torch.Tensor) -> None:
        """Keep the entries below ``start`` and the entries ``start + index`` (ascending) right after
        them, in that order; drop the rest. In place: the kept rows are gathered, then written back.

        Example: length 7, start 4, index [0, 2] -> entries 0 1 2 3 4 6, length 6.
        """
        n = len(index)
        rows = index.to(self._k.device) + start  # [n]
        # the buffers may be inference tensors (made during a pass): writes to them need inference mode
        with torch.inference_mode():
            self._k[..., start : start + n, :] = self._k.index_select(-2, rows)  # [B, H, n, Dk]
            self._v[..., start : start + n, :] = self._v.index_select(-2, rows)  # [B, H, n, Dv]
        self._len = start + n

    def _reserve(self, needed: int) -> None:
        """Make room for ``needed`` entries: new buffers, the used part copied once."""
        cap = capacity_for(needed, self.capacity, self.max_length, self.least)
        k = self._k.new_empty((*self._k.shape[:-2], cap, self._k.shape[-1]))  # [B, H, cap, Dk]
        v = self._v.new_empty((*self._v.shape[:-2], cap, self._v.shape[-1]))  # [B, H, cap, Dv]
        k[..., : self._len, :].copy_(self._k[..., : self._len, :])
        v[..., : self._len, :].copy_(self._v[..., : self._len, :])
        self._k, self._v = k, v

    def __deepcopy__(self, memo: dict) -> "GrowingLayer":
        """A copy with buffers of its own, of the same capacity; only the used entries are copied."""
        other = self.__class__.__new__(self.__class__)
        memo[id(self)] = other
        for name, value in self.__dict__.items():
            if name in ("_k", "_v") and value is not None:
                buf = value.new_empty(value.shape)  # [B, H, capacity, D]
                with torch.no_grad():
                    buf[..., : self._len, :].copy_(value[..., : self._len, :])
                value = buf
            else:
                value = copy.deepcopy(value, memo)
            other.__dict__[name] = value
        return other


def _length(tensor: torch.Tensor | None) -> int:
    return tensor.shape[-2] if tensor is not None and tensor.dim() >= 2 else 0


def growing_cache(config, max_length: int | None = None, least: int = MIN_CAPACITY) -> DynamicCache:
    """``DynamicCache(config=config)`` whose full-attention layers are ``GrowingLayer``s.

    The cache stays a ``DynamicCache`` (some models check for one) and keeps the layer classes its
    config dispatch chose for other layer types (sliding window, linear attention, ...): only plain
    ``DynamicLayer`` entries of its ``layers`` list are replaced, as are the lazily added layers of
    a cache built without per-layer types.
    """
    cache = DynamicCache(config=config)
    make = partial(GrowingLayer, max_length=max_length, least=least)
    cache.layers = [make() if type(layer) is DynamicLayer else layer for layer in cache.layers]
    if getattr(cache, "layer_class_to_replicate", None) is DynamicLayer:
        cache.layer_class_to_replicate = make
    return cache
