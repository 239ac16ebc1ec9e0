"""OpenAI response bodies and stream chunks built from polyverse Chunks and Generations.

Every stream chunk that carries text also carries ``"polyverse": {"pass": k, "accepted": n}``:
the forward pass (1, 2, ...) that accepted that text and how many tokens it accepted (OpenAI
clients ignore the field; the chat page colours text by it). ``usage`` adds
``"polyverse": {method, forward_passes, mean_accepted, accepted_per_pass, ...}``. With logprobs,
each choice (and each stream chunk) carries them in OpenAI's shape: chat ``{"content": [{token,
logprob, bytes, top_logprobs}]}``, completions ``{tokens, token_logprobs, top_logprobs, text_offset}``.
"""

from __future__ import annotations

import json
import time
import uuid
from typing import Any, Sequence

from ..tools import parse_calls
from .plan import Plan

FINISH = {"eos": "stop", "stop": "stop", "length": "length"}


class Reply:
    """The fixed parts of one reply (id, creation time, model, kind) and its choices' shapes."""

    def __init__(self, plan: Plan, model_name: str, tokenizer=None) -> None:
        self.plan = plan
        self.model = model_name
        self.tokenizer = tokenizer
        self._offsets: dict[int, int] = {}  # per choice: text offset of its next token (completions' text_offset)
        self.chat = plan.kind == "chat"
        self.id = ("chatcmpl-" if self.chat else "cmpl-") + uuid.uuid4().hex[:24]
        self.created = int(time.time())

    def _head(self, chunk: bool) -> dict[str, Any]:
        kind = ("chat.completion.chunk" if chunk else "chat.completion") if self.chat else "text_completion"
        return {"id": self.id, "object": kind, "created": self.created, "model": self.model}

    @staticmethod
    def _stats(gen) -> dict[str, Any]:
        s = gen.stats
        return {"method": gen.method, "forward_passes": s.passes, "mean_accepted": round(s.mean_accepted, 4),
                "accepted_per_pass": list(s.accepted_per_pass), "drafted": s.drafted,
                "accepted_draft": s.accepted_draft, "tokens_per_second": round(s.tokens_per_second, 3),
                "seconds": round(s.seconds, 4)}

    def usage(self, gens: Sequence) -> dict[str, Any]:
        """Prompt tokens once, completion tokens of every choice; polyverse's figures of the one choice
        (several choices: ``{"method", "choices": [per choice]}``)."""
        done = sum(len(g.token_ids) for g in gens)
        ours = self._stats(gens[0]) if len(gens) == 1 else {"method": gens[0].method,
                                                              "choices": [self._stats(g) for g in gens]}
        return {"prompt_tokens": self.plan.prompt_tokens, "completion_tokens": done,
                "total_tokens": self.plan.prompt_tokens + done, "polyverse": ours}

    def whole(self, gens: Sequence) -> dict[str, Any]:
        """The non-streaming response: one choice per Generation, in order."""
        choices = []
        for index, gen in enumerate(gens):
            lps = self.logprobs(gen.logprobs, index)
            if self.chat:
                message, finish = self._message(gen)
                choices.append({"index": index, "message": message, "logprobs": lps, "finish_reason": finish})
            else:
                choices.append({"index": index, "text": gen.text, "logprobs": lps,
                                "finish_reason": FINISH.get(gen.finish_reason, "stop")})
        return {**self._head(False), "choices": choices, "usage": self.usage(gens)}

    @property
    def holds_text(self) -> bool:
        """Whether a stream holds each choice's text until it ends: with tools, text may turn out to be a
        tool call, which is sent whole (OpenAI's ``tool_calls`` delta) rather than as text."""
        return self.chat and bool(self.plan.tools)

    def _message(self, gen) -> tuple[dict[str, Any], str]:
        """A chat choice's message and finish reason: its tool calls parsed out when it had tools."""
        content, calls = parse_calls(gen.text, self.plan.tools) if self.plan.tools else (gen.text, [])
        if not calls:
            return {"role": "assistant", "content": gen.text}, FINISH.get(gen.finish_reason, "stop")
        return {"role": "assistant", "content": content, "tool_calls": [c.openai() for c in calls]}, "tool_calls"

    def _choice(self, text: str | None, finish: str | None, first: bool = False, lps=None,
                index: int = 0) -> dict[str, Any]:
        if self.chat:
            delta: dict[str, Any] = {"role": "assistant", "content": ""} if first else {}
            if text:
                delta["content"] = text
            return {"index": index, "delta": delta, "logprobs": self.logprobs(lps, index), "finish_reason": finish}
        return {"index": index, "text": text or "", "logprobs": self.logprobs(lps, index), "finish_reason": finish}

    def _token(self, token: int) -> str:
        return self.tokenizer.decode([token]) if self.tokenizer is not None else str(token)

    def logprobs(self, entries, index: int = 0) -> dict[str, Any] | None:
        """``logprobs.TokenLogprob`` entries in OpenAI's shape for this reply's kind (None: not asked for)."""
        if entries is None or self.plan.logprobs is None:
            return None
        if self.chat:
            def one(token: int, logprob: float) -> dict[str, Any]:
                text = self._token(token)
                return {"token": text, "logprob": logprob, "bytes": list(text.encode("utf-8"))}
            return {"content": [{**one(e.token, e.logprob), "top_logprobs": [one(t, lp) for t, lp in e.top]}
                                for e in entries]}
        tokens = [self._token(e.token) for e in entries]
        offsets = []
        for text in tokens:
            offsets.append(self._offsets.get(index, 0))
            self._offsets[index] = offsets[-1] + len(text)
        top = [{self._token(t): lp for t, lp in e.top} for e in entries] if self.plan.logprobs else None
        return {"tokens": tokens, "token_logprobs": [e.logprob for e in entries], "top_logprobs": top,
                "text_offset": offsets}

    def first(self, index: int = 0) -> str:
        """The opening chunk of a chat stream's choice (the assistant role), as SSE; '' for completions."""
        return sse({**self._head(True), "choices": [self._choice(None, None, first=True, index=index)]}) if self.chat else ""

    def piece(self, text: str, pass_index: int, accepted: int, lps=None, index: int = 0) -> str:
        return sse({**self._head(True), "choices": [self._choice(text, None, lps=lps, index=index)],
                    "polyverse": {"pass": pass_index, "accepted": accepted}})

    def finish(self, gen, index: int = 0) -> str:
        """A choice's closing chunk: its finish reason; first, where the stream held the text (``holds_text``),
        the text or the tool calls, whole."""
        if not self.holds_text:
            return sse({**self._head(True), "choices": [self._choice(None, FINISH.get(gen.finish_reason, "stop"),
                                                                     index=index)]})
        message, finish = self._message(gen)
        delta = {"content": message["content"]} if message["content"] else {}
        if "tool_calls" in message:
            delta["tool_calls"] = [{"index": k, **call} for k, call in enumerate(message["tool_calls"])]
        held = sse({**self._head(True), "choices": [{"index": index, "delta": delta,
                                                     "logprobs": self.logprobs(gen.logprobs, index),
                                                     "finish_reason": None}]}) if delta else ""
        return held + sse({**self._head(True), "choices": [{"index": index, "delta": {}, "logprobs": None,
                                                            "finish_reason": finish}]})

    def end(self, gens: Sequence) -> str:
        """After every choice closed: usage when asked, then [DONE]."""
        out = sse({**self._head(True), "choices": [], "usage": self.usage(gens)}) if self.plan.include_usage else ""
        return out + "data: [DONE]\n\n"



def sse(obj: dict) -> str:
    return f"data: {json.dumps(obj, ensure_ascii=False)}\n\n"
