"""OpenAI-style error bodies: ``{"error": {"message", "type", "param", "code"}}``, one line each.

Statuses: 400 invalid_request_error (bad JSON, fields, values, unknown method, too long),
401 authentication_error, 404 not_found_error (unknown model or route), 405, 408 (headers or body
too slow), 413 (body too large), 415 (compressed body), 429 rate_limit_error (queue full), 503
(shutting down, too many connections), 500 server_error (never a traceback).
"""

from __future__ import annotations

from typing import Any

from starlette.responses import JSONResponse

TYPES = {400: "invalid_request_error", 401: "authentication_error", 403: "permission_error",
         404: "not_found_error", 405: "invalid_request_error", 408: "invalid_request_error",
         413: "invalid_request_error", 415: "invalid_request_error",
         429: "rate_limit_error", 500: "server_error", 503: "server_error"}


class APIError(Exception):
    """An error answered to the client as is: status, one-line message, the parameter at fault."""

    def __init__(self, status: int, message: str, param: str | None = None, code: str | None = None,
                 headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.param, self.code = status, message, param, code
        self.headers = headers or {}

    def body(self) -> dict[str, Any]:
        return error_body(self.status, self.message, self.param, self.code)

    def response(self) -> JSONResponse:
        return JSONResponse(self.body(), status_code=self.status, headers=self.headers)


def error_body(status: int, message: str, param: str | None = None, code: str | None = None) -> dict[str, Any]:
    return {"error": {"message": message, "type": TYPES.get(status, "invalid_request_error" if status < 500 else "server_error"),
                      "param": param, "code": code}}


def invalid(message: str, param: str | None = None, code: str | None = None) -> APIError:
    return APIError(400, message, param, code)


def validation_message(errors: list[dict]) -> tuple[str, str | None]:
    """pydantic's errors -> (one-line message, param): the first error, said plainly."""
    e = errors[0]
    param = ".".join(str(p) for p in e.get("loc", ())) or None
    kind = e.get("type", "")
    msg = str(e.get("msg", "invalid value")).removeprefix("Value error, ")
    if kind == "missing":
        return f"'{param}' is required", param
    if kind == "extra_forbidden":
        return f"unknown field '{param}'", param
    got = e.get("input")
    shown = repr(got) if isinstance(got, (int, float, str, bool)) or got is None else type(got).__name__
    if len(shown) > 60:
        shown = shown[:57] + "..."
    where = f"{param}: " if param else ""
    return f"{where}{msg[:1].lower() + msg[1:]} (got {shown})", param
