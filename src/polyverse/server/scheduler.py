"""One worker thread decodes every request, one forward pass per request per round.

Requests hold a *slot* (at most ``max_concurrent``) or wait in a bounded queue (``max_queue``;
one more is refused with 429). Each round the worker runs one step (one forward pass, or the
prompt's prefill and first pass) of every request holding a slot, in arrival order, so a long
request never stalls the others and torch runs on one thread only. Each request gets its own
backend (KV cache) over the shared weights (``Model.session()``). The worker hands results to the
request's asyncio queue on the event loop: ``("started", None)``, ``("chunk", Chunk)`` per pass,
then ``("done", Generation)`` or ``("error", APIError)``. A cancelled request (its client went
away) leaves its slot at once and the worker drops it before its next pass.
"""

from __future__ import annotations

import asyncio
import ctypes
import ctypes.util
import logging
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any

from ..errors import PolyverseError
from .errors import APIError
from .metrics import Metrics
from .plan import Plan

log = logging.getLogger("polyverse.server")


def _release_memory() -> None:
    """Hand freed heap pages back to the OS (glibc keeps them otherwise, so RSS stays at its peak)."""
    try:
        ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # not glibc
        pass


@dataclass(eq=False)
class Job:
    """One request: its plan, where its events go, and its progress."""

    plan: Plan
    loop: asyncio.AbstractEventLoop
    events: asyncio.Queue = field(default_factory=asyncio.Queue)
    arrived: float = field(default_factory=time.perf_counter)
    cancelled: bool = False
    finished: bool = False
    started: float | None = None
    first_token: float | None = None
    passes: int = 0
    stream: Any = None
    chunks: Any = None

    def post(self, kind: str, payload: Any = None) -> None:
        try:
            self.loop.call_soon_threadsafe(self.events.put_nowait, (kind, payload))
        except RuntimeError:  # the event loop is gone (shutdown): nobody is listening
            pass


