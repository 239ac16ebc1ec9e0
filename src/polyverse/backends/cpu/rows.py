"""A float32 product for few-row passes on AVX-512 CPUs, built once from ``rows.cpp``.

Every parallel method feeds a handful of tokens per pass, and on CPU such a pass is worth it only
if its products cost about what a 1-token pass costs: the weights are streamed from memory once
either way. torch's products (MKL, oneDNN) do not get there for 3 to 17 rows; this kernel does,
for the body's products and for the LM head (the figures are in BENCHMARKS.md and the git
history). It streams a weight packed in 32-column panels once for up to 12 rows (passes of more
than 16 rows, a prompt's prefill, keep torch's product), and every row sums in the same order
whatever the number of rows: a row's result does not depend on the others, so a Jacobi pass
verifies against exactly what plain decoding computes.

It is compiled with torch's own extension builder (``torch.utils.cpp_extension``, ninja and the
system C++ compiler) the first time a large float32 model runs on an AVX-512 CPU, about 30 s, and
loaded from torch's extension cache afterwards. Where it cannot be built the decode model keeps the
products it chose before (``packed``, ``few_rows`` or stock). The packed copies live in a
``RowWeights`` store (a ``store.Store``, like ``packed.PackedWeights``) that the prepared decode
model's linear layers and its LM head (``head.Projection``) run through.
"""

from __future__ import annotations

import os
import sys
import time
import weakref
from functools import lru_cache
from pathlib import Path

import torch

from . import features

PANEL = 32  # output columns per packed panel (rows.cpp)
MAX_ROWS = 16  # passes of more rows (a prompt's prefill) take torch's product: it is built for them
MIN_PARAMS = 10_000_000  # as ``packed``: below this a store call's own cost outweighs the gain
SOURCE = Path(__file__).with_name("rows.cpp")
NAME = "polyverse_cpu_rows"  # the extension's name in torch's cache
DISABLE = "POLYVERSE_NO_ROW_KERNEL"  # set to 1 to keep torch's products
STALE_LOCK_SECONDS = 600  # a build takes about 30 s; a lock this old was left by a killed one


def supported(flags: frozenset[str]) -> bool:
    """Whether a CPU with these /proc/cpuinfo flags runs the kernel (AVX-512F and FMA)."""
    return "avx512f" in flags and "fma" in flags


@lru_cache(maxsize=1)
def extension():
    """The compiled kernel module, or None where this machine cannot build or run it."""
    if os.environ.get(DISABLE, "") not in ("", "0") or not supported(features.cpuinfo()[1]):
        return None
    try:
        from torch.utils import cpp_extension

        clear_stale_lock(NAME)
        if not built(NAME):
            print("polyverse: building the CPU row kernel (once per machine, about 30 s)", file=sys.stderr, flush=True)
        return cpp_extension.load(
            name=NAME, sources=[str(SOURCE)], verbose=False,
            extra_cflags=["-O3", "-mavx512f", "-mfma", "-fopenmp"], extra_ldflags=["-fopenmp"])
    except Exception as exc:  # no compiler, no ninja, an old toolchain: torch's products stay
        print(f"polyverse: CPU row kernel unavailable ({type(exc).__name__}: {str(exc)[:200]}); "
              "using torch's products", file=sys.stderr, flush=True)
        return None


def _build_dir(name: str) -> Path | None:
    """The folder of torch's extension cache an extension is built in (None where torch does not say:
    the helper is private, used only for the message and the lock below)."""
    try:
        from torch.utils.cpp_extension import _get_build_directory

        return Path(_get_build_directory(name, False))
    except Exception:
        return None


def clear_stale_lock(name: str, older_than: float = STALE_LOCK_SECONDS) -> None:
    """Remove a build lock of extension ``name`` left by a build that was killed: torch's builder
    would wait on it forever."""
    folder = _build_dir(name)
    lock = folder / "lock" if folder is not None else None
    try:
        if lock is not None and lock.exists() and time.time() - lock.stat().st_mtime > older_than:
            lock.unlink(missing_ok=True)
    except OSError:
        pass


def built(name: str) -> bool:
    """Whether torch's extension cache already holds a build of extension ``name`` (a changed
    source is built again all the same)."""
    folder = _build_dir(name)
    return folder is not None and any(folder.glob(f"{name}*.so"))


def available(device: torch.device, dtype: torch.dtype) -> bool:
    """Whether the kernel can run float32 products on ``device`` here (building it if need be)."""
    return device.type == "cpu" and dtype == torch.float32 and extension() is not None


def worth_it(model: torch.nn.Module) -> bool:
    """Whether a model's passes should run on the kernel: float32 on an AVX-512 CPU, 10M parameters
    or more, and the kernel builds."""
    first = next(model.parameters())  # counted first: a toy model never builds the kernel
    return sum(p.numel() for p in model.parameters()) >= MIN_PARAMS and available(first.device, first.dtype)


class RowWeights:
    """Panel-packed copies of 2D float32 CPU weights, made on first use and kept while the weight
    lives; a weight changed in place (its version counter moves) is packed again."""

    def __init__(self) -> None:
        self._ext = extension()
        if self._ext is None:
            raise RuntimeError("the CPU row kernel is not available on this machine")
        self._packed: dict[int, tuple[weakref.ref, int, torch.Tensor]] = {}

    def __len__(self) -> int:
        """How many weights are packed."""
        return sum(entry[2] is not None for entry in self._packed.values())

    def get(self, weight: torch.Tensor) -> torch.Tensor | None:
        """The panels of ``weight`` (packed on first use), or None for a weight the kernel does not
        take (not 2D float32 on CPU, or not whole panels of 32 output columns)."""
        key = id(weight)
        version = 0 if weight.is_inference() else weight._version  # inference tensors keep no counter
        hit = self._packed.get(key)
        if hit is not None and hit[0]() is weight and hit[1] == version:
            return hit[2]
        panels = None
        if (weight.dim() == 2 and weight.shape[0] % PANEL == 0 and weight.dtype == torch.float32
                and weight.device.type == "cpu"):
            with torch.inference_mode():
                panels = self._ext.pack(weight.detach())  # [out / 32, in, 32]
        self._packed[key] = (weakref.ref(weight, lambda _, k=key: self._packed.pop(k, None)), version, panels)
        return panels

    def run(self, module: torch.nn.Linear, x: torch.Tensor) -> torch.Tensor | None:
        """``module(x)`` through the panels, or None where the kernel does not take it: autograd on
        (training), not float32 on CPU, more than ``MAX_ROWS`` rows, or a weight ``get`` refuses.

        Example: x [1, 9, 576], module 576 -> 1536 -> [1, 9, 1536], equal to ``module(x)`` up to
        float rounding (about 2e-6 here), and row i the same bits as x[:, i:i+1] alone gives.
        """
        if (x.dtype is not torch.float32 or not x.is_cpu or torch.is_grad_enabled()
                or x.numel() > MAX_ROWS * x.shape[-1]):
            return None
        panels = self.get(module.weight)
        bias = module.bias
        if panels is None or (bias is not None and bias.dtype is not torch.float32):
            return None
        return self._ext.linear(x, panels, bias)  # [..., out]
