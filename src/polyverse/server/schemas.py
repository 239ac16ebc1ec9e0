"""Request bodies of the OpenAI endpoints as strict pydantic models (no silent "5" -> 5).

Fields the server does not use (``user``, ``metadata``, ...) are ignored; fields that would
change the output in a way polyverse does not implement (``functions``, the legacy form of
``tools``) are refused with a 400 by ``unsupported``. The polyverse extra field::

    "polyverse": {"method": "lookahead", "options": {"window": 4}, "top_k": 0, "regex": "[0-9]+"}
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from ..grammar import MAX_SOURCE as MAX_GRAMMAR
from ..config import MAX_TOP_LOGPROBS
from ..shaping import MAX_BIASED, MAX_PENALTY


class Strict(BaseModel):
    model_config = ConfigDict(strict=True, extra="ignore")


class StreamOptions(Strict):
    include_usage: bool = False


class PolyverseParams(Strict):
    """The extra body field: the decoding method, its options, top-k sampling, and structured output
    beyond JSON: a regular expression or a Lark grammar the output must match."""

    model_config = ConfigDict(strict=True, extra="forbid")
    method: str | None = None
    options: dict[str, Any] = Field(default_factory=dict)
    top_k: int = Field(0, ge=0, le=2**31 - 1)
    regex: str | None = Field(None, min_length=1, max_length=MAX_GRAMMAR)
    grammar: str | None = Field(None, min_length=1, max_length=MAX_GRAMMAR)  # Lark syntax


class JsonSchemaFormat(Strict):
    model_config = ConfigDict(strict=True, extra="ignore", populate_by_name=True)
    name: str = Field(min_length=1, max_length=64)
    description: str | None = None
    schema_: dict[str, Any] = Field(default_factory=dict, alias="schema")
    strict: bool | None = None


class ResponseFormat(Strict):
    """OpenAI's ``response_format``: plain text, any JSON object, or JSON following a schema."""

    type: Literal["text", "json_object", "json_schema"]
    json_schema: JsonSchemaFormat | None = None


class Common(Strict):
    """What chat and completion requests share."""

    model: str
    max_tokens: int | None = Field(None, ge=1, le=2**31 - 1)
    temperature: float = Field(1.0, ge=0.0, le=100.0)
    top_p: float = Field(1.0, gt=0.0, le=1.0)
    seed: int | None = Field(None, ge=0, lt=2**63)
    stop: list[str] | None = None
    n: int = Field(1, ge=1, le=128)
    stream: bool = False
    stream_options: StreamOptions | None = None
    polyverse: PolyverseParams | None = None
    presence_penalty: float | None = Field(None, ge=-MAX_PENALTY, le=MAX_PENALTY)
    frequency_penalty: float | None = Field(None, ge=-MAX_PENALTY, le=MAX_PENALTY)
    logit_bias: dict[str, float] | None = Field(None, max_length=MAX_BIASED)  # token id (as text) -> bias: Penalties checks
    response_format: ResponseFormat | None = None
    # accepted only at their neutral values
    functions: Any = None

    @field_validator("stop", mode="before")
    @classmethod
    def _stop(cls, v: Any) -> Any:
        if v is None:
            return None
        if isinstance(v, str):
            v = [v]
        if not isinstance(v, list) or not all(isinstance(s, str) for s in v):
            raise ValueError("must be a string or a list of strings")
        if len(v) > 16:
            raise ValueError("takes at most 16 strings")
        if any(not s for s in v):
            raise ValueError("stop strings must not be empty")
        return v

    def unsupported(self) -> str | None:
        """The first field set to a value polyverse does not implement, or None."""
        for name, neutral in NEUTRAL.items():
            value = getattr(self, name)
            if not any(value is n or (type(value) is type(n) and value == n) for n in neutral):
                return name
        return None


NEUTRAL = {"functions": (None, [])}  # values that change nothing (the legacy form of tools)


class FunctionCall(Strict):
    name: str = Field(min_length=1, max_length=64)
    arguments: str = Field(max_length=MAX_GRAMMAR)  # JSON text


class ToolCall(Strict):
    """An earlier call of the assistant's, sent back in the conversation."""

    id: str = Field(max_length=128)
    type: Literal["function"] = "function"
    function: FunctionCall


class FunctionDef(Strict):
    name: str = Field(pattern=r"^[A-Za-z0-9_-]{1,64}$")
    description: str | None = Field(None, max_length=4096)
    parameters: dict[str, Any] | None = None  # a JSON schema
    strict: bool | None = None


class ToolDef(Strict):
    type: Literal["function"]
    function: FunctionDef


class FunctionName(Strict):
    name: str = Field(min_length=1, max_length=64)


class NamedToolChoice(Strict):
    type: Literal["function"]
    function: FunctionName


class Message(Strict):
    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | None = None
    tool_calls: list[ToolCall] | None = Field(None, max_length=64)  # assistant messages
    tool_call_id: str | None = Field(None, max_length=128)  # tool messages

    @field_validator("content", mode="before")
    @classmethod
    def _content(cls, v: Any) -> Any:
        """A string, or OpenAI content parts of type text (joined)."""
        if v is None or isinstance(v, str):
            return v
        if isinstance(v, list) and all(isinstance(p, dict) for p in v):
            if any(p.get("type") != "text" or not isinstance(p.get("text"), str) for p in v):
                raise ValueError("only text content parts ({'type': 'text', 'text': ...}) are supported")
            return "".join(p["text"] for p in v)
        raise ValueError("must be a string or a list of text parts")


class ChatRequest(Common):
    messages: list[Message] = Field(min_length=1)
    max_completion_tokens: int | None = Field(None, ge=1, le=2**31 - 1)
    logprobs: bool = False  # each output token's log-probability
    top_logprobs: int | None = Field(None, ge=0, le=MAX_TOP_LOGPROBS)  # and the likeliest tokens at its position (needs logprobs)
    tools: list[ToolDef] | None = Field(None, max_length=64)
    tool_choice: Literal["none", "auto", "required"] | NamedToolChoice | None = None
    parallel_tool_calls: bool = True


class CompletionRequest(Common):
    prompt: str | list[int]
    logprobs: int | None = Field(None, ge=0, le=5)  # the legacy shape: log-probabilities and the top k
    tools: Any = None  # chat completions only: refused here
    echo: bool = False
    best_of: int | None = Field(None, ge=1, le=1)
    suffix: str | None = None

    @field_validator("prompt", mode="before")
    @classmethod
    def _prompt(cls, v: Any) -> Any:
        """A string, a list of token ids, or a list of one string; batches of prompts are refused."""
        if isinstance(v, list) and v and all(isinstance(p, str) for p in v):
            if len(v) > 1:
                raise ValueError("one prompt per request: send several requests for several prompts")
            return v[0]
        if isinstance(v, str):
            return v
        if isinstance(v, list) and v and all(isinstance(t, int) and not isinstance(t, bool) for t in v):
            return v
        raise ValueError("must be a string, a list of one string, or a non-empty list of token ids")
