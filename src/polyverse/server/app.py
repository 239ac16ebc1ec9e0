"""The FastAPI app: OpenAI routes, /health, /metrics, the chat page, auth and body-size guards.

    POST /v1/chat/completions, POST /v1/completions   (stream: server-sent events, OpenAI chunks)
    GET  /v1/models, /v1/models/{id}, /health (and HEAD), /metrics (Prometheus), /openapi.json, /  (the chat page)

Bodies are parsed here (not by FastAPI), so every bad input gets an OpenAI-style error with the
right status and never pydantic's 422 format. With an API key, /v1/* and /metrics answer 401
before the body is read; /health and the page stay open. A body must arrive within
``body_timeout`` seconds of its headers (408), uncompressed (415), and within ``max_body_bytes`` (413).
"""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
from collections import deque
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from pydantic import ValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import ClientDisconnect
from starlette.responses import FileResponse, JSONResponse, Response, StreamingResponse
from starlette.staticfiles import StaticFiles

from ..registry import registry
from .config import ServerConfig
from .errors import APIError, error_body, invalid, validation_message
from .memory import budget, describe
from .metrics import CONTENT_TYPE, Metrics
from .plan import plan
from .responses import Reply, sse
from ..batching import BatchConfig
from .scheduler import Job, Scheduler
from .schemas import ChatRequest, CompletionRequest
from .openapi import schema as openapi_schema

log = logging.getLogger("polyverse.server")
STATIC = Path(__file__).parent / "static"
ROUTES = {"/", "/health", "/metrics", "/openapi.json", "/v1/models", "/v1/chat/completions", "/v1/completions"}


class Guard:
    """ASGI middleware: the bearer token, the body's size limit and deadline, and HTTP status counts."""

    def __init__(self, app, config: ServerConfig, metrics: Metrics) -> None:
        self.app, self.config, self.metrics = app, config, metrics
        self.key = config.api_key.encode() if config.api_key else None

    def _needs_key(self, path: str) -> bool:
        return self.key is not None and (path.startswith("/v1/") or path == "/v1" or path == "/metrics")

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        path = scope["path"]
        route = path if path in ROUTES else "/v1/models/{id}" if path.startswith("/v1/models/") else "other"
        status = {"code": 500}

        async def counted_send(message) -> None:
            if message["type"] == "http.response.start":
                status["code"] = message["status"]
            await send(message)

        try:
            headers = dict(scope.get("headers") or [])
            if self._needs_key(path):
                auth = headers.get(b"authorization", b"")
                scheme, _, token = auth.partition(b" ")
                if scheme.lower() != b"bearer" or not hmac.compare_digest(token.strip(), self.key):
                    err = APIError(401, "invalid or missing API key: send 'Authorization: Bearer <key>'", None,
                                   "invalid_api_key", {"WWW-Authenticate": "Bearer"})
                    return await err.response()(scope, receive, counted_send)
            limit = self.config.max_body_bytes
            length = headers.get(b"content-length")
            if length is not None and length.isdigit() and int(length) > limit:
                return await _too_large(limit).response()(scope, receive, counted_send)
            seen = {"n": 0, "done": False}
            loop = asyncio.get_running_loop()
            deadline = loop.time() + self.config.body_timeout

            async def limited_receive():
                if seen["done"]:  # the body is in: later messages are the disconnect the app watches for
                    return await receive()
                try:
                    message = await asyncio.wait_for(receive(), max(deadline - loop.time(), 0.0))
                except TimeoutError:
                    raise _slow_body(self.config.body_timeout) from None
                if message["type"] == "http.request":
                    seen["n"] += len(message.get("body", b""))
                    if seen["n"] > limit:
                        raise _too_large(limit)
                    seen["done"] = not message.get("more_body", False)
                else:
                    seen["done"] = True
                return message

            await self.app(scope, limited_receive, counted_send)
        finally:
            self.metrics.http.labels(route, str(status["code"])).inc()


def _too_large(limit: int) -> APIError:
    return APIError(413, f"the request body is larger than {limit} bytes", None, "request_too_large")


def _slow_body(timeout: float) -> APIError:
    log.info("a request body did not arrive within %gs: answered 408", timeout)
    return APIError(408, f"the request body did not arrive within {timeout:g} s of its headers", None,
                    "request_timeout", {"Connection": "close"})


class ClientGone(Exception):
    """The client hung up before its body was in: nobody to answer."""


