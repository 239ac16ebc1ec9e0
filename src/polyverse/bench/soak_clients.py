"""The soak's client behaviours: each sends one request of its kind and records what it saw.

Nothing here judges: every behaviour returns a `Seen` (status, body, how the stream ended, whether
the server closed the socket, when), and `soak.classify` decides ok, refused or failed from it, so
the judging stays testable without a server. Kinds:

- ``short``: a streaming chat request; time to first token from the request's start.
- ``long``: a non-streaming chat request whose prompt nearly fills the model's context.
- ``disconnect``: a streaming request the client drops after its first content chunk or two.
- ``slow_headers``: a raw socket that sends a partial request head a few bytes at a time, never
  finishing it; the server should answer 408 or close it once its header timeout passes.
- ``slow_body``: a complete head announcing a 100-byte body, then 7 bytes and silence; the same
  expectation under the body timeout.
- ``bad``: malformed JSON; an OpenAI-shaped 400 is expected.
"""

from __future__ import annotations

import asyncio
import json
import random
import time
from dataclasses import dataclass
from typing import Any, Optional

import httpx

from ..errors import PolyverseError
from .load import PROMPTS, SERVED_NAME

KINDS = ("short", "long", "disconnect", "slow_headers", "slow_body", "bad")
BAD_BODIES = (b'{"model": "x", "messages": [', b"not json at all", b'{"messages": [}', b'{"model": }')
LONG_SPAN = (0.73, 0.95)  # a long prompt's tokens, as a share of the model's context
CALIBRATION_SENTENCES = 100

_ADJ = ("red", "quiet", "tall", "old", "bright", "small", "heavy", "curious", "green", "swift")
_NOUN = ("fox", "teacher", "engine", "river", "baker", "robot", "sailor", "garden", "tower", "violin")
_VERB = ("carried", "moved", "counted", "painted", "measured", "repaired", "followed", "collected")
_PLACE = ("the mill", "the harbour", "a market", "the library", "a bridge", "the station", "a farm")


@dataclass(frozen=True)
class Seen:
    """What one request met. ``status``: the HTTP status (None: no answer); ``body``: the parsed JSON
    of a non-streaming answer or an error answer (None when not JSON); ``chunks``: content chunks of a
    stream; ``done``: the stream ended with ``data: [DONE]``; ``stream_error``: an error event's
    message; ``closed``: the server closed a raw socket; ``error``: a transport error."""

    status: Optional[int] = None
    body: Any = None
    chunks: int = 0
    done: bool = False
    stream_error: Optional[str] = None
    closed: bool = False
    error: Optional[str] = None
    seconds: float = 0.0
    ttft: Optional[float] = None


@dataclass(frozen=True)
class Target:
    """The server under soak: its URL, the shared HTTP client, and what sizes a long prompt."""

    host: str
    port: int
    http: httpx.AsyncClient
    context: int  # the model's context, in tokens
    tokens_per_sentence: float  # of `long_text`, measured by `calibrate`
    short_max_tokens: int = 32

    @property
    def base(self) -> str:
        return f"http://{self.host}:{self.port}"


def _json(raw: bytes) -> Any:
    try:
        return json.loads(raw)
    except ValueError:
        return None


def long_text(rng: random.Random, sentences: int) -> str:
    """Varied filler notes and a closing question: a prompt of a chosen size that is not one phrase
    repeated (repeats would let drafting methods race through it)."""
    notes = [f"Note {i}: the {rng.choice(_ADJ)} {rng.choice(_NOUN)} {rng.choice(_VERB)} {rng.randint(2, 999)} "
             f"boxes to {rng.choice(_PLACE)} before {rng.randint(1, 12)} o'clock." for i in range(sentences)]
    return " ".join(notes) + "\n\nIn one sentence, what do the notes above mostly describe?"


def _chat(prompt: str, max_tokens: int, stream: bool) -> dict:
    return {"model": SERVED_NAME, "messages": [{"role": "user", "content": prompt}], "max_tokens": max_tokens,
            "temperature": 0, "stream": stream}


async def calibrate(http: httpx.AsyncClient, base: str) -> tuple[int, float]:
    """(the model's context, tokens per `long_text` sentence), asked of the server itself, so long
    prompts fit whatever model and template it serves."""
    card = (await http.get(base + "/v1/models")).json()["data"][0]
    context = int(card.get("polyverse", {}).get("context_length") or 2048)
    n = CALIBRATION_SENTENCES
    while True:
        r = await http.post(base + "/v1/chat/completions", json=_chat(long_text(random.Random(0), n), 1, False))
        if r.status_code == 200:
            return context, r.json()["usage"]["prompt_tokens"] / n  # the template's tokens included: errs short
        if n <= 1:
            raise PolyverseError(f"the calibration request failed: HTTP {r.status_code} {r.text[:200]}")
        n //= 4  # a small context: fewer sentences


def long_prompt(rng: random.Random, target: Target, max_tokens: int, share: Optional[float] = None) -> str:
    """A prompt that fills ``share`` of the context (default: a random share in LONG_SPAN) with room
    for ``max_tokens``."""
    share = rng.uniform(*LONG_SPAN) if share is None else share
    sentences = max(1, int((share * target.context - max_tokens) / target.tokens_per_sentence))
    return long_text(rng, sentences)


