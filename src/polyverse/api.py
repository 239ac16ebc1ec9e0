"""The Python API: ``polyverse.load(...)`` returns a Model that generates with any method.

    >>> import polyverse
    >>> m = polyverse.load()                       # the bundled SmolLM2-135M-Instruct
    >>> g = m.generate("Name three colours.", method="jacobi", options={"block": 16})
    >>> g.text, g.stats.mean_accepted
"""

from __future__ import annotations

import copy
import time
from dataclasses import dataclass
from typing import Any, Iterator, Sequence

from .backends.transformers import TransformersBackend
from .config import GenerationConfig, SamplingConfig
from .errors import ConfigError
from .loop import StepStats, decode
from .registry import MethodContext, registry
from .sampling import make_generator
from .stats import Stats
from .text import TextStream


@dataclass(frozen=True)
class Chunk:
    text: str  # text newly safe to show
    tokens: tuple[int, ...]  # tokens accepted in this step
    step: StepStats
    finish_reason: str | None = None


@dataclass(frozen=True)
class Generation:
    text: str
    token_ids: tuple[int, ...]
    finish_reason: str  # "eos" | "length" | "stop"
    method: str
    stats: Stats

    def to_dict(self) -> dict:
        return {
            "text": self.text,
            "token_ids": list(self.token_ids),
            "finish_reason": self.finish_reason,
            "method": self.method,
            "stats": self.stats.to_dict(),
        }


class Stream:
    """Iterate for chunks; ``result()`` afterwards gives the whole Generation."""

    def __init__(self, chunks: Iterator[Chunk], holder: dict) -> None:
        self._chunks = chunks
        self._holder = holder

    def __iter__(self) -> Iterator[Chunk]:
        return self._chunks

    def result(self) -> Generation:
        for _ in self._chunks:
            pass
        return self._holder["generation"]


def parse_device(device: "str | torch.device") -> "torch.device":
    """A torch device, or a clear error for a name torch does not know or CUDA where there is none."""
    import torch

    try:
        where = torch.device(device)
    except RuntimeError:
        raise ConfigError(f"not a device name: {device!r}") from None
    if where.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"{device}: no CUDA device here")
    return where


class Model:
    def __init__(self, hf_model, tokenizer, name: str, backend=None) -> None:
        self.hf_model = hf_model  # the transformers model (tokenizer side, peers; not decoded when backend is llama.cpp)
        self.tokenizer = tokenizer
        self.name = name
        self.backend = backend if backend is not None else TransformersBackend(hf_model)
        self.backend_name = "llamacpp" if backend is not None else "transformers"
        self.resources: dict[str, Any] = {}  # per-model caches of methods (draft models, cost curves)

    def session(self) -> "Model":
        """This model with a backend (KV cache) of its own over the same weights, tokenizer and
        resources: one per request when several decode at once (the server)."""
        twin = copy.copy(self)
        if self.backend_name == "llamacpp":
            from .backends.llamacpp import LlamaCppBackend

            twin.backend = LlamaCppBackend(self.backend.path, n_ctx=self.backend.max_length)
        else:
            twin.backend = TransformersBackend(self.hf_model)
        return twin

    def to(self, device: "str | torch.device") -> "Model":
        """Move the weights to ``device`` (e.g. "cuda") and decode there from now on (transformers backend)."""
        if self.backend_name != "transformers":
            raise ConfigError("only the transformers backend can move to another device")
        self.hf_model.to(parse_device(device))
        self.backend = TransformersBackend(self.hf_model)
        self.resources.clear()  # cost curves and drafts belong to the old device
        return self

    @property
    def max_length(self) -> int:
        return self.backend.max_length

    @property
    def eos_token_ids(self) -> tuple[int, ...]:
        ids: set[int] = set()
        eos = getattr(self.hf_model.generation_config, "eos_token_id", None)
        ids.update([eos] if isinstance(eos, int) else list(eos or []))
        if self.tokenizer.eos_token_id is not None:
            ids.add(int(self.tokenizer.eos_token_id))
        return tuple(sorted(ids))

    def encode(self, prompt: str | Sequence[dict], chat: bool | None = None) -> list[int]:
        """Prompt text (or chat messages) -> token ids; chat template applied when asked or available."""
        if isinstance(prompt, str) and not prompt.strip():
            raise ConfigError("the prompt is empty")
        has_template = bool(getattr(self.tokenizer, "chat_template", None))
        use_chat = has_template if chat is None else chat
        if not isinstance(prompt, str) and not use_chat:
            raise ConfigError("chat messages need a chat template: this tokenizer has none")
        if use_chat:
            if not has_template:
                raise ConfigError(f"model '{self.name}' has no chat template: use --no-chat")
            messages = [{"role": "user", "content": prompt}] if isinstance(prompt, str) else list(prompt)
            out = self.tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True)
            ids = out["input_ids"] if hasattr(out, "keys") else out
        else:
            ids = self.tokenizer(prompt)["input_ids"]
        ids = [int(t) for t in ids]
        if not ids:
            raise ConfigError("the prompt is empty")
        if len(ids) >= self.max_length:
            raise ConfigError(
                f"the prompt is {len(ids)} tokens long; the model's context holds {self.max_length}"
            )
        return ids

    def stream(
        self,
        prompt: str | Sequence[dict] | Sequence[int],
        *,
        method: str = "ar",
        options: dict[str, Any] | None = None,
        chat: bool | None = None,
        max_new_tokens: int = 128,
        temperature: float = 0.0,
        top_k: int = 0,
        top_p: float = 1.0,
        seed: int | None = None,
        stop: Sequence[str] = (),
        generator=None,
        on_update=None,
    ) -> Stream:
        """Start generating; nothing runs until the stream is iterated. Bad options raise at once.

        ``method="multiverse"`` runs the Multiverse engine; ``on_update(engine, update)`` then sees
        every pass (paths as they grow). With ``guided``, a text prompt gets the plan instruction.
        """
        spec = registry.get(method)
        method_cfg = spec.make_config(options)
        if method == "multiverse" and getattr(method_cfg, "guided", False) and isinstance(prompt, str):
            from .multiverse.guided import instruction

            if chat is not False and getattr(self.tokenizer, "chat_template", None):
                prompt = instruction(prompt)
        gen_cfg = GenerationConfig(
            max_new_tokens=int(max_new_tokens),
            sampling=SamplingConfig(float(temperature), int(top_k), float(top_p)),
            seed=seed,
            stop=tuple(stop),
            eos_token_ids=self.eos_token_ids,
        )
        if isinstance(prompt, (list, tuple)) and prompt and all(isinstance(t, int) for t in prompt):
            ids = [int(t) for t in prompt]
            if len(ids) >= self.max_length:
                raise ConfigError(f"the prompt is {len(ids)} tokens long; the model's context holds {self.max_length}")
        else:
            ids = self.encode(prompt, chat)
        gen = generator if generator is not None else make_generator(seed)
        holder: dict = {}
        if method == "multiverse":  # its own engine: branches, not one chain of drafts
            from .multiverse.run import chunks

            return Stream(chunks(self, ids, method_cfg, gen_cfg, gen, holder, on_update), holder)
        proposer = spec.factory(method_cfg, MethodContext(self.backend, gen_cfg.sampling, gen, self))
        return Stream(self._run(ids, proposer, gen_cfg, gen, method, holder), holder)

    def _run(self, ids, proposer, gen_cfg, gen, method, holder) -> Iterator[Chunk]:
        t0 = time.perf_counter()
        stats = Stats()
        text = TextStream(self.tokenizer, gen_cfg.stop)
        finish = "length"
        for step in decode(self.backend, proposer, ids, gen_cfg, gen):
            stats.add(step.stats)
            piece = text.push(step.tokens, final=step.finish_reason is not None)
            if text.stopped:
                finish = "stop"
                stats.seconds = time.perf_counter() - t0
                yield Chunk(piece, step.tokens, step.stats, finish)
                break
            if step.finish_reason:
                finish = step.finish_reason
            stats.seconds = time.perf_counter() - t0
            yield Chunk(piece, step.tokens, step.stats, step.finish_reason)
        stats.seconds = time.perf_counter() - t0
        holder["generation"] = Generation(text.text, tuple(text.ids), finish, method, stats)

    def generate(self, prompt, **kwargs) -> Generation:
        """Generate to the end and return text, token ids and statistics (see ``stream``)."""
        return self.stream(prompt, **kwargs).result()


