"""Tool calling: tools told to the model, calls constrained by their schemas and parsed back into
OpenAI's ``tool_calls``; a round trip with the official client."""

import json

import httpx
import jsonschema
import pytest

from polyverse.grammar import compile_grammar
from polyverse.tools import OPEN, CLOSE, Tool, call_grammar, parse_calls, render

WEATHER = {"type": "object", "properties": {"unit": {"enum": ["c", "f"]}, "days": {"type": "integer", "minimum": 1,
                                                                                     "maximum": 7}},
           "required": ["unit", "days"], "additionalProperties": False}
TOOLS = [{"type": "function", "function": {"name": "forecast", "description": "The forecast", "parameters": WEATHER}},
         {"type": "function", "function": {"name": "ping", "parameters": {"type": "object", "properties": {
             "ok": {"type": "boolean"}}, "required": ["ok"], "additionalProperties": False}}}]


def test_render_tells_a_template_without_tools_about_them():
    tools = [Tool.of("forecast", "The forecast", WEATHER)]
    messages = [{"role": "user", "content": "hi"},
                {"role": "assistant", "content": "", "tool_calls": [{"name": "forecast", "arguments": {"unit": "c"}}]},
                {"role": "tool", "content": "18 C", "tool_call_id": "call_1"}]
    out = render(messages, tools, template_takes_tools=False)
    assert out[0]["role"] == "system" and '"name": "forecast"' in out[0]["content"] and OPEN in out[0]["content"]
    assert out[2]["content"] == OPEN + '\n{"name": "forecast", "arguments": {"unit": "c"}}\n' + CLOSE
    assert out[3] == {"role": "tool", "content": "<tool_response>\n18 C\n</tool_response>"}
    structured = render(messages, tools, template_takes_tools=True)
    assert len(structured) == 3 and structured[1]["tool_calls"][0]["function"]["name"] == "forecast"
    assert render([{"role": "system", "content": "Be brief."}], tools, False)[0]["content"].startswith("Be brief.\n\n")


def test_parse_calls_keeps_what_is_not_a_call():
    text = f'Sure. {OPEN}\n{{"name": "ping", "arguments": {{"ok": true}}}}\n{CLOSE}'
    content, calls = parse_calls(text, ["ping"])
    assert content == "Sure." and [(c.name, json.loads(c.arguments)) for c in calls] == [("ping", {"ok": True})]
    assert parse_calls(text, ["other"]) == (text, [])  # an unknown tool: text
    broken = f"{OPEN}{{not json}}{CLOSE}"
    assert parse_calls(broken, ["ping"]) == (broken, [])
    cut = text + f"\n{OPEN}\n{{\"name\": \"pi"  # a second call cut by the budget
    assert parse_calls(cut, ["ping"])[0] == "Sure."
    as_text = f'{OPEN}{{"name": "ping", "arguments": "{{\\"ok\\": false}}"}}{CLOSE}'
    assert json.loads(parse_calls(as_text, ["ping"])[1][0].arguments) == {"ok": False}


def test_the_call_grammar_admits_only_calls_with_valid_arguments(tiny):
    grammar = compile_grammar(call_grammar([Tool.of("forecast", None, WEATHER)], parallel=False), tiny.tokenizer,
                              tiny.backend.vocab_size, tiny.eos_token_ids)
    ids = lambda s: tiny.tokenizer(s, add_special_tokens=False)["input_ids"]  # noqa: E731
    good = f'{OPEN}\n{{"name": "forecast", "arguments": {{"unit": "c", "days": 3}}}}\n{CLOSE}'
    assert grammar.state().valid(ids(good)) == len(ids(good))
    bad = good.replace('"days": 3', '"days": 9')
    assert grammar.state().valid(ids(bad)) < len(ids(bad))


def chat(srv, **body):
    return httpx.post(srv.base + "/v1/chat/completions", timeout=60, json={
        "model": "tiny", "messages": [{"role": "user", "content": "weather?"}], "max_tokens": 80, "temperature": 0, **body})


def test_a_round_trip_with_the_official_client(client):
    messages = [{"role": "user", "content": "weather for three days?"}]
    first = client.chat.completions.create(model="tiny", messages=messages, tools=TOOLS[1:], tool_choice="required",
                                           parallel_tool_calls=False, temperature=0, max_tokens=80)
    choice = first.choices[0]
    assert choice.finish_reason == "tool_calls" and len(choice.message.tool_calls) == 1
    call = choice.message.tool_calls[0]
    assert call.function.name == "ping"
    jsonschema.validate(json.loads(call.function.arguments), TOOLS[1]["function"]["parameters"])
    messages += [choice.message.model_dump(exclude_none=True),
                 {"role": "tool", "tool_call_id": call.id, "content": '{"forecast": "sunny"}'}]
    second = client.chat.completions.create(model="tiny", messages=messages, tools=TOOLS[1:], temperature=0, max_tokens=8)
    assert second.choices[0].message.role == "assistant" and second.choices[0].finish_reason in ("stop", "length")


def test_a_named_tool_is_called_and_streamed_whole(client):
    stream = client.chat.completions.create(model="tiny", messages=[{"role": "user", "content": "ping"}], tools=TOOLS[1:],
                                            tool_choice={"type": "function", "function": {"name": "ping"}},
                                            temperature=0, max_tokens=100, stream=True)
    chunks = list(stream)
    calls = [tc for c in chunks for tc in (c.choices[0].delta.tool_calls or [])]
    assert len(calls) == 1 and calls[0].function.name == "ping" and calls[0].index == 0
    assert json.loads(calls[0].function.arguments) in ({"ok": True}, {"ok": False})
    assert chunks[-1].choices[0].finish_reason == "tool_calls"


@pytest.mark.parametrize("body,param,words", [
    ({"tool_choice": "required"}, "tool_choice", "no tools"),
    ({"tools": TOOLS, "tool_choice": {"type": "function", "function": {"name": "nope"}}}, "tool_choice.function.name",
     "not among the tools"),
    ({"tools": TOOLS + TOOLS[:1]}, "tools", "same name"),
    ({"tools": [{"type": "function", "function": {"name": "f", "parameters": {"type": "objekt"}}}],
      "tool_choice": "required"}, "tools", "parameters are invalid"),
    ({"tools": TOOLS, "tool_choice": "required", "response_format": {"type": "json_object"}}, "tool_choice", "cannot also"),
    ({"tools": [{"type": "function", "function": {"name": "bad name!"}}]}, "tools.0.function.name", "pattern"),
    ({"messages": [{"role": "assistant", "content": None, "tool_calls": [
        {"id": "c1", "type": "function", "function": {"name": "ping", "arguments": "{oops"}}]}]},
     "messages.0.tool_calls.0.function.arguments", "JSON object"),
])
def test_bad_tool_requests_get_a_400(srv, body, param, words):
    r = chat(srv, **body)
    assert r.status_code == 400, r.text
    err = r.json()["error"]
    assert err["param"] == param and words in err["message"], err


def test_tools_are_for_chat(srv):
    r = httpx.post(srv.base + "/v1/completions", timeout=60, json={"model": "tiny", "prompt": "x", "tools": TOOLS})
    assert r.status_code == 400 and r.json()["error"]["param"] == "tools"
