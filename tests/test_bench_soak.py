"""The soak test's judging (outcomes, figures, verdict, report) on hand-made inputs, its slow-client
socket against stand-in servers, and one short run against `polyverse serve` with the tiny model."""

import asyncio
import doctest
import json
import random

import pytest

from polyverse.bench import soak, soak_clients, soak_report
from polyverse.bench.soak_clients import Seen, Target
from polyverse.bench.soak_report import FAILED, OK, REFUSED, Record, classify, summarize, verdict
from polyverse.errors import ConfigError

BUSY = {"error": {"message": "the server is busy", "type": "rate_limit_error", "param": None, "code": None}}
BAD = {"error": {"message": "the body is not valid JSON", "type": "invalid_request_error", "param": None, "code": None}}
COMPLETION = {"object": "chat.completion", "choices": [{"index": 0, "message": {"role": "assistant", "content": "hi"}}],
              "usage": {"prompt_tokens": 7000, "completion_tokens": 16}}


def test_module_examples():
    for module in (soak, soak_clients, soak_report):
        assert doctest.testmod(module).failed == 0, module.__name__


@pytest.mark.parametrize("kind, seen, outcome", [
    ("short", Seen(status=200, chunks=5, done=True, ttft=0.2), OK),
    ("short", Seen(status=200, chunks=5, done=False), FAILED),  # no [DONE]: a broken stream
    ("short", Seen(status=200, chunks=1, stream_error="internal error"), FAILED),
    ("short", Seen(status=429, body=BUSY), REFUSED),
    ("short", Seen(status=503, body=BUSY), REFUSED),
    ("short", Seen(status=429, body={"detail": "busy"}), FAILED),  # refused, but not OpenAI-shaped
    ("short", Seen(status=500, body=BUSY), FAILED),
    ("short", Seen(status=200, chunks=2, error="RemoteProtocolError: peer closed connection"), FAILED),
    ("short", Seen(status=400, body=BAD), FAILED),
    ("long", Seen(status=200, body=COMPLETION), OK),
    ("long", Seen(status=200, body={"object": "chat.completion.chunk"}), FAILED),
    ("long", Seen(status=400, body=BAD), FAILED),  # a prompt past the context: the soak's own sizing is off
    ("long", Seen(status=429, body=BUSY), REFUSED),
    ("disconnect", Seen(status=200, chunks=1), OK),  # dropped after its first chunk, as intended
    ("disconnect", Seen(status=200, chunks=0, done=True), OK),  # the answer ended before the drop
    ("disconnect", Seen(status=200, chunks=0), FAILED),
    ("disconnect", Seen(error="ConnectError: refused"), FAILED),
    ("bad", Seen(status=400, body=BAD), OK),
    ("bad", Seen(status=400, body={"detail": "bad"}), FAILED),
    ("bad", Seen(status=422, body=BAD), FAILED),
    ("bad", Seen(status=500, body=BAD), FAILED),
    ("slow_headers", Seen(status=408, closed=True, seconds=5.1), OK),
    ("slow_headers", Seen(closed=True, seconds=5.1), OK),  # closed without an answer
    ("slow_headers", Seen(seconds=10.0), FAILED),  # still open at the deadline
    ("slow_headers", Seen(status=408, closed=True, seconds=10.5), FAILED),  # too late
    ("slow_body", Seen(status=400, body=BAD, closed=True, seconds=5.0), FAILED),
    ("slow_body", Seen(status=503, body=BUSY, closed=True, seconds=0.1), REFUSED),  # connection cap
    ("slow_body", Seen(error="connect: ConnectionRefusedError"), FAILED),
])
def test_classify(kind, seen, outcome):
    got, why = classify(kind, seen, deadline=10.0)
    assert got == outcome
    assert (why is None) == (outcome != FAILED)


def test_classify_names_the_failure():
    assert classify("slow_body", Seen(seconds=10.0), 10.0)[1] == "still open after 10 s"
    assert "HTTP 500" in classify("short", Seen(status=500, body=BUSY))[1]
    assert "[DONE]" in classify("short", Seen(status=200, chunks=3))[1]


