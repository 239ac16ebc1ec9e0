"""The server's KV budget: how many cache tokens the requests holding a slot may use together.

A request's KV cache grows with its context up to ``prompt + max_tokens`` tokens (a backend that
allocates its whole context window per session, llama.cpp, always costs ``max_length``). The
scheduler admits a request to a slot only while the sum over the slot holders stays within the
budget, so the caches of the requests decoding at once are bounded by construction, whatever the
clients send. The default budget comes from the memory the machine has free when the server starts.
"""

from __future__ import annotations

from ..errors import ConfigError

SHARE = 0.5  # of the memory available at start-up, what the KV caches of all requests may take
GROWTH = 2  # a cache doubles its capacity when it runs out: a request may hold up to twice its tokens


def kv_bytes_per_token(model) -> int:
    """Bytes one cached token takes over all layers (keys and values) on ``model``'s backend."""
    cfg = model.hf_model.config
    layers = int(cfg.num_hidden_layers)
    heads = int(getattr(cfg, "num_key_value_heads", None) or cfg.num_attention_heads)
    dim = int(getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads)
    return 2 * layers * heads * dim * _itemsize(model.backend)


def _itemsize(backend) -> int:
    lean = getattr(backend, "lean", None)
    if lean is not None:
        from ..backends.cpu.lean import KV_DTYPES

        return KV_DTYPES[lean.dtype].itemsize
    dtype = getattr(backend, "dtype", None)
    return getattr(dtype, "itemsize", 2)  # llama.cpp: an F16 cache


def available_bytes() -> int | None:
    """MemAvailable of /proc/meminfo (None where there is none)."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


def whole_context(model) -> bool:
    """Whether every session of the backend holds its whole context window (llama.cpp's)."""
    return bool(getattr(model.backend, "whole_context", False))


def request_tokens(model, prompt_tokens: int, max_tokens: int) -> int:
    """The KV tokens a request may come to hold.

    >>> class M: max_length = 100; backend = None
    >>> request_tokens(M(), 30, 20), request_tokens(M(), 90, 20)
    (50, 100)
    """
    if whole_context(model):
        return model.max_length
    return min(prompt_tokens + max_tokens, model.max_length)


def default_budget(model, max_concurrent: int, free: int | None = None) -> int:
    """KV tokens for the requests holding a slot: ``SHARE`` of the free memory over what a token may
    take (``GROWTH`` included), at least one whole context, at most every slot a whole context."""
    most = max_concurrent * model.max_length
    free = available_bytes() if free is None else free
    if free is None:
        return most
    fits = int(free * SHARE) // (kv_bytes_per_token(model) * GROWTH)
    return max(model.max_length, min(most, fits))


def budget(model, max_concurrent: int, asked: int) -> int:
    """The budget the server runs with: ``asked`` (0: ``default_budget``), checked against the model."""
    if asked == 0:
        return default_budget(model, max_concurrent)
    if asked < 2:
        raise ConfigError(f"--kv-budget must be at least 2 tokens, got {asked}")
    return asked


def describe(model, tokens: int) -> str:
    """One line for the start-up log, e.g. "KV budget 131072 tokens (2.9 GiB at most)"."""
    gib = tokens * kv_bytes_per_token(model) * GROWTH / 2**30
    return f"KV budget {tokens} tokens ({gib:.1f} GiB at most)"
