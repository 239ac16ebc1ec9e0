"""`polyverse bench passes`: what one forward pass costs as it feeds more tokens, per weight type and
engine, measured side by side in one run.

Parallel decoding pays where a pass of many tokens costs about what a pass of one does; this table
is that curve for every way polyverse can run the model on this CPU: the lean pass in fp32, bf16
and int8 (on each instruction set the CPU has), the transformers pass (fp32), and llama.cpp on GGUF
exports of the same weights (F16, Q8_0, Q4_1; cached like the bench's llama.cpp peer). Each cell
is the fastest of ``reps`` passes over ``context`` cached tokens (``costs.measure``: sizes
interleaved, the first round a warm-up).
"""

from __future__ import annotations

import os
import tempfile
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

SIZES = (1, 2, 4, 8, 12, 16, 24, 32)
LLAMA_TYPES = ("f16", "q8_0", "q4_1")


@dataclass(frozen=True)
class Engine:
    """One row: a name and how to build its backend (None when it cannot run here, with why)."""

    name: str
    build: Callable[[], object]


@contextmanager
def _isa(name: str | None) -> Iterator[None]:
    from ..backends.cpu.lean import ISA

    old = os.environ.get(ISA)
    if name:
        os.environ[ISA] = name
    try:
        yield
    finally:
        if old is None:
            os.environ.pop(ISA, None)
        else:
            os.environ[ISA] = old


def engines(model, llama: bool = True) -> list[Engine]:
    """The rows this machine can run for ``model`` (a polyverse Model with transformers weights)."""
    from ..backends.cpu import lean
    from ..backends.transformers import TransformersBackend

    hf = model.hf_model
    out = [Engine("transformers fp32", lambda: TransformersBackend(hf, lean=False))]
    isas = []
    try:
        best = lean.isa(env="")
    except ValueError:
        best = None
    if best == "avx512":
        isas = ["avx512", "avx2"]
    elif best == "avx2":
        isas = ["avx2"]
    if lean.unsupported(hf) is None and lean.extension() is not None:
        for isa in isas:
            for dtype in lean.DTYPES:
                if isa == "avx2" and dtype == "fp32":
                    continue  # fp32 is about the bytes streamed, the same on either build

                def build(dtype=dtype, isa=isa):
                    with _isa(isa):
                        return TransformersBackend(hf, dtype=dtype, lean=True)
                out.append(Engine(f"polyverse {dtype} ({isa})", build))
    if llama:
        from .llamacpp_peer import available

        if available():
            for qtype in LLAMA_TYPES:
                out.append(Engine(f"llama.cpp {qtype.upper()}", lambda q=qtype: _llama(model, q)))
    return out


def _llama(model, qtype: str):
    """A llama.cpp backend over the model's GGUF export of type ``qtype`` (cached on disk)."""
    from ..backends.llamacpp import LlamaCppBackend
    from ..export import export_gguf
    from ..models.load import cache_dir

    out = cache_dir() / "gguf" / f"{model.name.replace('/', '_')}-passes-{qtype}.gguf"
    if not out.is_file():
        out.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=".export-", suffix=".gguf", dir=out.parent)
        os.close(fd)
        try:
            from ..models.load import bundled_gguf

            export_gguf(model, Path(tmp), qtype, bundled_gguf())
            os.replace(tmp, out)
        finally:
            if os.path.exists(tmp):
                os.remove(tmp)
    return LlamaCppBackend(out)


def measure_all(model, context: int = 250, reps: int = 7, sizes=SIZES, llama: bool = True,
                tick: Callable[[str], None] | None = None) -> dict:
    """{"sizes": [...], "context": n, "rows": {name: [ms per size]}}; one engine at a time."""
    from ..costs import measure

    rows: dict[str, list[float]] = {}
    for engine in engines(model, llama):
        if tick:
            tick(engine.name)
        backend = engine.build()
        curve = measure(backend, context_len=context, reps=reps, sizes=sizes)
        rows[engine.name] = [round(s * 1e3, 2) for s in curve.seconds]
        del backend
    return {"sizes": list(sizes), "context": context, "reps": reps, "rows": rows}


def markdown(doc: dict, cpu: str) -> str:
    """The table: ms per pass for each size, and the 16-token pass against the 1-token one."""
    sizes = doc["sizes"]
    head = "| engine | " + " | ".join(str(s) for s in sizes) + " | 16 / 1 |"
    lines = [f"Pass costs on {cpu}: ms per pass by tokens fed, the fastest of {doc['reps']} passes over "
             f"{doc['context']} cached tokens.", "", head,
             "| --- | " + " | ".join("---:" for _ in sizes) + " | ---: |"]
    for name, ms in doc["rows"].items():
        ratio = f"{ms[sizes.index(16)] / ms[0]:.2f}x" if 16 in sizes else ""
        lines.append(f"| {name} | " + " | ".join(f"{v:.1f}" for v in ms) + f" | {ratio} |")
    return "\n".join(lines) + "\n"
