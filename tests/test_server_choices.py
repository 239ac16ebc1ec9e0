"""n choices: each a request of its own, choice i seeded with seed + i, streamed with its index."""

import httpx
import openai
import pytest

from server_util import sse_events

CHAT = "/v1/chat/completions"
HI = [{"role": "user", "content": "hi"}]


def test_n_choices_are_seeded_samples_reproducible_with_a_seed(tiny, srv, client):
    kw = dict(model="tiny", messages=HI, max_tokens=12, temperature=1.0, n=4, seed=11)
    first = client.chat.completions.create(**kw)
    again = client.chat.completions.create(**kw)
    texts = [c.message.content for c in first.choices]
    assert [c.index for c in first.choices] == [0, 1, 2, 3] and texts == [c.message.content for c in again.choices]
    # choice i is the request seeded with seed + i, alone
    alone = [tiny.generate(HI, method="ar", max_new_tokens=12, temperature=1.0, seed=11 + i) for i in range(4)]
    total = sum(len(g.token_ids) for g in alone)
    assert texts == [g.text for g in alone] and len(set(texts)) > 1 and first.usage.completion_tokens == total
    # streamed: every chunk names its choice; the texts are the same
    body = {**kw, "stream": True, "stream_options": {"include_usage": True}}
    with httpx.stream("POST", srv.base + CHAT, json=body) as s:
        events = list(sse_events(s))
    assert events[-1] == "[DONE]" and events[-2]["usage"]["completion_tokens"] == total
    got = {i: "" for i in range(4)}
    for e in events[:-2]:
        for c in e["choices"]:
            got[c["index"]] += c["delta"].get("content") or ""
    assert [got[i] for i in range(4)] == texts
    with pytest.raises(openai.BadRequestError) as e:  # more than the server's slots and queue hold
        client.chat.completions.create(model="tiny", messages=HI, max_tokens=4, n=13)
    assert e.value.body["param"] == "n"


def test_many_choices_streamed_all_finish(srv):
    """Choices that finish while others are still starting: none of their events is lost."""
    for _ in range(5):
        body = {"model": "tiny", "messages": HI, "max_tokens": 3, "n": 12, "stream": True}
        with httpx.stream("POST", srv.base + CHAT, json=body, timeout=30) as s:
            events = list(sse_events(s))
        assert events[-1] == "[DONE]"
        finished = sorted(c["index"] for e in events[:-1] for c in e["choices"] if c["finish_reason"])
        assert finished == list(range(12))
