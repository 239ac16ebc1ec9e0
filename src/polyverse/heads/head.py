"""A draft head: a small network that guesses the target's next tokens from its last hidden state.

After a pass the target has, for the last token it accepted, the hidden state h [H] (after the
final norm, what its LM head reads) and the token that row chose, x. The head maps (h, embed(x))
to z [H], a guess at the hidden state the target will have at x, and reads a token from z through
the target's own LM-head rows, restricted to the tokens the head knows (``ids``, the ones its
training text used). Chained on its own guesses it drafts several tokens: z is the next step's h.
The target verifies every draft token, so a bad guess costs speed, never a different output.

    z = h + down(silu(mix([h ; embed(x)])))      [H]
    logits = lm_head[ids] @ z                    [V']   -> the drafted token and its probability
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file

WEIGHTS = "head.safetensors"
META = "polyverse.json"


@dataclass(frozen=True)
class HeadShape:
    hidden: int  # the target's hidden size H
    inner: int  # the head's own width
    vocab: int  # tokens it can draft (V')


class DraftHead(torch.nn.Module):
    """The trainable part: (h [B, H], embed(x) [B, H]) -> z [B, H]; ``ids`` [V'] the tokens it drafts."""

    def __init__(self, shape: HeadShape, ids: torch.Tensor) -> None:
        super().__init__()
        if ids.shape != (shape.vocab,):
            raise ValueError(f"ids must have shape ({shape.vocab},), got {tuple(ids.shape)}")
        self.shape = shape
        self.mix = torch.nn.Linear(2 * shape.hidden, shape.inner)
        self.down = torch.nn.Linear(shape.inner, shape.hidden)
        self.register_buffer("ids", ids.long())

    def forward(self, hidden: torch.Tensor, embedded: torch.Tensor, products=None) -> torch.Tensor:
        """hidden, embedded [B, H] -> z [B, H]; ``products``: (mix, down) callables to run the two
        layers with instead of the modules' own (the lean kernels' packed copies)."""
        mix, down = products if products is not None else (self.mix, self.down)
        return hidden + down(F.silu(mix(torch.cat([hidden, embedded], dim=-1))))

    def save(self, folder: Path, meta: dict) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        tensors = {k: v.detach().contiguous() for k, v in self.state_dict().items()}
        save_file(tensors, str(folder / WEIGHTS))
        info = dict(meta, hidden=self.shape.hidden, inner=self.shape.inner, vocab=self.shape.vocab)
        (folder / META).write_text(json.dumps(info, indent=2) + "\n")

    @classmethod
    def load(cls, folder: Path) -> tuple["DraftHead", dict]:
        meta = json.loads((folder / META).read_text())
        tensors = load_file(str(folder / WEIGHTS))
        head = cls(HeadShape(int(meta["hidden"]), int(meta["inner"]), int(meta["vocab"])), tensors["ids"])
        head.load_state_dict(tensors)
        return head.eval(), meta


class Guess(NamedTuple):
    z: torch.Tensor  # [H] the head's stand-in for the target's hidden state at the guessed token
    token: int  # the guess
    prob: float  # the head's probability of it
    second: int  # its runner-up
    second_prob: float


class Drafter:
    """A draft head bound to a target's embeddings, for decoding: chains of guessed tokens.

    ``kind`` ("fp32", "bf16", "int8"): run the head's products on the lean pass's packed kernels in
    that weight type (the guesses are verified, so their rounding costs nothing but a guess); None,
    or where the lean kernels cannot run: torch in float32.
    """

    def __init__(self, head: DraftHead, embed: torch.Tensor, lm_head: torch.Tensor, kind: str | None = None) -> None:
        # embed, lm_head [V, H]: the target's input embeddings and LM-head rows (the same tensor when tied)
        self.head = head.to(embed.device)
        self.embed = embed
        self.ids = head.ids.tolist()
        rows = lm_head[head.ids].float().contiguous()  # [V', H]
        packed = _packed(head, rows, kind) if kind is not None else None
        if packed is None:
            self.products, self.project = None, lambda z: z @ rows.T  # [B, H] -> [B, V']
        else:
            mix, down, out = packed
            self.products = (mix.forward, down.forward)
            self.project = lambda z: out.forward(z)[:, : len(self.ids)]  # the packed rows are padded
        self.packed = packed is not None

    @torch.inference_mode()
    def step(self, hidden: torch.Tensor, token: int) -> "Guess":
        """hidden [H], the token its row chose -> its guess at the next token (``Guess``)."""
        z = self.head(hidden.float()[None], self.embed[token].float()[None], self.products)  # [1, H]
        probs, best = torch.softmax(self.project(z)[0], dim=-1).topk(min(2, len(self.ids)))  # of [V']
        second = (self.ids[int(best[1])], float(probs[1])) if len(best) > 1 else (self.ids[int(best[0])], 0.0)
        return Guess(z[0], self.ids[int(best[0])], float(probs[0]), *second)


def _packed(head: DraftHead, rows: torch.Tensor, kind: str):
    """The head's three products as the lean pass's packed weights, or None where they cannot run."""
    from ..backends.cpu import lean

    ext = lean.extension() if kind in lean.KINDS else None
    which = lean.isa() if ext is not None else None
    if which is None or any(n % 32 for n in (head.shape.hidden, head.shape.inner)):
        return None
    code, wide = lean.KINDS[kind], which == "avx512"
    with torch.no_grad():
        return (ext.Linear(head.mix.weight, head.mix.bias, code, wide), ext.Linear(head.down.weight, head.down.bias, code, wide),
                ext.Linear(lean.padded(rows), None, code, wide))
