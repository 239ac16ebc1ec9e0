"""What the CPU is (vendor, feature flags), read once from /proc/cpuinfo, and what it implies for
the choice of CPU products.

The two replacements for torch's float32 ``linear`` that do not need a compiler (``packed``:
oneDNN-packed weights; ``few_rows``: W @ x.T for passes of 2 to 4 tokens) were chosen on an AMD
EPYC, where torch's MKL takes generic kernels. On an Intel CPU MKL runs kernels made for it, and
there the stock ``linear`` beats both, for the body's products and for whole decodes (figures in
BENCHMARKS.md and the git history).

On CPUs with AVX-512 the row kernel (``rows``) comes before both: it takes passes of up to 16
tokens; longer ones (a prompt's prefill) run torch's products, this rule choosing the LM head's.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

import torch


SYSTEM = "/proc/cpuinfo"


def parse(text: str) -> tuple[str, frozenset[str]]:
    """(vendor id, feature flags) of the first processor listed in /proc/cpuinfo-style text.

    Example: "vendor_id : GenuineIntel" and "flags : fpu avx512f" lines -> ("GenuineIntel",
    {"fpu", "avx512f"}); text without them -> ("", empty).
    """
    vendor, flags = "", frozenset()
    for line in text.splitlines():
        key, _, value = line.partition(":")
        key = key.strip()
        if key == "vendor_id" and not vendor:
            vendor = value.strip()
        elif key == "flags" and not flags:
            flags = frozenset(value.split())
        if vendor and flags:
            break
    return vendor, flags


@lru_cache(maxsize=1)
def _system() -> tuple[str, frozenset[str]]:
    return _read(SYSTEM)


def _read(path: str) -> tuple[str, frozenset[str]]:
    try:
        return parse(Path(path).read_text())
    except OSError:
        return "", frozenset()


def cpuinfo(path: str = SYSTEM) -> tuple[str, frozenset[str]]:
    """(vendor id, feature flags) of this machine's CPU (read once), or of the file ``path``;
    ("", empty) where unreadable."""
    return _system() if path == SYSTEM else _read(path)


def mkl_tuned(path: str = SYSTEM) -> bool:
    """Whether torch's CPU products run on MKL kernels made for this CPU (an Intel one): then the
    stock ``linear`` is the fastest product and the backend's replacements stay off. This machine's
    answer is computed once (it is asked on every pass of 2 to 4 tokens)."""
    return _system_mkl_tuned() if path == SYSTEM else _mkl_tuned(cpuinfo(path)[0])


def _mkl_tuned(vendor: str) -> bool:
    return vendor == "GenuineIntel" and torch.backends.mkl.is_available()


@lru_cache(maxsize=1)
def _system_mkl_tuned() -> bool:
    return _mkl_tuned(_system()[0])
