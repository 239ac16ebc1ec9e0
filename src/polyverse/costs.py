"""The measured cost of a forward pass as a function of the tokens it feeds, per backend.

Parallel decoding pays off only where feeding q tokens costs much less than q passes; how much
less depends on the model, the backend and the machine. ``cost_curve`` measures it once (the
fastest of a few timed passes per size after a warm-up, averaged over a few context lengths) and
caches it on disk and in memory.
"""

from __future__ import annotations

import hashlib
import json
import os
import statistics
import threading
import time
import weakref
from bisect import bisect_left
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import torch

from .draft import Draft
from .layout import chain_feed, draft_feed

SIZES = (1, 2, 3, 4, 6, 8, 12, 16, 24, 32)
# context lengths a cached curve is measured over: a pass's cost moves with the cache it reads, and not
# alike for every size (llama.cpp's one-token pass and its batched pass grow differently with the
# cache, and step where its cache padding steps), so one length can mislead `auto` about decoding
CONTEXTS = (64, 192, 320)
PERIOD = 24  # tokens of the measuring context's repeated run
VERSION = 13  # bumped when the pass or the measurement changes, so curves cached before are measured again


@dataclass(frozen=True)
class CostCurve:
    sizes: tuple[int, ...]
    seconds: tuple[float, ...]  # median seconds of one pass feeding sizes[i] tokens

    def __call__(self, q: int) -> float:
        """Seconds of a pass feeding q tokens, linearly interpolated (extrapolated past the end).

        Example: sizes (1, 4), seconds (0.06, 0.09) -> cost(2) = 0.07.
        """
        s, c = self.sizes, self.seconds
        if q <= s[0]:
            return c[0]
        i = bisect_left(s, q)
        if i == len(s):
            i -= 1
        lo, hi = s[i - 1], s[i]
        return c[i - 1] + (c[i] - c[i - 1]) * (q - lo) / (hi - lo)

    def relative(self, q: int) -> float:
        return self(q) / self.seconds[0]

    def beyond(self, n: int, top: int) -> "CostCurve":
        """The cost of a pass feeding q = 1 .. top tokens on top of n others: c'(q) = c(n + q), so that
        a proposer can price what a second branch adds to another's pass.

        Example: sizes (1, 4), seconds (0.06, 0.09), n = 1, top = 2 -> sizes (1, 2), seconds (0.07, 0.08).
        """
        return CostCurve(tuple(range(1, top + 1)), tuple(self(n + q) for q in range(1, top + 1)))


