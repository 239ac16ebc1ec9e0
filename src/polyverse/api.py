"""The Python API: ``polyverse.load(...)`` returns a Model that generates with any method.

    >>> import polyverse
    >>> m = polyverse.load()                       # the bundled SmolLM2-135M-Instruct
    >>> g = m.generate("Name three colours.", method="jacobi", options={"block": 16})
    >>> g.text, g.stats.mean_accepted
"""

from __future__ import annotations

import copy
import inspect
import time
from collections import deque
from dataclasses import dataclass
from typing import Any, Iterator, Sequence

from .backends.base import Backend
from .backends.cpu.prefix import LEAST, common_length
from .backends.transformers import TransformersBackend
from .config import GenerationConfig, SamplingConfig
from .errors import ConfigError
from .grammar import Grammar, GrammarSpec, compile_grammar
from .layout import chain_feed
from .loop import Runner, Step, StepStats, check_prompt
from .registry import MethodContext, registry
from .sampling import make_generator
from .shaping import Penalties
from .stats import Stats
from .text import TextStream


@dataclass(frozen=True)
class Chunk:
    text: str  # text newly safe to show
    tokens: tuple[int, ...]  # tokens accepted in this step
    step: StepStats
    finish_reason: str | None = None
    logprobs: tuple | None = None  # one ``logprobs.TokenLogprob`` per token kept, when asked for


@dataclass(frozen=True)
class Generation:
    text: str
    token_ids: tuple[int, ...]
    finish_reason: str  # "eos" | "length" | "stop"
    method: str
    stats: Stats
    logprobs: tuple | None = None  # one ``logprobs.TokenLogprob`` per token of token_ids, when asked for

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
        self._holder.setdefault("pieces", False)  # read before the first step: no text until the end
        for _ in self._chunks:
            pass
        return self._holder["generation"]


OFFLINE_PREFILL_CHUNK = 256  # prompt tokens per pass in generate_many (the server's default is 64)


class Request:
    """One request of a batch: its session, its decoding or its runner's steps, and the text and
    statistics built from the steps the batch hands back (``push``), as ``Model.stream`` builds them."""

    def __init__(self, session: "Model", ids: list[int], runner: Runner, gen_cfg: GenerationConfig, generator,
                 method: str) -> None:
        from .loop import Decoding
        from .registry import ProposerRunner

        self.session, self.ids, self.method = session, ids, method
        self.decoding = None
        self.steps = None
        if isinstance(runner, ProposerRunner):  # the one decode loop: its passes can be shared
            self.decoding = Decoding(session.backend, runner.proposer, ids, gen_cfg, generator)
        else:
            self.steps = runner.run(ids)
        self._mailbox: deque = deque()
        self._holder: dict = {}
        self._chunks = session._run(ids, _Mailbox(self._mailbox), gen_cfg, method, self._holder)
        self.done = False
        self.last: Chunk | None = None

    def join(self, batch, key) -> None:
        """Enter ``batch`` under ``key``."""
        if self.decoding is not None:
            batch.add(key, self.decoding)
        else:
            batch.add_steps(key, self.steps)

    def push(self, step: Step | None) -> bool:
        """Take the request's next step from the batch (None: its runner ended); True when the
        request is done (``result()`` then holds it). ``last`` is the step's Chunk."""
        if self.done:
            return True
        if step is None:
            self._mailbox.append(None)
        else:
            self._mailbox.append(step)
        chunk = next(self._chunks, None)
        self.last = chunk
        if chunk is None or chunk.finish_reason is not None:
            for _ in self._chunks:  # lets the text stream close and the Generation be written
                pass
            self.done = True
        return self.done

    def result(self) -> Generation:
        if not self.done:
            raise RuntimeError("the request is still running")
        return self._holder["generation"]


