"""The soak's judging: each request's outcome, the figures of a run, the verdict and the report.

Pure functions over what the clients saw (`soak_clients.Seen`), so every rule can be tested on
hand-made inputs. A request is ``ok`` (what its kind should get), ``refused`` (429 or 503 with an
OpenAI error body: the server shedding load as designed, not a failure) or ``failed`` (a 5xx, a
wrong shape, a stream without ``data: [DONE]``, a transport error other than the client's own
disconnect, a slow client the server left open past its deadline).
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

from .load import pct
from .soak_clients import KINDS, Seen

OK, REFUSED, FAILED = "ok", "refused", "failed"
SLOW = ("slow_headers", "slow_body")


@dataclass(frozen=True)
class Record:
    kind: str
    outcome: str
    reason: Optional[str] = None
    seconds: float = 0.0
    ttft: Optional[float] = None


def is_error_body(body: Any, kind: Optional[str] = None) -> bool:
    """An OpenAI error body (``{"error": {"message": str, "type": str, ...}}``), of type ``kind`` if given.

    >>> is_error_body({"error": {"message": "busy", "type": "rate_limit_error"}}), is_error_body({"detail": "x"})
    (True, False)
    """
    err = body.get("error") if isinstance(body, dict) else None
    return (isinstance(err, dict) and isinstance(err.get("message"), str) and isinstance(err.get("type"), str)
            and (kind is None or err["type"] == kind))


def is_completion(body: Any) -> bool:
    """A chat completion object with a message and usage."""
    if not isinstance(body, dict) or body.get("object") != "chat.completion" or not isinstance(body.get("usage"), dict):
        return False
    choices = body.get("choices")
    return (isinstance(choices, list) and len(choices) == 1 and isinstance(choices[0], dict)
            and isinstance((choices[0].get("message") or {}).get("content"), str))


def _message(body: Any) -> str:
    return f": {body['error']['message'][:80]}" if is_error_body(body) else ""


def _classify_slow(seen: Seen, deadline: float) -> tuple[str, Optional[str]]:
    if seen.error:
        return FAILED, seen.error
    if not seen.closed:
        return FAILED, f"still open after {deadline:g} s"
    if seen.seconds > deadline:
        return FAILED, f"closed after the {deadline:g} s deadline"
    if seen.status is None or seen.status == 408:
        return OK, None
    if seen.status in (429, 503):
        return REFUSED, None
    return FAILED, f"answered HTTP {seen.status} (expected 408 or a close)"


def classify(kind: str, seen: Seen, deadline: float = 0.0) -> tuple[str, Optional[str]]:
    """(ok, refused or failed; why it failed). ``deadline``: seconds a slow client may stay open."""
    if kind in SLOW:
        return _classify_slow(seen, deadline)
    if seen.status in (429, 503):
        return (REFUSED, None) if is_error_body(seen.body) else (FAILED, f"HTTP {seen.status} without an OpenAI error body")
    if seen.status is not None and seen.status >= 500:
        return FAILED, f"HTTP {seen.status}{_message(seen.body)}"
    if kind == "bad":
        if seen.status == 400 and is_error_body(seen.body, "invalid_request_error"):
            return OK, None
        return FAILED, seen.error or f"HTTP {seen.status} (expected an OpenAI-shaped 400){_message(seen.body)}"
    if seen.error:
        return FAILED, seen.error
    if seen.status != 200:
        return FAILED, f"HTTP {seen.status}{_message(seen.body)}"
    if kind == "long":
        return (OK, None) if is_completion(seen.body) else (FAILED, "a 200 that is not a chat.completion object")
    if seen.stream_error:
        return FAILED, f"error event in the stream: {seen.stream_error[:80]}"
    if kind == "disconnect":
        return (OK, None) if seen.chunks or seen.done else (FAILED, "stream ended before any content")
    return (OK, None) if seen.done else (FAILED, "stream ended without data: [DONE]")


def _r(x: float) -> Optional[float]:
    return None if x != x else round(x, 3)  # nan (no values) -> None, valid JSON


def summarize(records: list[Record]) -> dict:
    """Counts per kind and overall, short requests' time to first token, the failures by reason."""
    kinds = {}
    for kind in KINDS:
        mine = [r for r in records if r.kind == kind]
        if not mine:
            continue
        seconds = [r.seconds for r in mine if r.outcome == OK]
        kinds[kind] = {"sent": len(mine), **{o: sum(r.outcome == o for r in mine) for o in (OK, REFUSED, FAILED)},
                       "seconds_p50": _r(pct(seconds, 50)), "seconds_max": _r(max(seconds, default=float("nan")))}
    ttft = [r.ttft for r in records if r.kind == "short" and r.outcome == OK and r.ttft is not None]
    reasons = Counter(f"{r.kind}: {r.reason}" for r in records if r.outcome == FAILED)
    return {"sent": len(records), **{o: sum(r.outcome == o for r in records) for o in (OK, REFUSED, FAILED)},
            "kinds": kinds,
            "ttft_short_s": {"n": len(ttft), **{f"p{q}": _r(pct(ttft, q)) for q in (50, 90, 99)},
                             "max": _r(max(ttft, default=float("nan")))},
            "failure_reasons": dict(reasons.most_common(20))}


