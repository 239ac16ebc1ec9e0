"""polyverse: make a language model write many tokens per forward pass without changing what it says."""

from . import methods as _builtin_methods  # noqa: F401  (registers the built-in methods)
from .api import Chunk, Generation, Model, load
from .backends.base import Backend
from .backends.transformers import TransformersBackend
from .config import GenerationConfig, SamplingConfig
from .draft import Draft
from .errors import ConfigError, ModelNotFound, PolyverseError
from .grammar import GrammarSpec
from .layout import Feed
from .loop import Observation, Proposer, Runner, Step, StepStats, decode
from .registry import MethodContext, registry
from .shaping import Penalties
from .verify import Verdict, verify

__all__ = [
    "Backend", "Chunk", "ConfigError", "Draft", "Feed", "Generation", "GenerationConfig", "GrammarSpec", "Model",
    "ModelNotFound", "MethodContext", "Observation", "Penalties", "PolyverseError", "Proposer", "Runner", "SamplingConfig",
    "Step", "StepStats", "TransformersBackend", "Verdict", "decode", "load", "registry", "verify",
]
__version__ = "0.1.0"
