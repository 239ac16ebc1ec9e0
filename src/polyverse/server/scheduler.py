"""One worker thread decodes every request; the requests holding a slot share each forward pass.

Requests hold a *slot* (at most ``max_concurrent``) or wait in a bounded queue (``max_queue``;
one more is refused with 429). A slot also reserves the request's KV tokens (``memory``): the
requests holding slots never reserve more than ``kv_budget`` together, so a request that does not
fit waits, in arrival order, and one that could never fit is refused with 400. The worker keeps
every request holding a slot in one continuous batch (``batching.Batch``): each round is one shared pass in which every request reading its prompt
feeds a chunk of it and every decoding request its pending token and its draft, cut to the pass's
row budget, so a request joining never stalls the others and torch runs on one thread only.
Requests of methods that run their own passes (Multiverse) take one step each per round. Each
request gets its own KV cache over the shared weights (``Model.request``). The worker hands results
to the request's asyncio queue on the event loop: ``("started", None)``, ``("chunk", Chunk)`` per
pass, then ``("done", Generation)`` or ``("error", APIError)``. A cancelled request (its client went
away) leaves its slot at once and the worker drops it, and its cache, before the next pass.
"""

from __future__ import annotations

import asyncio
import ctypes
import ctypes.util
import gc
import logging
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any

from ..batching import Batch, BatchConfig
from ..errors import PolyverseError
from .errors import APIError
from .memory import request_tokens
from .metrics import Metrics
from .plan import Plan

log = logging.getLogger("polyverse.server")


IDLE_RELEASE = 1.0  # seconds without a request before the idle worker frees memory


def _release_memory() -> None:
    """Free what finished requests left in reference cycles (a runner's generators and its engine
    hold each other, and with them a KV cache), then hand freed heap pages back to the OS (glibc
    keeps them otherwise, so RSS stays at its peak)."""
    gc.collect()
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
    request: Any = None  # the api Request while it decodes
    kv: int = 0  # KV cache tokens reserved while it holds a slot

    def post(self, kind: str, payload: Any = None) -> None:
        try:
            self.loop.call_soon_threadsafe(self.events.put_nowait, (kind, payload))
        except RuntimeError:  # the event loop is gone (shutdown): nobody is listening
            pass


def _deliver(items: list, handled: threading.Event | None = None) -> None:
    """On the event loop: put a round's events into their requests' queues; ``handled`` is set once
    the requests woken by them have had their turn (callbacks run in the order they were scheduled)."""
    for job, kind, payload in items:
        job.events.put_nowait((kind, payload))
    if handled is not None:
        asyncio.get_running_loop().call_soon(handled.set)


SHUTTING_DOWN = "the server is shutting down: retry on another instance or after it restarts"


def shutting_down(what: str = SHUTTING_DOWN) -> APIError:
    return APIError(503, what, None, "shutting_down", {"Retry-After": "5", "Connection": "close"})


