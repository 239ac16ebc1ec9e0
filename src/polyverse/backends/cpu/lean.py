"""The lean pass: a Llama-family decoder run in one C++ call per pass, on packed fp32, bf16 or int8
weights (``lean.cpp``, built once like ``rows``).

A transformers pass of a small model spends a large part of its time around the products (module
calls, Python, cache bookkeeping); the lean pass keeps the products (weights streamed once for all
rows of a pass, each row summed in the same order whatever the row count) and does the rest in the
same C++ call. It takes the decoders whose layers are the Llama layer exactly: RMS norms, rotary
positions from the model's own ``inv_freq``, grouped-query attention (q/k/v biases allowed, as in
Qwen2), a SiLU gated MLP, no sliding window; any other model keeps the transformers pass.

Weight types (``DTYPES``): ``fp32`` (the model's own weights), ``bf16`` (rounded to bfloat16; each
row's activations are rounded to bf16 before a product, summed in float32) and ``int8`` (blocks of
32 input columns, one float scale per block and output column; activations quantized per row and
block of 32 the same way; each block's sum exact in integers). Norms, rotary positions, attention
and the KV cache stay float32.

Instruction sets (``ISA``): ``avx512`` (AVX-512 with BF16 and VNNI: ``vdpbf16ps`` and ``vpdpbusd``
take bf16 and int8 products at their native width) and ``avx2`` (AVX2 + FMA: bf16 widened to float,
int8 through ``vpmaddubsw``). The default is avx512 where the CPU has all of it; the environment
variable ``POLYVERSE_CPU_ISA=avx2`` forces the AVX2 one (to test it on an AVX-512 machine).
The int8 product gives the same bits on both.
"""

from __future__ import annotations

import copy
import hashlib
import os
import sys
from functools import lru_cache
from pathlib import Path
from typing import Sequence

import torch

from . import features, screen

SOURCE = Path(__file__).with_name("lean.cpp")
HEADERS = tuple(Path(__file__).with_name(n)
                for n in ("lean_isa.h", "lean_isa_screen.h", "lean_attention.h", "lean_pack.h", "lean_segments.h",
                          "lean_screen.h"))
NAME = "polyverse_cpu_lean"
DTYPES = ("fp32", "bf16", "int8")
KINDS = {"fp32": 0, "bf16": 1, "int8": 2}
ISA = "POLYVERSE_CPU_ISA"  # avx512 | avx2: which compiled instruction set the lean pass runs
DISABLE = "POLYVERSE_NO_LEAN"  # set to 1 to keep the transformers pass
ARCHITECTURES = ("llama", "qwen2", "mistral")  # model types whose decoder layer is the Llama one
AVX512_FLAGS = ("avx512f", "avx512bw", "avx512vl", "avx512dq", "avx512_bf16", "avx512_vnni", "fma")
AVX2_FLAGS = ("avx2", "fma", "f16c")
BLOCK = 32  # packed panels and int8 blocks: every product dimension a multiple of this
# the KV cache's element type per weight type: with many requests in a pass, attention reads every
# request's cache, as many bytes as the weights at a few hundred tokens each; half precision halves
# them (its 11-bit significand is finer than the bf16 rounding those passes give activations)
KV_DTYPES = {"fp32": torch.float32, "bf16": torch.float16, "int8": torch.float16}
KEY_TILE = 16  # cells per key tile (lean.cpp's kTile)


def isa(flags: frozenset[str] | None = None, env: str | None = None) -> str | None:
    """The instruction set the lean pass runs on: "avx512", "avx2", or None where the CPU has
    neither. ``env`` (default: ``$POLYVERSE_CPU_ISA``) may ask for avx2 on an AVX-512 CPU; asking for
    one the CPU lacks is a ValueError.

    Example: flags of an AMD EPYC Genoa -> "avx512"; with env "avx2" -> "avx2"; flags of a Haswell -> "avx2".
    """
    flags = features.cpuinfo()[1] if flags is None else flags
    env = os.environ.get(ISA, "") if env is None else env
    wide = all(f in flags for f in AVX512_FLAGS)
    narrow = all(f in flags for f in AVX2_FLAGS)
    if env:
        if env not in ("avx512", "avx2"):
            raise ValueError(f"{ISA} must be avx512 or avx2, got '{env}'")
        if (env == "avx512" and not wide) or (env == "avx2" and not narrow):
            raise ValueError(f"{ISA}={env}: this CPU lacks it")
        return env
    return "avx512" if wide else "avx2" if narrow else None


