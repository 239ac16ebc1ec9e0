"""Soak test (`polyverse bench soak`): `polyverse serve` under a mixed, misbehaving load for a fixed time.

Starts the server as a child process (few slots and a short queue, so admission and 429 are
exercised; short header and body timeouts, so slow clients are closed during the run), measures
the model's context and the long prompts' size against the server itself, warms it up (one long
prompt and a full set of slots), reads its memory, then runs ``clients`` clients until
``duration`` ends. Each client picks a behaviour per request from ``mix`` with its own seeded
RNG (`soak_clients`): short streaming chats, near-context prompts (at most ``long_in_flight`` at
once, so they share the slots rather than take them all), mid-stream disconnects, slow heads, slow
bodies, malformed JSON. Memory is sampled throughout (peak) and read again after an
idle at the end, when /health must also show no request left holding a slot. `soak_report` judges
each request and the run: it passes with no failed request, no error line or traceback in the
server's log, the server up and empty at the end.
"""

from __future__ import annotations

import asyncio
import random
import time
from dataclasses import asdict, dataclass
from typing import Callable, Optional
from urllib.parse import urlsplit

import httpx

from ..errors import ConfigError, PolyverseError
from .load import Tick, polyverse_server, rss_mib
from .serve import _errors_in
from .soak_clients import KINDS, LONG_SPAN, Target, calibrate, long_request, send
from .soak_report import FAILED, OK, REFUSED, Record, classify, report, summarize, verdict, write

DEFAULT_MIX = (("short", 72.0), ("long", 3.0), ("disconnect", 10.0), ("slow_headers", 5.0), ("slow_body", 5.0),
               ("bad", 5.0))
# what `polyverse serve` uses when the soak does not pass a timeout (a slow client's deadline then)
SERVER_DEFAULT_TIMEOUTS = {"header": 10.0, "body": 30.0}


@dataclass(frozen=True)
class SoakConfig:
    duration: float = 600.0  # seconds during which clients start requests
    clients: int = 16
    model: str = "SmolLM2-135M-Instruct"
    method: str = "auto"
    dtype: Optional[str] = None  # polyverse's weight type (None: its default)
    seed: int = 0
    max_concurrent: int = 4  # server slots: fewer than clients, so requests queue
    max_queue: int = 8  # so some are refused with 429
    header_timeout: float = 5.0  # passed as --header-timeout (0: not passed, the server's default applies)
    body_timeout: float = 5.0  # passed as --body-timeout (0: likewise)
    slack: float = 5.0  # seconds past a timeout a slow client waits before it counts as a failure
    mix: tuple[tuple[str, float], ...] = DEFAULT_MIX
    short_max_tokens: int = 32
    long_in_flight: int = 2  # near-context prompts under way at once; a client drawing another sends a short one
    drain: float = 180.0  # seconds requests under way at the end may still take
    idle: float = 10.0  # seconds of idle before memory is read (at the start and the end)
    request_timeout: float = 600.0  # the HTTP client's read timeout (queued long prompts wait)
    rss_slack_mib: Optional[float] = None  # idle memory this far above the start fails the run (None: report only)

    def __post_init__(self) -> None:
        for name in ("clients", "max_concurrent", "short_max_tokens", "long_in_flight"):
            if getattr(self, name) < 1:
                raise ConfigError(f"--{name.replace('_', '-')} must be at least 1, got {getattr(self, name)}")
        if self.duration <= 0:
            raise ConfigError(f"--duration must be above 0, got {self.duration}")
        for name in ("max_queue", "header_timeout", "body_timeout", "slack", "drain", "idle"):
            if getattr(self, name) < 0:
                raise ConfigError(f"--{name.replace('_', '-')} must be 0 or more, got {getattr(self, name)}")
        unknown = [k for k, _ in self.mix if k not in KINDS]
        if unknown or any(w < 0 for _, w in self.mix) or sum(w for _, w in self.mix) <= 0:
            raise ConfigError(f"--mix takes KIND=WEIGHT items of {', '.join(KINDS)} with weights >= 0, not all 0")


