"""The server's OpenAPI 3.1 document, served at GET /openapi.json.

The POST routes parse their bodies themselves (so every error is OpenAI-shaped), which leaves
FastAPI's generated document without request bodies; this one is written from the same pydantic
models the routes validate with, so it cannot drift from what they accept. Where a validator or
the planner accepts more or less than the model's types say (``stop`` as one string, prompts as
token ids in the vocabulary, the unsupported OpenAI fields at their neutral values, n = 1, the
one served model, ``--max-tokens-limit``), the document says what the server really accepts:
clients and the property-based tests generated from it (tests/test_server_schema.py) see the same
contract. It is built per request from the app's config, so the key's security scheme and the
limits shown are the running server's.
"""

from __future__ import annotations

import copy
from importlib.metadata import PackageNotFoundError, version
from typing import Any

from pydantic.json_schema import models_json_schema

from ..registry import registry
from .config import ServerConfig
from .plan import MAX_CHOICES
from .schemas import NEUTRAL, ChatRequest, CompletionRequest

REF = "#/components/schemas/{model}"
ANY = {408: "The request line and headers (or the body) did not arrive in time",
       503: "Too many connections open, or the server is shutting down"}  # any route
ERRORS = {400: "Invalid request: bad JSON, a bad field or value, an unsupported parameter, a prompt too long",
          404: "Unknown model", 413: "The body is too large", 415: "The body is compressed (Content-Encoding)",
          429: "The queue is full: retry later", **ANY}
UNAUTHORIZED = {401: "Missing or wrong API key"}


def _obj(required: list[str], props: dict[str, Any], closed: bool = False) -> dict[str, Any]:
    out = {"type": "object", "required": required, "properties": props}
    return {**out, "additionalProperties": False} if closed else out


def _json(ref: str) -> dict[str, Any]:
    return {"application/json": {"schema": {"$ref": REF.format(model=ref)}}}


NULLABLE_STRING = {"type": ["string", "null"]}
ERROR = _obj(["error"], {"error": _obj(["message", "type", "param", "code"], {
    "message": {"type": "string"}, "type": {"type": "string"}, "param": NULLABLE_STRING, "code": NULLABLE_STRING},
    closed=True)}, closed=True)
FINISH = {"enum": ["stop", "length"]}
CHAT_FINISH = {"enum": ["stop", "length", "tool_calls"]}
USAGE = _obj(["prompt_tokens", "completion_tokens", "total_tokens"], {
    "prompt_tokens": {"type": "integer", "minimum": 0}, "completion_tokens": {"type": "integer", "minimum": 0},
    "total_tokens": {"type": "integer", "minimum": 0}, "polyverse": {"type": "object"}})


def _completion(kind: str, choice: dict[str, Any], finish: dict[str, Any] = FINISH) -> dict[str, Any]:
    return _obj(["id", "object", "created", "model", "choices", "usage"], {
        "id": {"type": "string"}, "object": {"const": kind}, "created": {"type": "integer"},
        "model": {"type": "string"}, "usage": {"$ref": REF.format(model="Usage")},
        "choices": {"type": "array", "minItems": 1, "maxItems": MAX_CHOICES, "items": _obj(
            ["index", "finish_reason", *choice], {"index": {"type": "integer", "minimum": 0, "maximum": MAX_CHOICES - 1},
                                                  "logprobs": {"type": ["object", "null"]},
                                                  "finish_reason": finish, **choice})}})


TOOL_CALL = _obj(["id", "type", "function"], {
    "id": {"type": "string"}, "type": {"const": "function"},
    "function": _obj(["name", "arguments"], {"name": {"type": "string"}, "arguments": {"type": "string"}})})
CHAT_COMPLETION = _completion("chat.completion", {"message": _obj(["role", "content"], {
    "role": {"const": "assistant"}, "content": NULLABLE_STRING,
    "tool_calls": {"type": "array", "minItems": 1, "items": TOOL_CALL}})}, finish=CHAT_FINISH)
TEXT_COMPLETION = _completion("text_completion", {"text": {"type": "string"}})
MODEL = _obj(["id", "object", "created", "owned_by"], {
    "id": {"type": "string"}, "object": {"const": "model"}, "created": {"type": "integer"},
    "owned_by": {"type": "string"}, "polyverse": {"type": "object"}})
MODEL_LIST = _obj(["object", "data"], {"object": {"const": "list"},
                                       "data": {"type": "array", "items": {"$ref": REF.format(model="Model")}}})
HEALTH = _obj(["status", "model", "active", "waiting"], {
    "status": {"enum": ["ok", "draining"]}, "model": {"type": "string"},
    "active": {"type": "integer", "minimum": 0}, "waiting": {"type": "integer", "minimum": 0},
    "kv_tokens": {"type": "integer", "minimum": 0}, "kv_budget": {"type": "integer", "minimum": 0}})
SSE_EVENT = {"type": "object", "required": ["data"], "description": "one event: an OpenAI chunk as JSON, or [DONE]",
             "properties": {"data": {"type": "string"}}}  # before OpenAPI 3.2, the schema of one event


