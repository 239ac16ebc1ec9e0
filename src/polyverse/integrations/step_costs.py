"""An engine step's cost as a function of the tokens it feeds, learned from the steps themselves.

Inside another engine (vLLM) polyverse cannot time a pass of its own making, but it sees each step
go by: the time between two calls of the proposer is one step, and the tokens that step fed are
the rows it scheduled (one per decoding request plus the draft tokens proposed for it). A decayed
mean per feed size, made non-decreasing in the feed (pool-adjacent-violators), is the curve that
sizes drafts; past the largest size seen it rises by the slope of a line fitted through all sizes
(or of its own last segment, if steeper). The curve is convex on CPUs: flat while the products
stream each weight once for all rows, then about linear, so a line through a single request's
steps would understate what rows cost in a batch; per-size means keep each region's own cost.
"""

from __future__ import annotations

from ..costs import CostCurve

# until two feed sizes have been seen, a row is assumed to cost this share of a one-row step: cheap
# enough that drafts are tried, and so the feed sizes the line is fitted on are seen
PRIOR_SLOPE = 0.03
MAX_FEED = 1024  # the curve is written out to this many tokens (beyond it: extrapolated)
MIN_WEIGHT = 0.5  # a feed size counts once its decayed weight is at least this


class StepCosts:
    """Decayed mean seconds per feed size, and the line through them.

    Example: steps of 1 token costing 20 (any unit) and of 9 tokens costing 24 -> c(q) = 20 + 0.5 (q - 1).
    """

    def __init__(self, decay: float = 0.98, prior_slope: float = PRIOR_SLOPE) -> None:
        if not 0.0 < decay <= 1.0:
            raise ValueError(f"decay must be in (0, 1], got {decay}")
        self.decay = decay
        self.prior_slope = prior_slope
        self.bins: dict[int, list[float]] = {}  # feed size -> [weight, mean seconds]
        self._curve: CostCurve | None = None

    def record(self, fed: int, seconds: float) -> None:
        if fed < 1 or not seconds > 0.0:
            return
        for b in self.bins.values():
            b[0] *= self.decay
        w, mean = self.bins.setdefault(fed, [0.0, 0.0])
        self.bins[fed] = [w + 1.0, mean + (seconds - mean) / (w + 1.0)]
        self._curve = None

    def line(self) -> tuple[float, float] | None:
        """(a, b) of c(q) = a + b (q - 1), fitted by weighted least squares; None before any step."""
        if not self.bins:
            return None
        pts = [(q, w, m) for q, (w, m) in self.bins.items() if w > 1e-6]
        total = sum(w for _, w, _ in pts)
        qbar = sum(w * q for q, w, _ in pts) / total
        mbar = sum(w * m for _, w, m in pts) / total
        var = sum(w * (q - qbar) ** 2 for q, w, _ in pts)
        if len(pts) < 2 or var <= 0.0:
            a = mbar / (1.0 + self.prior_slope * (qbar - 1.0))
            return a, self.prior_slope * a
        b = max(sum(w * (q - qbar) * (m - mbar) for q, w, m in pts) / var, 0.0)
        a = mbar - b * (qbar - 1.0)
        if a <= 0.0:  # steps of many tokens only: keep a one-token step positive
            a = min(m for _, _, m in pts) * 0.5
        return a, b

    def curve(self) -> CostCurve | None:
        """The measured curve (None before any step). Example: means 10 at 1 token, 9 at 4 and 20 at
        16 -> 9.5 at 1 and 4 (pooled: a larger feed never costs less), 20 at 16."""
        if self._curve is None:
            fit = self.line()
            if fit is None:
                return None
            a, b = fit
            pts = sorted((q, w, m) for q, (w, m) in self.bins.items() if w >= MIN_WEIGHT)
            if len(pts) < 2:
                self._curve = CostCurve((1, MAX_FEED), (a, a + b * (MAX_FEED - 1)))
                return self._curve
            sizes, seconds = monotone(pts)
            if sizes[0] > 1:
                sizes, seconds = [1, *sizes], [seconds[0], *seconds]
            tail = max(b, (seconds[-1] - seconds[-2]) / (sizes[-1] - sizes[-2]))
            if sizes[-1] < MAX_FEED:
                sizes, seconds = [*sizes, MAX_FEED], [*seconds, seconds[-1] + tail * (MAX_FEED - sizes[-1])]
            self._curve = CostCurve(tuple(sizes), tuple(seconds))
        return self._curve


def monotone(points: list[tuple[int, float, float]]) -> tuple[list[int], list[float]]:
    """Weighted means (size, weight, mean) made non-decreasing in size by pooling adjacent violators.

    >>> monotone([(1, 1.0, 10.0), (4, 1.0, 9.0), (16, 1.0, 20.0)])
    ([1, 4, 16], [9.5, 9.5, 20.0])
    """
    blocks: list[list[float]] = []  # [weight, mean, count]
    for _, w, m in points:
        blocks.append([w, m, 1])
        while len(blocks) > 1 and blocks[-2][1] > blocks[-1][1]:
            w2, m2, n2 = blocks.pop()
            w1, m1, n1 = blocks[-1]
            blocks[-1] = [w1 + w2, (w1 * m1 + w2 * m2) / (w1 + w2), n1 + n2]
    seconds = [m for _, m, n in blocks for _ in range(int(n))]
    return [q for q, _, _ in points], seconds
