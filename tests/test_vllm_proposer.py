"""polyverse's proposer for vLLM (``integrations.vllm``), driven as vLLM's model runner drives it.

vLLM itself is not needed: a scripted engine plays the runner (its batch rows, request ids and
history array), verifies drafts against each request's fixed greedy continuation and writes the
accepted tokens plus one, as vLLM's greedy verification does. The proposer must never change
those tokens (vLLM guarantees that), so these tests check what it decides: draft sizes, state
that follows the batch's reordering, backing off under load, and the edges of vLLM's call.
"""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from polyverse.integrations.step_costs import StepCosts
from polyverse.integrations.vllm import Auto, PromptLookup


def config(k: int = 8, max_len: int = 256):
    return SimpleNamespace(speculative_config=SimpleNamespace(num_speculative_tokens=k),
                           model_config=SimpleNamespace(max_model_len=max_len))


class Runner:
    """Plays vLLM's model runner: rows of requests, ``input_batch.req_ids``, the history array."""

    def __init__(self, drafter, max_len: int = 256, rows: int = 32, cost=lambda fed: 0.020) -> None:
        self.drafter = drafter
        self.now, self.cost = 0.0, cost  # a step's seconds as a function of the tokens it feeds
        drafter.clock = lambda: self.now
        self.input_batch = SimpleNamespace(req_ids=[])
        self.tokens = np.zeros((rows, max_len), dtype=np.int32)
        self.lengths = np.zeros(rows, dtype=np.int32)
        self.targets: dict[str, list[int]] = {}  # request id -> its whole greedy text (prompt first)
        self.prompt: dict[str, int] = {}
        self.drafts: dict[str, list[int]] = {}

    def add(self, rid: str, text: list[int], prompt_len: int) -> None:
        row = len(self.input_batch.req_ids)
        self.input_batch.req_ids.append(rid)
        self.targets[rid], self.prompt[rid] = text, prompt_len
        self.tokens[row, :prompt_len] = text[:prompt_len]
        self.lengths[row] = prompt_len
        self.drafts[rid] = []

    def swap(self, a: int, b: int) -> None:
        ids = self.input_batch.req_ids
        ids[a], ids[b] = ids[b], ids[a]
        self.tokens[[a, b]] = self.tokens[[b, a]]
        self.lengths[[a, b]] = self.lengths[[b, a]]

    def step(self) -> list[list[int]]:
        """Verify every request's draft, write the accepted tokens and one more, then propose."""
        sampled = []
        self.now += self.cost(sum(1 + len(self.drafts[rid]) for rid in self.input_batch.req_ids))
        for row, rid in enumerate(self.input_batch.req_ids):
            n, text, draft = int(self.lengths[row]), self.targets[rid], self.drafts[rid]
            m = 0
            while m < len(draft) and n + m < len(text) and draft[m] == text[n + m]:
                m += 1
            new = text[n : n + m + 1]
            self.tokens[row, n : n + len(new)] = new
            self.lengths[row] = n + len(new)
            sampled.append(list(new))
        out = self.propose_draft_token_ids(sampled)
        for rid, d in zip(self.input_batch.req_ids, out):
            self.drafts[rid] = list(d)
        return out

    def propose_draft_token_ids(self, sampled):  # the name and frame vLLM's runner calls from
        return self.drafter.propose(sampled, self.lengths[: len(sampled)].copy(), self.tokens, slot_mappings=None)


