"""The decode-time model, prepared once: a view of a transformers causal LM for the backend's passes.

What the view changes, and why:
- Its plain ``nn.Linear`` layers (the LM head too) become ``store.StoreLinear`` modules over the
  same Parameters, running through the product store chosen here (``choose``): the row kernel
  (``rows``) on AVX-512 CPUs, else oneDNN-packed weights (``packed``) on CPUs where torch's MKL is
  not tuned (not Intel), and none for toy models, other dtypes and GPUs. Without a store, a second
  view whose layers run through ``few_rows.FewRows`` takes the passes of 2 to 4 tokens on such CPUs.
- On CPU its attention reads grouped key/value heads directly in multi-row passes
  (``attention.grouped_sdpa``): the view's own copy of the config names that attention function.
- Where the logits are a plain projection, the LM head runs apart from the body
  (``head.Projection``), so that only the rows verification reads are projected.

The view is built from shallow copies: a module is copied only where something below it changes;
the copy gets a table of children of its own and shares everything else (Parameters, buffers,
hooks). The original model keeps its stock modules and config, so transformers' ``generate`` and
training run it exactly as loaded. Parameters are shared, never copied: in-place updates (training
steps) reach the view, and the stores pack a weight again once its version counter moves. A model
whose Parameters are replaced rather than updated needs a new preparation.
"""

from __future__ import annotations

import copy
from typing import Callable

import torch

from . import attention, few_rows, lean, packed, rows
from .head import Projection
from .prefix import PrefixStore
from .store import Store, StoreLinear

Swap = Callable[[torch.nn.Linear], torch.nn.Module]


def choose(model: torch.nn.Module, packed_weights: bool | None = None, row_kernel: bool | None = None) -> Store | None:
    """The store of packed weights ``model``'s passes run on (None: torch's products).

    ``row_kernel``: the AVX-512 row kernel; None = where it pays (``rows.worth_it``: float32 on an
    AVX-512 CPU, 10M parameters or more, the kernel builds) unless oneDNN was asked for.
    ``packed_weights``: otherwise oneDNN-packed weights; None = where it pays (``packed.worth_it``).
    Asking for one where it cannot run is a ValueError.
    """
    first = next(model.parameters())
    if row_kernel is None:
        row_kernel = packed_weights is not True and rows.worth_it(model)
    elif row_kernel and not rows.available(first.device, first.dtype):
        raise ValueError("the row kernel needs float32 weights on an AVX-512 CPU and a C++ compiler")
    if row_kernel:
        return rows.RowWeights()
    if packed_weights is None:
        packed_weights = packed.worth_it(model)
    elif packed_weights and not packed.available(first.device, first.dtype):
        raise ValueError("packed weights need float32 weights on CPU and a torch with oneDNN")
    return packed.PackedWeights() if packed_weights else None


def view(module: torch.nn.Module, swap: Swap | None, configs: dict[int, object],
         memo: dict[int, torch.nn.Module] | None = None) -> torch.nn.Module:
    """``module`` with every plain ``nn.Linear`` below it replaced by ``swap(linear)`` (none when
    ``swap`` is None) and every ``config`` attribute found in ``configs`` (by id) replaced, the
    original left as it is: a module is shallow-copied only where something below it changes.

    Example: Sequential(Linear, ReLU) with a swap -> a new Sequential(swap(Linear), the same ReLU);
    without a swap or configs -> the very same Sequential.
    """
    memo = {} if memo is None else memo
    if id(module) in memo:  # a module reached twice stays one module
        return memo[id(module)]
    if type(module) is torch.nn.Linear and swap is not None:
        new = swap(module)
    else:
        children = {name: None if child is None else view(child, swap, configs, memo)
                    for name, child in module._modules.items()}
        config = configs.get(id(getattr(module, "config", None)))
        if config is None and all(children[name] is child for name, child in module._modules.items()):
            new = module
        else:
            new = copy.copy(module)
            new._modules = children  # its own table: the original keeps its children
            if config is not None:
                new.__dict__["config"] = config
    memo[id(module)] = new
    return new


def _configs(model: torch.nn.Module, device: torch.device) -> dict[int, object]:
    """The config copies of the decode view, by the id of the config they replace: one naming the
    grouped attention where it applies (``attention.applies``), none otherwise."""
    if not attention.applies(model, device):
        return {}
    original = model.config
    config = copy.deepcopy(original)
    config._attn_implementation = attention.register()
    out = {id(original): config}
    text = original.get_text_config(decoder=True)
    if text is not original:
        out[id(text)] = config.get_text_config(decoder=True)
    return out


