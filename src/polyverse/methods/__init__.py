"""Built-in methods, registered by name in ``polyverse.registry``."""

from ..registry import registry
from . import ar, jacobi

registry.register("ar", ar.ARConfig, ar.make, "plain autoregressive decoding: one token per pass (the reference)")
registry.register("jacobi", jacobi.JacobiConfig, jacobi.make, "Jacobi / CLLM decoding: refine a block of guesses in parallel")
