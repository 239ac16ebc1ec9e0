"""`polyverse serve`: the real server on loopback, driven by the official openai client, httpx and curl-like
raw bodies. The tiny random model serves (fast); slowed or failing doubles where timing or failure matters."""

import asyncio
import json
import re
import signal
import subprocess
import sys
import threading
import time

import httpx
import openai
import pytest

import polyverse
from server_util import Wrapped, failing, free_port, running, slowed, sse_events, wait_until
from prometheus_client.parser import text_string_to_metric_families
from typer.testing import CliRunner

from polyverse.cli import app as cli_app

HI = [{"role": "user", "content": "hi"}]


def metric(base: str, name: str, headers=None, **labels) -> float:
    """The value of the Prometheus sample ``name`` whose labels include ``labels`` (0 when absent)."""
    for family in text_string_to_metric_families(httpx.get(base + "/metrics", headers=headers).text):
        for sample in family.samples:
            if sample.name == name and labels.items() <= sample.labels.items():
                return sample.value
    return 0.0


# ---------------------------------------------------------------- the OpenAI API through the official client

def test_models_and_health(srv, client):
    ids = [m.id for m in client.models.list().data]
    assert ids == ["tiny"]
    card = httpx.get(srv.base + "/v1/models/tiny").json()
    assert card["polyverse"]["default_method"] == "ar" and "lookahead" in card["polyverse"]["methods"]
    health = httpx.get(srv.base + "/health")
    assert health.json() == {"status": "ok", "model": "tiny", "active": 0, "waiting": 0, "kv_tokens": 0,
                             "kv_budget": srv.app.state.scheduler.kv_budget}
    head = httpx.head(srv.base + "/health")
    assert head.status_code == 200 and head.content == b""


def test_chat_completion_is_the_models_greedy_output(tiny, client):
    r = client.chat.completions.create(model="tiny", messages=HI, max_tokens=12, temperature=0)
    ref = tiny.generate(HI, method="ar", max_new_tokens=12)
    assert r.choices[0].message.content == ref.text and len(ref.token_ids) == 12
    assert r.choices[0].finish_reason == "length" and r.object == "chat.completion"
    assert r.usage.completion_tokens == 12 and r.usage.prompt_tokens == len(tiny.encode(HI))
    assert r.usage.total_tokens == r.usage.prompt_tokens + 12
    pv = r.usage.model_extra["polyverse"]
    assert pv["method"] == "ar" and pv["forward_passes"] == 12 and pv["accepted_per_pass"] == [1] * 12


def test_completion_with_the_method_per_request(tiny, client):
    r = client.completions.create(model="tiny", prompt="Hello", max_tokens=24, temperature=0,
                                  extra_body={"polyverse": {"method": "jacobi", "options": {"block": 4}}})
    ref = tiny.generate("Hello", method="ar", max_new_tokens=24, chat=False)
    assert r.choices[0].text == ref.text
    pv = r.usage.model_extra["polyverse"]
    assert pv["method"] == "jacobi" and sum(pv["accepted_per_pass"]) == 24 and pv["forward_passes"] == len(pv["accepted_per_pass"])
    assert pv["mean_accepted"] == pytest.approx(24 / pv["forward_passes"], abs=1e-3)


@pytest.mark.parametrize("method", ["lookahead", "prompt_lookup", "auto", "multiverse"])
def test_every_kind_of_method_is_served(tiny, client, method):
    r = client.completions.create(model="tiny", prompt="Hello there", max_tokens=16, temperature=0,
                                  extra_body={"polyverse": {"method": method}})
    assert r.usage.model_extra["polyverse"]["method"] == method and r.usage.completion_tokens >= 1
    if method != "multiverse":  # lossless methods: the greedy text of ar
        assert r.choices[0].text == tiny.generate("Hello there", method="ar", max_new_tokens=16, chat=False).text


