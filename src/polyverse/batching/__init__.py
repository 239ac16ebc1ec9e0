"""Many requests in one pass: the row budget (``budget``) and the engine that drives every running
request's decoding through shared passes (``engine``)."""

from .budget import Acceptance, allocate
from .engine import Batch, BatchConfig, PassStats

__all__ = ["Acceptance", "Batch", "BatchConfig", "PassStats", "allocate"]
