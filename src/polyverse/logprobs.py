"""Log-probabilities of output tokens, read from the target's logits rows that produced them.

Every method verifies against the target's own logits, and a token accepted at draft node i was
predicted by the row of its parent (the pending token's row for the first), so its log-probability
is that row's, as ``ar`` computes it: the model's distribution (before temperature, top-k, top-p),
as OpenAI reports it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch


@dataclass(frozen=True)
class TokenLogprob:
    token: int
    logprob: float
    top: tuple[tuple[int, float], ...]  # the k likeliest (token, logprob), likeliest first


def producing_rows(accepted: Sequence[int], n: int) -> list[int]:
    """The logits rows that predicted the first ``n`` tokens of a verdict: the root's (0), then the
    row of each accepted draft node (node i is row i + 1).

    >>> producing_rows((0, 2), 3), producing_rows((0, 2), 2), producing_rows((), 1)
    ([0, 1, 3], [0, 1], [0])
    """
    return ([0] + [i + 1 for i in accepted])[:n]


def token_logprobs(rows: torch.Tensor, tokens: Sequence[int], k: int) -> tuple[TokenLogprob, ...]:
    """[n, V] logits rows and the n tokens they produced -> each token's logprob and the top ``k``."""
    lp = torch.log_softmax(rows.float(), dim=-1)  # [n, V]
    chosen = lp[torch.arange(len(tokens)), torch.as_tensor(list(tokens))].tolist()
    if k:
        values, ids = torch.topk(lp, k, dim=-1)  # [n, k]
        tops = [tuple(zip(i, v)) for i, v in zip(ids.tolist(), values.tolist())]
    else:
        tops = [()] * len(tokens)
    return tuple(TokenLogprob(t, c, top) for t, c, top in zip(tokens, chosen, tops))
