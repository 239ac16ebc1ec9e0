"""Running the real polyverse server (uvicorn) on loopback in a thread, and test doubles of models."""

from __future__ import annotations

import contextlib
import json
import socket
import threading
import time
from collections import deque

from polyverse.api import Stream
from polyverse.server import ServerConfig
from polyverse.server.run import make_server


def wait_until(check, timeout=5.0) -> bool:
    """Poll ``check`` until it holds (True) or ``timeout`` seconds pass (False)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return True
        time.sleep(0.02)
    return False


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Running:
    def __init__(self, server, thread, port) -> None:
        self.server, self.thread, self.port = server, thread, port
        self.base = f"http://127.0.0.1:{port}"
        self.app = server.polyverse_app

    def stop(self, timeout: float = 30) -> None:
        self.server.should_exit = True
        self.thread.join(timeout)


@contextlib.contextmanager
def running(model, **config):
    """The server for ``model`` on a free loopback port in a background thread, stopped afterwards."""
    config.setdefault("served_name", "tiny")
    port = free_port()
    server = make_server(model, ServerConfig(**config), port=port, log_level="warning", access_log=False)
    thread = threading.Thread(target=server.run, name="uvicorn-test", daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            raise RuntimeError("the test server did not start")
        time.sleep(0.02)
    run = Running(server, thread, port)
    try:
        yield run
    finally:
        run.stop()


class Wrapped:
    """A polyverse Model whose generations pass through ``wrap(chunks)`` (slowed down, failing, ...)."""

    def __init__(self, model, wrap) -> None:
        self._model, self._wrap = model, wrap

    def __getattr__(self, name):
        return getattr(self._model, name)

    def session(self) -> "Wrapped":
        return Wrapped(self._model.session(), self._wrap)

    def stream(self, *args, **kwargs) -> Stream:
        inner = self._model.stream(*args, **kwargs)
        return Stream(self._wrap(iter(inner)), inner._holder)

    def request(self, *args, **kwargs) -> "WrappedRequest":
        return WrappedRequest(self._model.request(*args, **kwargs), self._wrap)


class WrappedRequest:
    """A batch request whose chunks pass through ``wrap`` as the server takes them."""

    def __init__(self, request, wrap) -> None:
        self._request, self._fed = request, deque()
        self._out = wrap(self._chunks())
        self.last = None

    def _chunks(self):
        while self._fed:
            yield self._fed.popleft()

    def __getattr__(self, name):
        return getattr(self._request, name)

    def push(self, step) -> bool:
        done = self._request.push(step)
        self._fed.append(self._request.last)
        self.last = next(self._out)
        return done


def slowed(delay: float):
    def wrap(chunks):
        for c in chunks:
            time.sleep(delay)
            yield c
    return wrap


def failing(chunks):
    yield next(chunks)
    raise RuntimeError("boom: a simulated failure inside the decoder")


def sse_events(response):
    """Parsed ``data:`` payloads of an httpx streaming response, as they arrive ('[DONE]' kept as is)."""
    for line in response.iter_lines():
        if line.startswith("data: "):
            data = line[6:]
            yield data if data == "[DONE]" else json.loads(data)
