"""`auto`'s second draft source: a draft head (``polyverse.heads``) guessing the next tokens from the
target's last hidden state, where the text offers no n-gram to copy.

The head says how sure it is of each guess (its probability); how often guesses that sure are
accepted is learnt here, per probability bucket, from the tokens the target writes (whether or not
the guesses were fed: the written text says whether they were right), so an overconfident head is
corrected by what it meets. The chance that the first j guesses are all accepted is the product of
their buckets' acceptance; with the backend's cost curve c(q) the branch drafts the k that
maximises (1 + sum of those chances up to k) / c(1 + k), and adds the first guess's runner-up as a
one-token side branch where its own learnt chance (per bucket of its probability) pays for the row.
"""

from __future__ import annotations

from typing import Sequence

import torch

from ..batching.budget import Acceptance
from ..costs import CostCurve
from ..heads import Drafter

EDGES = (0.2, 0.4, 0.6, 0.8)  # head probability -> bucket 0 .. 4
DEEPEST = 4  # most guesses chained in one step
WORTH = 0.3  # a further guess is computed only while the chain so far is this likely to be accepted


def bucket(prob: float) -> int:
    """>>> [bucket(p) for p in (0.1, 0.2, 0.5, 0.99)]
    [0, 1, 2, 4]"""
    return sum(prob >= e for e in EDGES)


class HeadBranch:
    """One request's head guesses: the hidden state to start from, the guesses made, their evidence."""

    def __init__(self, drafter: Drafter, curve: CostCurve, decay: float, most: int) -> None:
        self.drafter = drafter
        self.curve = curve
        self.most = min(most, DEEPEST)
        # prior: a guess is accepted about as often as the head says (the middle of its bucket)
        mids = [(lo + hi) / 2 for lo, hi in zip((0.0,) + EDGES, EDGES + (1.0,))]
        self.stats = [Acceptance(decay, 2 * m, 2 * (1 - m)) for m in mids]
        # the first guess's runner-up, fed beside the chain where it pays: right about as often as the head says
        self.seconds = [Acceptance(decay, 2 * m, 2 * (1 - m)) for m in mids]
        self.second: tuple[int, int] | None = None  # (token, bucket) of the last proposal's runner-up
        self.alt: int | None = None  # the runner-up, when the last proposal feeds it
        self.hidden: torch.Tensor | None = None  # [H] the row that chose the pending token
        self.guesses: list[tuple[int, int]] = []  # (token, bucket) chained at the last proposal
        self.chances: list[float] = []  # the chance that the proposed guesses are accepted up to each one
        self.seen = 0
        self.drafts = 0  # passes this branch drafted

    def start(self, context: Sequence[int]) -> None:
        self.hidden, self.guesses, self.seen = None, [], len(context)
        self.second, self.alt = None, None

    def written(self, context: Sequence[int]) -> None:
        """Evidence: the tokens written since the last proposal against the guesses made there."""
        new = context[self.seen:]
        self.seen = len(context)
        for (token, b), real in zip(self.guesses, new):
            self.stats[b].update(int(token == real), 1)
            if token != real:
                break
        if self.second is not None and new:
            self.seconds[self.second[1]].update(int(self.second[0] == new[0]), 1)
        self.guesses, self.second = [], None

    def observe(self, logits, accepted: Sequence[int]) -> None:
        """Keep the hidden state of the row that chose the new pending token (the last accepted)."""
        features = getattr(logits, "features", None)
        row = accepted[-1] + 1 if accepted else 0
        hidden = features(row) if features is not None else None
        self.hidden = None if hidden is None else hidden.detach().float().clone()

    def could_beat(self, rate: float) -> bool:
        """Whether the head's guesses could pay more than ``rate`` tokens per second, were they all
        as good as its best bucket: where they could not (a long n-gram run), no guess is computed."""
        best = max(s.alpha for s in self.stats)
        expected, chance = 1.0, 1.0
        for k in range(1, self.most + 1):
            chance *= best
            expected += chance
            if expected / self.curve(1 + k) > rate:
                return True
        return False

    def propose(self, context: Sequence[int]) -> tuple[list[int], float]:
        """(the guesses worth feeding, the expected tokens per second of that pass); ([], 0) when the
        head has nothing to start from."""
        if self.hidden is None:
            return [], 0.0
        hidden, token = self.hidden, int(context[-1])
        chances: list[float] = []
        chance = 1.0
        self.alt = None
        while len(self.guesses) < self.most and chance >= WORTH:
            guess = self.drafter.step(hidden, token)
            hidden, token, b = guess.z, guess.token, bucket(guess.prob)
            if not self.guesses:
                self.second = (guess.second, bucket(guess.second_prob))
            self.guesses.append((token, b))
            chance *= self.stats[b].alpha
            chances.append(chance)
        best_k, best_rate, expected = 0, 1.0 / self.curve(1), 1.0
        for k, c in enumerate(chances, start=1):
            expected += c
            rate = expected / self.curve(1 + k)
            if rate > best_rate:
                best_k, best_rate = k, rate
        self.chances = chances[:best_k]
        if best_k and self.second is not None:  # the runner-up as a second branch of one token
            with_alt = (1.0 + sum(self.chances) + self.seconds[self.second[1]].alpha) / self.curve(2 + best_k)
            if with_alt > best_rate:
                self.alt, best_rate = self.second[0], with_alt
        return [t for t, _ in self.guesses[:best_k]], best_rate