def test_chat_streaming_matches_the_whole_reply_and_tags_passes(client):
    whole = client.chat.completions.create(model="tiny", messages=HI, max_tokens=20, temperature=0,
                                           extra_body={"polyverse": {"method": "jacobi", "options": {"block": 3}}})
    chunks = list(client.chat.completions.create(model="tiny", messages=HI, max_tokens=20, temperature=0, stream=True,
                                                  stream_options={"include_usage": True},
                                                  extra_body={"polyverse": {"method": "jacobi", "options": {"block": 3}}}))
    assert chunks[0].choices[0].delta.role == "assistant"
    texts = [c.choices[0].delta.content for c in chunks if c.choices and c.choices[0].delta.content]
    assert "".join(texts) == whole.choices[0].message.content
    passes = [c.model_extra["polyverse"]["pass"] for c in chunks if c.choices and c.choices[0].delta.content]
    assert passes == sorted(passes) and len(set(passes)) == len(passes)
    finish = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert finish == ["length"]
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == 20
    assert sum(c.model_extra["polyverse"]["accepted"] for c in chunks if "polyverse" in (c.model_extra or {})) == 20


def test_completion_streaming(tiny, client):
    parts = [c.choices[0].text for c in client.completions.create(model="tiny", prompt="Hello", max_tokens=15,
                                                                  temperature=0, stream=True)]
    assert "".join(parts) == tiny.generate("Hello", method="ar", max_new_tokens=15, chat=False).text


def test_a_prompt_of_token_ids(tiny, client):
    ids = tiny.encode("Hello", chat=False)
    r = client.completions.create(model="tiny", prompt=ids, max_tokens=8, temperature=0)
    assert r.choices[0].text == tiny.generate("Hello", method="ar", max_new_tokens=8, chat=False).text
    assert r.usage.prompt_tokens == len(ids)


def test_stop_seed_and_top_p(tiny, client):
    full = tiny.generate("Hello", method="ar", max_new_tokens=20, chat=False).text
    stop = full[6:8]
    r = client.completions.create(model="tiny", prompt="Hello", max_tokens=20, temperature=0, stop=[stop])
    assert r.choices[0].text == full[: full.index(stop)] and r.choices[0].finish_reason == "stop"
    kw = dict(model="tiny", messages=HI, max_tokens=20, temperature=1.0, top_p=0.9)
    a = client.chat.completions.create(seed=7, **kw).choices[0].message.content
    b = client.chat.completions.create(seed=7, **kw).choices[0].message.content
    c = client.chat.completions.create(seed=8, **kw).choices[0].message.content
    assert a == b == tiny.generate(HI, method="ar", max_new_tokens=20, temperature=1.0, top_p=0.9, seed=7).text
    assert a != c


