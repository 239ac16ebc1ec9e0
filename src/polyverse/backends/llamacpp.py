"""The llama.cpp backend: the same protocol over llama-cpp-python's low-level API.

Visibility is llama.cpp's own: every KV cell belongs to a set of sequence ids and a token sees
the cells of its (first) sequence at positions up to its own. The committed context is sequence 0.

- A plain chain is decoded in sequence 0.
- A draft tree gets one sequence per leaf (1, 2, ...); a node belongs to the sequences of the
  leaves below it, so its ancestors are exactly what it sees. Before the pass the context is
  shared into those sequences (``seq_cp`` of sequence 0: no data moves with a unified cache).
  ``commit`` keeps the accepted cells that directly follow the root in cell order and removes
  the rest; accepted tokens behind a removed cell are fed again, as a chain, at the start of the
  next pass. (A new token stored in a freed cell that lies before cells it attends to gives
  different logits in llama.cpp, by up to 0.6 here: measured, so the backend never does that.)
- Explicit ``Feed.seqs`` (the Multiverse engine) are used as they are. llama.cpp lets a token
  join several sequences in one batch only while their cells match; a join that does not (a
  closing path joining its parent) is applied after the pass with ``seq_cp``.

Logits are requested only for the rows a method reads, and read where llama.cpp wrote them
(``logits.Borrowed``: a plain greedy step copies none). Install with ``pip install 'polyverse[llamacpp]'``.
"""

from __future__ import annotations

import ctypes
import os
import sys
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from ..errors import ConfigError
from ..layout import Feed
from ..logits import Borrowed, Logits
from .cpu import features

MAX_SEQS = 64


def _lib():
    try:
        import llama_cpp
    except ImportError:
        raise ConfigError("the llama.cpp backend needs llama-cpp-python: pip install 'polyverse[llamacpp]'") from None
    return llama_cpp


def _cpu_has_amx(cpuinfo: str = features.SYSTEM) -> bool:
    return "amx_int8" in features.cpuinfo(cpuinfo)[1]


