"""An OpenAI-compatible HTTP server for every polyverse method: ``polyverse serve``.

    >>> from polyverse.server import ServerConfig, create_app
    >>> app = create_app(polyverse.load(), ServerConfig(method="auto"))   # an ASGI app for uvicorn

``app.py`` holds the routes, ``scheduler.py`` the worker that interleaves requests, ``schemas.py``
the request bodies, ``errors.py`` the OpenAI-style error bodies, ``metrics.py`` the Prometheus
series, ``run.py`` the uvicorn server with graceful shutdown, ``static/`` the chat page.
"""

from .app import create_app
from .config import ServerConfig

__all__ = ["ServerConfig", "create_app"]