def _request_schemas(config: ServerConfig, vocab: int | None, context: int | None) -> dict[str, Any]:
    """The request bodies' schemas, from the pydantic models, narrowed to what the validators accept."""
    _, top = models_json_schema([(ChatRequest, "validation"), (CompletionRequest, "validation")], ref_template=REF)
    defs = copy.deepcopy(top["$defs"])
    text = {"type": "string", "minLength": 1}
    for name in ("ChatRequest", "CompletionRequest"):
        props = defs[name]["properties"]
        props["model"] = {"type": "string", "enum": [config.served_name], "description": "the served model's id"}
        for field, neutral in NEUTRAL.items():  # accepted only at values that change nothing
            if field in props:
                props[field] = {"enum": list(neutral), "description": "not supported: leave it out"}
        if "stop" in props:
            props["stop"] = {"anyOf": [text, {"type": "array", "items": text, "maxItems": 16}, {"type": "null"}]}
        if "n" in props:  # each choice is a request of its own
            props["n"] = {**props["n"], "maximum": MAX_CHOICES}
        for field in ("max_tokens", "max_completion_tokens"):  # the server's ceiling (--max-tokens-limit)
            for branch in props.get(field, {}).get("anyOf", []):
                if branch.get("type") == "integer":
                    branch["maximum"] = min(branch.get("maximum", config.max_tokens_limit), config.max_tokens_limit)
    ids = {"type": "array", "minItems": 1, "items": {"type": "integer", "minimum": 0}}
    if vocab:
        ids["items"]["maximum"] = vocab - 1
    if context:
        ids["maxItems"] = context - 1
    if "prompt" in defs["CompletionRequest"]["properties"]:
        defs["CompletionRequest"]["properties"]["prompt"] = {"anyOf": [
            text, {"type": "array", "items": text, "minItems": 1, "maxItems": 1}, ids]}
    if "Message" in defs and "content" in defs["Message"]["properties"]:
        part = _obj(["type", "text"], {"type": {"const": "text"}, "text": {"type": "string"}})
        defs["Message"]["properties"]["content"] = {"anyOf": [{"type": "string"}, {"type": "array", "items": part},
                                                              {"type": "null"}]}
    if "PolyverseParams" in defs and "method" in defs["PolyverseParams"]["properties"]:
        defs["PolyverseParams"]["properties"]["method"] = {"anyOf": [{"enum": registry.names()}, {"type": "null"}]}
    return defs


def _responses(ok: dict[str, Any], errors: dict[int, str]) -> dict[str, Any]:
    out: dict[str, Any] = {"200": ok}
    for status, text in sorted(errors.items()):
        out[str(status)] = {"description": text, "content": _json("Error")}
    return out


def schema(app, config: ServerConfig) -> dict[str, Any]:
    """The OpenAPI 3.1 document of ``app`` (built by ``create_app``) serving with ``config``."""
    model = getattr(app.state, "model", None)
    backend = getattr(model, "backend", None)
    secured = config.api_key is not None
    auth = UNAUTHORIZED if secured else {}

    def op(summary: str, responses: dict[str, Any], key: bool, **extra: Any) -> dict[str, Any]:
        out = {"summary": summary, "operationId": summary.lower().replace(" ", "_"), "responses": responses, **extra}
        return {**out, "security": [{"bearer": []}]} if key and secured else out

    def post(summary: str, body: str, reply: str) -> dict[str, Any]:
        ok = {"description": "The completion (stream: server-sent events of OpenAI chunks, then [DONE])",
              "content": {**_json(reply), "text/event-stream": {"schema": SSE_EVENT}}}
        return {"post": op(summary, _responses(ok, {**ERRORS, **auth}), True,
                           requestBody={"required": True, "content": _json(body)})}

    draining = {"description": "Draining for shutdown (the health body), or too many connections (an error)",
                "content": {"application/json": {"schema": {"anyOf": [{"$ref": REF.format(model="Health")},
                                                                       {"$ref": REF.format(model="Error")}]}}}}
    model_id = {"name": "model_id", "in": "path", "required": True,
                "schema": {"type": "string", "enum": [config.served_name]}}
    paths = {
        "/v1/chat/completions": post("Create chat completion", "ChatRequest", "ChatCompletion"),
        "/v1/completions": post("Create completion", "CompletionRequest", "TextCompletion"),
        "/v1/models": {"get": op("List models", _responses(
            {"description": "The served model", "content": _json("ModelList")}, {**ANY, **auth}), True)},
        "/v1/models/{model_id}": {"get": op("Retrieve model", _responses(
            {"description": "The model's card", "content": _json("Model")}, {404: ERRORS[404], **ANY, **auth}), True,
            parameters=[model_id])},
        "/health": {"get": op("Health", {**_responses({"description": "Serving, with its queue",
                                                       "content": _json("Health")}, ANY), "503": draining}, False),
                    "head": op("Health head", {"200": {"description": "Serving"},
                                               "503": {"description": "Draining, or too many connections"}}, False)},
        "/metrics": {"get": op("Metrics", _responses({"description": "Prometheus text exposition",
                                                      "content": {"text/plain": {"schema": {"type": "string"}}}},
                                                     {**ANY, **auth}), True)},
    }
    schemas = {**_request_schemas(config, getattr(backend, "vocab_size", None), getattr(model, "max_length", None)),
               "Error": ERROR, "Usage": USAGE, "ChatCompletion": CHAT_COMPLETION, "TextCompletion": TEXT_COMPLETION,
               "Model": MODEL, "ModelList": MODEL_LIST, "Health": HEALTH}
    components: dict[str, Any] = {"schemas": schemas}
    if secured:
        components["securitySchemes"] = {"bearer": {"type": "http", "scheme": "bearer"}}
    return {"openapi": "3.1.0", "info": {"title": "polyverse", "version": _version()},
            "paths": paths, "components": components}


def _version() -> str:
    try:
        return version("polyverse")
    except PackageNotFoundError:
        return "0"
