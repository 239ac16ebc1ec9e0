"""The llama.cpp peer of `polyverse bench`: plain llama.cpp greedy decoding of the same model.

A CPU user's alternative to polyverse is llama.cpp itself, so the bench can time it side by side
with the other rows: the model (adapter merged) exported once as an F16 GGUF and cached, run
through llama-cpp-python one token per pass, with nothing of polyverse's loop in between.

The engine opens the file with the llama.cpp backend's own context settings (cache size, batch,
threads, sequences), so its arithmetic is the backend's: its tokens equal `ar` on
``--backend llamacpp`` over the same file. Like the polyverse loop it feeds the prompt but its
last token in one batch, then one token per pass (llama.cpp's batched products may sum in another
order than its one-row path, so feeding the whole prompt at once could flip a near-tie on the first
token; `polyverse bench llamacpp-batch` measures how often that happens).
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from ..errors import ConfigError
from .contenders import Contender, Run

PEER = "llamacpp"  # the name --peers and --baseline know it by
F16_ROW = "llama.cpp greedy (F16)"  # the row of the model's own F16 export
EXPORT_VERSION = 1  # bumped when the export changes, so cached files are written again


def available() -> bool:
    """Whether llama-cpp-python is installed (found without importing it)."""
    return importlib.util.find_spec("llama_cpp") is not None


def source_gguf(model: str) -> Path | None:
    """The GGUF a `--model` value comes from (the bundled file, or the .gguf given), else None."""
    from ..models.load import BUNDLED_ALIASES, BUNDLED_NAME, bundled_gguf

    if model == BUNDLED_NAME or model.lower() in BUNDLED_ALIASES:
        return bundled_gguf()
    path = Path(model).expanduser()
    return path if path.is_file() and path.suffix.lower() == ".gguf" else None


def weight_type(path: Path) -> str:
    """The weight type a GGUF declares (general.file_type), e.g. "F16" or "Q4_1"; "GGUF" if none.

    Example: a file written by `polyverse export gguf --type f16` -> "F16".
    """
    import gguf

    field_ = gguf.GGUFReader(str(path)).fields.get("general.file_type")
    if field_ is None:
        return "GGUF"
    try:
        return gguf.LlamaFileType(int(field_.contents())).name.removeprefix("MOSTLY_")
    except ValueError:
        return "GGUF"


def row_name(path: Path) -> str:
    """The table row of the peer on ``path``: "llama.cpp greedy (F16)"."""
    return f"llama.cpp greedy ({weight_type(path)})"


def _stamp(path: Path) -> str:
    st = path.stat()
    return f"{path.resolve()}|{st.st_size}|{st.st_mtime_ns}"


def cached_path(source: Path, adapter: str | None) -> Path:
    """Where the F16 export of ``source`` (with ``adapter`` merged) is cached: the key changes when
    the source file, the adapter's files or the export change."""
    from ..models.load import cache_dir

    parts = [_stamp(source), f"export {EXPORT_VERSION}"]
    label = source.stem
    if adapter:
        from ..adapters import resolve

        folder = resolve(adapter)
        parts += [_stamp(f) for f in sorted(folder.rglob("*")) if f.is_file()]
        label += f"+{folder.name}"
    digest = hashlib.sha256("\n".join(parts).encode()).hexdigest()[:16]
    return cache_dir() / "gguf" / f"{label}-{digest}-f16.gguf"


def f16_gguf(model, source: Path, adapter: str | None = None,
             start: Callable[[int], Callable[[str], None]] | None = None) -> Path:
    """The F16 GGUF of ``model`` (a polyverse Model with transformers weights, adapter merged):
    ``source`` itself when it already is F16 and no adapter changes it, else the cached export,
    written once (``start(n)`` is called before an export of n tensors and returns a tick).
    """
    from ..export import export_gguf

    if not adapter and weight_type(source) == "F16":
        return source
    out = cached_path(source, adapter)
    if out.is_file():
        return out
    out.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".export-", suffix=".gguf", dir=out.parent)
    os.close(fd)
    try:
        tick = start(len(model.hf_model.state_dict())) if start else None
        export_gguf(model, Path(tmp), "f16", source, tick=tick)
        os.chmod(tmp, 0o644)  # mkstemp's file is private; the cache holds ordinary files
        os.replace(tmp, out)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    return out


class GreedyEngine:
    """llama.cpp greedy decoding of one GGUF: a context of its own, one token per pass."""

    def __init__(self, gguf: str | os.PathLike, threads: int | None = None, n_batch: int = 512) -> None:
        from ..backends.llamacpp import LlamaCppBackend

        # the backend's context settings, so that the arithmetic is the backend's
        self.backend = LlamaCppBackend(gguf, n_batch=n_batch, threads=threads)
        self.n_batch = n_batch
        self.path = Path(gguf)

    def run(self, ids: Sequence[int], max_new_tokens: int, eos: Sequence[int]) -> tuple[list[int], int]:
        """(new tokens, stopping after the first EOS; passes), greedy after the prompt ``ids``."""
        be = self.backend
        ll, ctx = be.ll, be.ctx
        if not ids:
            raise ConfigError("the prompt is empty")
        if len(ids) >= be.max_length:
            raise ConfigError(f"the prompt is {len(ids)} tokens long; the llama.cpp context holds {be.max_length}")
        be.reset()  # an empty cache
        stops = set(int(t) for t in eos)
        step = self.n_batch
        head = [int(t) for t in ids[:-1]]
        for i in range(0, len(head), step):  # the prompt but its last token, batch by batch
            chunk = head[i:i + step]
            self._decode(chunk)
        token, pos, out, passes = int(ids[-1]), len(ids) - 1, [], 0
        room = min(max_new_tokens, be.max_length - 1 - pos)
        while len(out) < room:
            self._decode([token])
            passes += 1
            logits = np.ctypeslib.as_array(ll.llama_get_logits_ith(ctx, -1), shape=(be.vocab_size,))  # [V]
            token = int(logits.argmax())
            out.append(token)
            if token in stops:
                break
        return out, passes

    def _decode(self, tokens: list[int]) -> None:
        ll = self.backend.ll
        arr = (ll.llama_token * len(tokens))(*tokens)
        rc = ll.llama_decode(self.backend.ctx, ll.llama_batch_get_one(arr, len(tokens)))
        if rc != 0:
            raise RuntimeError(f"llama_decode failed ({rc})")


@dataclass(frozen=True)
class LlamaCppPeer(Contender):
    """The llama.cpp greedy row: a peer (no polyverse method), timed like the others."""

    engine: GreedyEngine | None = field(default=None, compare=False, repr=False)

    def run(self, model, ids: list[int], max_new_tokens: int, temperature: float = 0.0, seed: int = 0) -> Run:
        if temperature != 0:
            raise ConfigError("the llama.cpp peer decodes greedily: run the bench with --temperature 0")
        t0 = time.perf_counter()
        tokens, passes = self.engine.run(ids, max_new_tokens, model.eos_token_ids)
        return Run(tokens, time.perf_counter() - t0, passes)


def peer(gguf: Path, threads: int | None = None) -> LlamaCppPeer:
    """The llama.cpp greedy contender on ``gguf`` (the file is recorded as its option)."""
    return LlamaCppPeer(row_name(gguf), None, {"gguf": str(gguf)}, GreedyEngine(gguf, threads))
