"""Methods register by name: a config class, a factory, a summary, and what the factory builds.

A method's factory builds either a Proposer (most methods: the one decode loop drives it) or a
Runner (an engine-style method such as Multiverse that schedules its own passes); either way the
API receives the same ``Step``s. A user plugs in their own method without touching the loop::

    @method_options("echo")
    class EchoConfig:
        k: int = option(2, "copies of the last token per pass", lo=1, hi=8)

    registry.register("echo", EchoConfig, lambda cfg, ctx: EchoProposer(cfg.k), "repeat the last token")
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, Iterator, Sequence

import torch

from .config import GenerationConfig, SamplingConfig
from .errors import ConfigError, PolyverseError
from .loop import Proposer, Runner, Step, decode
from .options import OptionSpec, specs

if TYPE_CHECKING:
    from .api import Model
    from .backends.base import Backend


@dataclass(frozen=True)
class MethodContext:
    """What a method factory may use.

    backend: the target backend the method runs against; sampling: how the target distribution
    is formed; generator: the request's random stream (the one verification draws from); model:
    the polyverse Model being served (tokenizer, adapter, per-model resources), or None for a bare
    backend; generation: the whole request config (runners need its budget, stop ids and seed);
    on_update: runners call it as ``on_update(engine, update)`` after every pass (a live view).
    """

    backend: "Backend"
    sampling: SamplingConfig
    generator: torch.Generator | None = None
    model: "Model | None" = None
    generation: GenerationConfig | None = None
    on_update: Callable[[Any, Any], None] | None = None


class ProposerRunner:
    """A Proposer driven by the one decode loop: the Runner of every draft method."""

    def __init__(self, proposer: Proposer, ctx: MethodContext) -> None:
        self.proposer = proposer
        self.ctx = ctx

    def run(self, prompt: Sequence[int]) -> Iterator[Step]:
        gen = self.ctx.generation if self.ctx.generation is not None else GenerationConfig(sampling=self.ctx.sampling)
        return decode(self.ctx.backend, self.proposer, prompt, gen, self.ctx.generator)


@dataclass(frozen=True)
class Method:
    """A registered method. ``factory(config, ctx)`` builds a Proposer, or a Runner when ``runner``.
    ``rewrite(config, text)``, where given, rewrites a text prompt before the chat template is
    applied (Multiverse's guided mode asks for a plan)."""

    name: str
    config_cls: type
    factory: Callable[[Any, MethodContext], Proposer | Runner]
    summary: str
    runner: bool = False
    rewrite: Callable[[Any, str], str] | None = None

    def specs(self) -> tuple[OptionSpec, ...]:
        """The options of this method's config: type, default, range, help and CLI flag."""
        return specs(self.config_cls)

    def options(self) -> dict[str, Any]:
        """Option names and defaults of this method's config."""
        return {f.name: f.default for f in dataclasses.fields(self.config_cls)}

    def make_config(self, options: dict[str, Any] | None = None) -> Any:
        options = dict(options or {})
        unknown = sorted(set(options) - set(self.options()))
        if unknown:
            known = ", ".join(self.options()) or "none"
            raise ConfigError(f"method '{self.name}' has no option {', '.join(unknown)} (options: {known})")
        try:
            return self.config_cls(**options)
        except TypeError as exc:
            raise ConfigError(f"bad options for method '{self.name}': {exc}") from None

    def build(self, config: Any, ctx: MethodContext) -> Runner:
        """What generates for one request: the factory's runner, or its proposer under the loop."""
        made = self.factory(config, ctx)
        return made if self.runner else ProposerRunner(made, ctx)


class Registry:
    def __init__(self) -> None:
        self._methods: dict[str, Method] = {}

    def register(self, name: str, config_cls: type, factory: Callable, summary: str = "", *,
                 runner: bool = False, rewrite: Callable[[Any, str], str] | None = None) -> Method:
        if not dataclasses.is_dataclass(config_cls):
            raise TypeError(f"config of method '{name}' must be a dataclass")
        method = Method(name, config_cls, factory, summary, runner, rewrite)
        self._methods[name] = method
        return method

    def get(self, name: str) -> Method:
        try:
            return self._methods[name]
        except KeyError:
            known = ", ".join(sorted(self._methods))
            raise PolyverseError(f"unknown method '{name}' (known: {known})") from None

    def names(self) -> list[str]:
        return sorted(self._methods)

    def __iter__(self):
        return iter(sorted(self._methods.values(), key=lambda m: m.name))

    def __contains__(self, name: str) -> bool:
        return name in self._methods


registry = Registry()