def default_dtype(flags: frozenset[str] | None = None) -> str:
    """The weight type of the CPU pass when none is asked for: bf16 where the CPU has the lean pass
    (half the bytes of fp32 per pass, and on AVX-512 BF16 CPUs native bf16 products), else fp32."""
    try:
        return "bf16" if isa(flags) is not None else "fp32"
    except ValueError:
        return "fp32"


@lru_cache(maxsize=1)
def extension():
    """The compiled lean pass, or None where it cannot be built here (no compiler, no ninja)."""
    if os.environ.get(DISABLE, "") not in ("", "0"):
        return None
    try:
        from torch.utils import cpp_extension

        from .rows import clear_stale_lock, built

        digest = hashlib.sha1(SOURCE.read_bytes() + b"".join(h.read_bytes() for h in HEADERS)).hexdigest()[:12]  # the headers too
        clear_stale_lock(NAME)
        if not built(NAME):
            print("polyverse: building the lean CPU pass (once per machine, about 30 s)", file=sys.stderr, flush=True)
        return cpp_extension.load(name=NAME, sources=[str(SOURCE)], verbose=False,
                                  extra_cflags=["-O3", "-fopenmp", f"-DPOLYVERSE_LEAN_SOURCE={digest}"],
                                  extra_ldflags=["-fopenmp"])
    except Exception as exc:
        print(f"polyverse: lean CPU pass unavailable ({type(exc).__name__}: {str(exc)[:200]}); "
              "using the transformers pass", file=sys.stderr, flush=True)
        return None


def unsupported(model: torch.nn.Module) -> str | None:
    """Why the lean pass cannot run ``model`` (None: it can)."""
    cfg = getattr(model, "config", None)
    if cfg is None or getattr(cfg, "model_type", None) not in ARCHITECTURES:
        return f"model type {getattr(cfg, 'model_type', None)!r} is not one of {', '.join(ARCHITECTURES)}"
    if getattr(cfg, "hidden_act", "silu") != "silu":
        return f"activation {cfg.hidden_act!r} is not silu"
    if getattr(cfg, "sliding_window", None) and getattr(cfg, "use_sliding_window", True):
        if cfg.sliding_window < getattr(cfg, "max_position_embeddings", 0):
            return "sliding-window attention"
    if getattr(cfg, "pretraining_tp", 1) != 1:
        return "pretraining_tp > 1"
    first = next(model.parameters())
    if first.device.type != "cpu":
        return "not on CPU"
    body = getattr(model, "model", None)
    layers = getattr(body, "layers", None)
    if layers is None or getattr(body, "rotary_emb", None) is None or model.get_output_embeddings() is None:
        return "not a Llama-style decoder"
    for layer in layers:
        att, mlp = getattr(layer, "self_attn", None), getattr(layer, "mlp", None)
        linears = [getattr(att, n, None) for n in ("q_proj", "k_proj", "v_proj", "o_proj")]
        linears += [getattr(mlp, n, None) for n in ("gate_proj", "up_proj", "down_proj")]
        if any(type(m) is not torch.nn.Linear for m in linears):
            return "a layer's projections are not plain Linear modules"
        if any(m.bias is not None for m in linears[3:]):
            return "biases outside q/k/v"
        if any(m.in_features % BLOCK for m in linears):
            return f"a product's input size is not a multiple of {BLOCK}"
    head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
    if head_dim % 16:
        return "head_dim is not a multiple of 16"
    return None


def padded(weight: torch.Tensor) -> torch.Tensor:
    """weight [n, k] with zero rows appended up to a multiple of ``BLOCK`` (a vocabulary of 49153)."""
    extra = -weight.shape[0] % BLOCK
    return weight if not extra else torch.cat([weight, weight.new_zeros(extra, weight.shape[1])])


