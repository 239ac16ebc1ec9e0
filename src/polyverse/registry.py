"""Methods register by name: a frozen config class and a factory that builds a Proposer.

A user plugs in their own method without touching the loop::

    @dataclass(frozen=True)
    class EchoConfig:
        k: int = 2

    registry.register("echo", EchoConfig, lambda cfg, ctx: EchoProposer(cfg.k), "repeat the last token")
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Callable

from .errors import ConfigError, PolyverseError
from .loop import Proposer


@dataclass(frozen=True)
class MethodContext:
    """What a proposer factory may use.

    backend: the target backend the proposer will run against; sampling: the SamplingConfig;
    generator: the request's random stream (the same one verification draws from);
    model: the polyverse Model being served (tokenizer, weights, per-model resources), or None.
    """

    backend: Any
    sampling: Any
    generator: Any = None
    model: Any = None


@dataclass(frozen=True)
class Method:
    name: str
    config_cls: type
    factory: Callable[[Any, MethodContext], Proposer]
    summary: str

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


class Registry:
    def __init__(self) -> None:
        self._methods: dict[str, Method] = {}

    def register(self, name: str, config_cls: type, factory: Callable, summary: str = "") -> Method:
        if not dataclasses.is_dataclass(config_cls):
            raise TypeError(f"config of method '{name}' must be a dataclass")
        method = Method(name, config_cls, factory, summary)
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