def parse_mix(text: str) -> tuple[tuple[str, float], ...]:
    """``--mix`` as (kind, weight) pairs; kinds left out get weight 0.

    >>> parse_mix("short=9, bad=1")
    (('short', 9.0), ('bad', 1.0))
    """
    pairs = []
    for item in text.split(","):
        kind, sep, weight = item.strip().partition("=")
        try:
            pairs.append((kind.strip(), float(weight)))
        except ValueError:
            raise ConfigError(f"--mix takes KIND=WEIGHT items, got '{item.strip()}'") from None
        if not sep:
            raise ConfigError(f"--mix takes KIND=WEIGHT items, got '{item.strip()}'")
    return tuple(pairs)


def server_flags(cfg: SoakConfig) -> tuple[str, ...]:
    """`polyverse serve`'s flags beyond those `polyverse_server` sets (model, method, slots, queue):
    the one place to change what the soak asks of the server."""
    flags: list[str] = []
    if cfg.dtype:
        flags += ["--dtype", cfg.dtype]
    if cfg.header_timeout:
        flags += ["--header-timeout", f"{cfg.header_timeout:g}"]
    if cfg.body_timeout:
        flags += ["--body-timeout", f"{cfg.body_timeout:g}"]
    return tuple(flags)


def deadline(kind: str, cfg: SoakConfig) -> float:
    """Seconds a slow client of ``kind`` may stay open: the server's timeout for it plus the slack."""
    if kind == "slow_headers":
        return (cfg.header_timeout or SERVER_DEFAULT_TIMEOUTS["header"]) + cfg.slack
    if kind == "slow_body":
        return (cfg.body_timeout or SERVER_DEFAULT_TIMEOUTS["body"]) + cfg.slack
    return 0.0


def pick(rng: random.Random, cfg: SoakConfig, under_way: list[Optional[str]]) -> str:
    """The next request's kind: drawn from ``cfg.mix``, but a short one in place of a long one while
    ``long_in_flight`` are under way (each holds a slot for long: more would leave shorts only the queue).

    >>> cfg = SoakConfig(mix=(("long", 1.0),), long_in_flight=1)
    >>> pick(random.Random(0), cfg, [None, None]), pick(random.Random(0), cfg, ["long", None])
    ('long', 'short')
    """
    kind = rng.choices([k for k, _ in cfg.mix], [w for _, w in cfg.mix])[0]
    return "short" if kind == "long" and under_way.count("long") >= cfg.long_in_flight else kind


async def _warm_up(target: Target, cfg: SoakConfig) -> None:
    """A prompt at the top of the long range beside a full set of slots of short requests, so
    the start figure holds the caches a busy server keeps."""
    rng = random.Random(cfg.seed)
    long = asyncio.create_task(long_request(target, rng, share=LONG_SPAN[1]))
    shorts = await asyncio.gather(*(send("short", target, rng, None) for _ in range(cfg.max_concurrent)))
    for kind, seen in [("long", await long)] + [("short", s) for s in shorts]:
        outcome, why = classify(kind, seen)
        if outcome == FAILED:
            raise PolyverseError(f"the warm-up's {kind} request failed: {why}")


async def _clients(target: Target, cfg: SoakConfig, pid: int, tick: Tick) -> tuple[list[Record], dict]:
    """The load itself: records of every request and the memory sampled meanwhile."""
    records: list[Record] = []
    current: list[Optional[str]] = [None] * cfg.clients
    memory = {"rss_peak_mib": rss_mib(pid), "samples": []}  # samples: (seconds, MiB) about every 10 s
    t0 = time.perf_counter()
    stop_at = t0 + cfg.duration

    async def client(i: int) -> None:
        rng = random.Random(cfg.seed * 1_000_003 + i)
        while time.perf_counter() < stop_at:
            kind = current[i] = pick(rng, cfg, current)
            seen = await send(kind, target, rng, deadline(kind, cfg))
            current[i] = None
            outcome, why = classify(kind, seen, deadline(kind, cfg))
            records.append(Record(kind, outcome, why, round(seen.seconds, 3), seen.ttft))
            if outcome == REFUSED:
                await asyncio.sleep(rng.uniform(0.5, 1.5))  # a client backs off, as Retry-After asks
            elif outcome == FAILED:
                await asyncio.sleep(0.1)  # a dead server would otherwise be hammered for the rest of the run

    async def watch() -> None:
        next_sample = 0.0
        while True:
            now = time.perf_counter() - t0
            try:
                rss = rss_mib(pid)
            except PolyverseError:  # the server is gone: the requests say so
                return
            memory["rss_peak_mib"] = max(memory["rss_peak_mib"], rss)
            if now >= next_sample:
                memory["samples"].append((round(now), round(rss, 1)))
                next_sample += 10
            counts = {o: sum(r.outcome == o for r in records) for o in (OK, REFUSED, FAILED)}
            busy = sum(c is not None for c in current)
            what = "draining: " if now > cfg.duration else ""
            tick(min(cfg.duration, now), f"{what}{counts[OK]} ok, {counts[REFUSED]} refused, {counts[FAILED]} failed, "
                 f"{busy} under way")
            await asyncio.sleep(1.0)

    watcher = asyncio.create_task(watch())
    tasks = [asyncio.create_task(client(i)) for i in range(cfg.clients)]
    _, late = await asyncio.wait(tasks, timeout=cfg.duration + cfg.drain)
    for i, task in enumerate(tasks):
        if task in late:
            task.cancel()
            records.append(Record(current[i] or "short", FAILED, "unfinished at the drain deadline"))
    await asyncio.gather(*late, return_exceptions=True)
    watcher.cancel()
    memory["rss_peak_mib"] = round(memory["rss_peak_mib"], 1)
    return records, memory