def measure(backend, context_len: "int | Sequence[int]" = CONTEXTS, reps: int = 5, sizes=SIZES,
            every: bool = False) -> CostCurve:
    """Time passes of each size after a context of ``context_len`` tokens, or after each of several
    context lengths in turn (the curve is then the mean over them); resets the backend.

    Each timed pass reads the argmax of its first row, as verification always does; with ``every``
    it asks for every row at once first, as a proposer that reads every row does (SPACE: its mask
    groups' rows are drafted from, each pass's head product covers all of them). Sizes are
    interleaved and the fastest of ``reps`` passes is kept, so that other work running during
    the measurement does not bias the curve (it is cached for good).

    Example: context_len (64, 192) and a pass of 4 tokens timed fastest at 0.020 s after 64 tokens
    and 0.024 s after 192 -> seconds 0.022 for size 4.
    """
    lengths = (context_len,) if isinstance(context_len, int) else tuple(context_len)
    room = backend.max_length - 1
    lengths = tuple(dict.fromkeys(min(n, max(room - max(sizes), 1)) for n in lengths))
    sizes = tuple(q for q in sizes if max(lengths) + q <= room) or (1,)
    vocab = backend.vocab_size
    g = torch.Generator().manual_seed(0)
    # random tokens, repeated in a period, and drafts that continue it: after the first period the
    # model reads every row as confidently as it does real text, where random tokens leave it unsure
    # of every next token, which costs a screened head (``Logits.top``) more than decoding ever does
    period = torch.randint(0, vocab, (PERIOD,), generator=g).tolist()
    text = period * ((max(lengths) + max(sizes)) // PERIOD + 1)
    ctx = text[: max(lengths)]
    fastest: dict[int, list[float]] = {q: [] for q in sizes}
    for n in lengths:
        drafts = {q: Draft.chain(text[n: n + q - 1]) for q in sizes}
        backend.reset()
        backend.forward(chain_feed(ctx[:n], 0), logits_for=[])
        backend.commit(range(n))
        times: dict[int, list[float]] = {q: [] for q in sizes}
        for rep in range(reps + 1):
            for q in sizes:  # sizes interleaved, so a busy moment hits all of them alike
                t0 = time.perf_counter()
                logits = backend.forward(draft_feed(ctx[n - 1], n, drafts[q]), logits_for=range(q) if every else None)
                logits.top(0)  # a rejected draft still reads its first row's argmax
                backend.commit([])
                if rep:  # the first round warms up
                    times[q].append(time.perf_counter() - t0)
        for q in sizes:  # the fastest pass is the machine's cost; slower ones measured other work alongside
            fastest[q].append(min(times[q]))
    backend.reset()
    return CostCurve(sizes, tuple(sum(fastest[q]) / len(fastest[q]) for q in sizes))


def model_key(model) -> str:
    """The file name of a model's cost curve: the model, what its backend runs, the threads."""
    raw = f"{model.name}|{model.backend.cost_key()}|{torch.get_num_threads()}|{torch.__version__}"
    return hashlib.sha256(raw.encode()).hexdigest()[:16]


_MEMO: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()  # bare models (no polyverse Model)
_LOCK = threading.RLock()


def cost_curve(model, backend, every: bool = False) -> CostCurve:
    """The cached curve of this model on this machine; measured on first use. ``every``: passes
    whose every row is read (``measure``), a curve of its own.

    ``model`` is the polyverse Model (curve cached in memory and on disk), or None for a bare
    backend (curve measured quickly and kept in memory while its weights live).
    """
    with _LOCK:  # two threads on one model (two servers, a server and a bench) measure it once
        if model is None:
            memo = _MEMO.setdefault(backend.torch_model, {})
            if every not in memo:
                memo[every] = measure(backend, context_len=32, reps=2, every=every)
            return memo[every]
        return _cached_curve(model, backend, every)


def costs_dir() -> Path:
    """Where measured curves are kept: POLYVERSE_COSTS, else the cache's ``costs`` folder. A curve is
    measured once and kept for good, so one measured on a busy machine (a test run) must not be the
    one a later command prices its drafts by."""
    from .models.load import cache_dir

    return Path(os.environ["POLYVERSE_COSTS"]).expanduser() if os.environ.get("POLYVERSE_COSTS") else cache_dir() / "costs"


def _cached_curve(model, backend, every: bool = False) -> CostCurve:
    name = "cost_curve_every" if every else "cost_curve"
    if name in model.resources:
        return model.resources[name]
    path = costs_dir() / f"{model_key(model)}{'-every' if every else ''}.json"
    curve = None
    if path.exists():
        try:
            data = json.loads(path.read_text())
            if data.get("version") == VERSION:
                curve = CostCurve(tuple(data["sizes"]), tuple(data["seconds"]))
        except (ValueError, KeyError, TypeError):
            curve = None
    if curve is None:
        curve = measure(backend, every=every)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps({"sizes": curve.sizes, "seconds": curve.seconds, "model": model.name, "version": VERSION}))
        tmp.replace(path)
    model.resources[name] = curve
    return curve


LIVE_WINDOW = 16  # the last passes of a size whose median prices it
LIVE_LEAST = 3  # passes of a size before their median replaces the measured cost
LIVE_EVERY = 4  # passes between two updates of the prices