def verdict(out: dict, rss_slack_mib: Optional[float] = None) -> list[str]:
    """What keeps the run from passing (empty: passed). Memory counts only with ``rss_slack_mib``."""
    problems = []
    if out["failed"]:
        problems.append(f"{out['failed']} requests failed")
    if out["server_error_lines"]:
        problems.append(f"{out['server_error_lines']} error lines in the server log")
    if out["tracebacks"]:
        problems.append(f"{out['tracebacks']} tracebacks in the server log")
    if not out["server_alive"]:
        problems.append("the server was not running at the end")
    health = out.get("health_after_idle") or {}
    if health.get("active") or health.get("waiting"):
        problems.append(f"after the idle {health.get('active')} requests still held a slot, {health.get('waiting')} waited")
    if not out["kinds"].get("short", {}).get(OK):
        problems.append("no short request succeeded")
    mem = out["memory"]
    if rss_slack_mib is not None and mem["rss_idle_mib"] > mem["rss_start_mib"] + rss_slack_mib:
        problems.append(f"memory after the idle is {mem['rss_idle_mib'] - mem['rss_start_mib']:.0f} MiB above the start")
    return problems


def _s(x: Optional[float]) -> str:
    return "-" if x is None else f"{x:.2f}"


def report(out: dict) -> str:
    """A short markdown report of a run."""
    cfg, mem, t = out["config"], out["memory"], out["ttft_short_s"]
    lines = [f"# Soak: {cfg['model']} ({cfg['method']}), {cfg['clients']} clients, {cfg['duration']:.0f} s, seed {cfg['seed']}",
             "", f"Server: --max-concurrent {cfg['max_concurrent']} --max-queue {cfg['max_queue']}, flags "
             f"`{' '.join(out.get('server_flags', [])) or '-'}`; {out.get('machine', '')}.", "",
             "| kind | sent | ok | refused (429/503) | failed | ok p50 s | ok max s |",
             "| --- | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for kind, k in out["kinds"].items():
        lines.append(f"| {kind} | {k['sent']} | {k['ok']} | {k['refused']} | {k['failed']} | "
                     f"{_s(k['seconds_p50'])} | {_s(k['seconds_max'])} |")
    lines.append(f"| all | {out['sent']} | {out['ok']} | {out['refused']} | {out['failed']} | | |")
    lines += ["", f"TTFT of short requests ({t['n']}): p50 {_s(t['p50'])} s, p90 {_s(t['p90'])} s, "
              f"p99 {_s(t['p99'])} s, max {_s(t['max'])} s.",
              f"Memory (RSS of the server and its children): start {mem['rss_start_mib']:.0f} MiB, "
              f"peak {mem['rss_peak_mib']:.0f} MiB, after {cfg['idle']:g} s idle {mem['rss_idle_mib']:.0f} MiB.",
              f"Server log: {out['server_error_lines']} error lines, {out['tracebacks']} tracebacks; "
              f"exit status {out.get('server_exit')}."]
    if out["failure_reasons"]:
        lines += ["", "Failures:"] + [f"- {n} x {why}" for why, n in out["failure_reasons"].items()]
    if out["server_error_sample"]:
        lines += ["", "Server error lines (first ones):"] + [f"    {ln}" for ln in out["server_error_sample"]]
    lines += ["", f"Passed: {'yes' if out['passed'] else 'no (' + '; '.join(out['problems']) + ')'}"]
    return "\n".join(lines) + "\n"


def write(out: dict, folder: Path) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "results.json").write_text(json.dumps(out, indent=1) + "\n")
    (folder / "report.md").write_text(report(out))