class Scheduler:
    def __init__(self, model, max_concurrent: int, max_queue: int, metrics: Metrics) -> None:
        self.model = model
        self.max_concurrent, self.max_queue = max_concurrent, max_queue
        self.metrics = metrics
        self._cond = threading.Condition()
        self._waiting: deque[Job] = deque()
        self._active: list[Job] = []
        self._closing = False
        self._stopped = False
        self._thread: threading.Thread | None = None

    # ---- the event loop's side
    def start(self) -> None:
        self._thread = threading.Thread(target=self._work, name="polyverse-decode", daemon=True)
        self._thread.start()

    @property
    def counts(self) -> tuple[int, int]:
        """(requests holding a slot, requests waiting)."""
        with self._cond:
            return len(self._active), len(self._waiting)

    def submit(self, job: Job) -> None:
        """Take a request, or raise APIError 429 (queue full) / 503 (shutting down)."""
        with self._cond:
            if self._closing:
                raise APIError(503, "the server is shutting down", None, "shutting_down")
            if len(self._active) < self.max_concurrent:
                self._active.append(job)
            elif len(self._waiting) < self.max_queue:
                self._waiting.append(job)
            else:
                self.metrics.rejected.inc()
                raise APIError(429, f"the server is busy: {len(self._active)} requests are decoding and "
                               f"{len(self._waiting)} waiting; retry later", None, "queue_full", {"Retry-After": "1"})
            self._gauges()
            self._cond.notify_all()

    def cancel(self, job: Job) -> None:
        """The client went away: free its slot now; the worker drops it before its next pass."""
        with self._cond:
            if job.finished or job.cancelled:
                return
            job.cancelled = True
            self._remove(job)
        self.metrics.requests.labels(job.plan.method, "cancelled").inc()

    async def drain(self, grace: float, hurry=lambda: False) -> None:
        """Refuse new requests, let those in flight finish for ``grace`` seconds (or until ``hurry()``),
        then cancel the rest."""
        with self._cond:
            self._closing = True
        deadline = time.monotonic() + grace
        while time.monotonic() < deadline and any(self.counts) and not hurry():
            await asyncio.sleep(0.05)
        with self._cond:
            left = list(self._active) + list(self._waiting)
        for job in left:
            self.cancel(job)
            job.post("error", APIError(503, "the server is shutting down: the request was cancelled", None, "shutting_down"))

    def stop(self) -> None:
        with self._cond:
            self._closing = self._stopped = True
            left = list(self._active) + list(self._waiting)
            self._cond.notify_all()
        for job in left:
            self.cancel(job)
            job.post("error", APIError(503, "the server is shutting down: the request was cancelled", None, "shutting_down"))
        if self._thread is not None:
            self._thread.join(timeout=30)

    # ---- the worker's side
    def _remove(self, job: Job) -> None:
        """Under the lock: take ``job`` out and give its slot to the longest-waiting request."""
        if job in self._active:
            self._active.remove(job)
        elif job in self._waiting:
            self._waiting.remove(job)
        while self._waiting and len(self._active) < self.max_concurrent:
            self._active.append(self._waiting.popleft())
        self._gauges()
        self._cond.notify_all()

    def _gauges(self) -> None:
        self.metrics.active.set(len(self._active))
        self.metrics.waiting.set(len(self._waiting))

    def _work(self) -> None:
        trimmed = True
        while True:
            with self._cond:
                idle = not self._active
            if idle and not trimmed:  # the last request just left: its KV cache is garbage now
                _release_memory()
                trimmed = True
            with self._cond:
                while not self._active and not self._stopped:
                    self._cond.wait()
                if self._stopped:
                    return
                batch = list(self._active)
            trimmed = False
            for job in batch:
                if not job.cancelled:
                    self._step(job)
                if job.cancelled:
                    job.stream = job.chunks = None  # frees its KV cache now

    def _step(self, job: Job) -> None:
        p = job.plan
        try:
            if job.chunks is None:
                job.started = time.perf_counter()
                self.metrics.queue_wait.labels(p.method).observe(job.started - job.arrived)
                session = self.model.session()
                job.stream = session.stream(p.prompt, method=p.method, options=p.options, chat=p.chat,
                                            max_new_tokens=p.max_tokens, temperature=p.temperature, top_k=p.top_k,
                                            top_p=p.top_p, seed=p.seed, stop=p.stop)
                job.chunks = iter(job.stream)
                job.post("started")
            chunk = next(job.chunks, None)
            if chunk is not None:
                job.passes += 1
                self.metrics.accepted.labels(p.method).observe(chunk.step.accepted)
                if job.first_token is None and chunk.tokens:
                    job.first_token = time.perf_counter()
                    self.metrics.ttft.labels(p.method).observe(job.first_token - job.arrived)
                job.post("chunk", chunk)
            if chunk is None or chunk.finish_reason is not None:
                self._done(job, job.stream.result())
        except PolyverseError as exc:
            self._fail(job, APIError(400, str(exc), "polyverse"))
        except Exception as exc:  # a bug or a torch failure: logged here, never shown to the client
            log.exception("request failed in the decode worker: %s", exc)
            self._fail(job, APIError(500, "internal error while decoding: see the server log", None, "internal_error"))

    def _done(self, job: Job, gen) -> None:
        p, m = job.plan, self.metrics
        with self._cond:
            if job.cancelled:
                return
            job.finished = True
            self._remove(job)
        m.requests.labels(p.method, "length" if gen.finish_reason == "length" else "stop").inc()
        m.tokens.labels(p.method, "prompt").inc(p.prompt_tokens)
        m.tokens.labels(p.method, "completion").inc(len(gen.token_ids))
        m.passes.labels(p.method).inc(gen.stats.passes)
        m.latency.labels(p.method).observe(time.perf_counter() - job.arrived)
        if gen.stats.seconds > 0:
            m.speed.labels(p.method).observe(gen.stats.tokens_per_second)
        job.stream = job.chunks = None
        job.post("done", gen)

    def _fail(self, job: Job, error: APIError) -> None:
        with self._cond:
            if job.cancelled:
                return
            job.finished = True
            self._remove(job)
        self.metrics.requests.labels(job.plan.method, "error").inc()
        job.stream = job.chunks = None
        job.post("error", error)