async def read_body(request: Request, cls):
    """The body as a validated request model, or an APIError 400 that says what is wrong."""
    encoding = request.headers.get("content-encoding", "identity").strip().lower()
    if encoding not in ("", "identity"):
        raise APIError(415, f"the body is sent with Content-Encoding '{encoding[:40]}': send it uncompressed",
                       None, "unsupported_encoding")
    try:
        raw = await request.body()
    except ClientDisconnect:
        raise ClientGone() from None
    if not raw.strip():
        raise invalid("the body is empty: send a JSON object")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise invalid(f"the body is not valid UTF-8 (byte 0x{raw[exc.start]:02x} at offset {exc.start})") from None
    try:
        data = json.loads(text, parse_constant=_no_constant)
    except json.JSONDecodeError as exc:
        raise invalid(f"the body is not valid JSON: {exc.msg} (line {exc.lineno}, column {exc.colno})") from None
    except (RecursionError, ValueError) as exc:
        raise invalid(f"the body is not valid JSON: {exc}") from None
    if not isinstance(data, dict):
        raise invalid(f"the body must be a JSON object, got a JSON {type(data).__name__}")
    where = _surrogate(data)
    if where is not None:
        raise invalid(f"{where} holds a lone UTF-16 surrogate escape (\\ud800 to \\udfff without its pair), "
                      "which is not a character", where)
    try:
        return cls.model_validate(data)
    except ValidationError as exc:
        message, param = validation_message(exc.errors())
        raise invalid(message, param) from None


def _no_constant(name: str):
    raise ValueError(f"{name} is not a JSON number")


def _surrogate(data) -> str | None:
    """The dotted path of the first string (or key) in ``data`` holding a lone surrogate, else None.

    >>> _surrogate({"messages": [{"content": "ok"}, {"content": "bad " + chr(0xD800)}]})
    'messages.1.content'
    >>> _surrogate({"prompt": "fine \U0001F600"}) is None
    True
    """
    stack = [("", data)]
    while stack:
        path, value = stack.pop()
        if isinstance(value, str):
            try:
                value.encode("utf-8")
            except UnicodeEncodeError:
                return path
        elif isinstance(value, dict):
            for key, item in reversed(list(value.items())):
                where = f"{path}.{key}" if path else str(key)
                stack.extend([(where, item), (where, key)])
        elif isinstance(value, list):
            stack.extend((f"{path}.{i}" if path else str(i), item) for i, item in reversed(list(enumerate(value))))
    return None


async def _watch(request: Request, jobs: list[Job], scheduler: Scheduler) -> None:
    """Cancel the request's jobs (one per choice) as soon as its client disconnects."""
    while True:
        message = await request.receive()
        if message["type"] == "http.disconnect":
            for job in jobs:
                scheduler.cancel(job)
                job.events.put_nowait(("cancelled", None))
            return


class _Choices:
    """A request's jobs, one per choice, and one queue of their events tagged with the choice's index."""

    def __init__(self, jobs: list[Job]) -> None:
        self.jobs = jobs
        self._queue: asyncio.Queue = asyncio.Queue()
        self._early: deque = deque()  # events of choices already under way while others were starting
        self._pumps = [asyncio.create_task(self._pump(i, job)) for i, job in enumerate(jobs)]

    async def _pump(self, index: int, job: Job) -> None:
        while True:
            event, payload = await job.events.get()
            self._queue.put_nowait((index, event, payload))
            if event in ("done", "error", "cancelled"):
                return

    async def get(self) -> tuple[int, str, Any]:
        return self._early.popleft() if self._early else await self._queue.get()

    async def started(self) -> tuple[str, Any] | None:
        """Wait until every choice has started (None), or the first error or cancellation before that
        (its event and payload); the events of choices that went on meanwhile are kept for ``get``."""
        waiting = set(range(len(self.jobs)))
        while waiting:
            index, event, payload = await self._queue.get()
            if event in ("error", "cancelled"):
                return event, payload
            if event == "started":
                waiting.discard(index)
            else:
                self._early.append((index, event, payload))
        return None

    def close(self, scheduler: Scheduler) -> None:
        """Cancel what is left: the jobs (their slots free at once) and the pumps."""
        for job in self.jobs:
            scheduler.cancel(job)
        for pump in self._pumps:
            pump.cancel()


