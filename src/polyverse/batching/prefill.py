"""How a pass's prompt tokens are shared between the requests still reading their prompts.

A pass feeds at most ``prefill_chunk`` prompt tokens over all such requests. Given oldest first, a
long prompt would take them all, pass after pass, and a short request arriving behind it would wait
for its first token until the long prompt is in: the stall chunking is there to prevent. So the
shortest remaining prompt goes first (it finishes soonest and frees its share), and the oldest
request always gets a quarter of the budget, so a stream of short requests cannot starve it.
"""

from __future__ import annotations

from typing import Sequence


def prompt_shares(remaining: Sequence[int], budget: int) -> list[int]:
    """Prompt tokens each request feeds this pass; ``remaining`` in arrival order (oldest first).

    >>> prompt_shares([7900, 30], 64)  # the short prompt is in at once, the long one goes on
    [34, 30]
    >>> prompt_shares([7900, 7000, 5], 64)  # the oldest keeps its quarter
    [16, 43, 5]
    >>> prompt_shares([10, 20], 64), prompt_shares([], 64)
    ([10, 20], [])
    """
    shares = [0] * len(remaining)
    if not remaining:
        return shares
    left = budget
    shares[0] = min(remaining[0], max(1, budget // 4), left)
    left -= shares[0]
    for i in sorted(range(len(remaining)), key=lambda i: (remaining[i] - shares[i], i)):
        if left <= 0:
            break
        more = min(remaining[i] - shares[i], left)
        shares[i] += more
        left -= more
    return shares
