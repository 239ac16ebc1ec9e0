"""The connection layer: uvicorn's h11 protocol with a deadline for request headers and a cap on
open connections.

uvicorn waits as long as a client likes for a request line and its headers, and takes any number of
connections: clients sending headers a few bytes at a time, or nothing at all, would each hold a
socket for good, and enough of them every socket. Here a request's line and headers must be complete
``header_timeout`` seconds after its first byte (after the connection opened, for the first one),
else the client gets 408 and the connection is closed; a connection past ``max_connections`` gets
503 and is closed at once. Both answers are OpenAI-style JSON bodies. The body's own deadline is the
app's (``app.Guard``): by then the request has a route and an ASGI cycle to answer through.
"""

from __future__ import annotations

import asyncio
import json
import logging

import h11
from uvicorn.protocols.http.h11_impl import H11Protocol

from .errors import error_body

log = logging.getLogger("polyverse.server")


def raw_response(status: int, reason: str, message: str, code: str, headers: dict[str, str] | None = None) -> bytes:
    """A whole HTTP/1.1 response with an OpenAI-style error body that closes the connection, for
    answering below h11's request cycle (no request was parsed).

    >>> raw_response(408, "Request Timeout", "too slow", "request_timeout").split(b"\\r\\n")[0]
    b'HTTP/1.1 408 Request Timeout'
    """
    body = json.dumps(error_body(status, message, None, code)).encode()
    head = {"content-type": "application/json", "content-length": str(len(body)), "connection": "close",
            **(headers or {})}
    lines = [f"HTTP/1.1 {status} {reason}"] + [f"{k}: {v}" for k, v in head.items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body


class LimitedH11Protocol(H11Protocol):
    """h11 with a header deadline and a connection cap (the class attributes; ``limited`` sets them)."""

    header_timeout: float = 10.0
    max_connections: int = 256

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        self._deadline: asyncio.TimerHandle | None = None
        super().connection_made(transport)
        if len(self.connections) > self.max_connections:
            log.warning("refused a connection: %d are open (--max-connections %d)", len(self.connections) - 1,
                        self.max_connections)
            self._answer(503, "Service Unavailable", f"the server has {self.max_connections} connections open; "
                         "retry later", "too_many_connections", {"retry-after": "1"})
            return
        self._arm()

    def data_received(self, data: bytes) -> None:
        if self._deadline is None and self.conn.their_state is h11.IDLE:  # a new request begins
            self._arm()
        super().data_received(data)
        if self.conn.their_state is not h11.IDLE:  # its line and headers are in
            self._disarm()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)

    def _arm(self) -> None:
        self._disarm()
        self._deadline = self.loop.call_later(self.header_timeout, self._headers_late)

    def _disarm(self) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None

    def _headers_late(self) -> None:
        self._deadline = None
        if self.transport.is_closing() or self.conn.their_state is not h11.IDLE:
            return
        if self.cycle is not None and not self.cycle.response_complete:  # still answering the last request
            return
        prefix = "%s:%d: " % self.client if self.client else ""
        log.info("%sno complete request headers within %gs: answered 408 and closed", prefix, self.header_timeout)
        self._answer(408, "Request Timeout", f"the request line and headers did not arrive within "
                     f"{self.header_timeout:g} s", "request_timeout")

    def _answer(self, status: int, reason: str, message: str, code: str, headers: dict[str, str] | None = None) -> None:
        self._disarm()
        self.transport.write(raw_response(status, reason, message, code, headers))
        self.transport.close()


def limited(header_timeout: float, max_connections: int) -> type[LimitedH11Protocol]:
    """The protocol class for uvicorn's ``http=`` with these limits."""
    return type("LimitedH11Protocol", (LimitedH11Protocol,),
                {"header_timeout": header_timeout, "max_connections": max_connections})
