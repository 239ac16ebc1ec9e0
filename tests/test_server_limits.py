"""What one hostile or careless client may cost the server: slow headers and bodies (408), too many
connections (503), compressed bodies (415), lone surrogates, huge numbers, the per-request ceilings
and the KV budget. The real server on loopback, the tiny random model; raw sockets where httpx
would be too polite."""

import json
import logging
import socket
import threading
import time

import httpx
import pytest

from polyverse.server.memory import default_budget, kv_bytes_per_token, request_tokens
from server_util import Wrapped, running, slowed, wait_until

COMPLETE = "/v1/completions"
HELLO = {"model": "tiny", "prompt": "Hello", "max_tokens": 4, "temperature": 0}


def connect(port: int) -> socket.socket:
    s = socket.create_connection(("127.0.0.1", port), timeout=10)
    s.settimeout(10)
    return s


def read_all(s: socket.socket) -> bytes:
    """Everything the server sends until it closes the connection."""
    out = b""
    while True:
        try:
            part = s.recv(65536)
        except (ConnectionResetError, socket.timeout):
            return out
        if not part:
            return out
        out += part


def status_and_body(raw: bytes) -> tuple[int, dict]:
    head, _, body = raw.partition(b"\r\n\r\n")
    return int(head.split()[1]), json.loads(body)


def is_openai_error(body: dict) -> bool:
    err = body.get("error", {})
    return set(body) == {"error"} and isinstance(err.get("message"), str) and isinstance(err.get("type"), str)


@pytest.fixture
def server_log(caplog):
    caplog.set_level(logging.INFO)
    return caplog


def no_tracebacks(caplog) -> bool:
    return not any(r.exc_info or "Traceback" in r.getMessage() or r.levelno >= logging.ERROR for r in caplog.records)


# ---------------------------------------------------------------- the HTTP layer

def test_slow_headers_and_silent_connections_get_408_and_are_closed(tiny, server_log):
    with running(tiny, method="ar", header_timeout=0.5) as r:
        slow = connect(r.port)
        slow.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: x\r\n")  # and never the rest
        silent = connect(r.port)
        t0 = time.monotonic()
        for s in (slow, silent):
            status, body = status_and_body(read_all(s))
            assert status == 408 and is_openai_error(body) and body["error"]["code"] == "request_timeout"
        assert time.monotonic() - t0 < 3
        # a quick client on the same server is not affected
        assert httpx.post(r.base + COMPLETE, json=HELLO).status_code == 200
    assert no_tracebacks(server_log)


def test_a_keep_alive_connection_gets_a_new_header_deadline_per_request(tiny):
    with running(tiny, method="ar", header_timeout=0.6) as r:
        s = connect(r.port)
        body = json.dumps(HELLO).encode()
        request = (b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                   b"Content-Length: %d\r\n\r\n" % len(body)) + body
        s.sendall(request)
        assert one_response(s).startswith(b"HTTP/1.1 200")
        time.sleep(0.3)
        s.sendall(request[:20])  # the next request starts slowly: its own deadline, counted from now
        time.sleep(0.4)
        s.sendall(request[20:])
        assert one_response(s).startswith(b"HTTP/1.1 200")
        s.close()


def one_response(s: socket.socket) -> bytes:
    """One whole response of a keep-alive connection (its headers, then Content-Length bytes)."""
    data = b""
    while b"\r\n\r\n" not in data:
        data += s.recv(65536)
    head, _, body = data.partition(b"\r\n\r\n")
    length = int(next(line.split(b":")[1] for line in head.split(b"\r\n") if line.lower().startswith(b"content-length")))
    while len(body) < length:
        body += s.recv(65536)
    return head + b"\r\n\r\n" + body


