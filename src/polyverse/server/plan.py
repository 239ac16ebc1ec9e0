"""A validated request -> a Plan the scheduler can run, or an APIError saying what is wrong.

Everything a client can get wrong is checked here, before the request is queued: the model
name (404), unsupported fields, n, the method and its options, sampling values, the prompt (its
chat template, its length against the context) and max_tokens against the server's ceiling
(``--max-tokens-limit``) and the room left.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field, replace
from typing import Any

from ..config import SamplingConfig
from ..errors import ConfigError, PolyverseError
from ..grammar import GrammarSpec
from ..shaping import Penalties
from ..tools import Tool, call_grammar, render
from ..registry import registry
from .config import ServerConfig
from .errors import APIError, invalid
from .schemas import ChatRequest, Common, CompletionRequest

MAX_CHOICES = 16  # n: each choice is a request of its own (a slot, a KV cache)
SERVER_ONLY = {("draft", "model")}  # options that load files: set with `polyverse serve -o`, not per request


@dataclass(frozen=True)
class Plan:
    kind: str  # "chat" | "completion"
    prompt: Any  # what Model.stream receives: token ids, or the text/messages for a method that rewrites prompts
    chat: bool
    prompt_tokens: int
    method: str
    options: dict
    max_tokens: int
    temperature: float
    top_p: float
    top_k: int
    seed: int | None
    stop: tuple[str, ...]
    stream: bool
    include_usage: bool
    logprobs: int | None = None  # None: none; k: each token's log-probability and the k likeliest
    n: int = 1  # choices: independent requests, choice i seeded with seed + i
    grammar: Any = None  # the compiled ``grammar.Grammar`` of response_format / polyverse.regex / .grammar
    penalties: Penalties = field(default_factory=Penalties)
    tools: tuple[str, ...] = ()  # names of the tools the model was told about: its calls are parsed back

    def choice(self, index: int) -> "Plan":
        """The plan of choice ``index``: its own seed (seed + index), so n choices are n samples,
        reproducible with a seed (as ``Model.generate_many`` seeds prompt i)."""
        return replace(self, seed=None if self.seed is None else self.seed + index)


def method_and_options(req: Common, config: ServerConfig) -> tuple[str, dict]:
    pv = req.polyverse
    method = (pv.method if pv and pv.method else None) or config.method
    options = dict(pv.options) if pv and pv.method else {**dict(config.options), **(pv.options if pv else {})}
    try:
        spec = registry.get(method)
    except PolyverseError as exc:
        raise invalid(str(exc), "polyverse.method", "unknown_method") from None
    if pv and pv.method:
        for key in options:
            if (method, key) in SERVER_ONLY:
                raise invalid(f"option '{key}' of method '{method}' is set when the server starts "
                              f"(polyverse serve -m {method} -o {key}=...), not per request", f"polyverse.options.{key}")
    try:
        spec.make_config(options)
    except (ConfigError, TypeError, ValueError) as exc:
        raise invalid(str(exc), "polyverse.options") from None
    return method, options


def _messages(req: ChatRequest) -> list[dict]:
    out = []
    for i, m in enumerate(req.messages):
        message = {"role": "system" if m.role == "developer" else m.role, "content": m.content or ""}
        if m.tool_calls:
            if m.role != "assistant":
                raise invalid("only assistant messages carry tool_calls", f"messages.{i}.tool_calls")
            calls = []
            for j, call in enumerate(m.tool_calls):
                try:
                    arguments = json.loads(call.function.arguments or "{}")
                except json.JSONDecodeError:
                    arguments = None
                if not isinstance(arguments, dict):
                    raise invalid("the arguments of a tool call must be a JSON object (as text)",
                                  f"messages.{i}.tool_calls.{j}.function.arguments")
                calls.append({"name": call.function.name, "arguments": arguments})
            message["tool_calls"] = calls
        out.append(message)
    if not any(m["content"].strip() or m.get("tool_calls") for m in out):
        raise invalid("the messages hold no text", "messages")
    return out


def _tools(req: Common) -> tuple[list[Tool], Any]:
    """(the tools the model is told about, the grammar spec tool_choice imposes or None); tool_choice
    "none" (or no tools) tells the model of none."""
    if not isinstance(req, ChatRequest):
        if req.tools:
            raise invalid("tools are for /v1/chat/completions", "tools", "unsupported_parameter")
        return [], None
    choice = req.tool_choice
    if not req.tools:
        if choice not in (None, "none", "auto"):
            raise invalid("tool_choice names a tool, but the request has no tools", "tool_choice")
        return [], None
    names = [t.function.name for t in req.tools]
    if len(set(names)) != len(names):
        raise invalid("two tools have the same name", "tools")
    tools = [Tool.of(t.function.name, t.function.description, t.function.parameters) for t in req.tools]
    if choice == "none":
        return [], None
    if choice == "required":
        return tools, call_grammar(tools, req.parallel_tool_calls)
    if choice is not None and choice != "auto":
        chosen = [t for t in tools if t.name == choice.function.name]
        if not chosen:
            raise invalid(f"tool_choice names '{choice.function.name}', which is not among the tools",
                          "tool_choice.function.name")
        return tools, call_grammar(chosen, parallel=False)
    return tools, None


def _encode(model, req: Common, kind: str, tools: list[Tool] = ()) -> tuple[list[int], Any, bool]:
    """(prompt ids, the raw text/messages (for a method that rewrites prompts), chat flag)."""
    limit = model.max_length
    if kind == "chat":
        if not getattr(model.tokenizer, "chat_template", None):
            raise invalid(f"model '{model.name}' has no chat template: use /v1/completions", "messages")
        takes_tools = "tools" in (model.tokenizer.chat_template or "")
        messages = render(_messages(req), tools, takes_tools)
        try:
            ids = model.encode(messages, chat=True, tools=[t.openai() for t in tools] if takes_tools and tools else None)
        except ConfigError as exc:
            raise invalid(str(exc), "messages", "context_length_exceeded" if "context" in str(exc) else None) from None
        except Exception as exc:  # the chat template's own checks (role order, ...)
            raise invalid(f"the chat template rejected the messages: {str(exc).splitlines()[0][:200]}", "messages") from None
        raw = messages[0]["content"] if len(messages) == 1 and messages[0]["role"] == "user" else messages
        return ids, raw, True
    prompt = req.prompt
    if isinstance(prompt, list):
        vocab = model.backend.vocab_size
        bad = next((t for t in prompt if not 0 <= t < vocab), None)
        if bad is not None:
            raise invalid(f"token id {bad} is outside the vocabulary (0 to {vocab - 1})", "prompt")
        if len(prompt) >= limit:
            raise invalid(f"the prompt is {len(prompt)} tokens long; the model's context holds {limit}", "prompt",
                          "context_length_exceeded")
        return list(prompt), list(prompt), False
    if not prompt.strip():
        raise invalid("the prompt is empty", "prompt")
    try:
        ids = model.encode(prompt, chat=False)
    except ConfigError as exc:
        raise invalid(str(exc), "prompt", "context_length_exceeded" if "context" in str(exc) else None) from None
    return ids, prompt, False


def plan(model, config: ServerConfig, req: Common, kind: str) -> Plan:
    if req.model != config.served_name:
        raise APIError(404, f"the model '{req.model}' does not exist: this server serves '{config.served_name}'",
                       "model", "model_not_found")
    field = req.unsupported()
    if field:
        raise invalid(f"{field} is not supported by polyverse: leave it out", field, "unsupported_parameter")
    most = min(MAX_CHOICES, config.max_concurrent + config.max_queue)
    if req.n > most:
        raise invalid(f"n is {req.n}; a request may ask for at most {most} choices on this server", "n")
    if isinstance(req, CompletionRequest):
        if req.echo:
            raise invalid("echo is not supported: the prompt is not repeated in the reply", "echo", "unsupported_parameter")
        if req.suffix:
            raise invalid("suffix is not supported: polyverse completes after the prompt only", "suffix",
                          "unsupported_parameter")
    method, options = method_and_options(req, config)
    logprobs = _logprobs(req)
    penalties = _penalties(req)
    spec = _grammar_spec(req)
    tools, forced_call = _tools(req)
    if forced_call is not None:
        if spec is not None:
            raise invalid("tool_choice makes the reply a tool call, so it cannot also follow response_format or a "
                          "polyverse grammar", "tool_choice")
        spec = forced_call
    asked = [name for name, on in (("logprobs", logprobs is not None), ("response_format", spec is not None),
                                   ("logit_bias" if req.logit_bias else "presence_penalty", bool(penalties))) if on]
    if asked and registry.get(method).runner:
        raise invalid(f"{asked[0]} is not available with method '{method}': use another method", asked[0],
                      "unsupported_parameter")
    grammar = None
    if spec is not None:
        try:
            grammar = model.grammar(spec)
        except ConfigError as exc:
            if forced_call is not None:
                raise invalid(f"a tool's parameters are invalid as a JSON schema ({exc})", "tools",
                              "invalid_grammar") from None
            raise invalid(str(exc), _GRAMMAR_PARAM[spec.kind], "invalid_grammar") from None
    try:
        penalties.check_vocab(model.backend.vocab_size)
    except ConfigError as exc:
        raise invalid(str(exc), "logit_bias") from None
    top_k = req.polyverse.top_k if req.polyverse else 0
    try:
        SamplingConfig(req.temperature, top_k, req.top_p)
    except ConfigError as exc:
        raise invalid(str(exc), None) from None
    ids, raw, chat = _encode(model, req, kind, tools)
    room = model.max_length - len(ids)
    given = {name: value for name in ("max_tokens", "max_completion_tokens")
             if (value := getattr(req, name, None)) is not None}
    for name, value in given.items():
        if value > config.max_tokens_limit:
            raise invalid(f"{name} is {value}; this server allows at most {config.max_tokens_limit} per request",
                          name, "max_tokens_too_large")
    asked = min(given.values()) if given else None
    if asked is not None and asked > room:
        raise invalid(f"max_tokens is {asked}, but the model's context of {model.max_length} tokens leaves room for "
                      f"{room} after the prompt's {len(ids)}", "max_tokens", "context_length_exceeded")
    max_tokens = asked if asked is not None else min(config.default_max_tokens, config.max_tokens_limit, room)
    return Plan(kind=kind, prompt=raw if registry.get(method).rewrite is not None else ids, chat=chat, prompt_tokens=len(ids),
                method=method, options=options, max_tokens=max_tokens, temperature=req.temperature, top_p=req.top_p,
                top_k=top_k, seed=req.seed, stop=tuple(req.stop or ()), stream=req.stream,
                include_usage=bool(req.stream_options and req.stream_options.include_usage), logprobs=logprobs,
                n=req.n, grammar=grammar, penalties=penalties, tools=tuple(t.name for t in tools))


_GRAMMAR_PARAM = {"json_object": "response_format", "json_schema": "response_format.json_schema.schema",
                  "regex": "polyverse.regex", "lark": "polyverse.grammar"}


def _grammar_spec(req: Common) -> GrammarSpec | None:
    """The one grammar the request asks for (response_format, polyverse.regex or polyverse.grammar)."""
    specs = []
    fmt = req.response_format
    if fmt is not None and fmt.type == "json_object":
        specs.append(("response_format", GrammarSpec.json_object))
    elif fmt is not None and fmt.type == "json_schema":
        if fmt.json_schema is None:
            raise invalid("response_format of type json_schema needs a json_schema object ({'name': ..., "
                          "'schema': {...}})", "response_format.json_schema")
        specs.append(("response_format", lambda: GrammarSpec.json_schema(fmt.json_schema.schema_)))
    pv = req.polyverse
    if pv is not None and pv.regex is not None:
        specs.append(("polyverse.regex", lambda: GrammarSpec.regex(pv.regex)))
    if pv is not None and pv.grammar is not None:
        specs.append(("polyverse.grammar", lambda: GrammarSpec.lark(pv.grammar)))
    if len(specs) > 1:
        raise invalid(f"{specs[0][0]} and {specs[1][0]} both constrain the output: give one", specs[1][0])
    if not specs:
        return None
    name, make = specs[0]
    try:
        return make()
    except ConfigError as exc:
        raise invalid(str(exc), name, "invalid_grammar") from None


def _penalties(req: Common) -> Penalties:
    try:
        return Penalties.of(req.presence_penalty or 0.0, req.frequency_penalty or 0.0, req.logit_bias)
    except ConfigError as exc:
        raise invalid(str(exc), "logit_bias") from None


def _logprobs(req: Common) -> int | None:
    """How many top tokens per position the reply lists (None: no logprobs at all)."""
    if isinstance(req, ChatRequest):
        if req.top_logprobs is not None and not req.logprobs:
            raise invalid("top_logprobs needs logprobs: true", "top_logprobs")
        return (req.top_logprobs or 0) if req.logprobs else None
    return req.logprobs
