"""Pure verification of a draft tree against the target's logits of one pass.

Row 0 of the logits belongs to the pending token (the root); row i+1 to draft node i.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .config import SamplingConfig
from .draft import Draft
from .sampling import sample, target_probs, uniform


@dataclass(frozen=True)
class Verdict:
    accepted: tuple[int, ...]  # draft node indices on the accepted path, root side first
    tokens: tuple[int, ...]  # the accepted draft tokens followed by the bonus token

    @property
    def bonus(self) -> int:
        return self.tokens[-1]


def verify_greedy(draft: Draft, logits: torch.Tensor) -> Verdict:
    """Longest path whose every token is the target's argmax, plus the argmax after it.

    Example: draft chain (5, 7, 9), argmax per row (5, 7, 3, 4) -> accepted nodes (0, 1),
    tokens (5, 7, 3): 9 is rejected and the target's 3 is the bonus token. When several
    children carry the argmax token, the one leading to the longest accepted path wins.
    """
    top = getattr(logits, "top", None)  # Logits: argmaxes a batched pass may have found already
    if not len(draft):  # a plain pass: the root's argmax
        return Verdict((), (top(0) if top is not None else int(logits[0].argmax()),))
    best: dict[int, int] = {}  # feed row -> argmax; rows are read lazily, root side first

    def argmax(row: int) -> int:
        if row not in best:
            best[row] = top(row) if top is not None else int(logits[row].argmax())
        return best[row]

    children: dict[int, list[int]] = {}
    for i, p in enumerate(draft.parents):
        children.setdefault(p, []).append(i)

    def longest(node: int) -> list[int]:
        want = argmax(node + 1)
        paths = [[c] + longest(c) for c in children.get(node, ()) if draft.tokens[c] == want]
        return max(paths, key=len) if paths else []

    path = longest(-1)
    last = path[-1] if path else -1
    tokens = tuple(draft.tokens[i] for i in path) + (argmax(last + 1),)
    return Verdict(tuple(path), tokens)


def verify_sampled(draft: Draft, probs, generator: torch.Generator) -> Verdict:
    """Lossless speculative sampling over a tree (multi-candidate, SpecInfer-style).

    ``probs`` [1 + n, V] is the target distribution p at each feed row. At a node, each child x
    with draft distribution q (one-hot when the draft is deterministic) is tried in turn: accept
    with probability min(1, p(x) / q(x)); on rejection p <- normalise(max(0, p - q)). When no
    child is accepted the bonus token is drawn from what is left of p. The output then has
    exactly the target's distribution, whatever the draft.

    Example: deterministic chain (5,) with p(5) = 0.3 at the root: with probability 0.3 the
    token 5 is accepted and a bonus is drawn from row 1; otherwise the bonus is drawn from
    row 0 with token 5 removed and renormalised.
    """
    node, path = -1, []
    while True:
        p = probs[node + 1]  # [V]
        accepted = None
        for child in draft.children(node):
            x = draft.tokens[child]
            q = None if draft.probs is None else draft.probs[child].float()  # [V]
            qx = 1.0 if q is None else float(q[x])
            px = float(p[x])
            if qx > 0.0 and uniform(generator) * qx < px:
                accepted = child
                break
            if q is None:
                residual = p.clone()
                residual[x] = 0.0
            else:
                residual = torch.clamp(p - q, min=0.0)
            total = float(residual.sum())
            if total > 0.0:
                p = residual / total
        if accepted is None:
            tokens = tuple(draft.tokens[i] for i in path) + (sample(p, generator),)
            return Verdict(tuple(path), tokens)
        path.append(accepted)
        node = accepted


def verify(draft: Draft, logits: torch.Tensor, cfg: SamplingConfig, generator: torch.Generator) -> Verdict:
    """Greedy check for temperature 0, lossless speculative sampling otherwise."""
    if cfg.greedy:
        return verify_greedy(draft, logits)
    return verify_sampled(draft, _RowProbs(logits, cfg), generator)


class _RowProbs:
    """Target distributions of the rows verification reads, computed as they are read."""

    def __init__(self, logits, cfg: SamplingConfig) -> None:
        self.logits = logits
        self.cfg = cfg

    def __getitem__(self, row: int) -> torch.Tensor:
        return target_probs(self.logits[row][None], self.cfg)[0]  # [V]
