"""Load test (`polyverse bench load`): N concurrent streaming clients against `polyverse serve`, for a bounded time.

Starts the server as a child process on a free loopback port, warms it up, then runs ``clients``
clients that each send streaming chat requests back to back for ``duration`` seconds (requests
under way at the end may finish for ``drain`` more seconds; later ones count as failed). Reports
requests/s, latency and time-to-first-token percentiles, failures, error lines in the server's log
and the server's memory (RSS) before, at its peak and after a short idle. Loopback only; stops by
itself. ``rounds=2`` runs the load twice against the same server: memory that keeps growing is a
leak. `passed` is False when any request failed, the server logged an error, or its memory did
not come back.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from contextlib import contextmanager
from typing import Callable, Iterator, Optional

import httpx

from ..errors import ConfigError, PolyverseError

PROMPTS = [
    "Name three colours and one thing of each colour.",
    "What is 12 times 7? Explain briefly.",
    "Write a haiku about the sea.",
    "Explain in one sentence what a CPU does.",
    "Give me a list of four fruits.",
    "Add comments to: def f(x): return x * 2",
    "Why is the sky blue?",
    "Translate 'good morning' into French and Spanish.",
]
SERVED_NAME = "load-test-model"

# (seconds of load done over all rounds, what is happening)
Tick = Callable[[float, str], None]


@dataclass(frozen=True)
class LoadConfig:
    clients: int = 32
    duration: float = 60.0  # seconds during which clients start requests
    drain: float = 120.0  # seconds requests under way at the end may still take
    max_tokens: int = 32
    model: str = "SmolLM2-135M-Instruct"
    method: str = "auto"
    max_concurrent: Optional[int] = None  # server slots (None: as many as clients)
    idle: float = 5.0  # seconds of idle before memory is read again
    warm_clients: int = 0  # concurrent warm-up requests before the start figure (0: as many as clients)
    rss_slack_mib: float = 32.0  # how far above its start memory may stay
    rounds: int = 1  # load rounds against the same server (memory after each: a leak grows)

    def __post_init__(self) -> None:
        for name in ("clients", "max_tokens", "rounds"):
            if getattr(self, name) < 1:
                raise ConfigError(f"--{name.replace('_', '-')} must be at least 1, got {getattr(self, name)}")
        if self.duration <= 0:
            raise ConfigError(f"--duration must be above 0, got {self.duration}")
        for name in ("drain", "idle", "warm_clients", "rss_slack_mib"):
            if getattr(self, name) < 0:
                raise ConfigError(f"--{name.replace('_', '-')} must be 0 or more, got {getattr(self, name)}")
        if self.max_concurrent is not None and self.max_concurrent < 1:
            raise ConfigError(f"--max-concurrent must be at least 1, got {self.max_concurrent}")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _own_rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise PolyverseError(f"no VmRSS for process {pid}")


def _children(pid: int) -> list[int]:
    out = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            out.append(int(stat.parent.name))
    return out


def rss_mib(pid: int) -> float:
    """Resident memory of a server: the process and every process below it (vLLM forks an engine)."""
    total, todo, seen = 0.0, [pid], set()
    while todo:
        p = todo.pop()
        if p in seen:
            continue
        seen.add(p)
        try:
            total += _own_rss_mib(p)
        except (OSError, PolyverseError):
            if p == pid:
                raise PolyverseError(f"no VmRSS for process {pid}") from None
            continue
        todo.extend(_children(p))
    return total


def pct(values: list[float], q: float) -> float:
    """The nearest-rank ``q``-th percentile (nan for no values).

    >>> pct([1.0, 2.0, 3.0, 4.0], 50)
    2.0
    """
    if not values:
        return float("nan")
    v = sorted(values)
    return v[min(len(v) - 1, max(0, round(q / 100 * len(v) + 0.5) - 1))]


async def one_request(client: httpx.AsyncClient, base: str, model: str, prompt: str, max_tokens: int) -> dict:
    """One streaming chat request: its latency, time to first token, tokens, and what went wrong if anything."""
    body = {"model": model, "messages": [{"role": "user", "content": prompt}], "max_tokens": max_tokens,
            "temperature": 0, "stream": True, "stream_options": {"include_usage": True}}
    t0 = time.perf_counter()
    out = {"ok": False, "ttft": None, "latency": None, "tokens": 0, "error": None}
    try:
        async with client.stream("POST", base + "/v1/chat/completions", json=body) as r:
            if r.status_code != 200:
                out["error"] = f"HTTP {r.status_code}: {(await r.aread())[:200]!r}"
                return out
            done = False
            async for line in r.aiter_lines():
                if not line.startswith("data: "):
                    continue
                data = line[6:]
                if data == "[DONE]":
                    done = True
                    break
                msg = json.loads(data)
                if "error" in msg:
                    out["error"] = msg["error"]["message"]
                    return out
                if msg.get("usage"):
                    out["tokens"] = msg["usage"]["completion_tokens"]
                if out["ttft"] is None and msg.get("choices") and msg["choices"][0]["delta"].get("content"):
                    out["ttft"] = time.perf_counter() - t0
            out["latency"] = time.perf_counter() - t0
            out["ok"] = done
            if not done:
                out["error"] = "stream ended without [DONE]"
    except (httpx.HTTPError, OSError) as exc:
        out["error"] = f"{type(exc).__name__}: {exc}"
    return out


async def load_round(base: str, cfg: LoadConfig, pid: int, tick: Callable[[float, str], None],
                     prompts: "list[str] | None" = None, model: str = SERVED_NAME) -> dict:
    """One round of load; ``tick(seconds into the round, what)`` about twice a second. ``prompts``
    (default PROMPTS) go round the clients; ``model``: the name the server serves."""
    prompts = prompts or PROMPTS
    results: list[dict] = []
    peak = [rss_mib(pid)]
    stop_at = time.perf_counter() + cfg.duration
    limits = httpx.Limits(max_connections=cfg.clients + 4, max_keepalive_connections=cfg.clients + 4)
    timeout = httpx.Timeout(cfg.duration + cfg.drain + 30, connect=10)

    async def client_loop(i: int) -> None:
        n = 0
        while time.perf_counter() < stop_at:
            results.append(await one_request(http, base, model, prompts[(i + n) % len(prompts)], cfg.max_tokens))
            n += 1

    async def watch_memory() -> None:
        while True:
            peak[0] = max(peak[0], rss_mib(pid))
            ok = sum(r["ok"] for r in results)
            tick(min(cfg.duration, time.perf_counter() - t0), f"{ok} requests done, {len(results) - ok} failed")
            await asyncio.sleep(0.5)

    async with httpx.AsyncClient(limits=limits, timeout=timeout) as http:
        t0 = time.perf_counter()
        watcher = asyncio.create_task(watch_memory())
        tasks = [asyncio.create_task(client_loop(i)) for i in range(cfg.clients)]
        _, late = await asyncio.wait(tasks, timeout=cfg.duration + cfg.drain)
        for t in late:
            t.cancel()
        await asyncio.gather(*late, return_exceptions=True)
        wall = time.perf_counter() - t0
        watcher.cancel()
    ok = [r for r in results if r["ok"]]
    failed = [r for r in results if not r["ok"]] + [{"error": "unfinished at the drain deadline"}] * len(late)
    lat = [r["latency"] for r in ok]
    ttft = [r["ttft"] for r in ok if r["ttft"] is not None]
    return {
        "clients": cfg.clients, "duration_s": cfg.duration, "max_tokens": cfg.max_tokens, "wall_s": round(wall, 1),
        "requests_ok": len(ok), "requests_failed": len(failed), "errors": sorted({str(f["error"])[:200] for f in failed}),
        "requests_per_s": round(len(ok) / wall, 3), "completion_tokens": sum(r["tokens"] for r in ok),
        "tokens_per_s": round(sum(r["tokens"] for r in ok) / wall, 2),
        "latency_s": {"p50": round(pct(lat, 50), 2), "p99": round(pct(lat, 99), 2), "mean": round(statistics.fmean(lat), 2) if lat else None},
        "ttft_s": {"p50": round(pct(ttft, 50), 2), "p99": round(pct(ttft, 99), 2)},
        "rss_peak_mib": round(peak[0], 1),
    }


def wait_up(base: str, proc: subprocess.Popen, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise PolyverseError(f"the server exited with status {proc.returncode} before it came up")
        try:
            if httpx.get(base + "/health", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    raise PolyverseError("the server did not come up in time")


@contextmanager
def polyverse_server(model: str, method: str, max_concurrent: int, max_queue: int,
                     extra: tuple[str, ...] = ()) -> Iterator[tuple[str, subprocess.Popen, Path]]:
    """`polyverse serve` as a child process on a free loopback port, serving ``SERVED_NAME``:
    (base URL, process, its log file) once /health answers; stopped (SIGTERM) on exit."""
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    log_path = Path(tempfile.mkdtemp(prefix="polyverse-load-")) / "server.log"
    cmd = [sys.executable, "-m", "polyverse.cli", "serve", "--model", model, "--method", method,
           "--host", "127.0.0.1", "--port", str(port), "--served-name", SERVED_NAME,
           "--max-concurrent", str(max_concurrent), "--max-queue", str(max_queue), "--log-level", "warning", *extra]
    with open(log_path, "w") as server_log:
        proc = subprocess.Popen(cmd, stdout=server_log, stderr=subprocess.STDOUT, env={**os.environ, "NO_COLOR": "1"})
    try:
        wait_up(base, proc, 600)
        yield base, proc, log_path
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            proc.kill()


def run(cfg: LoadConfig, tick: Optional[Tick] = None, log: Callable[[str], None] = lambda line: None) -> dict:
    """Start the server, warm it up, run ``cfg.rounds`` rounds, stop it; the figures (see `passed`).
    ``tick`` follows the load over all rounds; ``log`` gets the server's pid and start memory."""
    with polyverse_server(cfg.model, cfg.method, cfg.max_concurrent or cfg.clients, max(64, cfg.clients)) as (base, proc, log_path):
        # lazy state (per-slot buffers, thread arenas, connections) is allocated before the start figure
        warm = asyncio.run(_warm_up(base, cfg.max_tokens, cfg.warm_clients or cfg.clients))
        if not warm["ok"]:
            raise PolyverseError(f"the warm-up request failed: {warm['error']}")
        time.sleep(cfg.idle)
        rss_start = rss_mib(proc.pid)
        log(f"server pid {proc.pid}, RSS {rss_start:.0f} MiB; {cfg.clients} clients for {cfg.duration:.0f} s ...")
        rounds = []
        for i in range(cfg.rounds):
            def round_tick(seconds: float, what: str, i: int = i) -> None:
                if tick:
                    tick(i * cfg.duration + seconds, f"round {i + 1}/{cfg.rounds}: {what}")

            fig = asyncio.run(load_round(base, cfg, proc.pid, round_tick))
            time.sleep(cfg.idle)
            fig["rss_after_idle_mib"] = round(rss_mib(proc.pid), 1)
            rounds.append(fig)
        rss_end = rounds[-1]["rss_after_idle_mib"]
        fig = dict(rounds[0])
        if cfg.rounds > 1:
            fig["rounds"] = rounds
            fig["requests_failed"] = sum(r["requests_failed"] for r in rounds)
        metrics = httpx.get(base + "/metrics").text
    lines = log_path.read_text().splitlines()
    bad = [ln for ln in lines if "ERROR" in ln or "Traceback" in ln or "Exception" in ln]
    fig.update(rss_start_mib=round(rss_start, 1), rss_end_mib=round(rss_end, 1),
               rss_back=rss_end <= rss_start + cfg.rss_slack_mib, server_error_lines=len(bad),
               server_error_sample=bad[:5], server_exit=proc.returncode, method=cfg.method,
               cpu_count=os.cpu_count(), server_log=str(log_path),
               accepted_per_pass_mean=mean_accepted(metrics, cfg.method))
    return fig


