"""The transformers backend: a causal LM, a DynamicCache, and a 4D additive mask per pass.

No model files are forked and nothing in transformers is patched: the model receives
``attention_mask`` [1, 1, q, kv] and ``position_ids`` [1, q] through its public forward, and the
cache is trimmed through the cache layers' own methods; its full-attention layers grow in place
(``kv.GrowingLayer``) instead of concatenating the whole cache on every pass. The passes run on
the model's decode-time view, prepared once (``cpu.prepare.DecodeModel``: the CPU products, the
grouped-head attention, the LM head apart); this module keeps the feeds, masks, the cache and the
sequence cells.
"""

from __future__ import annotations

import copy
import inspect
from typing import Sequence

import torch
from transformers import PreTrainedModel

from ..layout import Feed, additive_mask, is_plain_chain, visible as layout_visible
from ..logits import Logits, first_maxes
from .cpu.lean import LeanCache
from .cpu.prepare import DecodeModel
from .kv import GrowingLayer, growing_cache


def cache_kwarg(module) -> str:
    """The name ``module.forward`` takes the KV cache under: ``cache`` in newer transformers 5 releases
    (``past_key_values`` is deprecated there and goes in 5.40), ``past_key_values`` before them."""
    return "cache" if "cache" in inspect.signature(module.forward).parameters else "past_key_values"