async def stream_chat(target: Target, prompt: str, max_tokens: int, drop_after: Optional[int] = None) -> Seen:
    """One streaming chat request; ``drop_after``: leave after that many content chunks (the
    response is closed unread, so the server sees its client go)."""
    t0 = time.perf_counter()
    status, chunks, ttft, done, stream_error = None, 0, None, False, None
    try:
        async with target.http.stream("POST", target.base + "/v1/chat/completions",
                                      json=_chat(prompt, max_tokens, True)) as r:
            status = r.status_code
            if status != 200:
                return Seen(status=status, body=_json(await r.aread()), seconds=time.perf_counter() - t0)
            async for line in r.aiter_lines():
                if not line.startswith("data: "):
                    continue
                if line[6:] == "[DONE]":
                    done = True
                    break
                msg = json.loads(line[6:])
                if "error" in msg:
                    stream_error = str(msg["error"].get("message"))
                    break
                if msg.get("choices") and msg["choices"][0].get("delta", {}).get("content"):
                    chunks += 1
                    ttft = ttft if ttft is not None else time.perf_counter() - t0
                if drop_after is not None and chunks >= drop_after:
                    break
    except (httpx.HTTPError, OSError, ValueError) as exc:
        return Seen(status=status, chunks=chunks, ttft=ttft, error=f"{type(exc).__name__}: {exc}"[:200],
                    seconds=time.perf_counter() - t0)
    return Seen(status=status, chunks=chunks, done=done, stream_error=stream_error, ttft=ttft,
                seconds=time.perf_counter() - t0)


async def post(target: Target, content: bytes) -> Seen:
    """One non-streaming POST to the chat route with ``content`` as its body."""
    t0 = time.perf_counter()
    try:
        r = await target.http.post(target.base + "/v1/chat/completions", content=content,
                                   headers={"Content-Type": "application/json"})
    except (httpx.HTTPError, OSError) as exc:
        return Seen(error=f"{type(exc).__name__}: {exc}"[:200], seconds=time.perf_counter() - t0)
    return Seen(status=r.status_code, body=_json(r.content), seconds=time.perf_counter() - t0)


async def long_request(target: Target, rng: random.Random, share: Optional[float] = None) -> Seen:
    """A non-streaming chat request with a near-context prompt and a short answer."""
    max_tokens = rng.randint(16, 32)
    return await post(target, json.dumps(_chat(long_prompt(rng, target, max_tokens, share), max_tokens, False)).encode())


def _status_line(data: bytes) -> Optional[int]:
    """The status of a raw HTTP answer's first line.

    >>> _status_line(b"HTTP/1.1 408 Request Timeout\\r\\n"), _status_line(b"garbage")
    (408, None)
    """
    parts = data.split(b"\r\n", 1)[0].split()
    return int(parts[1]) if len(parts) >= 2 and parts[0].startswith(b"HTTP/") and parts[1].isdigit() else None


async def raw_client(host: str, port: int, first: bytes, trickle: bytes, deadline: float,
                     step: int = 2, interval: float = 0.5) -> Seen:
    """A raw connection that sends ``first``, then ``trickle`` ``step`` bytes every ``interval``
    seconds, and watches until ``deadline`` seconds for the server's answer or close."""
    t0 = time.perf_counter()
    try:
        reader, writer = await asyncio.wait_for(asyncio.open_connection(host, port), 10)
    except (OSError, asyncio.TimeoutError) as exc:
        return Seen(error=f"connect: {type(exc).__name__}: {exc}"[:200], seconds=time.perf_counter() - t0)
    try:
        if first:
            writer.write(first)
            await writer.drain()
        while (elapsed := time.perf_counter() - t0) < deadline:
            if trickle:
                writer.write(trickle[:step])
                trickle = trickle[step:]
                await writer.drain()
            try:
                data = await asyncio.wait_for(reader.read(4096), min(interval, deadline - elapsed))
            except asyncio.TimeoutError:
                continue
            seconds = time.perf_counter() - t0
            if not data:
                return Seen(closed=True, seconds=seconds)
            head, _, body = data.partition(b"\r\n\r\n")
            return Seen(status=_status_line(head), body=_json(body), closed=True, seconds=seconds)
        return Seen(seconds=time.perf_counter() - t0)  # still open at the deadline
    except OSError:  # reset or broken pipe: the server dropped the connection
        return Seen(closed=True, seconds=time.perf_counter() - t0)
    finally:
        writer.close()
        try:
            await writer.wait_closed()
        except OSError:
            pass


def slow_head(host: str) -> bytes:
    """A request head that never ends (no blank line), long enough to trickle for a minute."""
    pad = b"".join(b"X-Soak-%d: %s\r\n" % (i, b"s" * 20) for i in range(10))
    return b"POST /v1/chat/completions HTTP/1.1\r\nHost: %s\r\nContent-Type: application/json\r\n%s" % (
        host.encode(), pad)


def slow_body_request(host: str) -> bytes:
    """A complete head announcing 100 bytes of body, and the first 7 of them."""
    return (b"POST /v1/chat/completions HTTP/1.1\r\nHost: %s\r\nContent-Type: application/json\r\n"
            b"Content-Length: 100\r\n\r\n{\"model" % host.encode())


async def send(kind: str, target: Target, rng: random.Random, deadline: Optional[float]) -> Seen:
    """One request of ``kind``; ``deadline``: how long a slow client waits for the server to act."""
    if kind == "short":
        return await stream_chat(target, rng.choice(PROMPTS), target.short_max_tokens)
    if kind == "disconnect":
        return await stream_chat(target, rng.choice(PROMPTS), 128, drop_after=rng.randint(1, 2))
    if kind == "long":
        return await long_request(target, rng)
    if kind == "bad":
        return await post(target, rng.choice(BAD_BODIES))
    if kind == "slow_headers":
        return await raw_client(target.host, target.port, b"", slow_head(target.host), deadline or 0)
    if kind == "slow_body":
        return await raw_client(target.host, target.port, slow_body_request(target.host), b"", deadline or 0)
    raise ValueError(f"unknown kind {kind!r}")