def test_concurrent_requests_each_get_their_own_output(tiny, srv):
    """Many requests at once, methods mixed: every reply equals the same request run alone."""
    async def main():
        c = openai.AsyncOpenAI(base_url=srv.base + "/v1", api_key="unused", max_retries=0, timeout=60)
        jobs = []
        for i in range(12):
            method = ["ar", "jacobi", "lookahead", "prompt_lookup"][i % 4]
            prompt = ["Hello", "Tell me", "abc def abc", "What is 2+2?"][i % 4] + " " * (i // 4)
            jobs.append((prompt, method, c.completions.create(model="tiny", prompt=prompt, max_tokens=30, temperature=0,
                                                              extra_body={"polyverse": {"method": method}})))
        outs = await asyncio.gather(*(j[2] for j in jobs))
        await c.close()
        return [(p, m, o.choices[0].text) for (p, m, _), o in zip(jobs, outs)]

    for prompt, method, text in asyncio.run(main()):
        assert text == tiny.generate(prompt, method="ar", max_new_tokens=30, chat=False).text, (prompt, method)


# ---------------------------------------------------------------- bad input: an OpenAI error, the right status

CHAT, COMPLETE = "/v1/chat/completions", "/v1/completions"
OK = {"model": "tiny", "messages": HI, "max_tokens": 4}
BAD = {
    "malformed JSON": (CHAT, b'{"model": "tiny", "messages": [', 400, None),
    "empty body": (CHAT, b"", 400, None),
    "not an object": (CHAT, b"[1, 2]", 400, None),
    "NaN literal": (CHAT, b'{"model": "tiny", "messages": [{"role": "user", "content": "hi"}], "temperature": NaN}', 400, None),
    "deeply nested": (CHAT, b"[" * 50000 + b"]" * 50000, 400, None),
    "invalid UTF-8": (CHAT, b'{"model": "tiny", "messages": [{"role": "user", "content": "\xff\xfe"}]}', 400, None),
    "missing messages": (CHAT, {"model": "tiny"}, 400, "messages"),
    "missing model": (CHAT, {"messages": HI}, 400, "model"),
    "missing prompt": (COMPLETE, {"model": "tiny"}, 400, "prompt"),
    "empty messages": (CHAT, {**OK, "messages": []}, 400, "messages"),
    "wrong type max_tokens": (CHAT, {**OK, "max_tokens": "5"}, 400, "max_tokens"),
    "wrong type messages": (CHAT, {**OK, "messages": "hi"}, 400, "messages"),
    "wrong type temperature": (CHAT, {**OK, "temperature": True}, 400, "temperature"),
    "bad role": (CHAT, {**OK, "messages": [{"role": "robot", "content": "hi"}]}, 400, "messages.0.role"),
    "wrong type prompt": (COMPLETE, {"model": "tiny", "prompt": {"a": 1}}, 400, "prompt"),
    "max_tokens zero": (CHAT, {**OK, "max_tokens": 0}, 400, "max_tokens"),
    "max_tokens negative": (COMPLETE, {"model": "tiny", "prompt": "hi", "max_tokens": -3}, 400, "max_tokens"),
    "max_tokens beyond context": (CHAT, {**OK, "max_tokens": 100000}, 400, "max_tokens"),
    "prompt longer than context": (COMPLETE, {"model": "tiny", "prompt": "a" * 600}, 400, "prompt"),
    "messages longer than context": (CHAT, {**OK, "messages": [{"role": "user", "content": "b" * 600}]}, 400, "messages"),
    "token id outside the vocabulary": (COMPLETE, {"model": "tiny", "prompt": [5, 100000]}, 400, "prompt"),
    "empty prompt": (COMPLETE, {"model": "tiny", "prompt": "  "}, 400, "prompt"),
    "unknown model": (CHAT, {**OK, "model": "gpt-9"}, 404, "model"),
    "unknown method": (CHAT, {**OK, "polyverse": {"method": "warp"}}, 400, "polyverse.method"),
    "unknown method option": (CHAT, {**OK, "polyverse": {"method": "jacobi", "options": {"blok": 4}}}, 400, "polyverse.options"),
    "bad method option value": (CHAT, {**OK, "polyverse": {"method": "jacobi", "options": {"block": 0}}}, 400, "polyverse.options"),
    "unknown polyverse field": (CHAT, {**OK, "polyverse": {"methd": "ar"}}, 400, "polyverse.methd"),
    "server-only option": (CHAT, {**OK, "polyverse": {"method": "draft", "options": {"model": "/etc"}}}, 400, "polyverse.options.model"),
    "negative temperature": (CHAT, {**OK, "temperature": -0.5}, 400, "temperature"),
    "top_p zero": (CHAT, {**OK, "top_p": 0}, 400, "top_p"),
    "empty stop string": (CHAT, {**OK, "stop": [""]}, 400, "stop"),
    "logprobs not a boolean": (CHAT, {**OK, "logprobs": 1}, 400, "logprobs"),
    "several prompts": (COMPLETE, {"model": "tiny", "prompt": ["a", "b"]}, 400, "prompt"),
}


@pytest.mark.parametrize("case", list(BAD))
def test_bad_input_gets_an_openai_error(srv, case):
    path, body, status, param = BAD[case]
    raw = body if isinstance(body, bytes) else json.dumps(body).encode()
    r = httpx.post(srv.base + path, content=raw, headers={"Content-Type": "application/json"})
    assert r.status_code == status, r.text
    err = r.json()["error"]
    assert set(err) == {"message", "type", "param", "code"} and "\n" not in err["message"]
    assert err["type"] == ("not_found_error" if status == 404 else "invalid_request_error")
    assert err["param"] == param
    assert "Traceback" not in r.text and "detail" not in r.json()
    assert httpx.get(srv.base + "/health").status_code == 200  # still serving


def test_a_huge_body_gets_413_without_being_read(tiny):
    with running(tiny, max_body_bytes=4096) as r:
        big = json.dumps({**OK, "messages": [{"role": "user", "content": "x" * 10000}]}).encode()
        resp = httpx.post(r.base + CHAT, content=big, headers={"Content-Type": "application/json"})
        assert resp.status_code == 413 and resp.json()["error"]["code"] == "request_too_large"

        def chunked():  # no Content-Length: counted as it arrives
            for _ in range(10):
                yield b" " * 1000
        resp = httpx.post(r.base + CHAT, content=chunked(), headers={"Content-Type": "application/json"})
        assert resp.status_code == 413
        assert httpx.post(r.base + CHAT, json=OK).status_code == 200


def test_unknown_routes_and_methods_get_openai_errors(srv):
    r = httpx.get(srv.base + "/v1/nothing")
    assert r.status_code == 404 and r.json()["error"]["type"] == "not_found_error"
    r = httpx.get(srv.base + CHAT)
    assert r.status_code == 405 and "not allowed" in r.json()["error"]["message"]
    r = httpx.get(srv.base + "/v1/models/other")
    assert r.status_code == 404 and r.json()["error"]["code"] == "model_not_found"


def test_a_failure_inside_the_decoder_is_a_500_without_a_traceback(tiny, caplog):
    greedy = {**OK, "temperature": 0}  # sampled, the first token could end the reply before the failure
    with running(Wrapped(tiny, failing), method="ar") as r:
        resp = httpx.post(r.base + CHAT, json=greedy)
        assert resp.status_code == 500
        err = resp.json()["error"]
        assert err["type"] == "server_error" and "boom" not in resp.text and "Traceback" not in resp.text
        with httpx.stream("POST", r.base + CHAT, json={**greedy, "stream": True}) as s:
            events = list(sse_events(s))
        assert events[-2]["error"]["type"] == "server_error" and events[-1] == "[DONE]"  # a clean end of the stream
        assert httpx.get(r.base + "/health").status_code == 200
        assert metric(r.base, "polyverse_requests_total", method="ar", outcome="error") == 2


# ---------------------------------------------------------------- auth

def test_api_key(tiny):
    with running(tiny, method="ar", api_key="s3cret") as r:
        for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": "Basic s3cret"}, {"Authorization": "s3cret"}):
            resp = httpx.post(r.base + CHAT, json=OK, headers=headers)
            assert resp.status_code == 401 and resp.json()["error"]["type"] == "authentication_error"
            assert set(resp.json()) == {"error"} and "s3cret" not in resp.text
        # 401 comes before anything else: a bad body, a huge body, other routes
        assert httpx.post(r.base + CHAT, content=b"{oops").status_code == 401
        assert httpx.post(r.base + CHAT, content=b"x" * (2 << 20)).status_code == 401
        assert httpx.get(r.base + "/v1/models").status_code == 401
        assert httpx.get(r.base + "/metrics").status_code == 401
        assert httpx.get(r.base + "/v1/nothing").status_code == 401
        with pytest.raises(openai.AuthenticationError):
            openai.OpenAI(base_url=r.base + "/v1", api_key="wrong", max_retries=0).models.list()
        good = openai.OpenAI(base_url=r.base + "/v1", api_key="s3cret", max_retries=0)
        assert good.chat.completions.create(model="tiny", messages=HI, max_tokens=3, temperature=0).usage.completion_tokens == 3
        assert httpx.get(r.base + "/health").status_code == 200  # open: for load balancers
        assert httpx.get(r.base + "/").status_code == 200  # the page asks for the key itself
        key = {"Authorization": "Bearer s3cret"}
        assert metric(r.base, "polyverse_requests_total", key, method="ar", outcome="length") == 1  # only the keyed one ran
        assert metric(r.base, "polyverse_http_responses_total", key, route="/v1/chat/completions", status="401") == 6


# ---------------------------------------------------------------- concurrency: slots, queue, disconnects, shutdown

LONG = {"model": "tiny", "prompt": "Hello", "max_tokens": 400, "temperature": 0}


def test_a_disconnected_stream_frees_its_slot_at_once(tiny):
    with running(Wrapped(tiny, slowed(0.05)), method="ar", max_concurrent=1, max_queue=2) as r:
        with httpx.stream("POST", r.base + COMPLETE, json={**LONG, "stream": True}) as s:
            events = sse_events(s)  # kept referenced: a dropped generator would close the connection
            first = next(e for e in events if e != "[DONE]" and e["choices"][0]["text"])
            assert first["polyverse"]["pass"] >= 1
            assert httpx.get(r.base + "/health").json()["active"] == 1
        t0 = time.monotonic()
        assert wait_until(lambda: httpx.get(r.base + "/health").json()["active"] == 0, 2.0)
        assert time.monotonic() - t0 < 1.0  # at once, not after the 20 s the request had left
        assert wait_until(lambda: metric(r.base, "polyverse_requests_total", method="ar", outcome="cancelled") == 1)
        # the slot serves the next request at once
        resp = httpx.post(r.base + COMPLETE, json={**LONG, "max_tokens": 3}, timeout=10)
        assert resp.status_code == 200 and resp.json()["usage"]["completion_tokens"] == 3


def test_a_disconnected_plain_request_frees_its_slot(tiny):
    with running(Wrapped(tiny, slowed(0.05)), method="ar", max_concurrent=1) as r:
        with pytest.raises(httpx.ReadTimeout):
            httpx.post(r.base + COMPLETE, json=LONG, timeout=httpx.Timeout(5, read=0.5))
        assert wait_until(lambda: httpx.get(r.base + "/health").json()["active"] == 0, 2.0)


def test_a_full_queue_answers_429(tiny):
    with running(Wrapped(tiny, slowed(0.05)), method="ar", max_concurrent=1, max_queue=1) as r:
        with httpx.Client(timeout=30) as a, httpx.Client(timeout=30) as b:
            with a.stream("POST", r.base + COMPLETE, json={**LONG, "stream": True}) as s1:
                events = sse_events(s1)
                next(events)
                hold = threading.Thread(target=lambda: b.post(r.base + COMPLETE, json={**LONG, "max_tokens": 5}), daemon=True)
                hold.start()
                assert wait_until(lambda: httpx.get(r.base + "/health").json()["waiting"] == 1)
                resp = httpx.post(r.base + COMPLETE, json=LONG)
                assert resp.status_code == 429 and resp.headers["retry-after"] == "1"
                assert resp.json()["error"]["type"] == "rate_limit_error" and resp.json()["error"]["code"] == "queue_full"
                with pytest.raises(openai.RateLimitError):
                    openai.OpenAI(base_url=r.base + "/v1", api_key="x", max_retries=0).completions.create(**LONG)
                assert metric(r.base, "polyverse_requests_rejected_total") == 2
            hold.join(10)  # the waiting request got the slot once the stream left
            assert not hold.is_alive()


def test_requests_are_interleaved_not_serialised(tiny):
    """A short request that arrives while a long one decodes finishes long before the long one."""
    with running(Wrapped(tiny, slowed(0.02)), method="ar", max_concurrent=2) as r:
        with httpx.stream("POST", r.base + COMPLETE, json={**LONG, "stream": True}, timeout=30) as s:
            events = sse_events(s)
            next(events)
            t0 = time.monotonic()
            short = httpx.post(r.base + COMPLETE, json={**LONG, "max_tokens": 10}, timeout=30)
            took = time.monotonic() - t0
            assert short.status_code == 200
            assert took < 2.0  # 10 passes interleaved with the other's: ~0.4 s; after it: 8 s
            assert httpx.get(r.base + "/health").json()["active"] == 1  # the long one still going


def test_graceful_shutdown_finishes_in_flight_streams(tiny):
    r = running(Wrapped(tiny, slowed(0.02)), method="ar", shutdown_grace=10)
    run = r.__enter__()
    try:
        with httpx.stream("POST", run.base + COMPLETE, json={**LONG, "max_tokens": 30, "stream": True}) as s:
            events = sse_events(s)
            next(events)
            run.server.should_exit = True
            assert wait_until(lambda: run.app.state.scheduler.draining)
            # draining: still listening, new requests refused with 503 and Retry-After, /health says so
            late = httpx.post(run.base + COMPLETE, json={**LONG, "max_tokens": 2})
            assert late.status_code == 503 and late.headers["retry-after"]
            assert late.json()["error"]["code"] == "shutting_down"
            health = httpx.get(run.base + "/health")
            assert health.status_code == 503 and health.json()["status"] == "draining"
            rest = list(events)
        assert rest[-1] == "[DONE]" and rest[-2]["choices"][0]["finish_reason"] == "length"
        run.thread.join(10)
        assert not run.thread.is_alive()
    finally:
        r.__exit__(None, None, None)


def test_shutdown_past_the_grace_cancels_streams_cleanly(tiny):
    r = running(Wrapped(tiny, slowed(0.05)), method="ar", shutdown_grace=0.3)
    run = r.__enter__()
    try:
        with httpx.stream("POST", run.base + COMPLETE, json={**LONG, "stream": True}) as s:
            events = sse_events(s)
            next(events)
            t0 = time.monotonic()
            run.server.should_exit = True
            rest = list(events)
        assert rest[-2]["error"]["code"] == "shutting_down" and rest[-1] == "[DONE]"  # an error event, not a cut stream
        assert time.monotonic() - t0 < 5
        run.thread.join(10)
        assert not run.thread.is_alive()
        assert not run.app.state.scheduler._thread.is_alive()
        with pytest.raises(httpx.ConnectError):
            httpx.get(run.base + "/health")
    finally:
        r.__exit__(None, None, None)


# ---------------------------------------------------------------- metrics and the page

def test_metrics_series(srv, client):
    before = metric(srv.base, "polyverse_tokens_total", method="jacobi", kind="completion")
    passes = metric(srv.base, "polyverse_forward_passes_total", method="jacobi")
    r = client.completions.create(model="tiny", prompt="Hello", max_tokens=17, temperature=0,
                                  extra_body={"polyverse": {"method": "jacobi"}})
    n = r.usage.model_extra["polyverse"]["forward_passes"]
    assert metric(srv.base, "polyverse_tokens_total", method="jacobi", kind="completion") == before + 17
    assert metric(srv.base, "polyverse_forward_passes_total", method="jacobi") == passes + n
    text = httpx.get(srv.base + "/metrics").text
    for series in ["polyverse_requests_total", "polyverse_time_to_first_token_seconds_bucket",
                   "polyverse_tokens_per_second_bucket", "polyverse_accepted_tokens_per_pass_bucket",
                   "polyverse_request_seconds_bucket", "polyverse_requests_waiting", "polyverse_requests_active",
                   "polyverse_http_responses_total"]:
        assert re.search(rf"^{series}", text, re.M), series
    assert metric(srv.base, "polyverse_accepted_tokens_per_pass_count", method="jacobi") >= n
    assert metric(srv.base, "polyverse_time_to_first_token_seconds_count", method="jacobi") >= 1


def test_the_page_and_its_script_are_served(srv):
    page = httpx.get(srv.base + "/")
    assert page.status_code == 200 and "text/html" in page.headers["content-type"]
    assert '<script src="/static/app.js">' in page.text
    js = httpx.get(srv.base + "/static/app.js")
    assert js.status_code == 200 and "/v1/chat/completions" in js.text and "polyverse" in js.text


# ---------------------------------------------------------------- the command

def test_serve_refuses_bad_options_in_one_line():
    runner = CliRunner()
    for args, words in [(["--method", "warp"], "unknown method 'warp'"), (["--max-concurrent", "0"], "--max-concurrent"),
                        (["-m", "jacobi", "-o", "block=0"], "block"), (["--port", "0"], "--port")]:
        r = runner.invoke(cli_app, ["serve", *args])
        assert r.exit_code == 2 and words in r.output and "Traceback" not in r.output, r.output


def test_serve_command_runs_and_stops_on_sigterm(tiny_dir):
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "polyverse.cli", "serve", "--model", str(tiny_dir), "-m", "ar",
                             "--port", str(port), "--served-name", "tiny"], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    try:
        assert wait_until(lambda: _up(port), 60), "server did not come up"
        c = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="x", max_retries=0)
        assert c.completions.create(model="tiny", prompt="Hello", max_tokens=5, temperature=0).usage.completion_tokens == 5
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=30)
        assert proc.returncode == 0, out  # a drained shutdown is a normal end
        assert "Application shutdown complete" in out and "Traceback" not in out and "ERROR" not in out
    finally:
        if proc.poll() is None:
            proc.kill()