async def _soak(base: str, pid: int, cfg: SoakConfig, tick: Tick, log: Callable[[str], None]) -> dict:
    """Calibrate, warm up, read memory, run the clients, idle, read memory and /health."""
    url = urlsplit(base)
    limits = httpx.Limits(max_connections=cfg.clients + 4, max_keepalive_connections=cfg.clients + 4,
                          keepalive_expiry=2.0)  # below the server's keep-alive, so no request meets a closing socket
    async with httpx.AsyncClient(limits=limits, timeout=httpx.Timeout(cfg.request_timeout, connect=10)) as http:
        tick(0, "measuring the context and the long prompts")
        context, per_sentence = await calibrate(http, base)
        target = Target(url.hostname or "127.0.0.1", url.port or 80, http, context, per_sentence, cfg.short_max_tokens)
        tick(0, "warming up (a near-context prompt and a full set of slots)")
        await _warm_up(target, cfg)
        await asyncio.sleep(cfg.idle)
        rss_start = rss_mib(pid)
        log(f"server pid {pid}, RSS {rss_start:.0f} MiB, context {context} tokens; "
            f"{cfg.clients} clients for {cfg.duration:.0f} s ...")
        records, memory = await _clients(target, cfg, pid, tick)
        tick(cfg.duration, f"idle {cfg.idle:g} s before the last memory figure")
        await asyncio.sleep(cfg.idle)
        memory.update(rss_start_mib=round(rss_start, 1), rss_idle_mib=round(rss_mib(pid), 1))
        health = (await http.get(base + "/health")).json()
    return {**summarize(records), "context": context, "tokens_per_sentence": round(per_sentence, 2),
            "memory": memory, "health_after_idle": health}


def run(cfg: SoakConfig, tick: Optional[Tick] = None, log: Callable[[str], None] = lambda line: None) -> dict:
    """Start the server, soak it, stop it; the figures, with ``passed`` and ``problems`` (`soak_report.verdict`)."""
    from .runner import cpu_name

    flags = server_flags(cfg)
    with polyverse_server(cfg.model, cfg.method, cfg.max_concurrent, cfg.max_queue, flags) as (base, proc, log_path):
        out = asyncio.run(_soak(base, proc.pid, cfg, tick or (lambda s, w: None), log))
        out["server_alive"] = proc.poll() is None
    bad = _errors_in(log_path)
    errors = [ln for ln in bad if "ERROR" in ln]
    out = {"config": asdict(cfg), "machine": cpu_name(), "server_flags": list(flags), **out,
           "server_error_lines": len(errors), "server_error_sample": errors[:10],
           "tracebacks": sum("Traceback" in ln for ln in bad), "server_exit": proc.returncode,
           "server_log": str(log_path)}
    out["problems"] = verdict(out, cfg.rss_slack_mib)
    out["passed"] = not out["problems"]
    return out


__all__ = ["SoakConfig", "parse_mix", "server_flags", "deadline", "run", "report", "write"]
