"""`draft` and `early_exit`: speculative decoding with a small draft model.

The draft model proposes k tokens one at a time (greedy, or sampled from its own processed
distribution q when sampling, with q kept in the draft); the target verifies them in one pass
with the exact speculative sampling test. `early_exit` uses the target's own first L layers and
its LM head as the draft: no second model, weights shared, works on any loaded model.
"""

from __future__ import annotations

import copy
from typing import Sequence

import torch
from transformers import AutoModelForCausalLM

from ..backends.transformers import TransformersBackend
from ..config import SamplingConfig
from ..draft import Draft
from ..errors import ConfigError
from ..layout import chain_feed
from ..loop import Observation, Proposer
from ..options import method_options, option
from ..registry import registry
from ..sampling import make_generator, sample, target_probs


@method_options("draft")
class DraftConfig:
    # bundled name, HF directory or GGUF file, with the target's tokenizer
    model: str = option("", "the draft model (same tokenizer)", flag="--draft-model")
    k: int = option(4, "tokens drafted per pass", lo=1, hi=64, flag="--k")

    def __post_init__(self) -> None:
        if not self.model:
            raise ConfigError("draft needs a draft model: --draft-model NAME_OR_PATH (or -o model=...)")


@method_options("early_exit")
class EarlyExitConfig:
    # L: the target's first L layers (+ final norm and LM head) are the draft
    layers: int = option(6, "the target's first L layers draft", lo=1, hi=1024, flag="--layers")
    k: int = option(3, "tokens drafted per pass", lo=1, hi=64, flag="--k")


class DraftModelProposer(Proposer):
    """Drafts k tokens with its own backend, whose cache follows the target's context."""

    def __init__(self, backend: TransformersBackend, k: int, sampling: SamplingConfig, generator) -> None:
        self.be = backend
        self.k = k
        self.sampling = sampling
        self.gen = generator if generator is not None else make_generator(None)
        self.cached: list[int] = []  # tokens whose KV the draft backend holds

    def start(self, context: Sequence[int]) -> None:
        self.be.reset()
        self.cached = []

    def _feed(self, tokens: list[int]) -> torch.Tensor:
        """Append tokens to the draft cache; returns the logits of the last one [V]."""
        logits = self.be.forward(chain_feed(tokens, len(self.cached)), logits_for=[len(tokens) - 1])
        self.be.commit(range(len(tokens)))
        self.cached.extend(tokens)
        return logits[0]

    def propose(self, context: Sequence[int]) -> Draft:
        common = 0
        for a, b in zip(self.cached, context):
            if a != b:
                break
            common += 1
        common = min(common, len(context) - 1)  # always re-feed at least the pending token
        self.be.truncate(common)
        self.cached = self.cached[:common]
        room = self.be.max_length - len(context)
        k = min(self.k, room)
        if k < 1:
            return Draft.empty()
        logits = self._feed([int(t) for t in context[common:]])
        tokens: list[int] = []
        probs: list[torch.Tensor] = []
        for j in range(k):
            if self.sampling.greedy:
                tok = int(logits.argmax())
            else:
                q = target_probs(logits[None], self.sampling)[0]  # [V]
                tok = sample(q, self.gen)
                probs.append(q)
            tokens.append(tok)
            if j + 1 < k:
                logits = self._feed([tok])
        return Draft.chain(tokens, torch.stack(probs) if probs else None)

    def observe(self, obs: Observation) -> None:
        pass


def _same_tokenizer(a, b) -> bool:
    return a.get_vocab() == b.get_vocab()


def make_draft(config: DraftConfig, ctx) -> DraftModelProposer:
    if ctx.model is None:
        raise ConfigError("draft needs the serving model (use polyverse.load(...).generate)")
    from ..models.load import load_pretrained, resolve

    key = f"draft:{config.model}"
    if key not in ctx.model.resources:
        hf_draft, tokenizer = load_pretrained(resolve(config.model, progress=False))
        if not _same_tokenizer(tokenizer, ctx.model.tokenizer):
            raise ConfigError(f"draft model '{config.model}' has another tokenizer than the target: it must share it")
        ctx.model.resources[key] = TransformersBackend(hf_draft)  # its decode model prepared once
    return DraftModelProposer(ctx.model.resources[key].session(), config.k, ctx.sampling, ctx.generator)


def truncated_model(model, layers: int):
    """The first ``layers`` decoder layers of ``model`` with its final norm and LM head, sharing weights."""
    cfg = copy.deepcopy(model.config)
    total = cfg.num_hidden_layers
    if layers >= total:
        raise ConfigError(f"early_exit layers must be below the model's {total} layers, got {layers}")
    cfg.num_hidden_layers = layers
    for attr in ("layer_types",):
        if getattr(cfg, attr, None) is not None:
            setattr(cfg, attr, list(getattr(cfg, attr))[:layers])
    with torch.device("meta"):
        small = AutoModelForCausalLM.from_config(cfg, attn_implementation="sdpa", dtype=next(model.parameters()).dtype)
    state = {k: v for k, v in model.state_dict().items() if k in small.state_dict()}
    small.load_state_dict(state, assign=True, strict=True)
    buffers = dict(model.named_buffers())
    for name, buf in list(small.named_buffers()):  # non-persistent buffers (rotary inv_freq) too
        owner, _, leaf = name.rpartition(".")
        small.get_submodule(owner).register_buffer(leaf, buffers[name], persistent=False)
    small.tie_weights()
    return small.eval()


def make_early_exit(config: EarlyExitConfig, ctx) -> DraftModelProposer:
    if ctx.backend.torch_model is None:
        raise ConfigError("early_exit drafts with the target's own first layers, which only the transformers "
                          "backend can run apart: use --backend transformers")
    if ctx.model is None:
        backend = TransformersBackend(truncated_model(ctx.backend.torch_model, config.layers))
    else:
        key = f"early_exit:{config.layers}"
        if key not in ctx.model.resources:  # the draft's decode model prepared once per model
            ctx.model.resources[key] = TransformersBackend(truncated_model(ctx.model.hf_model, config.layers))
        backend = ctx.model.resources[key].session()
    return DraftModelProposer(backend, config.k, ctx.sampling, ctx.generator)


registry.register("draft", DraftConfig, make_draft, "speculative decoding with a draft model that shares the tokenizer")
registry.register("early_exit", EarlyExitConfig, make_early_exit,
                  "speculative decoding drafted by the target's own first L layers")
