"""Load test (not a test): N concurrent streaming clients against `polyverse serve`, for a bounded time.

Starts the server as a child process on a free loopback port, warms it up, then runs ``--clients``
clients that each send streaming chat requests back to back for ``--duration`` seconds (requests
under way at the end may finish for ``--drain`` more seconds; later ones count as failed). Reports
requests/s, latency and time-to-first-token percentiles, failures, error lines in the server's log
and the server's memory (RSS) before, at its peak and after a short idle. Loopback only; stops by itself.

    python bench/load_test.py [--clients 32] [--duration 60] [--max-tokens 32] [--model M] [--out load.json]

``--rounds 2`` runs the load twice against the same server: memory that keeps growing is a leak.
Exit status 1 when any request failed, the server logged an error, or its memory did not come back.
"""

from __future__ import annotations

import argparse
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
from pathlib import Path

import httpx

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


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS")


def pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    v = sorted(values)
    return v[min(len(v) - 1, max(0, round(q / 100 * len(v) + 0.5) - 1))]  # nearest rank


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


async def load(base: str, model: str, clients: int, duration: float, drain: float, max_tokens: int, pid: int) -> dict:
    results: list[dict] = []
    peak = [rss_mib(pid)]
    stop_at = time.perf_counter() + duration
    limits = httpx.Limits(max_connections=clients + 4, max_keepalive_connections=clients + 4)
    timeout = httpx.Timeout(duration + drain + 30, connect=10)

    async def client_loop(i: int) -> None:
        n = 0
        while time.perf_counter() < stop_at:
            results.append(await one_request(http, base, model, PROMPTS[(i + n) % len(PROMPTS)], max_tokens))
            n += 1

    async def watch_memory() -> None:
        while True:
            peak[0] = max(peak[0], rss_mib(pid))
            await asyncio.sleep(0.5)

    async with httpx.AsyncClient(limits=limits, timeout=timeout) as http:
        t0 = time.perf_counter()
        watcher = asyncio.create_task(watch_memory())
        tasks = [asyncio.create_task(client_loop(i)) for i in range(clients)]
        _, late = await asyncio.wait(tasks, timeout=duration + drain)
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
        "clients": clients, "duration_s": duration, "max_tokens": max_tokens, "wall_s": round(wall, 1),
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
            raise SystemExit(f"the server exited with status {proc.returncode} before it came up")
        try:
            if httpx.get(base + "/health", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    raise SystemExit("the server did not come up in time")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--clients", type=int, default=32)
    ap.add_argument("--duration", type=float, default=60.0, help="seconds during which clients start requests")
    ap.add_argument("--drain", type=float, default=120.0, help="seconds requests under way at the end may still take")
    ap.add_argument("--max-tokens", type=int, default=32)
    ap.add_argument("--model", default="SmolLM2-135M-Instruct")
    ap.add_argument("--method", default="auto")
    ap.add_argument("--max-concurrent", type=int, default=None, help="server slots (default: --clients)")
    ap.add_argument("--idle", type=float, default=5.0, help="seconds of idle before memory is read again")
    ap.add_argument("--warm-clients", type=int, default=0,
                    help="concurrent warm-up requests before the start figure (0: as many as --clients; 1: one)")
    ap.add_argument("--rss-slack-mib", type=float, default=32.0, help="how far above its start memory may stay")
    ap.add_argument("--rounds", type=int, default=1, help="load rounds against the same server (memory after each: a leak grows)")
    ap.add_argument("--out", default=None, help="also write the figures here as JSON")
    args = ap.parse_args()

    port = free_port()
    base = f"http://127.0.0.1:{port}"
    name = "load-test-model"
    log_path = Path(tempfile.mkdtemp(prefix="polyverse-load-")) / "server.log"
    cmd = [sys.executable, "-m", "polyverse.cli", "serve", "--model", args.model, "--method", args.method,
           "--host", "127.0.0.1", "--port", str(port), "--served-name", name,
           "--max-concurrent", str(args.max_concurrent or args.clients), "--max-queue", str(max(64, args.clients)),
           "--log-level", "warning"]
    with open(log_path, "w") as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env={**os.environ, "NO_COLOR": "1"})
    try:
        wait_up(base, proc, 600)
        # lazy state (per-slot buffers, thread arenas, connections) is allocated before the start figure
        warm = asyncio.run(_warm_up(base, name, args.max_tokens, args.warm_clients or args.clients))
        if not warm["ok"]:
            raise SystemExit(f"the warm-up request failed: {warm['error']}")
        time.sleep(args.idle)
        rss_start = rss_mib(proc.pid)
        print(f"server pid {proc.pid}, RSS {rss_start:.0f} MiB; {args.clients} clients for {args.duration:.0f} s ...",
              file=sys.stderr)
        rounds = []
        for _ in range(args.rounds):
            fig = asyncio.run(load(base, name, args.clients, args.duration, args.drain, args.max_tokens, proc.pid))
            time.sleep(args.idle)
            fig["rss_after_idle_mib"] = round(rss_mib(proc.pid), 1)
            rounds.append(fig)
        rss_end = rounds[-1]["rss_after_idle_mib"]
        fig = dict(rounds[0])
        if args.rounds > 1:
            fig["rounds"] = rounds
            fig["requests_failed"] = sum(r["requests_failed"] for r in rounds)
        metrics = httpx.get(base + "/metrics").text
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            proc.kill()
    lines = log_path.read_text().splitlines()
    bad = [ln for ln in lines if "ERROR" in ln or "Traceback" in ln or "Exception" in ln]
    fig.update(rss_start_mib=round(rss_start, 1), rss_end_mib=round(rss_end, 1),
               rss_back=rss_end <= rss_start + args.rss_slack_mib, server_error_lines=len(bad),
               server_error_sample=bad[:5], server_exit=proc.returncode, method=args.method,
               cpu_count=os.cpu_count(), server_log=str(log_path),
               accepted_per_pass_mean=_mean_accepted(metrics, args.method))
    print(json.dumps(fig, indent=1))
    if args.out:
        Path(args.out).write_text(json.dumps(fig, indent=1) + "\n")
    if fig["requests_failed"] or bad or not fig["rss_back"]:
        sys.exit(1)


async def _warm_up(base: str, model: str, max_tokens: int, clients: int = 1) -> dict:
    """``clients`` requests at once (one each), so the start figure is taken at full concurrency's
    lasting state; the first failure, if any, is returned."""
    async with httpx.AsyncClient(timeout=600) as http:
        done = await asyncio.gather(*(one_request(http, base, model, PROMPTS[i % len(PROMPTS)], max_tokens)
                                      for i in range(clients)))
    return next((d for d in done if not d["ok"]), done[0])


def _mean_accepted(metrics: str, method: str) -> float | None:
    """Mean accepted tokens per forward pass of ``method`` from the server's histogram."""
    total = count = None
    for line in metrics.splitlines():
        if line.startswith(f'polyverse_accepted_tokens_per_pass_sum{{method="{method}"}}'):
            total = float(line.rsplit(" ", 1)[1])
        if line.startswith(f'polyverse_accepted_tokens_per_pass_count{{method="{method}"}}'):
            count = float(line.rsplit(" ", 1)[1])
    return round(total / count, 3) if total and count else None


if __name__ == "__main__":
    main()