class TransformersBackend:
    def __init__(self, model: PreTrainedModel, packed_weights: bool | None = None,
                 row_kernel: bool | None = None, *, decode_model: DecodeModel | None = None,
                 dtype: str | None = None, lean: bool | None = None) -> None:
        """``decode_model``: the model's prepared decode view to share (``session``); by default one is
        prepared here: ``dtype`` (fp32, bf16, int8) and ``lean`` choose the lean CPU pass
        (``cpu.prepare.choose_lean``: None = where it runs and pays), else ``row_kernel`` and
        ``packed_weights`` choose the transformers pass's products (``cpu.prepare.choose``)."""
        self.model = model
        cfg = model.config.get_text_config(decoder=True)
        self.vocab_size = int(cfg.vocab_size)
        self.max_length = int(getattr(cfg, "max_position_embeddings", 0) or 2048)
        self.dtype = next(model.parameters()).dtype
        self.device = next(model.parameters()).device
        if decode_model is not None and decode_model.model is not model:
            raise ValueError("the decode model was prepared for another model")
        self.decode_model = (decode_model if decode_model is not None
                             else DecodeModel(model, packed_weights, row_kernel, dtype=dtype, use_lean=lean))
        self.lean = self.decode_model.lean  # the lean pass, or None: transformers' forward
        self.weights = self.decode_model.dtype  # the weight type passes run in: fp32, bf16, int8
        self.cache = self._empty_cache()
        self._committed = 0
        self._pending = 0
        self._cells: torch.Tensor | None = None  # [S, committed + pending] bool: cell c in sequence s; None = all in 0
        self._cache_key = cache_kwarg(model)
        base = getattr(model, getattr(model, "base_model_prefix", ""), None)
        self._base_cache_key = cache_kwarg(base) if self.decode_model.head is not None else self._cache_key

    @property
    def length(self) -> int:
        return self._committed

    @property
    def torch_model(self) -> PreTrainedModel:
        """The model as loaded (its stock modules; the passes run on its decode view)."""
        return self.model

    def _empty_cache(self):
        return self.lean.cache(self.max_length) if self.lean is not None else growing_cache(self.model.config, self.max_length)

    def cost_key(self) -> str:
        n = sum(p.numel() for p in self.model.parameters())
        path = f"lean-{self.lean.dtype}-{self.lean.isa}" if self.lean is not None else str(self.dtype)
        if self.lean is not None and self.lean.screen is not None:
            path += "-screen"  # argmaxes from the screen: cheaper passes
        return f"transformers|{n}|{path}|{self.device}"

    def session(self) -> "TransformersBackend":
        """A backend with an empty cache over the same weights and the same prepared decode model."""
        return TransformersBackend(self.model, decode_model=self.decode_model)

    def moved(self, device: torch.device) -> "TransformersBackend":
        """Move the model to ``device`` and return a backend for it (its decode view prepared again)."""
        self.model.to(device)
        keep = self.weights if device.type == "cpu" and self.lean is not None else None
        return TransformersBackend(self.model, dtype=keep)

    @torch.inference_mode()
    def forward(self, feed: Feed, logits_for: Sequence[int] | None = None) -> Logits:
        """Logits of the named rows ([len(logits_for), V], projected at once); of every row when None
        (projected as they are read)."""
        if self._pending:
            raise RuntimeError("forward called with pending entries: commit first")
        past = self._committed
        q = len(feed)
        if past + q > self.max_length:
            raise ValueError(f"context window of {self.max_length} tokens exceeded ({past} + {q})")
        if self.lean is not None:
            return self._lean_forward(feed, past, logits_for)
        ids = torch.tensor([feed.tokens], device=self.device)  # [1, q]
        pos = torch.tensor([feed.positions], device=self.device)  # [1, q]
        mask = None
        context = self._context(feed, past)  # [q, past] bool or None (= all visible)
        if context is not None or not is_plain_chain(feed, past):
            mask = additive_mask(feed.parents, past, self.dtype, context).to(self.device)  # [1, 1, q, kv]
        kwargs = dict(input_ids=ids, position_ids=pos, attention_mask=mask, use_cache=True)
        head = self.decode_model.head
        if head is not None:
            body = self.decode_model.body(q)
            hidden = body(**kwargs, **{self._base_cache_key: self.cache}).last_hidden_state[0]  # [q, H]
            self._pending = q
            if logits_for is None:
                return Logits(hidden, head, self.vocab_size)
            rows = list(logits_for)
            if not rows:
                return Logits.of(torch.empty(0, self.vocab_size))
            return Logits.of(head(hidden[rows]))  # [len(logits_for), V]
        if logits_for is None:
            keep: int | torch.Tensor = 0
        elif list(logits_for) == list(range(q - len(logits_for), q)):
            keep = len(logits_for)  # a suffix (commonly the last token): the cheap path
            if keep == 0:
                keep = torch.empty(0, dtype=torch.long)
        else:
            keep = torch.tensor(list(logits_for), dtype=torch.long, device=self.device)
        out = self.decode_model.lm(q)(**kwargs, **{self._cache_key: self.cache}, logits_to_keep=keep)
        self._pending = q
        return Logits.of(out.logits[0].float())  # [len(logits_for) or q, V]

    def _lean_forward(self, feed: Feed, past: int, logits_for: Sequence[int] | None) -> Logits:
        """The pass on the lean CPU forward: hidden rows, then the head on the rows asked for."""
        ids, pos, visible = self._lean_inputs(feed, past)
        hidden = self.lean.forward(torch.tensor(ids, dtype=torch.long), torch.tensor(pos, dtype=torch.long), visible,
                                   self.cache, past)  # [q, H]
        self.cache.length = past + len(feed)
        self._pending = len(feed)
        screen = self.lean.screen
        if logits_for is None:
            return Logits(hidden, self.lean.project, self.vocab_size, screen=screen)
        rows = list(logits_for)
        if not rows:
            return Logits.of(torch.empty(0, self.vocab_size))
        if screen is not None and rows == list(range(len(feed))):
            # every row screened in one product; a row's exact argmax settled when it is read
            # (``top``, ``guesses``), so rows only drafted from (SPACE's mask groups) cost no bound
            logits = Logits(hidden, self.lean.project, self.vocab_size, screen=screen)
            logits.screened(rows, settle=False)
            return logits
        return Logits.of(self.lean.project(hidden[rows]))  # [len(logits_for), V]

    def _lean_inputs(self, feed: Feed, past: int) -> tuple[Sequence[int], Sequence[int], torch.Tensor | None]:
        """ids [q], positions [q] and visibility [q, past + q] (None: a causal chain) of a lean pass;
        records the feed's cells as pending."""
        ids, pos = feed.tokens, feed.positions  # [q] each
        context = self._context(feed, past)  # [q, past] bool or None (= all visible)
        visible = None
        if context is not None or not is_plain_chain(feed, past):
            visible = layout_visible(feed.parents, past, context)  # [q, past + q]
        return ids, pos, visible

    @property
    def shares_passes(self) -> bool:
        """Whether ``forward_many`` runs sessions of these weights in one pass (the lean CPU pass)."""
        return self.lean is not None

    @staticmethod
    @torch.inference_mode()
    def forward_many(parts: "Sequence[tuple[TransformersBackend, Feed, Sequence[int] | None]]") -> list[Logits]:
        """One pass over several sessions' feeds (``backends.base.forward_many``): on the lean CPU pass,
        every part's rows through the products together and each part's attention over its own cache,
        then one LM-head product for the rows the parts may read; elsewhere a pass per part."""
        lean = parts[0][0].lean if parts else None
        if lean is None or any(b.lean is not lean for b, _, _ in parts) or len({id(b) for b, _, _ in parts}) < len(parts):
            return [b.forward(f, lf) for b, f, lf in parts]
        inputs = []
        for b, feed, _ in parts:
            if b._pending:
                raise RuntimeError("forward called with pending entries: commit first")
            past = b._committed
            if past + len(feed) > b.max_length:
                raise ValueError(f"context window of {b.max_length} tokens exceeded ({past} + {len(feed)})")
            inputs.append((*b._lean_inputs(feed, past), b.cache, past))
        hidden = lean.forward_many(inputs)  # [Q, H]
        out: list[Logits] = []
        first, start = [], 0
        # rows a part may read: alone, the first two (the others as verification reads them, each
        # such read a head product of its own); shared, every row, since one more row in the pass's
        # head product costs far less than a later product streaming the whole head for one row
        lazy = len(parts) == 1
        for (b, feed, logits_for), (_, _, _, _, past) in zip(parts, inputs):
            q = len(feed)
            b.cache.length = past + q
            b._pending = q
            rows = list(range(min(q, 2) if lazy else q)) if logits_for is None else list(logits_for)
            first.append([start + r for r in rows])
            start += q
        flat = [r for rows in first for r in rows]
        screen = lean.screen if all(lf is None or list(lf) in ([], list(range(len(f)))) for _, f, lf in parts) else None
        if screen is not None:  # argmaxes and drafting rows from the screen, exact rows on demand
            tops, projected = screen(hidden[flat]) if flat else ([], torch.empty(0, lean.vocab))  # [len(flat), V]
        else:
            projected = lean.project(hidden[flat]) if flat else torch.empty(0, lean.vocab)  # [len(flat), V]
            tops = first_maxes(projected) if flat else []  # one call for every part's rows
        start = taken = 0
        for (b, feed, logits_for), rows in zip(parts, first):
            q = len(feed)
            mine = projected[taken: taken + len(rows)]  # [len(rows), V]
            found = tops[taken: taken + len(rows)]
            taken += len(rows)
            if screen is not None:  # the rows keep their numbers (every row, or none, was asked for)
                logits = Logits(hidden[start: start + q], lean.project, b.vocab_size, screen=screen)
                logits.take([r - start for r in rows], found, mine)
            elif logits_for is not None or not lazy:  # every row asked for (in order), or every row
                logits = Logits.of(mine) if rows else Logits.of(torch.empty(0, b.vocab_size))
                logits.tops = dict(enumerate(found))
            else:  # the first rows now, the others as verification reads them (as a pass of its own would)
                logits = Logits(hidden[start: start + q], lean.project, b.vocab_size)
                logits.rows.update({r - start: row for r, row in zip(rows, mine)})
                logits.tops.update({r - start: t for r, t in zip(rows, found)})
            out.append(logits)
            start += q
        return out

    def restore_prefix(self, tokens: Sequence[int]) -> int:
        """On an empty backend: commit the cells of the longest leading run of ``tokens`` that another
        session of these weights computed (``cpu.prefix``); returns how many (0: none)."""
        prefixes = self.decode_model.prefixes
        if prefixes is None or self._committed or self._pending or self._cells is not None:
            return 0
        n = prefixes.restore(tokens, self.cache)
        self._committed = n
        return n

    def store_prefix(self, tokens: Sequence[int]) -> None:
        """Offer the committed cells of ``tokens`` (the first committed tokens, a plain chain) to
        later sessions."""
        prefixes = self.decode_model.prefixes
        if prefixes is not None and self._cells is None and not self._pending and self._committed >= len(tokens):
            prefixes.put(tokens, self.cache)

    def _context(self, feed: Feed, past: int) -> torch.Tensor | None:
        """Which committed cells each fed token sees ([q, past]); records the feed's cells as pending."""
        if self._cells is None and (feed.seqs is None or all(s == (0,) for s in feed.seqs)):
            return None
        seqs = feed.seqs if feed.seqs is not None else ((0,),) * len(feed)
        self._grow(max(max(s) for s in seqs) + 1)
        context = self._cells[list(feed.own_seqs()), :past]  # [q, past]
        pending = torch.zeros(self._cells.shape[0], len(feed), dtype=torch.bool)  # [S, q]
        for i, ids in enumerate(seqs):
            pending[list(ids), i] = True
        self._cells = torch.cat([self._cells[:, :past], pending], dim=1)  # [S, past + q]
        return context

    def _grow(self, n_seqs: int) -> None:
        """Make the cell table exist with at least ``n_seqs`` sequences (new ones empty)."""
        if self._cells is None:
            self._cells = torch.zeros(1, self._committed, dtype=torch.bool)
            self._cells[0] = True
        if self._cells.shape[0] < n_seqs:
            extra = torch.zeros(n_seqs - self._cells.shape[0], self._cells.shape[1], dtype=torch.bool)
            self._cells = torch.cat([self._cells, extra])

    def copy_seq(self, src: int, dst: int) -> None:
        """Every committed cell of sequence ``src`` joins ``dst`` too (llama.cpp's seq_cp)."""
        if self._pending:
            raise RuntimeError("copy_seq called with pending entries: commit first")
        self._grow(max(src, dst) + 1)
        self._cells[dst] |= self._cells[src]

    def drop_seq(self, seq: int) -> None:
        """No cell belongs to ``seq`` any more (the cells stay for the other sequences)."""
        if self._pending:
            raise RuntimeError("drop_seq called with pending entries: commit first")
        self._grow(seq + 1)
        self._cells[seq] = False

    def commit(self, keep: Sequence[int]) -> None:
        keep = list(keep)
        n = self._pending
        if self._cells is not None and self._cells.shape[1] == self._committed + n:
            cols = list(range(self._committed)) + [self._committed + k for k in keep if 0 <= k < n]
            self._cells = self._cells[:, cols]
        if keep == list(range(len(keep))):
            drop = n - len(keep)
            if drop:
                self.cache.crop(-drop)  # transformers 5: a negative count of entries to remove
        else:
            if any(not 0 <= k < n for k in keep) or keep != sorted(set(keep)):
                raise ValueError(f"commit indices must be ascending feed indices below {n}: {keep}")
            picks = torch.tensor(keep, dtype=torch.long, device=self.device)  # [len(keep)] feed indices
            if isinstance(self.cache, LeanCache):
                self.cache.keep(self._committed, picks)
                self._committed += len(keep)
                self._pending = 0
                return
            index = None
            for layer in self.cache.layers:
                if isinstance(layer, GrowingLayer):
                    if layer.is_initialized:
                        layer.keep(self._committed, picks)  # in place, after the committed entries
                    continue
                if index is None:  # other layer types: rebuilt, committed entries + the kept ones
                    index = torch.cat([torch.arange(self._committed, device=self.device), picks + self._committed])
                layer.keys = layer.keys.index_select(-2, index)
                layer.values = layer.values.index_select(-2, index)
        self._committed += len(keep)
        self._pending = 0

    def truncate(self, length: int) -> None:
        total = self._committed + self._pending
        if not 0 <= length <= total:
            raise ValueError(f"cannot truncate {total} entries to {length}")
        if length < total:
            self.cache.crop(length - total)
        self._committed = min(self._committed, length)
        self._pending = 0
        if self._cells is not None:
            self._cells = self._cells[:, : self._committed]

    def fork(self) -> "TransformersBackend":
        other = copy.copy(self)
        other.cache = copy.deepcopy(self.cache)  # growing layers copy their used entries into buffers of their own
        other._cells = None if self._cells is None else self._cells.clone()
        return other

    def reset(self) -> None:
        self.cache = self._empty_cache()
        self._committed = 0
        self._pending = 0
        self._cells = None
