"""Method options declared once, as data: type, default, range, help and CLI flag of each field.

A method's config is a frozen dataclass whose fields are made with ``option(...)``; the
``method_options(name)`` decorator makes the class and checks every value against its declared
range on construction. Validation, `polyverse generate` flags, ``-o KEY=VALUE`` parsing and
`polyverse methods` are all generated from these specs, so adding an option touches one file::

    @method_options("echo")
    class EchoConfig:
        k: int = option(2, "copies of the last token per pass", lo=1, hi=8, flag="--k")

    EchoConfig(k=9)  # ConfigError: echo k must be an integer in [1, 8], got 9
"""

from __future__ import annotations

import dataclasses
import json
import types
import typing
from dataclasses import dataclass
from typing import Any, Callable

from .errors import ConfigError

_META = "polyverse"  # key of an option's OptionSpec in its dataclass field's metadata


@dataclass(frozen=True)
class OptionSpec:
    """What one method option is: its field name, value type, default, one-line help, inclusive
    bounds (None = open; ``above``: an exclusive lower bound for floats), the `polyverse generate`
    flag that sets it (None = only through ``-o``), and the name error messages use."""

    name: str
    kind: type  # int, float, bool or str
    default: Any
    help: str
    lo: float | None = None
    hi: float | None = None
    flag: str | None = None
    label: str = ""  # name in error messages, e.g. "window W"; "" = the field name
    above: float | None = None  # floats: values must be > above
    nullable: bool = False  # None is allowed (the method then chooses, e.g. from its adapter)

    def check(self, method: str, value: Any) -> None:
        """Raise ConfigError unless ``value`` is of this option's type and within its range.

        Example: OptionSpec("k", int, 4, "", lo=1, hi=64).check("draft", 0)
        -> ConfigError("draft k must be an integer in [1, 64], got 0").
        """
        if value is None and self.nullable:
            return
        what = f"{method} {self.label or self.name}"
        if self.kind is bool:
            if not isinstance(value, bool):
                raise ConfigError(f"{what} must be true or false, got {value!r}")
        elif self.kind is int:
            ok = isinstance(value, int) and not isinstance(value, bool)
            if not ok or (self.lo is not None and value < self.lo) or (self.hi is not None and value > self.hi):
                raise ConfigError(f"{what} must be {_int_range(self.lo, self.hi)}, got {value!r}")
        elif self.kind is float:
            ok = isinstance(value, (int, float)) and not isinstance(value, bool)
            low_ok = ok and (self.above is None or value > self.above) and (self.lo is None or value >= self.lo)
            if not low_ok or (self.hi is not None and value > self.hi):
                raise ConfigError(f"{what} must be in {_float_range(self.lo, self.above, self.hi)}, got {value!r}")
        elif not isinstance(value, self.kind):
            raise ConfigError(f"{what} must be a {self.kind.__name__}, got {value!r}")

    def describe(self) -> str:
        """The help line with its range, e.g. "tokens drafted per pass (1-64)"."""
        if self.kind is int and (self.lo is not None or self.hi is not None):
            return f"{self.help} ({_int_range(self.lo, self.hi).removeprefix('an integer ')})"
        return self.help


def _int_range(lo: float | None, hi: float | None) -> str:
    if lo is not None and hi is not None:
        return f"an integer in [{lo}, {hi}]"
    if lo == 1:
        return "a positive integer"
    if lo is not None:
        return f"an integer >= {lo}"
    return f"an integer <= {hi}" if hi is not None else "an integer"


def _float_range(lo: float | None, above: float | None, hi: float | None) -> str:
    left = f"({above}" if above is not None else (f"[{lo}" if lo is not None else "(-inf")
    right = f"{hi}]" if hi is not None else "inf)"
    return f"{left}, {right}"


def option(default: Any, help: str, *, lo: float | None = None, hi: float | None = None, flag: str | None = None,
           label: str = "", above: float | None = None) -> Any:
    """A dataclass field carrying its option spec (the type is read from the annotation)."""
    meta = {_META: dict(help=help, lo=lo, hi=hi, flag=flag, label=label, above=above)}
    return dataclasses.field(default=default, metadata=meta)


def _kind(annotation: Any) -> tuple[type, bool]:
    """(value type, whether None is allowed) of a field annotation such as ``int | None``."""
    args = typing.get_args(annotation)
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        kinds = [a for a in args if a is not type(None)]
        return kinds[0], type(None) in args
    return annotation, False


def specs(config_cls: type) -> tuple[OptionSpec, ...]:
    """The option specs of a config dataclass, in field order (plain fields get a bare spec)."""
    hints = typing.get_type_hints(config_cls)
    out = []
    for f in dataclasses.fields(config_cls):
        kind, nullable = _kind(hints[f.name])
        meta = dict(f.metadata.get(_META, {}))
        out.append(OptionSpec(f.name, kind, f.default, meta.pop("help", ""), nullable=nullable, **meta))
    return tuple(out)


def method_options(method: str) -> Callable[[type], type]:
    """Make ``cls`` a frozen dataclass whose construction checks every option against its spec,
    then runs the class's own ``__post_init__`` (cross-field checks)."""

    def wrap(cls: type) -> type:
        own = cls.__dict__.get("__post_init__")

        def __post_init__(self) -> None:
            for spec in specs(type(self)):
                spec.check(method, getattr(self, spec.name))
            if own is not None:
                own(self)

        cls.__post_init__ = __post_init__  # before dataclass(): its __init__ calls it only if present then
        return dataclass(frozen=True)(cls)

    return wrap


def parse_value(spec: OptionSpec | None, raw: str) -> Any:
    """A ``-o KEY=VALUE`` value as the option's type: JSON where it parses, else the raw text
    (a string option keeps the text as written, so a path like ``1e3`` stays a string).

    Example: parse_value(spec of an int, "4") -> 4; parse_value(None, "true") -> True.
    """
    if spec is not None and spec.kind is str:
        return raw
    try:
        return json.loads(raw)
    except json.JSONDecodeError:
        return raw
