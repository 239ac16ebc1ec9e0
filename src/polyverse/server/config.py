"""The server's settings: one frozen dataclass, validated on construction."""

from __future__ import annotations

from dataclasses import dataclass

from ..errors import ConfigError


@dataclass(frozen=True)
class ServerConfig:
    """How the server runs.

    method: the decoding method of requests that name none; options: its options.
    max_concurrent: requests decoded at once (sharing each forward pass); max_queue: requests that
    may wait for a slot beyond those (one more is answered 429). prefill_chunk: prompt tokens fed
    per pass over all requests reading their prompts (0: whole prompts). max_body_bytes: larger bodies get
    413. api_key: when set, /v1/* and /metrics need ``Authorization: Bearer <api_key>``.
    default_max_tokens: completion length of requests that give no max_tokens (cut to the context).
    shutdown_grace: seconds in-flight requests get to finish on shutdown before they are cancelled.
    served_name: the model id of /v1/models and the ``model`` field requests must name.
    max_tokens_limit: the most completion tokens one request may ask for (a larger max_tokens is a 400).
    kv_budget: KV cache tokens (prompt plus max_tokens) of all requests holding a slot together; a
    request that does not fit waits in the queue (0: from the machine's memory, see ``server.memory``).
    header_timeout / body_timeout: seconds a client may take to send its request line and headers /
    its body (counted from its first byte / its headers); slower ones get 408 and are disconnected.
    max_connections: open connections at once; one more gets 503 and is closed.
    """

    served_name: str = "polyverse"
    method: str = "auto"
    options: tuple[tuple[str, object], ...] = ()
    max_concurrent: int = 16
    max_queue: int = 64
    prefill_chunk: int = 64
    max_body_bytes: int = 1 << 20
    api_key: str | None = None
    default_max_tokens: int = 256
    shutdown_grace: float = 10.0
    max_tokens_limit: int = 4096
    kv_budget: int = 0
    header_timeout: float = 10.0
    body_timeout: float = 30.0
    max_connections: int = 256

    def __post_init__(self) -> None:
        if self.max_concurrent < 1:
            raise ConfigError(f"--max-concurrent must be >= 1, got {self.max_concurrent}")
        if self.max_queue < 0:
            raise ConfigError(f"--max-queue must be >= 0, got {self.max_queue}")
        if self.prefill_chunk < 0:
            raise ConfigError(f"--prefill-chunk must be >= 0, got {self.prefill_chunk}")
        if self.max_body_bytes < 1024:
            raise ConfigError(f"--max-body-bytes must be >= 1024, got {self.max_body_bytes}")
        if self.default_max_tokens < 1:
            raise ConfigError(f"default max_tokens must be >= 1, got {self.default_max_tokens}")
        if self.api_key is not None and not self.api_key.strip():
            raise ConfigError("--api-key must not be empty")
        if self.shutdown_grace < 0:
            raise ConfigError(f"--shutdown-grace must be >= 0, got {self.shutdown_grace}")
        if self.max_tokens_limit < 1:
            raise ConfigError(f"--max-tokens-limit must be >= 1, got {self.max_tokens_limit}")
        if self.kv_budget < 0:
            raise ConfigError(f"--kv-budget must be >= 0 (0: from the machine's memory), got {self.kv_budget}")
        for name in ("header_timeout", "body_timeout"):
            if not getattr(self, name) > 0:
                raise ConfigError(f"--{name.replace('_', '-')} must be above 0 seconds, got {getattr(self, name)}")
        if self.max_connections < self.max_concurrent + self.max_queue:
            raise ConfigError(f"--max-connections ({self.max_connections}) must be at least --max-concurrent plus "
                              f"--max-queue ({self.max_concurrent + self.max_queue}): every queued request holds one")
        if not self.served_name:
            raise ConfigError("the served model name must not be empty")