class _Mailbox:
    """A Runner whose steps are handed in from outside (the batch) one at a time."""

    def __init__(self, box: deque) -> None:
        self.box = box

    def run(self, prompt):
        while self.box:
            step = self.box.popleft()
            if step is None:
                return
            yield step
            if step.finish_reason is not None:
                return


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
    """A loaded model: tokenizer, the backend that decodes it, the adapter it carries and per-model
    resources. ``generate``/``stream`` run any registered method through the one decode path."""

    def __init__(self, hf_model, tokenizer, name: str, backend: Backend | None = None,
                 adapter: dict[str, Any] | None = None) -> None:
        self.hf_model = hf_model  # the transformers model (tokenizer side, peers; not decoded when backend is llama.cpp)
        self.tokenizer = tokenizer
        self.name = name
        self.backend: Backend = backend if backend is not None else TransformersBackend(hf_model)
        self.adapter: dict[str, Any] = dict(adapter or {})  # the adapter's polyverse.json; {} = none
        self.resources: dict[str, Any] = {}  # per-model caches of methods (draft models, cost curves)

    def session(self) -> "Model":
        """This model with a backend (KV cache) of its own over the same weights, tokenizer and
        resources: one per request when several decode at once (the server)."""
        twin = copy.copy(self)
        twin.backend = self.backend.session()
        return twin

    def to(self, device: "str | torch.device") -> "Model":
        """Move the weights to ``device`` (e.g. "cuda") and decode there from now on (transformers backend)."""
        self.backend = self.backend.moved(parse_device(device))
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

    @property
    def has_chat_template(self) -> bool:
        return bool(getattr(self.tokenizer, "chat_template", None))

    def encode(self, prompt: str | Sequence[dict], chat: bool | None = None, tools: list[dict] | None = None) -> list[int]:
        """Prompt text (or chat messages) -> token ids; chat template applied when asked or available
        (``tools``: OpenAI tool entries, for a template that renders them)."""
        if isinstance(prompt, str) and not prompt.strip():
            raise ConfigError("the prompt is empty")
        has_template = self.has_chat_template
        use_chat = has_template if chat is None else chat
        if not isinstance(prompt, str) and not use_chat:
            raise ConfigError("chat messages need a chat template: this tokenizer has none")
        if use_chat:
            if not has_template:
                raise ConfigError(f"model '{self.name}' has no chat template: use --no-chat")
            messages = [{"role": "user", "content": prompt}] if isinstance(prompt, str) else list(prompt)
            extra = {"tools": tools} if tools else {}
            out = self.tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True, **extra)
            ids = out["input_ids"] if hasattr(out, "keys") else out
        else:
            ids = self.tokenizer(prompt)["input_ids"]
        ids = [int(t) for t in ids]
        check_prompt(ids, self.max_length)
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
        logprobs: int | None = None,
        grammar: "GrammarSpec | None" = None,
        presence_penalty: float = 0.0,
        frequency_penalty: float = 0.0,
        logit_bias: dict | None = None,
        forced_drafts: bool = True,
    ) -> Stream:
        """Start generating; nothing runs until the stream is iterated. Bad options raise at once.

        ``logprobs=k``: each output token's log-probability under the model (before penalties and
        grammar), with the k likeliest tokens at its position (``Chunk.logprobs``, ``Generation.logprobs``).

        ``grammar``: structured output, a ``GrammarSpec`` (``GrammarSpec.json_schema(schema)``,
        ``.json_object()``, ``.regex(pattern)``, ``.lark(grammar)``); the output follows it and every
        method stays lossless against ``ar`` under it. ``forced_drafts=False`` stops drafting the tokens
        the grammar forces. ``presence_penalty``, ``frequency_penalty``, ``logit_bias`` ({token id:
        bias}): OpenAI's, applied at every row of a pass with the draft's own tokens counted.

        ``on_update(engine, update)`` sees every pass of an engine-style method (Multiverse: the
        paths as they grow). A method may rewrite a text prompt before the chat template is
        applied (Multiverse's guided mode asks for a plan).
        """
        ids, runner, gen_cfg, _ = self._prepare(prompt, method, options, chat, max_new_tokens, temperature, top_k,
                                                top_p, seed, stop, generator, on_update, logprobs, grammar,
                                                presence_penalty, frequency_penalty, logit_bias, forced_drafts)
        holder: dict = {}
        return Stream(self._run(ids, runner, gen_cfg, method, holder), holder)

    def _prepare(self, prompt, method, options, chat, max_new_tokens, temperature, top_k, top_p, seed, stop,
                 generator, on_update, logprobs=None, grammar=None, presence_penalty=0.0, frequency_penalty=0.0,
                 logit_bias=None, forced_drafts=True):
        """(prompt ids, the method's runner on this model's backend, the request config, its generator);
        bad options, sampling values, grammars or prompts raise here."""
        spec = registry.get(method)
        method_cfg = spec.make_config(options)
        penalties = Penalties.of(presence_penalty, frequency_penalty, logit_bias)
        penalties.check_vocab(self.backend.vocab_size)
        asked = [name for name, on in (("logprobs", logprobs is not None), ("a grammar", grammar is not None),
                                       ("penalties and logit_bias", bool(penalties))) if on]
        if asked and spec.runner:
            raise ConfigError(f"{asked[0]} are not available with '{method}' (it writes tokens outside the one "
                              "decode loop): use another method")
        if grammar is not None and not isinstance(grammar, (GrammarSpec, Grammar)):
            raise ConfigError("grammar must be a GrammarSpec (GrammarSpec.json_schema(...), .regex(...), ...)")
        compiled = self.grammar(grammar) if isinstance(grammar, GrammarSpec) else grammar  # or compiled already
        if spec.rewrite is not None and isinstance(prompt, str) and chat is not False and self.has_chat_template:
            prompt = spec.rewrite(method_cfg, prompt)
        gen_cfg = GenerationConfig(
            max_new_tokens=int(max_new_tokens),
            sampling=SamplingConfig(float(temperature), int(top_k), float(top_p)),
            seed=seed,
            stop=tuple(stop),
            eos_token_ids=self.eos_token_ids,
            logprobs=logprobs,
            penalties=penalties,
            grammar=compiled,
            forced_drafts=bool(forced_drafts),
        )
        if isinstance(prompt, (list, tuple)) and prompt and all(isinstance(t, int) for t in prompt):
            ids = [int(t) for t in prompt]
            check_prompt(ids, self.max_length)
        else:
            ids = self.encode(prompt, chat)
        gen = generator if generator is not None else make_generator(seed)
        ctx = MethodContext(self.backend, gen_cfg.sampling, gen, self, gen_cfg, on_update)
        return ids, spec.build(method_cfg, ctx), gen_cfg, gen

    def grammar(self, spec: GrammarSpec):
        """``spec`` compiled for this model's tokenizer (``grammar.Grammar``); an invalid one raises
        ConfigError naming the problem."""
        return compile_grammar(spec, self.tokenizer, self.backend.vocab_size, self.eos_token_ids)

    def request(self, prompt: str | Sequence[dict] | Sequence[int], **kwargs) -> "Request":
        """One request to run in a ``Batch`` with others (arguments as ``stream``), on a session of its
        own: the batch drives its decoding (``request.decoding``) or its runner's steps
        (``request.steps``); ``request.push(step)`` turns each of its steps into a Chunk."""
        args = inspect.signature(Model.stream).bind(self, prompt, **kwargs)  # stream's names and defaults
        args.apply_defaults()
        del args.arguments["self"]
        session = self.session()
        ids, runner, gen_cfg, gen = session._prepare(**args.arguments)
        return Request(session, ids, runner, gen_cfg, gen, args.arguments["method"])

    def generate_many(self, prompts: Sequence, *, concurrency: int = 16, batch: "BatchConfig | None" = None,
                      **kwargs) -> Iterator[tuple[int, "Generation"]]:
        """Generate for every prompt, ``concurrency`` requests sharing each pass (arguments as
        ``generate``, the same for every prompt; ``kwargs["seed"]`` seeds prompt i with seed + i;
        ``batch``: how passes are shared, default prompt chunks of ``OFFLINE_PREFILL_CHUNK`` tokens).
        Yields (index, Generation) as requests finish, not in order. A prompt that fails (too long
        for the context, ...) raises before any is decoded."""
        from .batching import Batch

        if concurrency < 1:
            raise ConfigError(f"concurrency must be at least 1, got {concurrency}")
        seed = kwargs.pop("seed", None)
        make = lambda i: self.request(prompts[i], seed=None if seed is None else seed + i, **kwargs)  # noqa: E731
        self._warm_prefix(prompts, kwargs)
        made = [make(i) for i in range(min(concurrency, len(prompts)))]
        for i in range(len(made), len(prompts)):  # the rest are checked now, built when a slot frees
            self._check(prompts[i], kwargs)
        if batch is None:  # offline: no one waits for a first token, and long prompt chunks pass best
            from .batching import BatchConfig

            batch = BatchConfig(prefill_chunk=OFFLINE_PREFILL_CHUNK)
        engine = Batch(self.pass_costs() if batch.budget else None, batch)
        running: dict[int, Request] = {}
        nxt = 0
        for r in made:
            running[nxt] = r
            r.join(engine, nxt)
            nxt += 1
        while running:
            events, _ = engine.round()
            for ev in events:
                req = running[ev.key]
                if ev.error is not None:
                    raise ev.error
                if req.push(ev.step):
                    del running[ev.key]
                    yield ev.key, req.result()
                    if nxt < len(prompts):
                        running[nxt] = self.request(prompts[nxt], seed=None if seed is None else seed + nxt, **kwargs)
                        running[nxt].join(engine, nxt)
                        nxt += 1

    def generate_batch(self, prompts: Sequence, **kwargs) -> list["Generation"]:
        """Every prompt's Generation, in order (see ``generate_many``)."""
        out: list = [None] * len(prompts)
        for i, g in self.generate_many(prompts, **kwargs):
            out[i] = g
        return out

    def _warm_prefix(self, prompts: Sequence, kwargs) -> None:
        """Prefill once the leading tokens the first two prompts share (a chat template, a system
        prompt) and keep their cells (``store_prefix``): the requests that start together then copy
        them instead of each computing them, as later requests already do."""
        if len(prompts) < 2 or not getattr(self.backend, "shares_passes", False):  # the lean pass keeps prefixes
            return
        first, second = (self._check(p, kwargs) for p in prompts[:2])  # a request's own error, not a failed warm-up
        n = common_length(first[:-1], second[:-1])  # a prompt's last token is fed by its first decoding pass
        if n < LEAST:
            return
        backend = self.backend.session()
        backend.forward(chain_feed(first[:n], 0), logits_for=[])
        backend.commit(range(n))
        backend.store_prefix(first[:n])

    def _check(self, prompt, kwargs) -> list[int]:
        """The prompt's token ids; fails now on a prompt that cannot be decoded (empty, too long for
        the context)."""
        if isinstance(prompt, (list, tuple)) and prompt and all(isinstance(t, int) for t in prompt):
            ids = list(prompt)
            check_prompt(ids, self.max_length)
            return ids
        return self.encode(prompt, kwargs.get("chat"))  # checked as it is encoded

    def pass_costs(self):
        """This model's measured pass costs (``costs.cost_curve``: measured once, cached)."""
        from .costs import cost_curve

        return cost_curve(self, self.backend)

    def _run(self, ids, runner: Runner, gen_cfg: GenerationConfig, method: str, holder: dict) -> Iterator[Chunk]:
        """Steps -> Chunks of text safe to show, statistics, and the Generation at the end."""
        t0 = time.perf_counter()
        stats = Stats()
        text = TextStream(self.tokenizer, gen_cfg.stop, holder.setdefault("pieces", True))
        finish = "length"
        lps: list | None = [] if gen_cfg.logprobs is not None else None
        for step in runner.run(ids):
            if step.prompt:  # a runner's prompt chunk: nothing to show or count
                continue
            stats.add(step.stats)
            piece = text.push(step.tokens, final=step.finish_reason is not None)
            new_lps = None
            if lps is not None:  # those of the tokens kept (a stop string may cut the step's last ones)
                new_lps = tuple((step.logprobs or ())[: len(text.ids) - len(lps)])
                lps.extend(new_lps)
            if text.stopped:
                finish = "stop"
                stats.seconds = time.perf_counter() - t0
                yield Chunk(piece, step.tokens, step.stats, finish, new_lps)
                break
            if step.finish_reason:
                finish = step.finish_reason
            stats.seconds = time.perf_counter() - t0
            yield Chunk(piece, step.tokens, step.stats, step.finish_reason, new_lps)
        stats.seconds = time.perf_counter() - t0
        holder["generation"] = Generation(text.settled(), tuple(text.ids), finish, method, stats,
                                          tuple(lps) if lps is not None else None)

    def generate(self, prompt, **kwargs) -> Generation:
        """Generate to the end and return text, token ids and statistics (see ``stream``)."""
        return self.stream(prompt, **kwargs).result()


