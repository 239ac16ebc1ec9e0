"""Tool calling: tools described to the model, its calls constrained by a grammar and parsed back.

A model calls a tool by writing ``<tool_call>\\n{"name": ..., "arguments": {...}}\\n</tool_call>`` (the
convention of the Hermes and Qwen chat templates). A chat template that takes ``tools`` renders
them itself; for one that does not (SmolLM2's plain ChatML), ``render`` adds a system message that
lists the tools and the convention, and writes earlier calls and tool results into the messages as
text. ``call_grammar`` gives the Lark grammar of one call (or several) to the tools, with each
call's arguments following its function's JSON schema, for ``tool_choice`` "required" or a named
function; ``parse_calls`` reads the calls out of what the model wrote.
"""

from __future__ import annotations

import json
import re
import uuid
from dataclasses import dataclass
from typing import Sequence

from .errors import ConfigError
from .grammar import JSON_OPTIONS, GrammarSpec

OPEN, CLOSE = "<tool_call>", "</tool_call>"
CALL = re.compile(re.escape(OPEN) + r"\s*(\{.*?\})\s*" + re.escape(CLOSE), re.DOTALL)
ANY_PARAMETERS = {"type": "object"}


@dataclass(frozen=True)
class Tool:
    """A function the model may call: its name, what it does, and its parameters' JSON schema (text)."""

    name: str
    description: str = ""
    parameters: str = json.dumps(ANY_PARAMETERS)

    @classmethod
    def of(cls, name: str, description: str | None = None, parameters: dict | None = None) -> "Tool":
        return cls(name, description or "", json.dumps(parameters if parameters else ANY_PARAMETERS))

    def openai(self) -> dict:
        """The OpenAI ``tools`` entry (what a chat template that renders tools reads)."""
        return {"type": "function", "function": {"name": self.name, "description": self.description,
                                                 "parameters": json.loads(self.parameters)}}


def system_text(tools: Sequence[Tool]) -> str:
    """What a model whose template ignores tools is told about them and how to call one."""
    listed = "\n".join(json.dumps({"name": t.name, "description": t.description,
                                   "parameters": json.loads(t.parameters)}) for t in tools)
    return ("Functions you may call:\n" + listed + f"\nCall one as {OPEN}\n" +
            '{"name": <function name>, "arguments": <arguments as JSON>}' + f"\n{CLOSE}")


def render(messages: Sequence[dict], tools: Sequence[Tool], template_takes_tools: bool) -> list[dict]:
    """Chat messages (OpenAI's: assistant ``tool_calls``, ``tool`` results) as the chat template
    takes them: structured where the template renders tools, else as text with a system message."""
    out: list[dict] = []
    for m in messages:
        m = dict(m)
        calls = m.pop("tool_calls", None) or []
        if template_takes_tools:
            if calls:
                m["tool_calls"] = [{"type": "function", "function": {"name": c["name"], "arguments": c["arguments"]}}
                                   for c in calls]
            out.append(m)
            continue
        if calls:
            text = "\n".join(f"{OPEN}\n" + json.dumps({"name": c["name"], "arguments": c["arguments"]}) + f"\n{CLOSE}"
                             for c in calls)
            m["content"] = ((m.get("content") or "") + "\n" + text).strip()
        if m["role"] == "tool":
            m["content"] = f"<tool_response>\n{m.get('content') or ''}\n</tool_response>"
        m.pop("tool_call_id", None)
        out.append(m)
    if tools and not template_takes_tools:
        if out and out[0]["role"] == "system":
            out[0] = {**out[0], "content": (out[0]["content"] + "\n\n" + system_text(tools)).strip()}
        else:
            out.insert(0, {"role": "system", "content": system_text(tools)})
    return out


def call_grammar(tools: Sequence[Tool], parallel: bool = True) -> GrammarSpec:
    """Output that is one tool call (or several, one per line, with ``parallel``) to one of ``tools``,
    each call's arguments following its function's schema."""
    if not tools:
        raise ConfigError("a tool call needs at least one tool")
    calls = [{"type": "object", "properties": {"name": {"const": t.name}, "arguments": json.loads(t.parameters)},
              "required": ["name", "arguments"], "additionalProperties": False} for t in tools]
    schema = {"anyOf": calls} if len(calls) > 1 else calls[0]
    schema = {**schema, "x-guidance": JSON_OPTIONS}
    many = 'call ("\\n" call)*' if parallel else "call"
    return GrammarSpec.lark(f'start: {many}\ncall: "{OPEN}\\n" body "\\n{CLOSE}"\nbody: %json {json.dumps(schema)}\n')


@dataclass(frozen=True)
class Call:
    id: str
    name: str
    arguments: str  # JSON text, as OpenAI sends it

    def openai(self, index: int | None = None) -> dict:
        out = {"id": self.id, "type": "function", "function": {"name": self.name, "arguments": self.arguments}}
        return out if index is None else {"index": index, **out}


def parse_calls(text: str, names: Sequence[str]) -> tuple[str | None, list[Call]]:
    """(the text outside the calls, or None when nothing else was written; the calls to known tools
    whose body is a JSON object with a name and arguments). Text that only looks like a call stays text."""
    calls: list[Call] = []
    kept: list[str] = []
    last = 0
    for match in CALL.finditer(text):
        try:
            body = json.loads(match.group(1))
        except json.JSONDecodeError:
            continue
        if not isinstance(body, dict) or body.get("name") not in names:
            continue
        arguments = body.get("arguments", {})
        if isinstance(arguments, str):  # some models write the arguments as JSON text already
            try:
                arguments = json.loads(arguments)
            except json.JSONDecodeError:
                continue
        if not isinstance(arguments, dict):
            continue
        kept.append(text[last: match.start()])
        last = match.end()
        calls.append(Call("call_" + uuid.uuid4().hex[:24], body["name"], json.dumps(arguments)))
    tail = text[last:]
    if calls and OPEN in tail:  # a further call cut short (the token budget): not text the user should see
        tail = tail[: tail.index(OPEN)]
    kept.append(tail)
    rest = "".join(kept).strip()
    return (rest or None) if calls else text, calls
