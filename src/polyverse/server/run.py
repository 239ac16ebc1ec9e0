"""Running the app under uvicorn with a graceful shutdown.

On SIGINT/SIGTERM (or ``server.should_exit = True``) the server drains: it still accepts
connections but answers new requests with 503 and ``Retry-After`` (``/health`` says "draining"),
gives those in flight ``shutdown_grace`` seconds to finish, then cancels the rest, each with a clean
end (an SSE error event and ``[DONE]``, or a 503 body), never a cut stream. Then it stops listening
and the process exits with status 0: the shutdown was asked for and went as planned.
"""

from __future__ import annotations

import contextlib

import uvicorn

from .app import create_app
from .config import ServerConfig
from .http import limited


class Server(uvicorn.Server):
    """uvicorn's server, draining the polyverse scheduler before uvicorn closes connections."""

    def __init__(self, config: uvicorn.Config, app) -> None:
        super().__init__(config)
        self.polyverse_app = app

    async def shutdown(self, sockets=None) -> None:
        grace = self.polyverse_app.state.config.shutdown_grace
        await self.polyverse_app.state.scheduler.drain(grace, hurry=lambda: self.force_exit)
        await super().shutdown(sockets)

    @contextlib.contextmanager
    def capture_signals(self):
        """uvicorn raises the signal it handled again once it has shut down, so the process ends by
        it (status 143 for SIGTERM); a drained shutdown is a normal end here: status 0."""
        with super().capture_signals():
            yield
            self._captured_signals.clear()


def make_server(model, config: ServerConfig, host: str = "127.0.0.1", port: int = 8000,
                log_level: str = "info", access_log: bool = True) -> Server:
    app = create_app(model, config)
    uv = uvicorn.Config(app, host=host, port=port, log_level=log_level, access_log=access_log,
                        timeout_graceful_shutdown=int(config.shutdown_grace) + 5, lifespan="on",
                        http=limited(config.header_timeout, config.max_connections))
    return Server(uv, app)


def serve(model, config: ServerConfig, host: str = "127.0.0.1", port: int = 8000, log_level: str = "info") -> None:
    """Serve ``model`` until interrupted (blocks)."""
    make_server(model, config, host, port, log_level).run()
