"""The LM head's argmax through an int8 screen (``lean_screen.h``): what a greedy pass reads of a
row, found without streaming the whole bf16 or fp32 head.

The screen multiplies the rows by an int8 copy of the head, keeps every column whose screened
value could still be the largest under a proven bound on the screen's error, and computes those
columns alone through the head's own kernel: the argmax is the one ``project`` would give, bit for
bit (the first of equal largest values). A row with too many candidates, or a value that is not a
number, is left to the full product. The screened values themselves serve where a method only
drafts from a row (its guesses are verified later): ``Logits.rough``.

``POLYVERSE_NO_SCREEN=1`` turns the screen off (every argmax from the full product), to compare.
"""

from __future__ import annotations

import os

import torch

DISABLE = "POLYVERSE_NO_SCREEN"
MOST = 256  # candidates past which a row goes to the full product: its exact panels would cost more


def enabled() -> bool:
    return os.environ.get(DISABLE, "") in ("", "0")


class Screen:
    """``screen(hidden [m, H])`` -> (tops: list of m argmaxes, -1 where the full product must say;
    rough [m, V]: the screened logits); or in two steps, ``rough`` then ``settle`` for the rows whose
    argmax is read."""

    def __init__(self, ext, model, head: torch.Tensor, dtype: str, vocab: int) -> None:
        """``model``: the lean pass's C++ model, its head already set from ``head`` [n, H] (padded)."""
        exact = head.detach().float()
        if dtype == "bf16":
            exact = exact.bfloat16().float()  # the weights the bf16 kernel multiplies
        self.vocab = vocab
        self._screen = ext.Screen(model, exact, vocab, MOST)

    def __call__(self, hidden: torch.Tensor) -> tuple[list[int], torch.Tensor]:
        tops, rough = self._screen.top(hidden)  # [m], [m, n]
        return tops.tolist(), rough[:, : self.vocab]

    def rough(self, hidden: torch.Tensor) -> torch.Tensor:
        """The screened logits alone, [m, V]: rows a method only drafts from need no bound."""
        return self._screen.rough(hidden)[:, : self.vocab]

    def settle(self, hidden: torch.Tensor, rough: torch.Tensor) -> list[int]:
        """The argmaxes of rows ``rough`` screened (hidden [m, H], rough [m, V]), as ``__call__`` gives them."""
        return self._screen.settle(hidden, rough).tolist()

    def likeliest(self, rough: torch.Tensor) -> tuple[list[int], list[float]]:
        """Each screened row's [m, V] likeliest token and its softmax probability (``logits.likeliest``)."""
        index, prob = self._screen.likeliest(rough)
        return index.tolist(), prob.tolist()


def make(ext, model, head: torch.Tensor, dtype: str, vocab: int) -> Screen | None:
    """The screen of a lean model's head, or None where it does not pay (an int8 head is already
    the screen's size) or is turned off."""
    if dtype == "int8" or not enabled():
        return None
    return Screen(ext, model, head, dtype, vocab)