def _up(port: int) -> bool:
    try:
        return httpx.get(f"http://127.0.0.1:{port}/health", timeout=1).status_code == 200
    except httpx.HTTPError:
        return False


def test_concurrent_requests_share_passes_and_each_gets_its_own_output(tiny_dir, tiny):
    from concurrent.futures import ThreadPoolExecutor

    from polyverse.backends.cpu import lean

    model = tiny
    if lean.extension() is not None and lean.isa(env=None) is not None:
        model = polyverse.load(str(tiny_dir), progress=False, dtype="fp32")  # the pass that batches
    jobs = [("abcab cabca", "auto", 0.0, None), ("hello hello", "ar", 0.0, None), ("cab cab", "jacobi", 0.0, None),
            ("xyz", "lookahead", 0.0, None), ("bca bca bca", "prompt_lookup", 0.0, None), ("sampled", "auto", 0.8, 7)]

    def body(prompt, method, temperature, seed):
        return {"model": "tiny", "prompt": prompt, "max_tokens": 16, "temperature": temperature, "seed": seed,
                "polyverse": {"method": method}}

    with running(model, method="auto", max_concurrent=8) as r:
        with ThreadPoolExecutor(len(jobs)) as pool:
            replies = list(pool.map(lambda j: httpx.post(r.base + COMPLETE, json=body(*j), timeout=60), jobs))
        metrics = httpx.get(r.base + "/metrics").text
    for (prompt, method, temperature, seed), reply in zip(jobs, replies):
        assert reply.status_code == 200, reply.text
        alone = model.generate(prompt, method=method, max_new_tokens=16, chat=False, temperature=temperature, seed=seed)
        assert reply.json()["choices"][0]["text"] == alone.text
    count = next(float(line.split()[-1]) for line in metrics.splitlines() if line.startswith("polyverse_pass_requests_count"))
    total = next(float(line.split()[-1]) for line in metrics.splitlines() if line.startswith("polyverse_pass_requests_sum"))
    assert total / count > 1  # requests did share passes
    assert "polyverse_pass_rows_bucket" in metrics and "polyverse_drafted_tokens_per_pass_bucket" in metrics
