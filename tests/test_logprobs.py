"""Log-probabilities of output tokens: read from the target's rows that produced them, so every
method reports what `ar` reports, and what a plain forward over the whole output gives."""

import pytest
import torch

from polyverse.costs import CostCurve
from polyverse.errors import ConfigError

PROMPT = "abcab cabca bbcca abcab "
FLAT = CostCurve((1, 64), (1.0, 1.0))  # every pass costs the same: a draft always pays
# auto and jacobi draft where their pass-cost curve says a draft pays: priced by a fixed curve, not
# by passes timed on a machine busy with the rest of the suite (nor corrected by timed steps), they draft here
METHODS = [("auto", {"live": False}), ("jacobi", {"block": 4, "live": False}), ("lookahead", {"window": 3, "ngram": 3, "guesses": 2}),
           ("prompt_lookup", {})]


def test_ar_logprobs_are_the_models_own(tiny):
    g = tiny.generate(PROMPT, method="ar", max_new_tokens=12, chat=False, logprobs=3)
    assert len(g.logprobs) == len(g.token_ids) == 12
    ids = tiny.encode(PROMPT, chat=False)
    with torch.no_grad():
        logits = tiny.hf_model(torch.tensor([ids + list(g.token_ids)])).logits[0].float()  # [n, V]
    lp = torch.log_softmax(logits, -1)
    for j, (tok, entry) in enumerate(zip(g.token_ids, g.logprobs)):
        row = lp[len(ids) - 1 + j]
        assert entry.token == tok and abs(entry.logprob - float(row[tok])) < 1e-4
        assert [t for t, _ in entry.top] == torch.topk(row, 3).indices.tolist()
        assert entry.top[0][0] == tok  # greedy: the chosen token is the likeliest


@pytest.mark.parametrize("method, options", METHODS)
def test_every_method_reports_ars_logprobs(tiny, method, options, monkeypatch):
    monkeypatch.setitem(tiny.resources, "cost_curve", FLAT)
    ref = tiny.generate(PROMPT, method="ar", max_new_tokens=20, chat=False, logprobs=2)
    got = tiny.generate(PROMPT, method=method, options=options, max_new_tokens=20, chat=False, logprobs=2)
    assert got.token_ids == ref.token_ids
    assert got.stats.drafted > 0
    for a, b in zip(got.logprobs, ref.logprobs):
        assert a.token == b.token and abs(a.logprob - b.logprob) < 1e-4
        assert [t for t, _ in a.top] == [t for t, _ in b.top]


def test_logprobs_follow_a_stop_string_and_streaming(tiny):
    full = tiny.generate(PROMPT, method="auto", max_new_tokens=20, chat=False, logprobs=0)
    stop = tiny.tokenizer.decode(list(full.token_ids[5:7]))
    g = tiny.generate(PROMPT, method="auto", max_new_tokens=20, chat=False, logprobs=0, stop=[stop])
    assert g.finish_reason == "stop" and len(g.logprobs) == len(g.token_ids) < 20
    chunks = list(tiny.stream(PROMPT, method="auto", max_new_tokens=20, chat=False, logprobs=1))
    streamed = [e for c in chunks for e in c.logprobs]
    assert [e.token for e in streamed] == list(full.token_ids) and all(len(e.top) == 1 for e in streamed)


def test_no_logprobs_unless_asked_and_bad_requests_refused(tiny):
    assert tiny.generate(PROMPT, method="ar", max_new_tokens=3, chat=False).logprobs is None
    with pytest.raises(ConfigError, match="logprobs"):
        tiny.generate(PROMPT, method="ar", max_new_tokens=3, chat=False, logprobs=21)
    with pytest.raises(ConfigError, match="multiverse"):
        tiny.generate(PROMPT, method="multiverse", max_new_tokens=3, chat=False, logprobs=1)