def periodic(period: int, length: int, seed: int) -> list[int]:
    rng = np.random.default_rng(seed)
    unit = [int(t) for t in rng.integers(10, 1000, size=period)]
    return (unit * (length // period + 1))[:length]


def test_step_costs_fit_a_line_and_fall_back_to_the_prior():
    costs = StepCosts(decay=1.0, prior_slope=0.05)
    assert costs.curve() is None
    for _ in range(3):
        costs.record(4, 0.0115)
    a, b = costs.line()
    assert a == pytest.approx(0.0115 / 1.15) and b == pytest.approx(0.05 * a)  # one size: the prior's slope
    for q in (1, 5, 9):
        costs.record(q, 0.010 + 0.0005 * (q - 1))
    costs.bins.pop(4)
    a, b = costs.line()
    assert a == pytest.approx(0.010) and b == pytest.approx(0.0005)
    assert costs.curve()(17) == pytest.approx(0.018)  # past the sizes seen: the line's slope
    costs.record(0, 1.0)  # nothing fed / no time: ignored
    costs.record(3, 0.0)
    assert set(costs.bins) == {1, 5, 9}


def test_step_costs_keep_a_convex_curve_convex():
    costs = StepCosts(decay=1.0)
    truth = lambda q: 0.040 if q <= 8 else 0.040 + 0.003 * (q - 8)  # noqa: E731  flat, then linear
    for q in (1, 2, 4, 8, 16, 20, 24):
        for _ in range(4):
            costs.record(q, truth(q))
    curve = costs.curve()
    for q in (1, 5, 8, 16, 22, 24):
        assert curve(q) == pytest.approx(truth(q), rel=1e-6)
    assert curve(40) == pytest.approx(truth(40), rel=1e-6)  # the last segment's slope, steeper than the line's
    costs.record(12, 0.030)  # a noisy fast step: the curve still never falls
    curve = costs.curve()
    assert all(curve(q) <= curve(q + 1) for q in range(1, 60))


def test_a_repetitive_request_alone_drafts_long_and_is_mostly_accepted():
    drafter = Auto(config(k=8, max_len=512))
    run = Runner(drafter, max_len=512, cost=lambda fed: 0.020 + 0.0001 * fed)  # a draft row costs almost nothing
    run.add("r0", periodic(7, 500, 0), 30)
    accepted = []
    for _ in range(30):
        before = int(run.lengths[0])
        run.step()
        accepted.append(int(run.lengths[0]) - before)
    assert max(len(d) for d in run.drafts.values()) <= 8
    assert sum(accepted[-10:]) / 10 > 5  # most of each 8-token draft is accepted


def test_drafts_back_off_as_the_batch_grows_and_come_back_when_it_shrinks():
    # a CPU-like curve: flat to 4 rows, then 3 ms per row; the proposer learns it from the steps
    drafter = Auto(config(k=8, max_len=512))
    run = Runner(drafter, max_len=512, cost=lambda fed: 0.040 + 0.003 * max(fed - 4, 0))
    rng = np.random.default_rng(0)
    for i in range(16):  # text over 3 symbols: n-gram guesses right about half the time
        run.add(f"r{i}", [int(t) for t in rng.integers(0, 3, size=500)], 60)
    ids = list(run.input_batch.req_ids)
    del run.input_batch.req_ids[1:]
    alone = [len(run.step()[0]) for _ in range(30)]
    assert sum(alone[-10:]) / 10 >= 2  # alone: the rows up to 4 are free, so it drafts
    run.input_batch.req_ids[:] = ids  # 15 more join
    busy = [sum(len(d) for d in run.step()) for _ in range(30)]
    assert sum(busy[-10:]) / 10 <= 2  # 16 together: a row costs more than a coin-flip token is worth
    del run.input_batch.req_ids[1:]  # the others finish
    again = [len(run.step()[0]) for _ in range(10)]
    assert sum(again[-5:]) / 5 >= 2  # drafts grow back


def test_state_follows_the_batch_reordering():
    drafter = Auto(config(k=6))
    run = Runner(drafter)
    for i in range(3):
        run.add(f"r{i}", periodic(4 + i, 150, i), 25)
    for _ in range(5):
        run.step()
    states = {rid: drafter.requests[rid] for rid in run.input_batch.req_ids}
    run.swap(0, 2)
    run.step()
    for rid, st in states.items():  # the same objects, each still indexing its own request's text
        assert drafter.requests[rid] is st
        row = run.input_batch.req_ids.index(rid)
        assert st.index.tokens == [int(t) for t in run.tokens[row, : run.lengths[row]]]


def test_without_request_ids_rows_are_checked_against_their_history():
    drafter = PromptLookup(config(k=5))
    texts = [periodic(3, 80, 1), periodic(4, 80, 2)]
    sampled = [[texts[0][20]], [texts[1][20]]]
    tokens = np.zeros((2, 128), dtype=np.int32)
    tokens[0, :21], tokens[1, :21] = texts[0][:21], texts[1][:21]
    lengths = np.array([21, 21])
    first = drafter.propose(sampled, lengths, tokens)  # called from here: no runner, rows are the keys
    assert first == [texts[0][21:26], texts[1][21:26]]
    swapped = drafter.propose(sampled[::-1], lengths, tokens[::-1].copy())  # the rows traded places
    assert swapped == first[::-1]  # each row's state rebuilt from its own history, not its row's old one


def test_prefilling_rows_and_full_contexts_get_no_draft():
    drafter = PromptLookup(config(k=4, max_len=32))
    tokens = np.array([periodic(3, 32, 0), periodic(3, 32, 0), periodic(3, 32, 0)], dtype=np.int32)
    out = drafter.propose([[5], [], [7]], np.array([20, 10, 31]), tokens)
    assert len(out[0]) == 4 and out[1] == [] and out[2] == []
    out = drafter.propose([[5]], np.array([29]), tokens)
    assert len(out[0]) <= 32 - 1 - 29  # a draft never runs past the context


@settings(max_examples=25, deadline=None)
@given(k=st.integers(1, 10), rows=st.integers(1, 6), seed=st.integers(0, 10_000),
       steps=st.integers(1, 15), swaps=st.lists(st.tuples(st.integers(0, 5), st.integers(0, 5)), max_size=5))
def test_drafts_are_at_most_k_tokens_and_continue_the_history(k, rows, seed, steps, swaps):
    drafter = Auto(config(k=k))
    run = Runner(drafter)
    rng = np.random.default_rng(seed)
    for i in range(rows):
        run.add(f"r{i}", periodic(int(rng.integers(2, 9)), 120, seed + i), int(rng.integers(3, 40)))
    for s in range(steps):
        if s < len(swaps):
            a, b = swaps[s]
            if a < rows and b < rows:
                run.swap(a, b)
        out = run.step()
        for row, d in enumerate(out):
            assert len(d) <= k
            hist = [int(t) for t in run.tokens[row, : run.lengths[row]]]
            if d:  # an n-gram draft: what followed an earlier occurrence of the history's last token
                assert any(hist[j] == hist[-1] for j in range(len(hist) - 1))
