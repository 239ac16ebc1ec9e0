"""`polyverse serve`: the OpenAI-compatible server (FastAPI + uvicorn) for every method."""

from __future__ import annotations

import os
from typing import Optional

import typer

from ..errors import ConfigError
from .common import DTYPE_OPTION, clean_exit, err, key_values


def serve(
    model: str = typer.Option("SmolLM2-135M-Instruct", "--model", help="Bundled model name, HF model directory, or .gguf file."),
    adapter: Optional[str] = typer.Option(None, "--adapter", help="Adapter name (e.g. cllm-gsm8k) or folder."),
    dtype: Optional[str] = DTYPE_OPTION,
    method: str = typer.Option("auto", "--method", "-m", help="Method of requests that name none (see `polyverse methods`)."),
    option: list[str] = typer.Option([], "--option", "-o", help="Option KEY=VALUE of that method (repeatable)."),
    host: str = typer.Option("127.0.0.1", "--host", help="Address to listen on (0.0.0.0 exposes the server)."),
    port: int = typer.Option(8000, "--port", help="TCP port."),
    api_key: Optional[str] = typer.Option(None, "--api-key", envvar="POLYVERSE_API_KEY",
                                          help="Require 'Authorization: Bearer KEY' on /v1/* and /metrics."),
    max_concurrent: int = typer.Option(16, "--max-concurrent", help="Requests decoded at once (sharing each forward pass)."),
    prefill_chunk: int = typer.Option(64, "--prefill-chunk", help="Prompt tokens per pass over all requests reading "
                                      "their prompts, so long prompts do not stall running requests (0: whole prompts)."),
    max_queue: int = typer.Option(64, "--max-queue", help="Requests that may wait for a slot; beyond that: 429."),
    max_body_bytes: int = typer.Option(1 << 20, "--max-body-bytes", help="Larger request bodies get 413."),
    default_max_tokens: int = typer.Option(256, "--default-max-tokens", help="max_tokens of requests that give none."),
    shutdown_grace: float = typer.Option(10.0, "--shutdown-grace", help="Seconds in-flight requests get to finish on shutdown."),
    max_tokens_limit: int = typer.Option(4096, "--max-tokens-limit", help="The most completion tokens one request may "
                                         "ask for (max_tokens); more is a 400."),
    kv_budget: int = typer.Option(0, "--kv-budget", help="KV cache tokens (prompt + max_tokens) all decoding requests "
                                  "may reserve together; beyond it requests queue (0: half the free memory)."),
    header_timeout: float = typer.Option(10.0, "--header-timeout", help="Seconds a client may take to send a "
                                         "request's line and headers; slower ones get 408."),
    body_timeout: float = typer.Option(30.0, "--body-timeout", help="Seconds a client may take to send a body "
                                       "after its headers; slower ones get 408."),
    max_connections: int = typer.Option(256, "--max-connections", help="Open connections at once; one more gets 503."),
    served_name: Optional[str] = typer.Option(None, "--served-name", help="Model id clients name (default: --model, plus +ADAPTER)."),
    log_level: str = typer.Option("info", "--log-level", help="uvicorn log level."),
) -> None:
    """Serve the model behind the OpenAI API: /v1/chat/completions, /v1/completions, /v1/models, /metrics, a chat page at /."""
    from ..registry import registry

    with clean_exit():
        spec = registry.get(method)
        options = key_values(spec, option)
        spec.make_config(options)
        if not 0 < port < 65536:
            raise ConfigError(f"--port must be in 1..65535, got {port}")
        from ..server import ServerConfig

        name = served_name or (f"{model}+{adapter}" if adapter else model)
        cfg = ServerConfig(served_name=name, method=method, options=tuple(options.items()), max_concurrent=max_concurrent,
                           max_queue=max_queue, prefill_chunk=prefill_chunk, max_body_bytes=max_body_bytes, api_key=api_key,
                           default_max_tokens=default_max_tokens, shutdown_grace=shutdown_grace,
                           max_tokens_limit=max_tokens_limit, kv_budget=kv_budget, header_timeout=header_timeout,
                           body_timeout=body_timeout, max_connections=max_connections)
        from .common import load

        lm = load(model, adapter=adapter, dtype=dtype)
        err.print(f"warming up '{method}' on {name} ...", highlight=False)
        lm.session().generate("Hi", method=method, options=options, max_new_tokens=2)  # lazy state: cost curve, drafts
        lm.pass_costs()  # the shared passes' row budget
    from ..heap import freeze
    from ..server.run import serve as run

    freeze()  # the warm-up's state and the server's modules too: a long-lived process (heap)
    if host not in ("127.0.0.1", "localhost", "::1") and not api_key:
        err.print(f"[yellow]warning:[/] listening on {host} without --api-key", highlight=False)
    err.print(f"serving {name} on http://{host}:{port} (pid {os.getpid()}); chat page at /, metrics at /metrics",
              highlight=False)
    run(lm, cfg, host, port, log_level)  # returns after a graceful shutdown (SIGINT, SIGTERM): status 0
    err.print("stopped", highlight=False)