def test_a_slow_body_gets_408_without_a_traceback(tiny, server_log):
    with running(tiny, method="ar", body_timeout=0.5) as r:
        s = connect(r.port)
        s.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                  b"Content-Length: 100\r\n\r\n{\"mode")  # 7 bytes of 100
        t0 = time.monotonic()
        status, body = status_and_body(read_all(s))
        assert status == 408 and is_openai_error(body) and "body" in body["error"]["message"]
        assert time.monotonic() - t0 < 3
    assert no_tracebacks(server_log)


def test_a_client_leaving_mid_body_is_one_log_line(tiny, server_log):
    with running(tiny, method="ar") as r:
        s = connect(r.port)
        s.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n{\"mode")
        time.sleep(0.2)
        s.close()
        assert wait_until(lambda: any("left before its whole body" in m.getMessage() for m in server_log.records))
        assert httpx.get(r.base + "/health").status_code == 200
    assert no_tracebacks(server_log)


def test_connections_past_the_limit_get_503(tiny):
    with running(tiny, method="ar", max_concurrent=1, max_queue=1, max_connections=2, header_timeout=5) as r:
        held = [connect(r.port) for _ in range(2)]
        time.sleep(0.2)
        extra = connect(r.port)
        status, body = status_and_body(read_all(extra))
        assert status == 503 and is_openai_error(body) and body["error"]["code"] == "too_many_connections"
        for s in held:
            s.close()
        assert wait_until(lambda: _ok(r.base))  # the slots of the closed ones are free again