class LeanModel:
    """A Llama-family model's packed weights for the lean pass, in one weight type.

    ``forward(ids, positions, visible, cache)`` runs one pass and returns hidden [q, H] after the
    final norm; ``project(hidden)`` runs the LM head on rows [m, H] -> logits [m, V] float32.
    Built from the model's weights as they are now: a model changed later (training) needs a new one.
    """

    def __init__(self, model: torch.nn.Module, dtype: str = "fp32", instruction_set: str | None = None) -> None:
        if dtype not in DTYPES:
            raise ValueError(f"dtype must be one of {', '.join(DTYPES)}, got '{dtype}'")
        why = unsupported(model)
        if why:
            raise ValueError(f"the lean pass cannot run this model: {why}")
        ext = extension()
        if ext is None:
            raise RuntimeError("the lean CPU pass is not available on this machine")
        self.isa = instruction_set or isa()
        if self.isa is None:
            raise RuntimeError("the lean CPU pass needs AVX2 + FMA or AVX-512")
        self.dtype = dtype
        cfg = model.config
        body = model.model
        self.heads = cfg.num_attention_heads
        self.kv_heads = getattr(cfg, "num_key_value_heads", None) or self.heads
        self.head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // self.heads
        self.hidden = cfg.hidden_size
        self.vocab = model.get_output_embeddings().weight.shape[0]
        rotary = body.rotary_emb
        kind = KINDS[dtype]
        with torch.no_grad():
            self._model = ext.Model(cfg.hidden_size, self.heads, self.kv_heads, self.head_dim, cfg.intermediate_size,
                                    float(cfg.rms_norm_eps), float(getattr(rotary, "attention_scaling", 1.0)),
                                    rotary.inv_freq.float(), body.embed_tokens.weight, body.norm.weight,
                                    self.isa == "avx512")
            for layer in body.layers:
                att, mlp = layer.self_attn, layer.mlp
                qkv = torch.cat([att.q_proj.weight, att.k_proj.weight, att.v_proj.weight])  # [(Hq + 2 Hkv) D, H]
                biases = [att.q_proj.bias, att.k_proj.bias, att.v_proj.bias]
                bias = None if all(b is None for b in biases) else torch.cat(
                    [b if b is not None else p.weight.new_zeros(p.out_features)
                     for b, p in zip(biases, (att.q_proj, att.k_proj, att.v_proj))])
                gate_up = torch.cat([mlp.gate_proj.weight, mlp.up_proj.weight])  # [2 I, H]
                self._model.add_layer(layer.input_layernorm.weight, layer.post_attention_layernorm.weight, qkv, bias,
                                      att.o_proj.weight, gate_up, mlp.down_proj.weight, kind)
            head = padded(model.get_output_embeddings().weight)
            self._model.set_head(head, kind)
            self.screen = screen.make(ext, self._model, head, dtype, self.vocab)  # argmaxes without the whole head
        self.layers = len(body.layers)

    def forward(self, ids: torch.Tensor, positions: torch.Tensor, visible: torch.Tensor | None,
                cache: "LeanCache", past: int) -> torch.Tensor:
        """ids, positions [q] int64; visible [q, past + q] bool or None (a causal chain after the
        cache) -> hidden [q, H]; the pass's keys and values go to cells past .. past + q - 1."""
        cache.reserve(past + len(ids))
        return self._model.forward(ids, positions, visible, cache.k, cache.v, cache.pos, past)

    def forward_many(self, parts: "list[tuple[Sequence[int], Sequence[int], torch.Tensor | None, LeanCache, int]]") -> torch.Tensor:
        """Several requests in one pass: parts of (ids [q_i], positions [q_i], visible [q_i, past_i + q_i]
        or None, cache, past_i), each as in ``forward`` on its own cache -> hidden [sum q_i, H], the
        parts' rows in order. Each row's bits are those it gets in a pass of its own."""
        flat_ids: list[int] = []
        flat_pos: list[int] = []
        for ids, pos, _, cache, past in parts:
            cache.reserve(past + len(ids))
            flat_ids.extend(ids)
            flat_pos.extend(pos)
        ids = torch.tensor(flat_ids, dtype=torch.long)  # [Q]
        positions = torch.tensor(flat_pos, dtype=torch.long)  # [Q]
        return self._model.forward_many(ids, positions, [p[2] for p in parts], [p[3].k for p in parts],
                                        [p[3].v for p in parts], [p[3].pos for p in parts],
                                        [int(p[4]) for p in parts], [len(p[0]) for p in parts])

    def project(self, hidden: torch.Tensor) -> torch.Tensor:
        """hidden [m, H] -> logits [m, V] float32 through the packed LM head."""
        out = self._model.project(hidden)  # [m, V rounded up to 32]
        return out if out.shape[1] == self.vocab else out[:, : self.vocab]

    def cache(self, max_length: int | None = None) -> "LeanCache":
        """An empty KV cache for this model's passes: float32 for fp32 weights (the model's own numbers),
        IEEE half for bf16 and int8 weights (``KV_DTYPES``)."""
        return LeanCache(self.layers, self.kv_heads, self.head_dim, max_length, dtype=KV_DTYPES[self.dtype])


