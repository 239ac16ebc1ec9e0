"""Grouped-query attention on the cache as it is, for the backend's multi-token passes on CPU.

SmolLM2 has 9 query heads over 3 key/value heads. Given a mask and more than one query row,
transformers' sdpa attention first repeats the key/value heads to the query heads, which copies
every layer's whole cache on every pass, then calls torch's sdpa. torch's sdpa can read the
grouped heads itself (``enable_gqa``), and transformers takes that path when the environment
variable below is "1". Measured here on a quiet machine (2 threads, 16 query rows): 0.125 vs
0.170 ms per layer over 300 cached tokens, 0.23 vs 0.31 ms over 600, bit-identical results; for
SmolLM2's 30 layers 1.4 to 2.4 ms of a ~65 ms 16-token pass, a few percent.

The variable is set only around the backend's own passes on CPU (GPU kernels would fall back to
the math path with a mask) and restored when the last pass in flight ends, so `generate` peers and
training run unchanged (the server decodes on one worker thread; a plain transformers call made in
another thread during a pass would take the same path, with the same numbers). One-row passes
already skip the copy in transformers.
"""

from __future__ import annotations

import os
import threading
from contextlib import contextmanager

import torch

ENV = "TRANSFORMERS_SDPA_FORCE_GQA"
_lock = threading.Lock()
_inside = 0  # passes in flight under the variable (threads may overlap)
_saved: str | None = None  # its value before the first of them


@contextmanager
def direct(device: torch.device, rows: int):
    """Within this context, transformers' sdpa attention reads grouped key/value heads directly
    (CPU passes of more than one row; elsewhere a no-op)."""
    if device.type != "cpu" or rows <= 1:
        yield
        return
    global _inside, _saved
    with _lock:
        if _inside == 0:
            _saved = os.environ.get(ENV)
            os.environ[ENV] = "1"
        _inside += 1
    try:
        yield
    finally:
        with _lock:
            _inside -= 1
            if _inside == 0:
                if _saved is None:
                    os.environ.pop(ENV, None)
                else:
                    os.environ[ENV] = _saved