def choose_lean(model: torch.nn.Module, dtype: str | None = None) -> "lean.LeanModel | None":
    """The lean pass for ``model`` in weight type ``dtype``, or None for the transformers pass.

    ``dtype`` None: the lean pass where it runs and pays (a Llama-family model of 10M parameters
    or more on a CPU with AVX2 or AVX-512, and the extension builds), in ``lean.default_dtype()``.
    ``dtype`` named: the lean pass in that type; "fp32" falls back to the transformers pass where the
    lean one cannot run, bf16 and int8 are a ValueError there (they exist only in the lean pass).
    """
    if dtype is not None and dtype not in lean.DTYPES:
        raise ValueError(f"unknown weight type '{dtype}' (choose from {', '.join(lean.DTYPES)})")
    first = next(model.parameters())
    why = lean.unsupported(model)
    if why is None and first.dtype is not torch.float32:
        why = f"the model's weights are {first.dtype}, not float32"
    if why is None and lean.isa() is None:
        why = "this CPU has neither AVX2 + FMA nor AVX-512"
    if why is None and lean.extension() is None:
        why = "the lean CPU pass could not be built here (a C++ compiler and ninja are needed)"
    if dtype is None:
        big = sum(p.numel() for p in model.parameters()) >= rows.MIN_PARAMS  # counted first: toys never build
        if why is not None or not big:
            return None
        dtype = lean.default_dtype()
    if why is not None:
        if dtype == "fp32":
            return None
        raise ValueError(f"{dtype} weights run only in the lean CPU pass, which cannot run here: {why}")
    return lean.LeanModel(model, dtype)


class DecodeModel:
    """A causal LM's decode-time views, its product store and its LM head product, prepared once
    and shared by every backend over the same weights (forks and sessions).

    ``lean``: the lean pass (``lean.LeanModel``) when one is used (``choose_lean``); the backend then
    runs its passes there and the views below serve nothing but prefill-free peers."""

    def __init__(self, model: torch.nn.Module, packed_weights: bool | None = None,
                 row_kernel: bool | None = None, dtype: str | None = None, use_lean: bool | None = None) -> None:
        first = next(model.parameters())
        self.model = model  # as loaded; never changed here
        if use_lean is False and dtype not in (None, "fp32"):
            raise ValueError(f"{dtype} weights run only in the lean CPU pass")
        self.lean = None if use_lean is False else choose_lean(model, "fp32" if use_lean and dtype is None else dtype)
        if use_lean and self.lean is None:
            raise ValueError(f"the lean CPU pass cannot run this model: {lean.unsupported(model) or 'not available here'}")
        self.dtype = self.lean.dtype if self.lean is not None else "fp32"
        self.prefixes = PrefixStore() if self.lean is not None else None  # prompt cells shared by sessions
        if self.lean is not None:  # its passes run there: no stores, no views
            self.store, self._views, self.head, self._bodies = None, (model, None), None, None
            return
        self.store = choose(model, packed_weights, row_kernel)
        configs = _configs(model, first.device)
        store = self.store
        main = view(model, None if store is None else (lambda linear: StoreLinear(linear, store)), configs)
        few = None
        if store is None and few_rows.available(first.device):
            rows_store = few_rows.FewRows()
            few = view(model, lambda linear: StoreLinear(linear, rows_store), configs)
        self._views = (main, few)  # few: the view for passes of ``few_rows.ROWS`` tokens, if any
        # the LM head runs apart from the body when the logits are a plain projection
        cfg = model.config.get_text_config(decoder=True)
        prefix = getattr(model, "base_model_prefix", "")
        head = model.get_output_embeddings()
        plain = getattr(cfg, "final_logit_softcapping", None) is None and getattr(cfg, "logit_scale", None) is None
        split = bool(prefix) and getattr(model, prefix, None) is not None and head is not None and plain
        self.head: Projection | None = Projection(head, store) if split else None
        self._bodies = (getattr(main, prefix), None if few is None else getattr(few, prefix)) if split else None

    def lm(self, q: int) -> torch.nn.Module:
        """The whole causal-LM view (body and LM head) for a pass feeding ``q`` tokens."""
        main, few = self._views
        return few if few is not None and q in few_rows.ROWS else main

    def body(self, q: int) -> torch.nn.Module:
        """The base-model view (no LM head: its output is ``last_hidden_state``) for a pass feeding
        ``q`` tokens; only where the head runs apart (``head`` is not None)."""
        if self._bodies is None:
            raise RuntimeError("this model's LM head does not run apart from its body")
        main, few = self._bodies
        return few if few is not None and q in few_rows.ROWS else main

    def views(self) -> tuple[torch.nn.Module, ...]:
        """Every decode view this preparation made (one, or two with the few-row one)."""
        return tuple(v for v in self._views if v is not None)