class LlamaCppBackend:
    """A GGUF model in a llama.cpp context (unified KV cache, up to MAX_SEQS sequences)."""

    whole_context = True  # each session's context allocates its whole window at once

    def __init__(self, gguf: str | os.PathLike, n_ctx: int = 2048, n_batch: int = 512, threads: int | None = None,
                 weights: "_Weights | None" = None) -> None:
        """``weights``: the loaded model of another backend over the same file to share (``session``)."""
        ll = _lib()
        self.ll = ll
        path = Path(gguf)
        if weights is None:
            if not path.is_file():
                raise ConfigError(f"no GGUF file {path}")
            weights = _Weights(ll, path)
        self.weights = weights  # kept alive as long as any context over it
        self.model = weights.model
        cparams = ll.llama_context_default_params()
        cparams.n_ctx = n_ctx
        cparams.n_batch = n_batch
        cparams.n_ubatch = n_batch
        cparams.n_seq_max = MAX_SEQS
        cparams.kv_unified = True
        cparams.n_threads = cparams.n_threads_batch = threads or max(1, torch.get_num_threads())
        self.ctx = ll.llama_init_from_model(self.model, cparams)
        if not self.ctx:
            raise ConfigError(f"llama.cpp cannot create a context for {path}")
        self.mem = ll.llama_get_memory(self.ctx)
        vocab = ll.llama_model_get_vocab(self.model)
        self.vocab_size = int(ll.llama_vocab_n_tokens(vocab))
        self.max_length = int(ll.llama_n_ctx(self.ctx))
        self.path = path
        self._batch = ll.llama_batch_init(n_batch, 0, MAX_SEQS)
        self._n_batch = n_batch
        self._threads = threads
        self._committed = 0
        self._pending: list[tuple[int, int]] = []  # (position, first seq) of the pending feed, feed order
        self._feed: Feed | None = None
        self._leaf_seqs: list[tuple[int, ...]] = []
        self._late: list[tuple[int, int, int]] = []  # (src seq, dst seq, position): joins applied at commit
        self._refeed: list[tuple[int, int]] = []  # accepted (token, position) to feed again before the next pass
        self._extra = 0  # tokens fed again at the start of the pending pass
        self._lent: Borrowed | None = None  # the last pass's logits, in llama.cpp's memory (``_lend``)
        self._window = (0, np.empty((0, self.vocab_size), np.float32))  # (address, rows there) read last

    def meta(self, key: str) -> str | None:
        """A metadata value of the loaded GGUF as text, or None when the file has no such key."""
        n = self.ll.llama_model_meta_val_str(self.model, key.encode(), None, 0)  # its length, or -1
        if n < 0:
            return None
        buf = ctypes.create_string_buffer(n + 1)
        self.ll.llama_model_meta_val_str(self.model, key.encode(), buf, n + 1)
        return buf.value.decode("utf-8", errors="replace")

    @property
    def length(self) -> int:
        return self._committed

    @property
    def torch_model(self) -> None:
        """None: llama.cpp runs no torch module."""
        return None

    def cost_key(self) -> str:
        return f"llamacpp|{self.path.resolve()}|{self.path.stat().st_size}"

    def session(self) -> "LlamaCppBackend":
        """A backend with an empty cache over the same loaded weights (a llama.cpp context of its own),
        with this one's context size, batch and threads."""
        return LlamaCppBackend(self.path, n_ctx=self.max_length, n_batch=self._n_batch, threads=self._threads,
                               weights=self.weights)

    def moved(self, device: torch.device) -> "LlamaCppBackend":
        raise ConfigError("only the transformers backend can move to another device")

    # -- the pass ---------------------------------------------------------------------------
    def forward(self, feed: Feed, logits_for: Sequence[int] | None = None) -> Logits:
        if self._pending:
            raise RuntimeError("forward called with pending entries: commit first")
        extra = len(self._refeed)
        if extra:
            feed, logits_for = self._with_refeed(feed, logits_for)
        q = len(feed)
        if self._committed + q > self.max_length:
            raise ValueError(f"context window of {self.max_length} tokens exceeded ({self._committed} + {q})")
        if q > self._n_batch:
            raise ValueError(f"a pass of {q} tokens is more than the batch of {self._n_batch}")
        seqs = self._seqs(feed)
        rows = list(range(q)) if logits_for is None else list(logits_for)
        want = set(rows)
        b = self._batch
        token, position, n_seq, seq_id, wants = b.token, b.pos, b.n_seq_id, b.seq_id, b.logits
        for i, (tok, pos) in enumerate(zip(feed.tokens, feed.positions)):
            token[i] = int(tok)
            position[i] = int(pos)
            n_seq[i] = len(seqs[i])
            ids = seq_id[i]
            for k, s in enumerate(seqs[i]):
                ids[k] = s
            wants[i] = 1 if i in want else 0
        b.n_tokens = q
        self._settle()
        rc = self.ll.llama_decode(self.ctx, b)
        if rc != 0:
            raise RuntimeError(f"llama_decode failed ({rc})")
        self._pending = [(p, s[0]) for p, s in zip(feed.positions, seqs)]
        self._feed = feed
        self._extra, self._refeed = extra, []
        if not rows:
            return Logits.of(torch.empty(0, self.vocab_size))
        return self._lend(rows)  # [len(rows), V]

    def _lend(self, rows: list[int]) -> Logits:
        """The pass's logits rows where llama.cpp wrote them, lent until the next pass (``Borrowed``);
        rows that do not lie one after another there are copied at once."""
        ptrs = []
        for i in rows:
            ptr = self.ll.llama_get_logits_ith(self.ctx, i)
            if not ptr:
                raise RuntimeError(f"llama.cpp has no logits for row {i} of the pass")
            ptrs.append(ctypes.cast(ptr, ctypes.c_void_p).value)
        width = self.vocab_size * 4  # float32
        if any(p != ptrs[0] + j * width for j, p in enumerate(ptrs)):
            out = np.empty((len(rows), self.vocab_size), dtype=np.float32)
            for j, p in enumerate(ptrs):
                ctypes.memmove(out.ctypes.data + j * width, p, width)
            return Logits.of(torch.from_numpy(out))
        base, window = self._window
        if base != ptrs[0] or len(window) < len(rows):  # llama.cpp's buffer moved or grew
            size = max(len(rows), 8)
            block = (ctypes.c_float * (size * self.vocab_size)).from_address(ptrs[0])
            self._window = base, window = ptrs[0], np.frombuffer(block, np.float32).reshape(size, self.vocab_size)
        view = window[: len(rows)]  # [len(rows), V]
        self._lent = Borrowed(view, dict(enumerate(view.argmax(axis=1).tolist())))
        return self._lent

    def _settle(self) -> None:
        """Before llama.cpp overwrites its logits: copy the last pass's rows if anyone still holds them."""
        if self._lent is not None:
            if sys.getrefcount(self._lent) > 2:  # this attribute and getrefcount's argument
                self._lent.settle()
            self._lent = None

    def _with_refeed(self, feed: Feed, logits_for):
        """The feed with the tokens to feed again in front, as a chain below the context."""
        toks = [t for t, _ in self._refeed]
        pos = [p for _, p in self._refeed]
        n = len(toks)
        if feed.seqs is not None and any(s != (0,) for s in feed.seqs):
            raise RuntimeError("tokens to feed again before a pass with explicit sequences")
        parents = list(range(-1, n - 1)) + [(p + n if p >= 0 else n - 1) for p in feed.parents]
        rows = None if logits_for is None else [r + n for r in logits_for]
        if rows is None:
            rows = list(range(n, n + len(feed)))
        return Feed(tuple(toks) + feed.tokens, tuple(pos) + feed.positions, tuple(parents)), rows

    def _seqs(self, feed: Feed) -> list[tuple[int, ...]]:
        """llama.cpp sequence ids of each fed token (first = the one it sees through)."""
        self._late = []
        if feed.seqs is not None and any(s != (0,) for s in feed.seqs):
            out = []
            for i, ids in enumerate(feed.seqs):
                own, extra = ids[0], ids[1:]
                now = tuple(e for e in extra if self._same_cells(own, e))
                self._late += [(own, e, feed.positions[i]) for e in extra if e not in now]
                out.append((own,) + now)
            self._leaf_seqs = []
            return out
        n = len(feed)
        if feed.parents == tuple(range(-1, n - 1)):  # a chain: sequence 0
            self._leaf_seqs = []
            return [(0,)] * n
        has_child = {p for p in feed.parents if p >= 0}
        leaves = [i for i in range(n) if i not in has_child]
        if len(leaves) + 1 > MAX_SEQS:
            raise ValueError(f"a draft tree with {len(leaves)} leaves needs more than {MAX_SEQS} llama.cpp sequences")
        below: list[list[int]] = [[] for _ in range(n)]
        for k, leaf in enumerate(leaves, start=1):
            node = leaf
            while node >= 0:
                below[node].append(k)
                node = feed.parents[node]
        for k in range(1, len(leaves) + 1):
            self.ll.llama_memory_seq_rm(self.mem, k, -1, -1)
            self.ll.llama_memory_seq_cp(self.mem, 0, k, -1, -1)
        self._leaf_seqs = [tuple(s) for s in below]
        return self._leaf_seqs

    def _same_cells(self, a: int, b: int) -> bool:
        ll = self.ll
        return (ll.llama_memory_seq_pos_min(self.mem, a) == ll.llama_memory_seq_pos_min(self.mem, b)
                and ll.llama_memory_seq_pos_max(self.mem, a) == ll.llama_memory_seq_pos_max(self.mem, b))

    # -- the cache --------------------------------------------------------------------------
    def commit(self, keep: Sequence[int]) -> None:
        extra = self._extra
        keep = list(range(extra)) + [k + extra for k in keep]  # the tokens fed again are kept
        n = len(self._pending)
        if any(not 0 <= k < n for k in keep) or keep != sorted(set(keep)):
            raise ValueError(f"commit indices must be ascending feed indices below {n}: {keep}")
        ll = self.ll
        if self._leaf_seqs:  # a draft tree: the kept nodes must be one root-to-node path
            feed = self._feed
            last = keep[-1] if keep else None
            path = []
            node = last if last is not None else -1
            while node >= 0:
                path.append(node)
                node = feed.parents[node]
            if sorted(path) != keep:
                raise ValueError("the llama.cpp backend keeps one path of a draft tree")
            stay = 0  # kept cells in a run from the first fed cell (no freed cell before them)
            while stay < len(keep) and keep[stay] == stay:
                stay += 1
            if stay:
                src = self._leaf_seqs[keep[stay - 1]][0]
                lo, hi = feed.positions[0], feed.positions[keep[stay - 1]] + 1
                ll.llama_memory_seq_cp(self.mem, src, 0, lo, hi)
            for k in range(1, 1 + max(max(s) for s in self._leaf_seqs)):
                ll.llama_memory_seq_rm(self.mem, k, -1, -1)
            self._refeed = [(feed.tokens[i], feed.positions[i]) for i in keep[stay:]]
        else:
            drop = [i for i in range(n) if i not in set(keep)]
            for i in drop:
                pos, seq = self._pending[i]
                ll.llama_memory_seq_rm(self.mem, seq, pos, pos + 1)
            for src, dst, pos in self._late:
                ll.llama_memory_seq_cp(self.mem, src, dst, pos, pos + 1)
        self._committed += len(keep) - extra
        self._pending, self._feed, self._leaf_seqs, self._late, self._extra = [], None, [], [], 0

    def copy_seq(self, src: int, dst: int) -> None:
        if self._pending:
            raise RuntimeError("copy_seq called with pending entries: commit first")
        self.ll.llama_memory_seq_cp(self.mem, src, dst, -1, -1)

    def drop_seq(self, seq: int) -> None:
        if self._pending:
            raise RuntimeError("drop_seq called with pending entries: commit first")
        self.ll.llama_memory_seq_rm(self.mem, seq, -1, -1)

    def truncate(self, length: int) -> None:
        if not 0 <= length <= self._committed + len(self._pending):
            raise ValueError(f"cannot truncate to {length}")
        if self._pending:
            self.commit([])  # drops the pending cells and any draft sequences
        if length < self._committed:
            self.ll.llama_memory_seq_rm(self.mem, 0, length, -1)  # sequence 0 holds positions 0..committed-1
            self._refeed = [(t, p) for t, p in self._refeed if p < length]
            self._committed = length

    def fork(self):
        raise ConfigError("the llama.cpp backend cannot fork its context")

    def reset(self) -> None:
        self.ll.llama_memory_clear(self.mem, True)
        self._committed = 0
        self._pending, self._feed, self._leaf_seqs, self._late, self._refeed, self._extra = [], None, [], [], [], 0

    def __del__(self) -> None:
        try:
            self._settle()
            self.ll.llama_batch_free(self._batch)
            self.ll.llama_free(self.ctx)
        except Exception:
            pass