def load(name_or_path: str = "SmolLM2-135M-Instruct", *, adapter: str | None = None, progress: bool = True,
         backend: str = "transformers", dtype: str | None = None) -> Model:
    """Load the bundled model (default), a Hugging Face model directory, or a GGUF file.

    ``adapter``: a shipped adapter name (e.g. "cllm-gsm8k") or an adapter folder made by a
    polyverse training pipeline; its weights are merged into the model.
    ``backend="llamacpp"``: decode with llama.cpp from the GGUF file (the bundled model's, or the
    .gguf given); the tokenizer comes from the same file.
    ``dtype``: the weight type of the transformers backend's CPU passes, "fp32", "bf16" or "int8"
    (``backends.cpu.lean``); None = bf16 where the lean CPU pass runs, else fp32.
    """
    from .models.load import load_pretrained, resolve

    if backend not in ("transformers", "llamacpp"):
        raise ConfigError(f"unknown backend '{backend}' (transformers, llamacpp)")
    if adapter:
        from .adapters import info as adapter_info
        from .adapters import resolve as resolve_adapter

        resolve_adapter(adapter)  # a bad name fails before the model loads
    if backend == "llamacpp":
        if dtype is not None:
            raise ConfigError("--dtype applies to the transformers backend; the llama.cpp backend runs the GGUF's own types")
        return _load_llamacpp(name_or_path, adapter, progress)
    from .backends.cpu.lean import DTYPES

    if dtype is not None and dtype not in DTYPES:
        raise ConfigError(f"unknown dtype '{dtype}' (choose from {', '.join(DTYPES)})")
    path = resolve(name_or_path, progress=progress)
    hf_model, tokenizer = load_pretrained(path)
    name = str(name_or_path)
    if adapter:
        from .adapters import apply

        hf_model = apply(hf_model, adapter, tokenizer)
        name = f"{name}+{adapter}"
    try:
        decoder = TransformersBackend(hf_model, dtype=dtype)
    except ValueError as exc:  # bf16 / int8 asked for where the lean pass cannot run
        raise ConfigError(str(exc)) from None
    info = adapter_info(resolve_adapter(adapter)) if adapter else None
    return Model(hf_model, tokenizer, name, backend=decoder, adapter=info)


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
    return Model(hf_model, tokenizer, f"{name}@llamacpp", backend=backend, adapter=meta)