def _ok(base: str) -> bool:
    try:
        return httpx.get(base + "/health", timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


# ---------------------------------------------------------------- bodies and values

@pytest.fixture(scope="module")
def srv(tiny):
    with running(tiny, method="ar", max_tokens_limit=64) as r:
        yield r


def test_a_compressed_body_is_415(srv):
    import gzip

    r = httpx.post(srv.base + COMPLETE, content=gzip.compress(json.dumps(HELLO).encode()),
                   headers={"Content-Encoding": "gzip", "Content-Type": "application/json"})
    assert r.status_code == 415 and is_openai_error(r.json()) and "uncompressed" in r.json()["error"]["message"]


def test_a_lone_surrogate_is_a_plain_400(srv):
    raw = b'{"model": "tiny", "prompt": "bad \\ud800 text", "max_tokens": 2}'
    r = httpx.post(srv.base + COMPLETE, content=raw, headers={"Content-Type": "application/json"})
    err = r.json()["error"]
    assert r.status_code == 400 and err["param"] == "prompt" and "surrogate" in err["message"]
    raw = b'{"model": "tiny", "messages": [{"role": "user", "content": "\\udfff"}]}'
    r = httpx.post(srv.base + "/v1/chat/completions", content=raw, headers={"Content-Type": "application/json"})
    assert r.status_code == 400 and r.json()["error"]["param"] == "messages.0.content"
    paired = b'{"model": "tiny", "prompt": "ok \\ud83d\\ude00", "max_tokens": 2}'  # a pair is one character
    assert httpx.post(srv.base + COMPLETE, content=paired, headers={"Content-Type": "application/json"}).status_code == 200


def test_huge_numbers_are_not_echoed_whole(srv):
    raw = b'{"model": "tiny", "prompt": "Hello", "max_tokens": ' + b"9" * 400 + b"}"
    r = httpx.post(srv.base + COMPLETE, content=raw, headers={"Content-Type": "application/json"})
    assert r.status_code == 400 and r.json()["error"]["param"] == "max_tokens" and len(r.text) < 400


def test_max_tokens_above_the_servers_limit_is_400(srv):
    r = httpx.post(srv.base + COMPLETE, json={**HELLO, "max_tokens": 65})
    err = r.json()["error"]
    assert r.status_code == 400 and err["code"] == "max_tokens_too_large" and "64" in err["message"]
    assert httpx.post(srv.base + COMPLETE, json={**HELLO, "max_tokens": 64}).status_code == 200
    # no max_tokens: the server's default, cut to the limit
    r = httpx.post(srv.base + COMPLETE, json={"model": "tiny", "prompt": "Hello", "temperature": 0})
    assert r.status_code == 200 and r.json()["usage"]["completion_tokens"] <= 64


def test_method_options_past_their_ceilings_are_400(srv):
    for options in ({"max_paths": 2000}, {"max_path_tokens": 100000}, {"outline_tokens": 100000},
                    {"paths": 2000, "guided": True}):
        body = {**HELLO, "polyverse": {"method": "multiverse", "options": options}}
        r = httpx.post(srv.base + COMPLETE, json=body)
        assert r.status_code == 400 and is_openai_error(r.json()), options
    r = httpx.post(srv.base + COMPLETE, json={**HELLO, "polyverse": {"method": "jacobi", "options": {"block": 10**6}}})
    assert r.status_code == 400


def test_multiverse_max_tokens_is_a_hard_cap(srv):
    for n in (8, 32):
        body = {"model": "tiny", "prompt": "Plan a picnic.", "max_tokens": n, "temperature": 0,
                "polyverse": {"method": "multiverse", "options": {"guided": True, "paths": 3, "outline_tokens": 4}}}
        r = httpx.post(srv.base + COMPLETE, json=body)
        assert r.status_code == 200 and r.json()["usage"]["completion_tokens"] == n, r.text
        assert r.json()["choices"][0]["finish_reason"] == "length"


def test_slash_variants_of_routes_are_404_not_redirects(srv):
    for path in ("/metrics/", "/health/", "/v1/models/"):
        r = httpx.get(srv.base + path)
        assert r.status_code == 404 and is_openai_error(r.json()), path


# ---------------------------------------------------------------- the KV budget

def test_requests_wait_for_kv_room_and_one_that_never_fits_is_400(tiny):
    need = request_tokens(tiny, 5, 20)  # "Hello" + 20 tokens
    with running(Wrapped(tiny, slowed(0.02)), method="ar", kv_budget=need + 10) as r:
        too_big = httpx.post(r.base + COMPLETE, json={**HELLO, "max_tokens": 40})
        assert too_big.status_code == 400 and too_big.json()["error"]["code"] == "context_length_exceeded"
        results = []

        def one():
            results.append(httpx.post(r.base + COMPLETE, json={**HELLO, "max_tokens": 20}, timeout=30))

        threads = [threading.Thread(target=one) for _ in range(2)]
        for t in threads:
            t.start()
        # two fit the slots, not the budget: one decodes, the other waits for its KV room
        assert wait_until(lambda: httpx.get(r.base + "/health").json()["waiting"] == 1)
        health = httpx.get(r.base + "/health").json()
        assert health["active"] == 1 and health["kv_tokens"] == need
        for t in threads:
            t.join(30)
        assert [x.status_code for x in results] == [200, 200]
        assert httpx.get(r.base + "/health").json()["kv_tokens"] == 0


def test_the_default_budget_follows_free_memory(tiny):
    per = kv_bytes_per_token(tiny)
    assert per > 0
    length = tiny.max_length
    # plenty of memory: every slot may hold a whole context
    assert default_budget(tiny, 4, free=10**12) == 4 * length
    # little memory: half of it, over twice a token's bytes, but never below one whole context
    assert default_budget(tiny, 4, free=per * 4 * length) == length
    assert default_budget(tiny, 4, free=per * 12 * length) == 3 * length


def test_a_failing_round_fails_its_requests_and_the_worker_lives_on(tiny, monkeypatch, server_log):
    from polyverse.batching import engine

    real, calls = engine.Batch.round, {"n": 0}

    def round_once_broken(self):
        calls["n"] += 1
        if calls["n"] == 1:
            raise RuntimeError("a bug outside any one request")
        return real(self)

    monkeypatch.setattr(engine.Batch, "round", round_once_broken)
    with running(tiny, method="ar") as r:
        first = httpx.post(r.base + COMPLETE, json=HELLO)
        assert first.status_code == 500 and first.json()["error"]["code"] == "internal_error"
        assert httpx.post(r.base + COMPLETE, json=HELLO).status_code == 200
