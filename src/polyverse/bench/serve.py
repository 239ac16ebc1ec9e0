"""Serving benchmark (`polyverse bench serve`): streaming clients against `polyverse serve` at several
client counts, and against vLLM's CPU build on the same prompts when its environment is there.

For each server: start it, warm it up with as many requests as the most clients, then for each
client count run ``duration`` seconds of clients sending streaming chat requests back to back
(greedy, ``max_tokens`` each, the prompts going round), then a second round at the most clients;
memory (RSS of the server and its children) is read after a short idle at the start and after each
of the last two rounds. Per round: completion tokens/s, requests/s, time to first token and latency
percentiles, failures; for polyverse also the rows and requests per shared pass (from /metrics).
Writes results.json, report.md and serving.png (throughput and latency against clients).
"""

from __future__ import annotations

import asyncio
import json
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Optional

import httpx

from ..errors import ConfigError, PolyverseError
from .load import SERVED_NAME, LoadConfig, _warm_up, load_round, polyverse_server, rss_mib

Tick = Callable[[str], None]


@dataclass(frozen=True)
class ServeBenchConfig:
    clients: tuple[int, ...] = (1, 4, 16)
    duration: float = 30.0  # seconds during which clients start requests, per client count
    drain: float = 60.0
    max_tokens: int = 64
    model: str = "SmolLM2-135M-Instruct"
    method: str = "auto"
    dtype: Optional[str] = None  # polyverse's weight type (None: its default)
    prompts: str = "mtbench-like"  # a bench prompt set (chat prompts)
    limit: int = 20
    idle: float = 3.0
    rss_slack_mib: float = 32.0
    vllm_python: Optional[str] = None  # the vLLM environment's python; None: no vLLM row unless found
    vllm: bool = True  # run the vLLM peer where its environment is found
    vllm_dtype: str = "float32"
    vllm_kv_gib: int = 2

    def __post_init__(self) -> None:
        if not self.clients or min(self.clients) < 1:
            raise ConfigError("--clients takes positive counts, e.g. 1,4,16")
        if self.duration <= 0 or self.max_tokens < 1 or self.limit < 1:
            raise ConfigError("--duration, --max-tokens and --limit must be positive")


def histogram_mean(before: str, after: str, name: str) -> float | None:
    """Mean of a Prometheus histogram's observations between two scrapes.

    >>> histogram_mean("h_sum 4\\nh_count 2", "h_sum 10\\nh_count 4", "h")
    3.0
    """
    def read(text: str, what: str) -> float:
        for line in text.splitlines():
            if line.startswith(f"{name}_{what} ") or line.startswith(f"{name}_{what}{{"):
                return float(line.rsplit(" ", 1)[1])
        return 0.0

    count = read(after, "count") - read(before, "count")
    return round((read(after, "sum") - read(before, "sum")) / count, 2) if count > 0 else None


def _rounds(base: str, pid: int, cfg: ServeBenchConfig, prompts: list[str], model: str, tick: Tick,
            metrics: bool) -> tuple[list[dict], dict]:
    """The client sweep and a second round at the most clients: their figures and the memory."""
    warm = asyncio.run(_warm_up(base, cfg.max_tokens, max(cfg.clients), prompts, model))
    if not warm["ok"]:
        raise PolyverseError(f"the warm-up request failed: {warm['error']}")
    time.sleep(cfg.idle)
    memory = {"rss_start_mib": round(rss_mib(pid), 1), "rss_after_mib": []}
    rows = []
    counts = list(cfg.clients) + [max(cfg.clients)]
    for i, clients in enumerate(counts):
        load = LoadConfig(clients=clients, duration=cfg.duration, drain=cfg.drain, max_tokens=cfg.max_tokens)
        before = httpx.get(base + "/metrics").text if metrics else ""
        what = f"{clients} clients" + (" (second round)" if i == len(counts) - 1 else "")
        fig = asyncio.run(load_round(base, load, pid, lambda s, w, what=what: tick(f"{what}: {w}"), prompts, model))
        if metrics:
            after = httpx.get(base + "/metrics").text
            fig["rows_per_pass"] = histogram_mean(before, after, "polyverse_pass_rows")
            fig["requests_per_pass"] = histogram_mean(before, after, "polyverse_pass_requests")
            fig["drafted_per_request_pass"] = histogram_mean(before, after, "polyverse_drafted_tokens_per_pass")
        fig["round"] = "second" if i == len(counts) - 1 else "sweep"
        rows.append(fig)
        if i >= len(counts) - 2:
            time.sleep(cfg.idle)
            memory["rss_after_mib"].append(round(rss_mib(pid), 1))
    memory["rss_back"] = all(r <= memory["rss_start_mib"] + cfg.rss_slack_mib for r in memory["rss_after_mib"])
    return rows, memory


def _errors_in(log: Path) -> list[str]:
    return [ln for ln in log.read_text(errors="replace").splitlines() if "ERROR" in ln or "Traceback" in ln]