class LiveCurve:
    """A measured curve corrected by what decoding pays: the median of the last steps of each size
    a proposer fed (the whole step, its own Python and the head included), fitted non-decreasing
    (``monotone``); for a size not fed often enough, the measured price scaled as the nearest size
    seen was, and never dearer than a larger size seen.

    The measured curve times passes back to back on one context, fastest of a few, once; decoding
    pays more for the same sizes, and not alike for every size, and a curve measured once keeps
    whatever the machine did at that moment. A proposer that weighs expected tokens against the
    price of its rows then feeds rows that do not pay, or leaves out rows that would: a size between
    two sizes seen is priced at most as the larger, however steep the measurement was there.

    Example: measured c(1) = 10, c(4) = 11, c(8) = 12; the last steps of 8 tokens took a median
    of 14 -> c(8) = 14, c(4) = 11 * 14 / 12 and c(1) = 10 * 14 / 12 (scaled as the nearest size
    seen, 8, was).
    """

    def __init__(self, base: CostCurve) -> None:
        self.base = base
        self.curve = base  # the prices now: a CostCurve over the measured sizes and those seen
        self.version = 0  # bumped at every update, for callers that keep derived prices
        self._samples: dict[int, deque] = {}
        self._since = 0
        self._lock = threading.Lock()  # one per model, fed by every request that decodes alone

    def __call__(self, q: int) -> float:
        return self.curve(q)

    def relative(self, q: int) -> float:
        return self.curve.relative(q)

    def beyond(self, n: int, top: int) -> CostCurve:
        return self.curve.beyond(n, top)

    def observe(self, q: int, seconds: float) -> None:
        """A step that fed ``q`` tokens took ``seconds``."""
        with self._lock:
            self._samples.setdefault(q, deque(maxlen=LIVE_WINDOW)).append(seconds)
            self._since += 1
            if self._since >= LIVE_EVERY:
                self._since = 0
                self._update()

    def _update(self) -> None:
        seen = sorted((q, statistics.median(s), len(s)) for q, s in self._samples.items() if len(s) >= LIVE_LEAST)
        if not seen:
            return
        fitted = dict(zip((q for q, _, _ in seen), monotone([m for _, m, _ in seen], [n for _, _, n in seen])))
        sizes = sorted(set(self.base.sizes) | set(fitted))
        prices, top = [], 0.0
        for q in sizes:
            if q in fitted:
                price = fitted[q]
            else:  # the nearest size seen (the smaller on a tie) says how far off the measurement is
                near = min(fitted, key=lambda s: (abs(s - q), s))
                price = self.base(q) * fitted[near] / self.base(near)
                # nor above a larger size seen: the measurement may be steeper than decoding finds
                price = min([price] + [fitted[s] for s in fitted if s > q])
            top = max(top, price)  # a pass of more tokens never costs less
            prices.append(top)
        self.curve = CostCurve(tuple(sizes), tuple(prices))
        self.version += 1


def monotone(values: Sequence[float], weights: Sequence[float]) -> list[float]:
    """The non-decreasing sequence closest to ``values`` in weighted squares (pooling adjacent
    violators): a dear pass of few samples is averaged with the cheaper, better known sizes after
    it instead of lifting them all.

    Example: values (10, 14, 12, 13), weights (1, 1, 3, 1) -> (10, 12.5, 12.5, 13).
    """
    blocks: list[list[float]] = []  # [value, weight, members]
    for v, w in zip(values, weights):
        blocks.append([v, w, 1])
        while len(blocks) > 1 and blocks[-2][0] > blocks[-1][0]:
            v2, w2, n2 = blocks.pop()
            v1, w1, n1 = blocks.pop()
            blocks.append([(v1 * w1 + v2 * w2) / (w1 + w2), w1 + w2, n1 + n2])
    return [v for v, _, n in blocks for _ in range(int(n))]


def live_curve(model, backend, every: bool = False) -> LiveCurve:
    """``cost_curve`` corrected by the passes decoding pays (``LiveCurve``), one per model and kind
    of curve, shared by its requests (a bare backend: one per call)."""
    if model is None:
        return LiveCurve(cost_curve(None, backend, every))
    name = "live_cost_curve_every" if every else "live_cost_curve"
    with _LOCK:
        if name not in model.resources:
            model.resources[name] = LiveCurve(cost_curve(model, backend, every))
        return model.resources[name]


def pricing(ctx, live: bool, every: bool = False) -> "CostCurve | LiveCurve":
    """The curve a method's factory prices its drafts by (``ctx``: its ``MethodContext``): decoding
    greedily with ``live``, ``live_curve``; else the measured ``cost_curve``, since a sampled
    request's drafts, which its random stream follows, must not follow timing (its seed must give
    the same text). ``every``: passes whose every row is read (``measure``)."""
    if live and ctx.sampling.greedy:
        return live_curve(ctx.model, ctx.backend, every)
    return cost_curve(ctx.model, ctx.backend, every)
