"""Structured output, penalties and logit bias through the server: the official client's ``parse``,
response_format, the polyverse regex and grammar extension, and clear 400s for bad ones."""

import json
import re
from typing import Literal

import httpx
import pytest
from pydantic import BaseModel

from polyverse import GrammarSpec


class Pick(BaseModel):
    color: Literal["red", "green", "blue"]
    ok: bool
    size: int


def chat(srv, **body):
    body = {"model": "tiny", "messages": [{"role": "user", "content": "pick one"}], "max_tokens": 40,
            "temperature": 0, **body}
    return httpx.post(srv.base + "/v1/chat/completions", json=body, timeout=60)


def test_the_official_client_parses_into_a_pydantic_model(client, tiny):
    out = client.beta.chat.completions.parse(model="tiny", messages=[{"role": "user", "content": "pick one"}],
                                             response_format=Pick, max_tokens=64, temperature=0)
    choice = out.choices[0]
    assert choice.finish_reason == "stop" and isinstance(choice.message.parsed, Pick)
    # what the Python API writes under the same schema
    want = tiny.generate([{"role": "user", "content": "pick one"}], method="ar", max_new_tokens=64,
                         grammar=GrammarSpec.json_schema(Pick))
    assert choice.message.content == want.text


@pytest.mark.parametrize("body,check", [
    ({"response_format": {"type": "json_object"}, "max_tokens": 200}, None),
    ({"polyverse": {"regex": "[0-9]{3}-[a-z]{2}"}}, r"[0-9]{3}-[a-z]{2}"),
    ({"polyverse": {"grammar": 'start: "yes" | "no" | "maybe " NUMBER\nNUMBER: /[0-9]+/'}}, r"yes|no|maybe [0-9]+"),
])
def test_constrained_output_follows_the_constraint(srv, body, check):
    r = chat(srv, **body)
    assert r.status_code == 200, r.text
    text = r.json()["choices"][0]["message"]["content"]
    if check is None:
        if r.json()["choices"][0]["finish_reason"] == "stop":
            assert isinstance(json.loads(text), dict)
        else:  # cut by max_tokens: still a prefix of a JSON object
            assert text.startswith("{")
    else:
        assert re.fullmatch(check, text), text


def test_streamed_constrained_output_is_the_same(srv):
    body = {"polyverse": {"regex": "(ab|c)+d"}, "max_tokens": 30}
    whole = chat(srv, **body).json()["choices"][0]["message"]["content"]
    with httpx.stream("POST", srv.base + "/v1/chat/completions", timeout=60, json={
            "model": "tiny", "messages": [{"role": "user", "content": "pick one"}], "temperature": 0, "stream": True,
            **body}) as r:
        events = [line[6:] for line in r.iter_lines() if line.startswith("data: ") and line != "data: [DONE]"]
    streamed = "".join(json.loads(e)["choices"][0]["delta"].get("content") or "" for e in events)
    assert streamed == whole and re.fullmatch("(ab|c)+d", whole)


def test_penalties_and_bias_reach_the_decoder(srv, tiny):
    body = {"frequency_penalty": 1.5, "presence_penalty": 0.5, "logit_bias": {"20": 100}}
    text = chat(srv, **body).json()["choices"][0]["message"]["content"]
    want = tiny.generate([{"role": "user", "content": "pick one"}], method="ar", max_new_tokens=40,
                         presence_penalty=0.5, frequency_penalty=1.5, logit_bias={20: 100})
    assert text == want.text
    assert tiny.tokenizer.decode([20]) in text  # a bias of 100 all but forces the token


@pytest.mark.parametrize("body,param,words", [
    ({"polyverse": {"regex": "(ab"}}, "polyverse.regex", "regex is invalid"),
    ({"polyverse": {"grammar": "start: foo"}}, "polyverse.grammar", "unknown name"),
    ({"response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "objekt"}}}},
     "response_format.json_schema.schema", "objekt"),
    ({"response_format": {"type": "json_schema"}}, "response_format.json_schema", "needs a json_schema"),
    ({"response_format": {"type": "yaml"}}, "response_format.type", "json_object"),
    ({"response_format": {"type": "json_object"}, "polyverse": {"regex": "a"}}, "polyverse.regex", "give one"),
    ({"logit_bias": {"100": 1}}, "logit_bias", "outside the vocabulary"),
    ({"logit_bias": {"x": 1}}, "logit_bias", "token ids"),
    ({"logit_bias": {"5": 101}}, "logit_bias", "biases are in"),
    ({"presence_penalty": 2.5}, "presence_penalty", "less than or equal to 2"),
    ({"response_format": {"type": "json_object"}, "polyverse": {"method": "multiverse"}}, "response_format",
     "not available"),
])
def test_bad_constraints_get_a_400_naming_the_problem(srv, body, param, words):
    r = chat(srv, **body)
    assert r.status_code == 400, r.text
    err = r.json()["error"]
    assert err["param"] == param and words in err["message"], err