def run(cfg: ServeBenchConfig, prompts: list[str], tick: Tick = lambda what: None,
        log: Callable[[str], None] = lambda line: None) -> dict:
    """Both servers, one after the other (never at once: they share the cores)."""
    from .runner import cpu_name
    from .vllm_server import find_vllm_python, vllm_server

    out: dict = {"machine": cpu_name(), "config": asdict(cfg), "servers": []}
    extra = ("--dtype", cfg.dtype) if cfg.dtype else ()
    tick("starting polyverse serve")
    with polyverse_server(cfg.model, cfg.method, max(cfg.clients), max(64, max(cfg.clients)), extra) as (base, proc, path):
        log(f"polyverse serve: pid {proc.pid}, method {cfg.method}")
        rows, memory = _rounds(base, proc.pid, cfg, prompts, SERVED_NAME, tick, metrics=True)
    out["servers"].append({"server": f"polyverse ({cfg.method})", "rows": rows, "memory": memory,
                           "server_error_lines": _errors_in(path)[:5]})
    python = find_vllm_python(cfg.vllm_python) if cfg.vllm else None
    if cfg.vllm and cfg.vllm_python and python is None:
        raise ConfigError(f"no vLLM python at {cfg.vllm_python}")
    if python is not None:
        from ..models.load import resolve

        tick("starting vLLM (it compiles the model first: a minute or two)")
        with vllm_server(python, resolve(cfg.model, progress=False), SERVED_NAME, dtype=cfg.vllm_dtype,
                         max_seqs=max(32, 2 * max(cfg.clients)), kv_gib=cfg.vllm_kv_gib, omp_bind="0-1") as (base, proc):
            log(f"vLLM: pid {proc.pid}, dtype {cfg.vllm_dtype}")
            rows, memory = _rounds(base, proc.pid, cfg, prompts, SERVED_NAME, tick, metrics=False)
        out["servers"].append({"server": f"vLLM CPU ({cfg.vllm_dtype})", "rows": rows, "memory": memory})
    else:
        out["vllm"] = "not run: no vLLM environment (make vllm-env) or --no-vllm"
    out["ratios"] = ratios(out)
    return out


def _sweep(server: dict) -> dict[int, dict]:
    return {r["clients"]: r for r in server["rows"] if r["round"] == "sweep"}


def ratios(out: dict) -> dict:
    """polyverse's tokens/s at its most clients over one client, and over each peer at each count."""
    ours = _sweep(out["servers"][0])
    counts = sorted(ours)
    res: dict = {}
    if counts and ours[counts[0]]["tokens_per_s"]:
        res["scaling"] = round(ours[counts[-1]]["tokens_per_s"] / ours[counts[0]]["tokens_per_s"], 2)
    for peer in out["servers"][1:]:
        theirs = _sweep(peer)
        res[peer["server"]] = {c: round(ours[c]["tokens_per_s"] / theirs[c]["tokens_per_s"], 2)
                               for c in counts if c in theirs and theirs[c]["tokens_per_s"]}
    return res


def report(out: dict) -> str:
    """A markdown report of ``run``'s figures."""
    cfg = out["config"]
    lines = [f"Serving, {out['machine']}: {cfg['model']}, greedy, max_tokens {cfg['max_tokens']}, "
             f"{cfg['prompts']} prompts, {cfg['duration']:.0f} s per client count.", "",
             "| server | clients | round | completion tok/s | req/s | TTFT p50 / p99 s | latency p50 / p99 s | "
             "rows / pass | requests / pass | failed |", "| --- | ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for s in out["servers"]:
        for r in s["rows"]:
            lines.append(f"| {s['server']} | {r['clients']} | {r['round']} | {r['tokens_per_s']:.1f} | "
                         f"{r['requests_per_s']:.2f} | {r['ttft_s']['p50']} / {r['ttft_s']['p99']} | "
                         f"{r['latency_s']['p50']} / {r['latency_s']['p99']} | {r.get('rows_per_pass') or '-'} | "
                         f"{r.get('requests_per_pass') or '-'} | {r['requests_failed']} |")
    lines += ["", "| server | RSS at start MiB | after the last two rounds MiB | back to start |", "| --- | ---: | ---: | --- |"]
    for s in out["servers"]:
        m = s["memory"]
        lines.append(f"| {s['server']} | {m['rss_start_mib']} | {' / '.join(map(str, m['rss_after_mib']))} | "
                     f"{'yes' if m['rss_back'] else 'no'} |")
    r = out.get("ratios", {})
    lines += [""]
    if "scaling" in r:
        lines.append(f"polyverse, most clients over one client: {r['scaling']}x completion tokens/s.")
    for peer, by in r.items():
        if peer != "scaling":
            lines.append(f"polyverse over {peer}: " + ", ".join(f"{c} clients {v}x" for c, v in by.items()) + ".")
    if "vllm" in out:
        lines.append(f"vLLM: {out['vllm']}.")
    return "\n".join(lines) + "\n"


def plot(out: dict, path: Path) -> None:
    """Completion tokens/s and latency p50 against clients, one line per server."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (a, b) = plt.subplots(1, 2, figsize=(10, 4))
    for s in out["servers"]:
        sweep = _sweep(s)
        xs = sorted(sweep)
        a.plot(xs, [sweep[c]["tokens_per_s"] for c in xs], marker="o", label=s["server"])
        b.plot(xs, [sweep[c]["latency_s"]["p50"] for c in xs], marker="o", label=s["server"])
    for ax, title in ((a, "completion tokens/s"), (b, "latency p50 (s)")):
        ax.set_xlabel("concurrent clients")
        ax.set_title(title)
        ax.set_xscale("log", base=2)
        ax.grid(alpha=0.3)
        ax.legend()
    fig.suptitle(out["machine"], fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def write(out: dict, folder: Path) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "results.json").write_text(json.dumps(out, indent=1) + "\n")
    (folder / "report.md").write_text(report(out))
    plot(out, folder / "serving.png")


def passed(out: dict) -> bool:
    """No failed request, no error in polyverse's log, its memory back to its start."""
    ours = out["servers"][0]
    return (not any(r["requests_failed"] for r in ours["rows"]) and not ours["server_error_lines"]
            and ours["memory"]["rss_back"]) and not any(math.isnan(r["ttft_s"]["p50"]) for r in ours["rows"])