class Scheduler:
    def __init__(self, model, max_concurrent: int, max_queue: int, metrics: Metrics,
                 batch: BatchConfig | None = None, kv_budget: int | None = None) -> None:
        self.model = model
        self.batch_config = batch or BatchConfig()
        self.max_concurrent, self.max_queue = max_concurrent, max_queue
        self.kv_budget = kv_budget if kv_budget is not None else max_concurrent * model.max_length
        self._kv_used = 0
        self.metrics = metrics
        self._cond = threading.Condition()
        self._waiting: deque[Job] = deque()
        self._active: list[Job] = []
        self._closing = False
        self._stopped = False
        self._thread: threading.Thread | None = None
        self._outbox: list = []  # (job, kind, payload) of the round under way (worker thread only)

    # ---- the event loop's side
    def start(self) -> None:
        self._thread = threading.Thread(target=self._work, name="polyverse-decode", daemon=True)
        self._thread.start()

    @property
    def counts(self) -> tuple[int, int]:
        """(requests holding a slot, requests waiting)."""
        with self._cond:
            return len(self._active), len(self._waiting)

    @property
    def kv_used(self) -> int:
        """KV tokens reserved by the requests holding a slot."""
        with self._cond:
            return self._kv_used

    @property
    def draining(self) -> bool:
        """True once shutdown began: new requests get 503."""
        return self._closing

    def submit(self, job: Job) -> None:
        """Take a request, or raise APIError 400 (it could never fit the KV budget), 429 (queue full)
        or 503 (shutting down)."""
        p = job.plan
        job.kv = request_tokens(self.model, p.prompt_tokens, p.max_tokens)
        if job.kv > self.kv_budget:
            raise APIError(400, f"the request may need {job.kv} KV cache tokens (a prompt of {p.prompt_tokens} "
                           f"plus max_tokens {p.max_tokens}); this server holds {self.kv_budget}: lower max_tokens",
                           "max_tokens", "context_length_exceeded")
        with self._cond:
            if self._closing:
                raise shutting_down()
            if not self._waiting and self._fits(job):
                self._admit(job)
            elif len(self._waiting) < self.max_queue:
                self._waiting.append(job)
            else:
                self.metrics.rejected.inc()
                raise APIError(429, f"the server is busy: {len(self._active)} requests are decoding and "
                               f"{len(self._waiting)} waiting; retry later", None, "queue_full", {"Retry-After": "1"})
            self._gauges()
            self._cond.notify_all()

    def _fits(self, job: Job) -> bool:
        """Under the lock: whether ``job`` may take a slot now (a slot free, its KV tokens within budget)."""
        return len(self._active) < self.max_concurrent and self._kv_used + job.kv <= self.kv_budget

    def _admit(self, job: Job) -> None:
        self._active.append(job)
        self._kv_used += job.kv

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
            job.post("error", shutting_down("the server is shutting down: the request was cancelled"))

    def stop(self) -> None:
        with self._cond:
            self._closing = self._stopped = True
            left = list(self._active) + list(self._waiting)
            self._cond.notify_all()
        for job in left:
            self.cancel(job)
            job.post("error", shutting_down("the server is shutting down: the request was cancelled"))
        if self._thread is not None:
            self._thread.join(timeout=30)

    # ---- the worker's side
    def _remove(self, job: Job) -> None:
        """Under the lock: take ``job`` out and give its slot to the longest-waiting request."""
        if job in self._active:
            self._active.remove(job)
            self._kv_used -= job.kv
        elif job in self._waiting:
            self._waiting.remove(job)
        while self._waiting and self._fits(self._waiting[0]):  # in arrival order: a large request is not overtaken
            self._admit(self._waiting.popleft())
        self._gauges()
        self._cond.notify_all()

    def _gauges(self) -> None:
        self.metrics.active.set(len(self._active))
        self.metrics.waiting.set(len(self._waiting))
        self.metrics.kv_reserved.set(self._kv_used)

    def _work(self) -> None:
        try:
            curve = self.model.pass_costs() if self.batch_config.budget else None
        except Exception as exc:  # noqa: BLE001 - the server still serves, with drafts as proposed
            log.error("the pass costs could not be measured; drafts are not cut to a row budget: %s", exc, exc_info=exc)
            curve = None
        batch = Batch(curve, self.batch_config)
        running: set[Job] = set()
        trimmed = True
        while True:
            with self._cond:
                idle = not self._active
            if idle and not trimmed:  # the last request just left: its KV cache is garbage now
                with self._cond:  # a full collection takes a good part of a short request's time:
                    # not between requests that follow one another, only once the server stays idle
                    self._cond.wait_for(lambda: self._active or self._stopped, timeout=IDLE_RELEASE)
                    idle = not self._active and not self._stopped
                if idle:
                    _release_memory()
                    trimmed = True
            with self._cond:
                while not self._active and not self._stopped:
                    self._cond.wait()
                if self._stopped:
                    return
                active = list(self._active)
            trimmed = False
            for job in list(running):  # cancelled or finished since the last pass: out, cache freed
                if job.cancelled or job.finished:
                    batch.remove(job)
                    running.discard(job)
                    job.request = None
            for job in active:
                if job not in running and not job.cancelled and not job.finished:
                    if self._join(job, batch):
                        running.add(job)
            self._flush()
            if not len(batch):
                continue
            try:
                events, stats = batch.round()
            except Exception as exc:  # noqa: BLE001 - a failure outside any one request: its round's requests
                for job in list(running):  # fail, and the worker lives on for the next ones
                    batch.remove(job)
                    running.discard(job)
                    job.request = None
                    self._error(job, exc)
                self._flush()
                continue
            if stats is not None:
                self.metrics.pass_rows.observe(stats.rows)
                self.metrics.pass_requests.observe(stats.requests)
                self.metrics.pass_seconds.observe(stats.seconds)
            for ev in events:
                job = ev.key
                if ev.error is not None:
                    running.discard(job)
                    self._error(job, ev.error)
                elif not job.cancelled:
                    self._chunk(job, ev.step)
                if job.finished or job.cancelled:
                    batch.remove(job)
                    running.discard(job)
                    job.request = None
            self._flush(wait=0.01)

    def _send(self, job: Job, kind: str, payload: Any = None) -> None:
        """Queue an event for the request's event loop; ``_flush`` hands a round's events over at once."""
        self._outbox.append((job, kind, payload))

    def _flush(self, wait: float = 0.0) -> None:
        """Deliver the queued events: one wake-up of each event loop per round, not one per event.
        With ``wait``, give the event loop up to that long to write them out before the next pass:
        the passes' threads share the cores with it, and a thread of a pass that the event loop
        preempts holds up the other at the pass's next barrier."""
        by_loop: dict = {}
        for job, kind, payload in self._outbox:
            by_loop.setdefault(job.loop, []).append((job, kind, payload))
        self._outbox = []
        waits = []
        for loop, items in by_loop.items():
            handled = threading.Event() if wait else None
            try:
                loop.call_soon_threadsafe(_deliver, items, handled)
            except RuntimeError:  # the event loop is gone (shutdown): nobody is listening
                continue
            if handled is not None:
                waits.append(handled)
        for handled in waits:
            handled.wait(wait)

    def _join(self, job: Job, batch: Batch) -> bool:
        """Start a request (its prompt is tokenized and checked here) and add it to the batch."""
        p = job.plan
        try:
            job.started = time.perf_counter()
            self.metrics.queue_wait.labels(p.method).observe(job.started - job.arrived)
            job.request = self.model.request(p.prompt, method=p.method, options=p.options, chat=p.chat,
                                             max_new_tokens=p.max_tokens, temperature=p.temperature, top_k=p.top_k,
                                             top_p=p.top_p, seed=p.seed, stop=p.stop, logprobs=p.logprobs,
                                             grammar=p.grammar, presence_penalty=p.penalties.presence,
                                             frequency_penalty=p.penalties.frequency,
                                             logit_bias=dict(p.penalties.logit_bias))
            job.request.join(batch, job)
        except Exception as exc:  # noqa: BLE001
            self._error(job, exc)
            return False
        self._send(job, "started")
        return True

    def _chunk(self, job: Job, step) -> None:
        p, m = job.plan, self.metrics
        try:
            done = job.request.push(step)
        except Exception as exc:  # noqa: BLE001
            self._error(job, exc)
            return
        chunk = job.request.last
        if chunk is not None:
            job.passes += 1
            m.accepted.labels(p.method).observe(chunk.step.accepted)
            m.drafted.labels(p.method).observe(chunk.step.drafted)
            m.accepted_draft.labels(p.method).observe(max(chunk.step.accepted - 1, 0))
            if job.first_token is None and chunk.tokens:
                job.first_token = time.perf_counter()
                m.ttft.labels(p.method).observe(job.first_token - job.arrived)
            self._send(job, "chunk", chunk)
        if done:
            self._done(job, job.request.result())

    def _error(self, job: Job, exc: BaseException) -> None:
        if isinstance(exc, PolyverseError):
            self._fail(job, APIError(400, str(exc), "polyverse"))
        else:  # a bug or a torch failure: logged here, never shown to the client
            log.error("request failed in the decode worker: %s", exc, exc_info=exc)
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
        self._send(job, "done", gen)

    def _fail(self, job: Job, error: APIError) -> None:
        with self._cond:
            if job.cancelled:
                return
            job.finished = True
            self._remove(job)
        self.metrics.requests.labels(job.plan.method, "error").inc()
        self._send(job, "error", error)