def passed(fig: dict) -> bool:
    """No failed request, no error in the server's log, and the server's memory came back."""
    return not (fig["requests_failed"] or fig["server_error_lines"] or not fig["rss_back"])


async def _warm_up(base: str, max_tokens: int, clients: int = 1, prompts: "list[str] | None" = None,
                   model: str = SERVED_NAME) -> dict:
    """``clients`` requests at once (one each), so the start figure is taken at full concurrency's
    lasting state; the first failure, if any, is returned."""
    prompts = prompts or PROMPTS
    async with httpx.AsyncClient(timeout=600) as http:
        done = await asyncio.gather(*(one_request(http, base, model, prompts[i % len(prompts)], max_tokens)
                                      for i in range(clients)))
    return next((d for d in done if not d["ok"]), done[0])


def mean_accepted(metrics: str, method: str) -> float | None:
    """Mean accepted tokens per forward pass of ``method`` from the server's Prometheus histogram.

    >>> mean_accepted('polyverse_accepted_tokens_per_pass_sum{method="ar"} 6\\n'
    ...               'polyverse_accepted_tokens_per_pass_count{method="ar"} 4', "ar")
    1.5
    """
    total = count = None
    for line in metrics.splitlines():
        if line.startswith(f'polyverse_accepted_tokens_per_pass_sum{{method="{method}"}}'):
            total = float(line.rsplit(" ", 1)[1])
        if line.startswith(f'polyverse_accepted_tokens_per_pass_count{{method="{method}"}}'):
            count = float(line.rsplit(" ", 1)[1])
    return round(total / count, 3) if total and count else None