def load(name_or_path: str = "SmolLM2-135M-Instruct", *, adapter: str | None = None, progress: bool = True,
         backend: str = "transformers") -> Model:
    """Load the bundled model (default), a Hugging Face model directory, or a GGUF file.

    ``adapter``: a shipped adapter name (e.g. "cllm-gsm8k") or an adapter folder made by a
    polyverse training pipeline; its weights are merged into the model.
    ``backend="llamacpp"``: decode with llama.cpp from the GGUF file (the bundled model's, or the
    .gguf given); the tokenizer comes from the same file.
    """
    from .models.load import load_pretrained, resolve

    if backend not in ("transformers", "llamacpp"):
        raise ConfigError(f"unknown backend '{backend}' (transformers, llamacpp)")
    if adapter:
        from .adapters import resolve as resolve_adapter

        resolve_adapter(adapter)  # a bad name fails before the model loads
    if backend == "llamacpp":
        return _load_llamacpp(name_or_path, adapter, progress)
    path = resolve(name_or_path, progress=progress)
    hf_model, tokenizer = load_pretrained(path)
    name = str(name_or_path)
    if adapter:
        from .adapters import apply

        hf_model = apply(hf_model, adapter, tokenizer)
        name = f"{name}+{adapter}"
    return Model(hf_model, tokenizer, name)


def _load_llamacpp(name_or_path: str, adapter: str | None, progress: bool) -> Model:
    from pathlib import Path

    from .backends.llamacpp import LlamaCppBackend
    from .export import ADAPTER_KEY, adapter_info
    from .models.load import BUNDLED_NAME, bundled_gguf, load_pretrained, resolve

    if adapter:
        raise ConfigError("the llama.cpp backend reads a GGUF file: write one with the adapter merged "
                          "(polyverse export gguf --adapter ...) and load that file")
    name = str(name_or_path)
    gguf = bundled_gguf() if name == BUNDLED_NAME else Path(name)
    if gguf.suffix.lower() != ".gguf":
        raise ConfigError(f"the llama.cpp backend needs a .gguf file, got '{name}'")
    backend = LlamaCppBackend(gguf)  # fails clearly when llama-cpp-python is missing or the file is not a model
    hf_model, tokenizer = load_pretrained(resolve(name_or_path, progress=progress))
    meta = adapter_info(backend.meta(ADAPTER_KEY))  # an exported fine-tune: methods default to its training
    if meta:
        hf_model.polyverse_adapter = meta
    return Model(hf_model, tokenizer, f"{name}@llamacpp", backend=backend)