class LeanCache:
    """The lean pass's KV cache: keys [L, Hkv, capacity / KEY_TILE, D, KEY_TILE] (in tiles of cells,
    each tile's keys transposed: attention scores a vector of cells at a time, reading a head's keys
    as one stream) and values [L, Hkv, capacity, D], float32 or float16 (``dtype``), and a used
    length. The capacity (a multiple of KEY_TILE) doubles when a pass needs more (up to
    ``max_length``), copying the used part once; dropping entries is a length change; ``keep``
    gathers kept entries in place."""

    def __init__(self, layers: int, kv_heads: int, head_dim: int, max_length: int | None = None,
                 least: int = 256, dtype: torch.dtype = torch.float32) -> None:
        self.shape = (layers, kv_heads, head_dim)
        self.max_length = max_length
        self.least = least
        self.dtype = dtype
        self.k = torch.empty(layers, kv_heads, 0, head_dim, KEY_TILE, dtype=dtype)
        self.v = torch.empty(layers, kv_heads, 0, head_dim, dtype=dtype)
        self.pos = torch.empty(0, dtype=torch.long)  # [capacity]: each cell's position (attention's order)
        self.length = 0

    @property
    def capacity(self) -> int:
        return self.v.shape[2]

    def reserve(self, needed: int) -> None:
        """Make room for ``needed`` entries (the used ones copied once into larger buffers)."""
        if needed <= self.capacity:
            return
        from ..kv import capacity_for

        cap = tiles(capacity_for(needed, self.capacity, self.max_length, self.least)) * KEY_TILE
        layers, heads, dim = self.shape
        k = torch.empty(layers, heads, cap // KEY_TILE, dim, KEY_TILE, dtype=self.dtype)
        v = torch.empty(layers, heads, cap, dim, dtype=self.dtype)
        pos = torch.empty(cap, dtype=torch.long)
        used = tiles(self.length)
        k[:, :, :used] = self.k[:, :, :used]
        v[:, :, : self.length] = self.v[:, :, : self.length]
        pos[: self.length] = self.pos[: self.length]
        self.k, self.v, self.pos = k, v, pos

    def get_seq_length(self) -> int:
        return self.length

    def crop(self, tokens_to_remove: int) -> None:
        """Drop the last ``-tokens_to_remove`` entries (transformers 5's negative count)."""
        if tokens_to_remove < 0:
            self.length = max(0, self.length + tokens_to_remove)

    def keys(self, n: int) -> torch.Tensor:
        """The keys of the first ``n`` cells, [L, Hkv, D, n] (a copy)."""
        t = tiles(n)
        k = self.k[:, :, :t].permute(0, 1, 3, 2, 4)  # [L, Hkv, D, tiles, KEY_TILE]
        return k.reshape(*k.shape[:3], t * KEY_TILE)[..., :n]

    def head(self, n: int) -> tuple[torch.Tensor, torch.Tensor]:
        """A copy of the first ``n`` cells' keys (whole tiles: the cells after them in the last tile
        come along and are never read) and values, for ``load_head``."""
        with torch.inference_mode():
            return self.k[:, :, : tiles(n)].clone(), self.v[:, :, :n].clone()

    def load_head(self, cells: tuple[torch.Tensor, torch.Tensor], n: int) -> None:
        """Make the first ``n`` cells those of ``cells`` (``head(m)`` with m >= n), a plain chain from
        position 0, and the length ``n``."""
        k, v = cells
        self.reserve(n)
        with torch.inference_mode():
            self.k[:, :, : tiles(n)] = k[:, :, : tiles(n)]
            self.v[:, :, :n] = v[:, :, :n]
            self.pos[:n] = torch.arange(n)
        self.length = n

    def keep(self, start: int, index: torch.Tensor) -> None:
        """Keep entries below ``start`` and entries ``start + index`` (ascending) right after them."""
        rows = index + start
        n = len(index)
        with torch.inference_mode():  # the buffers are inference tensors (made during a pass)
            self._keep(start, rows, n)

    def _keep(self, start: int, rows: torch.Tensor, n: int) -> None:
        to = torch.arange(start, start + n)
        moved = self.k[:, :, rows // KEY_TILE, :, rows % KEY_TILE]  # [n, L, Hkv, D] (a copy)
        self.k[:, :, to // KEY_TILE, :, to % KEY_TILE] = moved
        self.pos[start : start + n] = self.pos.index_select(0, rows)
        self.v[:, :, start : start + n] = self.v.index_select(2, rows)
        self.length = start + n

    def __deepcopy__(self, memo: dict) -> "LeanCache":
        other = copy.copy(self)
        with torch.inference_mode():
            other._copy_from(self)
        return other

    def _copy_from(self, other: "LeanCache") -> None:
        self.k, self.v, self.pos = torch.empty_like(other.k), torch.empty_like(other.v), other.pos.clone()
        used = tiles(other.length)
        self.k[:, :, :used] = other.k[:, :, :used]
        self.v[:, :, : other.length] = other.v[:, :, : other.length]


def tiles(n: int) -> int:
    """Key tiles holding ``n`` cells.

    >>> tiles(0), tiles(1), tiles(16), tiles(17)
    (0, 1, 1, 2)
    """
    return -(-n // KEY_TILE)