def create_app(model, config: ServerConfig | None = None) -> FastAPI:
    """An ASGI app serving ``model`` (a polyverse Model); run it with uvicorn (see ``run.serve``)."""
    config = config or ServerConfig(served_name=model.name)
    metrics = Metrics()
    kv_budget = budget(model, config.max_concurrent, config.kv_budget)
    metrics.kv_budget.set(kv_budget)
    log.info("%s", describe(model, kv_budget))
    scheduler = Scheduler(model, config.max_concurrent, config.max_queue, metrics,
                          BatchConfig(prefill_chunk=config.prefill_chunk), kv_budget)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        scheduler.start()
        yield
        await asyncio.to_thread(scheduler.stop)

    app = FastAPI(title="polyverse", lifespan=lifespan, docs_url=None, redoc_url=None, openapi_url="/openapi.json",
                  redirect_slashes=False)
    app.state.model, app.state.config, app.state.metrics, app.state.scheduler = model, config, metrics, scheduler
    app.openapi = lambda: openapi_schema(app, config)  # the routes parse their own bodies: see openapi.py
    app.add_middleware(Guard, config=config, metrics=metrics)
    app.mount("/static", StaticFiles(directory=STATIC), name="static")

    @app.exception_handler(APIError)
    async def _api_error(request: Request, exc: APIError) -> Response:
        return exc.response()

    @app.exception_handler(ClientGone)
    async def _gone(request: Request, exc: ClientGone) -> Response:
        log.info("%s %s: the client left before its whole body arrived", request.method, request.url.path)
        return Response(status_code=499)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException) -> Response:
        message = {404: f"unknown route {request.method} {request.url.path}",
                   405: f"method {request.method} is not allowed on {request.url.path}"}.get(exc.status_code, str(exc.detail))
        return JSONResponse(error_body(exc.status_code, message), status_code=exc.status_code, headers=exc.headers)

    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, exc: RequestValidationError) -> Response:
        message, param = validation_message(list(exc.errors()))
        return invalid(message, param).response()

    @app.exception_handler(Exception)
    async def _crash(request: Request, exc: Exception) -> Response:
        log.exception("unhandled error on %s %s", request.method, request.url.path)
        return JSONResponse(error_body(500, "internal server error: see the server log", None, "internal_error"),
                            status_code=500)

    def model_card() -> dict[str, Any]:
        return {"id": config.served_name, "object": "model", "created": 0, "owned_by": "polyverse",
                "polyverse": {"methods": registry.names(), "default_method": config.method,
                              "context_length": model.max_length}}

    @app.api_route("/health", methods=["GET", "HEAD"])
    async def health() -> Response:
        """200 while serving; 503 once draining (load balancers then send new requests elsewhere)."""
        active, waiting = scheduler.counts
        body = {"status": "draining" if scheduler.draining else "ok", "model": config.served_name,
                "active": active, "waiting": waiting, "kv_tokens": scheduler.kv_used, "kv_budget": scheduler.kv_budget}
        if scheduler.draining:
            return JSONResponse(body, status_code=503, headers={"Retry-After": "5"})
        return JSONResponse(body)

    @app.get("/v1/models")
    async def models() -> dict:
        return {"object": "list", "data": [model_card()]}

    @app.get("/v1/models/{model_id:path}")
    async def one_model(model_id: str) -> dict:
        if model_id != config.served_name:
            raise APIError(404, f"the model '{model_id}' does not exist: this server serves '{config.served_name}'",
                           "model", "model_not_found")
        return model_card()

    @app.get("/metrics")
    async def prometheus() -> Response:
        return Response(metrics.exposition(), media_type=CONTENT_TYPE)

    @app.get("/")
    async def page() -> Response:
        return FileResponse(STATIC / "index.html")

    @app.post("/v1/chat/completions")
    async def chat(request: Request) -> Response:
        return await generate(request, await read_body(request, ChatRequest), "chat")

    @app.post("/v1/completions")
    async def completions(request: Request) -> Response:
        return await generate(request, await read_body(request, CompletionRequest), "completion")

    async def generate(request: Request, req, kind: str) -> Response:
        # in a worker thread: tokenizing a long prompt or compiling a grammar must not stall other clients
        p = await asyncio.to_thread(plan, model, config, req, kind)
        loop = asyncio.get_running_loop()
        jobs = [Job(p.choice(i), loop) for i in range(p.n)]
        try:
            for job in jobs:
                scheduler.submit(job)
        except APIError:  # all choices or none
            for job in jobs:
                scheduler.cancel(job)
            raise
        watcher = asyncio.create_task(_watch(request, jobs, scheduler))
        reply = Reply(p, config.served_name, model.tokenizer)
        events = _Choices(jobs)
        streaming = False
        try:
            failed = await events.started()  # every choice started, or an error before any output
            if failed is not None:
                event, payload = failed
                return payload.response() if event == "error" else Response(status_code=499)
            if p.stream:
                streaming = True
                return StreamingResponse(_events(events, reply, watcher, scheduler), media_type="text/event-stream",
                                         headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
            done: dict[int, Any] = {}
            while len(done) < len(jobs):
                index, event, payload = await events.get()
                if event == "done":
                    done[index] = payload
                elif event == "error":
                    return payload.response()
                elif event == "cancelled":
                    return Response(status_code=499)
            return JSONResponse(reply.whole([done[i] for i in range(len(jobs))]))
        finally:
            if not streaming:
                watcher.cancel()
                events.close(scheduler)

    return app


async def _events(events: _Choices, reply: Reply, watcher: asyncio.Task, scheduler: Scheduler):
    """The SSE body: each choice's role chunk, one chunk per forward pass that released text (tagged
    with its choice's index), each choice's finish, then usage and [DONE] once all are done."""
    n = len(events.jobs)
    passes = [0] * n
    done: dict[int, Any] = {}
    try:
        if reply.chat:
            for index in range(n):
                yield reply.first(index)
        while len(done) < n:
            index, event, payload = await events.get()
            if event == "chunk":
                passes[index] += 1
                if (payload.text or payload.logprobs) and not reply.holds_text:
                    yield reply.piece(payload.text, passes[index], payload.step.accepted, payload.logprobs, index)
            elif event == "done":
                done[index] = payload
                yield reply.finish(payload, index)
            elif event == "error":  # the stream ends cleanly: the error, then the end OpenAI clients wait for
                yield sse(payload.body()) + "data: [DONE]\n\n"
                return
            elif event == "cancelled":  # the client is gone
                return
        yield reply.end([done[i] for i in range(n)])
    finally:
        watcher.cancel()
        events.close(scheduler)