class _Weights:
    """A GGUF file loaded once by llama.cpp, shared by the contexts of every session over it; freed
    when the last backend holding it goes."""

    def __init__(self, ll, path: Path) -> None:
        self.ll = ll
        ll.llama_backend_init()
        ll.llama_log_set(_QUIET, ctypes.c_void_p(0))
        mparams = ll.llama_model_default_params()
        if _cpu_has_amx() and hasattr(mparams, "use_extra_bufts"):
            # ggml stores weights in an AMX tile layout on such CPUs, and its AMX matmul crashed
            # llama_decode (SIGSEGV in ggml_backend_amx_mul_mat, llama-cpp-python 0.3.36, an AMX Xeon
            # VM): keep the plain CPU layout, which gives the same greedy tokens
            mparams.use_extra_bufts = False
        self.model = ll.llama_model_load_from_file(str(path).encode(), mparams)
        if not self.model:
            raise ConfigError(f"llama.cpp cannot load {path}")

    def __del__(self) -> None:
        try:
            self.ll.llama_model_free(self.model)
        except Exception:
            pass


def _quiet(level, text, user_data):  # llama.cpp's log: silent unless an error
    if level == 4:  # GGML_LOG_LEVEL_ERROR
        os.write(2, text)


try:
    import llama_cpp as _ll

    _QUIET = _ll.llama_log_callback(_quiet)
except ImportError:  # pragma: no cover - the backend is optional
    _QUIET = None
