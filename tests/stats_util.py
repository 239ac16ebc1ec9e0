"""A chi-square goodness-of-fit check without scipy (Wilson-Hilferty normal approximation)."""

import math


def chi_square_z(counts: dict, probs: dict) -> float:
    """z-score of the chi-square statistic of observed ``counts`` against ``probs``.

    Cells with expected count below 5 are pooled. A large z (> 3.1, i.e. p < 0.001) rejects.
    """
    n = sum(counts.values())
    keys = set(counts) | {k for k, p in probs.items() if p > 0}
    if any(probs.get(k, 0.0) == 0.0 and counts.get(k, 0) > 0 for k in keys):
        return math.inf  # a token the target can never produce was produced
    cells, pooled_obs, pooled_exp = [], 0, 0.0
    for k in keys:
        e = n * probs.get(k, 0.0)
        if e < 5:
            pooled_obs += counts.get(k, 0)
            pooled_exp += e
        else:
            cells.append((counts.get(k, 0), e))
    if pooled_exp > 0:
        cells.append((pooled_obs, pooled_exp))
    df = len(cells) - 1
    if df < 1:
        return 0.0
    x = sum((o - e) ** 2 / e for o, e in cells)
    return ((x / df) ** (1 / 3) - (1 - 2 / (9 * df))) / math.sqrt(2 / (9 * df))


Z_REJECT = 3.1