@pytest.mark.bundled
def test_auto_logprobs_equal_ars_where_drafts_are_accepted(bundled):
    prompt = ("Add a comment above every line of this function and return the whole function:\n\n"
              "def mean(values):\n    total = 0\n    for v in values:\n        total += v\n    return total / len(values)")
    ref = bundled.generate(prompt, method="ar", max_new_tokens=48, logprobs=1)
    got = bundled.generate(prompt, method="auto", max_new_tokens=48, logprobs=1)
    assert got.token_ids == ref.token_ids and got.stats.accepted_draft > 5  # rows of accepted drafts were read
    assert max(abs(a.logprob - b.logprob) for a, b in zip(got.logprobs, ref.logprobs)) < 1e-4


def test_the_server_returns_logprobs_in_openais_shapes(tiny):
    import httpx
    import openai

    from server_util import running, sse_events

    hi = [{"role": "user", "content": "hi"}]
    ref = tiny.generate(hi, method="ar", max_new_tokens=6, logprobs=2)
    with running(tiny, method="auto") as r:
        client = openai.OpenAI(base_url=r.base + "/v1", api_key="x", max_retries=0)
        chat = client.chat.completions.create(model="tiny", messages=hi, max_tokens=6, temperature=0, logprobs=True,
                                              top_logprobs=2)
        content = chat.choices[0].logprobs.content
        assert len(content) == chat.usage.completion_tokens == 6
        for got, want in zip(content, ref.logprobs):
            assert abs(got.logprob - want.logprob) < 1e-4 and len(got.top_logprobs) == 2
            assert got.token == tiny.tokenizer.decode([want.token]) and got.bytes == list(got.token.encode())
        text = client.completions.create(model="tiny", prompt=PROMPT, max_tokens=5, temperature=0, logprobs=3)
        lp = text.choices[0].logprobs
        assert "".join(lp.tokens) == text.choices[0].text and len(lp.token_logprobs) == 5
        assert all(len(t) <= 3 for t in lp.top_logprobs) and lp.text_offset[0] == 0
        body = {"model": "tiny", "messages": hi, "max_tokens": 6, "temperature": 0, "logprobs": True, "stream": True}
        with httpx.stream("POST", r.base + "/v1/chat/completions", json=body) as s:
            events = [e for e in sse_events(s) if e != "[DONE]"]
        streamed = [x["logprob"] for e in events if e["choices"] and e["choices"][0]["logprobs"]
                    for x in e["choices"][0]["logprobs"]["content"]]
        assert len(streamed) == 6 and max(abs(a - b.logprob) for a, b in zip(streamed, ref.logprobs)) < 1e-4
        bad = httpx.post(r.base + "/v1/chat/completions", json={"model": "tiny", "messages": hi, "top_logprobs": 2})
        assert bad.status_code == 400 and bad.json()["error"]["param"] == "top_logprobs"
        mv = httpx.post(r.base + "/v1/completions", json={"model": "tiny", "prompt": "hi", "logprobs": 1,
                                                           "polyverse": {"method": "multiverse"}})
        assert mv.status_code == 400 and "multiverse" in mv.json()["error"]["message"]


def test_generate_command_prints_logprobs(tiny, tiny_dir):
    import json

    from typer.testing import CliRunner

    from polyverse.cli import app

    run = lambda *a: CliRunner().invoke(app, [str(x) for x in a])  # noqa: E731
    r = run("generate", PROMPT, "--model", tiny_dir, "--no-chat", "-n", 6, "--logprobs", 2, "--json")
    assert r.exit_code == 0, r.output
    out = json.loads(r.output.strip().splitlines()[-1])
    ref = tiny.generate(PROMPT, method="auto", max_new_tokens=6, chat=False, logprobs=2)
    assert [row["token"] for row in out["logprobs"]] == out["token_ids"] == list(ref.token_ids)
    assert all(len(row["top"]) == 2 for row in out["logprobs"])
    bad = run("generate", PROMPT, "--model", tiny_dir, "--logprobs", 21)
    assert bad.exit_code == 2 and "logprobs" in bad.output and "Traceback" not in bad.output
