"""OpenAI response bodies and stream chunks built from polyverse Chunks and Generations.

Every stream chunk that carries text also carries ``"polyverse": {"pass": k, "accepted": n}``:
the forward pass (1, 2, ...) that accepted that text and how many tokens it accepted (OpenAI
clients ignore the field; the chat page colours text by it). ``usage`` adds
``"polyverse": {method, forward_passes, mean_accepted, accepted_per_pass, ...}``.
"""

from __future__ import annotations

import json
import time
import uuid
from typing import Any

from .plan import Plan

FINISH = {"eos": "stop", "stop": "stop", "length": "length"}


class Reply:
    """The fixed parts of one reply: id, creation time, model, kind."""

    def __init__(self, plan: Plan, model_name: str) -> None:
        self.plan = plan
        self.model = model_name
        self.chat = plan.kind == "chat"
        self.id = ("chatcmpl-" if self.chat else "cmpl-") + uuid.uuid4().hex[:24]
        self.created = int(time.time())

    def _head(self, chunk: bool) -> dict[str, Any]:
        kind = ("chat.completion.chunk" if chunk else "chat.completion") if self.chat else "text_completion"
        return {"id": self.id, "object": kind, "created": self.created, "model": self.model}

    def usage(self, gen) -> dict[str, Any]:
        s = gen.stats
        return {"prompt_tokens": self.plan.prompt_tokens, "completion_tokens": len(gen.token_ids),
                "total_tokens": self.plan.prompt_tokens + len(gen.token_ids),
                "polyverse": {"method": gen.method, "forward_passes": s.passes, "mean_accepted": round(s.mean_accepted, 4),
                              "accepted_per_pass": list(s.accepted_per_pass), "drafted": s.drafted,
                              "accepted_draft": s.accepted_draft, "tokens_per_second": round(s.tokens_per_second, 3),
                              "seconds": round(s.seconds, 4)}}

    def whole(self, gen) -> dict[str, Any]:
        """The non-streaming response."""
        finish = FINISH.get(gen.finish_reason, "stop")
        if self.chat:
            choice = {"index": 0, "message": {"role": "assistant", "content": gen.text}, "logprobs": None,
                      "finish_reason": finish}
        else:
            choice = {"index": 0, "text": gen.text, "logprobs": None, "finish_reason": finish}
        return {**self._head(False), "choices": [choice], "usage": self.usage(gen)}

    def _choice(self, text: str | None, finish: str | None, first: bool = False) -> dict[str, Any]:
        if self.chat:
            delta: dict[str, Any] = {"role": "assistant", "content": ""} if first else {}
            if text:
                delta["content"] = text
            return {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}
        return {"index": 0, "text": text or "", "logprobs": None, "finish_reason": finish}

    def first(self) -> str:
        """The opening chunk of a chat stream (the assistant role), as SSE; '' for completions."""
        return sse({**self._head(True), "choices": [self._choice(None, None, first=True)]}) if self.chat else ""

    def piece(self, text: str, pass_index: int, accepted: int) -> str:
        return sse({**self._head(True), "choices": [self._choice(text, None)],
                    "polyverse": {"pass": pass_index, "accepted": accepted}})

    def last(self, gen) -> str:
        """The closing chunk(s): finish reason, usage when asked, then [DONE]."""
        out = sse({**self._head(True), "choices": [self._choice(None, FINISH.get(gen.finish_reason, "stop"))]})
        if self.plan.include_usage:
            out += sse({**self._head(True), "choices": [], "usage": self.usage(gen)})
        return out + "data: [DONE]\n\n"


def sse(obj: dict) -> str:
    return f"data: {json.dumps(obj, ensure_ascii=False)}\n\n"