def records():
    return ([Record("short", OK, None, 1.0, t) for t in (0.1, 0.2, 0.3, 0.4, 5.0)]
            + [Record("short", REFUSED, None, 0.01), Record("short", FAILED, "HTTP 500", 0.5, 0.05),
               Record("long", OK, None, 20.0), Record("slow_body", OK, None, 5.2),
               Record("slow_body", FAILED, "still open after 10 s", 10.0),
               Record("slow_body", FAILED, "still open after 10 s", 10.0)])


def test_summarize_counts_kinds_and_ttft_of_ok_short_requests_only():
    s = summarize(records())
    assert (s["sent"], s["ok"], s["refused"], s["failed"]) == (11, 7, 1, 3)
    assert s["kinds"]["short"] == {"sent": 7, "ok": 5, "refused": 1, "failed": 1, "seconds_p50": 1.0, "seconds_max": 1.0}
    assert "disconnect" not in s["kinds"]
    assert s["ttft_short_s"] == {"n": 5, "p50": 0.3, "p90": 5.0, "p99": 5.0, "max": 5.0}
    assert s["failure_reasons"] == {"slow_body: still open after 10 s": 2, "short: HTTP 500": 1}
    empty = summarize([Record("long", FAILED, "x")])
    assert empty["ttft_short_s"]["p50"] is None and empty["kinds"]["long"]["seconds_p50"] is None
    json.dumps(empty, allow_nan=False)  # no NaN in results.json


def fake_run(**changes):
    out = {"config": {"model": "m", "method": "ar", "clients": 4, "duration": 40.0, "seed": 0, "max_concurrent": 4,
                      "max_queue": 8, "idle": 10.0},
           **summarize([r for r in records() if r.outcome != FAILED]),
           "memory": {"rss_start_mib": 900.0, "rss_peak_mib": 1200.0, "rss_idle_mib": 950.0, "samples": []},
           "health_after_idle": {"status": "ok", "active": 0, "waiting": 0}, "server_alive": True,
           "server_error_lines": 0, "server_error_sample": [], "tracebacks": 0, "server_exit": 0,
           "server_flags": ["--header-timeout", "5", "--body-timeout", "5"]}
    out.update(changes)
    out["problems"] = verdict(out)
    out["passed"] = not out["problems"]
    return out


def test_verdict():
    assert fake_run()["passed"]
    assert verdict(fake_run(), rss_slack_mib=64) == []
    assert verdict(fake_run(), rss_slack_mib=16) == ["memory after the idle is 50 MiB above the start"]
    assert verdict(fake_run(failed=2)) == ["2 requests failed"]
    assert verdict(fake_run(server_error_lines=3, tracebacks=1)) == ["3 error lines in the server log",
                                                                      "1 tracebacks in the server log"]
    assert verdict(fake_run(server_alive=False)) == ["the server was not running at the end"]
    assert verdict(fake_run(health_after_idle={"active": 1, "waiting": 0}))[0].startswith("after the idle 1 requests")
    assert verdict(fake_run(kinds={"short": {"ok": 0}})) == ["no short request succeeded"]


def test_report_and_write(tmp_path):
    text = soak_report.report(fake_run())
    assert "| short | 6 | 5 | 1 | 0 | 1.00 | 1.00 |" in text
    assert "p50 0.30 s, p90 5.00 s, p99 5.00 s, max 5.00 s" in text
    assert "start 900 MiB, peak 1200 MiB, after 10 s idle 950 MiB" in text
    assert "0 error lines, 0 tracebacks" in text and text.rstrip().endswith("Passed: yes")
    failed = fake_run(server_error_lines=1, server_error_sample=["ERROR: boom"], **summarize(records()))
    text = soak_report.report(failed)
    assert "- 2 x slow_body: still open after 10 s" in text and "    ERROR: boom" in text
    assert "Passed: no (3 requests failed; 1 error lines in the server log)" in text
    soak_report.write(failed, tmp_path / "soak")
    assert json.loads((tmp_path / "soak" / "results.json").read_text())["failed"] == 3
    assert (tmp_path / "soak" / "report.md").read_text() == text


def test_config_flags_and_deadlines():
    cfg = soak.SoakConfig()
    assert soak.server_flags(cfg) == ("--header-timeout", "5", "--body-timeout", "5")
    assert soak.deadline("slow_headers", cfg) == 10.0 and soak.deadline("short", cfg) == 0.0
    off = soak.SoakConfig(header_timeout=0, body_timeout=0, dtype="fp32")
    assert soak.server_flags(off) == ("--dtype", "fp32")
    assert soak.deadline("slow_body", off) == soak.SERVER_DEFAULT_TIMEOUTS["body"] + off.slack
    for bad in ({"clients": 0}, {"duration": 0}, {"header_timeout": -1}, {"mix": (("nap", 1.0),)},
                {"mix": (("short", 0.0),)}):
        with pytest.raises(ConfigError):
            soak.SoakConfig(**bad)
    for text in ("short", "short=x", "short=1,,bad=1"):
        with pytest.raises(ConfigError):
            soak.parse_mix(text)


def test_long_prompts_fill_the_given_share_of_the_context():
    target = Target("127.0.0.1", 1, None, context=8192, tokens_per_sentence=20.0)
    a = soak_clients.long_prompt(random.Random(1), target, 32, share=0.9)
    assert a.count("Note ") == int((0.9 * 8192 - 32) / 20)
    assert a == soak_clients.long_prompt(random.Random(1), target, 32, share=0.9)  # seeded
    for _ in range(20):
        n = soak_clients.long_prompt(random.Random(_), target, 32).count("Note ")
        assert 0.73 * 8192 / 20 - 2 <= n <= 0.95 * 8192 / 20


async def _stand_in(handler):
    server = await asyncio.start_server(handler, "127.0.0.1", 0)
    return server, server.sockets[0].getsockname()[1]


def test_raw_client_sees_a_close_an_answer_or_nothing():
    async def closes(reader, writer):
        await asyncio.sleep(0.3)
        writer.close()

    async def answers(reader, writer):
        await reader.readuntil(b"{\"model")
        writer.write(b"HTTP/1.1 408 Request Timeout\r\ncontent-length: 2\r\n\r\n{}")
        await writer.drain()
        writer.close()

    async def keeps(reader, writer):
        await asyncio.sleep(5)

    async def main():
        seen = []
        for handler, first, trickle in ((closes, b"", soak_clients.slow_head("h")),
                                        (answers, soak_clients.slow_body_request("h"), b""),
                                        (keeps, b"", soak_clients.slow_head("h"))):
            server, port = await _stand_in(handler)
            seen.append(await soak_clients.raw_client("127.0.0.1", port, first, trickle, deadline=1.0, interval=0.1))
            server.close()
        return seen

    closed, answered, open_ = asyncio.run(main())
    assert closed.closed and closed.status is None and closed.seconds < 1.0
    assert answered.status == 408 and answered.body == {}
    assert not open_.closed and open_.seconds >= 1.0
    assert [classify("slow_headers", s, 1.0)[0] for s in (closed, answered, open_)] == [OK, OK, FAILED]


def test_short_soak_against_the_tiny_model(tiny_dir):
    """Every kind once or more in a few seconds; each must be ok or cleanly refused."""
    cfg = soak.SoakConfig(duration=4, clients=4, model=str(tiny_dir), method="ar", max_concurrent=2, max_queue=1,
                          header_timeout=1, body_timeout=1, slack=2, idle=0.5, drain=30, short_max_tokens=8,
                          mix=(("short", 4.0), ("long", 1.0), ("disconnect", 1.0), ("slow_headers", 1.0),
                               ("slow_body", 1.0), ("bad", 1.0)))
    out = soak.run(cfg)
    assert out["failed"] == 0, out["failure_reasons"]
    assert out["passed"], out["problems"]
    assert out["kinds"]["short"]["ok"] > 0 and out["ttft_short_s"]["n"] > 0
    assert out["memory"]["rss_peak_mib"] >= out["memory"]["rss_start_mib"] > 0
    assert "Passed: yes" in soak.report(out)
