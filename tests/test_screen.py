"""The int8 screen of the LM head (backends/cpu/screen + lean_screen.h): its argmax is the full
product's, bit for bit, ties and near-ties included; rows it cannot settle are left to the full
product; ``Logits`` reads argmaxes and drafting rows from it; greedy decoding is unchanged."""

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import polyverse
from polyverse.backends.cpu import lean, screen
from polyverse.logits import Logits, first_maxes, guesses, likeliest, rough
from polyverse.models.tiny import tiny_model

from test_lean import ISAS, instruction_set

pytestmark = pytest.mark.skipif(not ISAS, reason="the lean pass does not build or run here")
CASES = [(d, i) for d in ("fp32", "bf16") for i in ISAS]
VOCAB = 320  # ten panels of 32 columns


def planted_head(seed: int) -> torch.Tensor:
    """A random head [VOCAB, 64] with exact and near ties planted: column 40 equals column 9,
    column 41 is column 9 nudged by a relative 1e-4, column 200 by 1e-6."""
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(VOCAB, 64, generator=g) * 0.1
    w[40] = w[9]
    w[41] = w[9] * (1 + 1e-4)
    w[200] = w[9] * (1 - 1e-6)
    return w


def lean_model(dtype: str, isa: str, head: torch.Tensor) -> lean.LeanModel:
    model = tiny_model(seed=1, vocab_size=head.shape[0])
    with torch.no_grad():
        model.lm_head.weight.copy_(head)
    with instruction_set(isa):
        return lean.LeanModel(model, dtype)


def rows_toward(head: torch.Tensor, seed: int, scale: float, n: int = 24) -> torch.Tensor:
    """Hidden rows [n, 64]: random ones, and ones pointing at column 9 (where the ties are)."""
    g = torch.Generator().manual_seed(seed)
    noise = torch.randn(n, 64, generator=g)
    toward = head[9] / head[9].norm() * 8 + 0.05 * torch.randn(n, 64, generator=g)
    return torch.cat([noise, toward]) * scale  # [2n, 64]


@pytest.mark.parametrize("dtype,isa", CASES)
def test_the_screened_argmax_is_the_full_products_own(dtype, isa):
    head = planted_head(0)
    lm = lean_model(dtype, isa, head)
    assert lm.screen is not None
    hidden = rows_toward(head, 1, 1.0)
    tops, screened = lm.screen(hidden)
    exact = lm.project(hidden)  # [m, V]
    want = first_maxes(exact)
    settled = [i for i, t in enumerate(tops) if t >= 0]
    assert len(settled) >= len(tops) * 3 // 4  # the screen settles most rows
    assert all(tops[i] == want[i] for i in settled)
    assert screened.shape == exact.shape and (screened - exact).abs().max() < 0.05 * exact.abs().max()
    # rows pointing at column 9: its exact copy 40 ties it and loses (the first of equals wins), 41
    # (a hair larger, or equal after bf16 rounding) is decided by the exact values
    toward = [t for t in tops[len(tops) // 2:] if t >= 0]
    assert toward and set(toward) <= {9, 41} and 40 not in tops


@pytest.mark.parametrize("dtype,isa", CASES)
def test_rough_then_settle_is_the_screen_in_two_steps(dtype, isa):
    head = planted_head(3)
    lm = lean_model(dtype, isa, head)
    hidden = rows_toward(head, 4, 1.0, n=6)  # [12, 64]
    tops, screened = lm.screen(hidden)
    alone = lm.screen.rough(hidden)
    assert torch.equal(alone, screened)
    assert lm.screen.settle(hidden, alone) == tops
    some = [7, 2, 10]  # any rows, in any order, settle as they do among all
    assert lm.screen.settle(hidden[some], alone[some]) == [tops[r] for r in some]
    wider = torch.full((len(hidden), VOCAB + 40), float("nan"))  # rows of a wider matrix, read in place
    wider[:, :VOCAB] = alone
    assert lm.screen.settle(hidden[3:6], wider[3:6, :VOCAB]) == tops[3:6]
    with pytest.raises(RuntimeError, match="screened logits"):
        lm.screen.settle(hidden[:2], alone[:3])


@settings(max_examples=20, deadline=None)
@given(seed=st.integers(0, 10**6), log_scale=st.floats(-3, 3))
def test_the_screen_never_changes_an_argmax(seed, log_scale):
    dtype, isa = CASES[seed % len(CASES)]
    head = planted_head(seed)
    lm = lean_model(dtype, isa, head)
    hidden = rows_toward(head, seed + 1, math.exp(log_scale), n=8)
    tops, _ = lm.screen(hidden)
    want = first_maxes(lm.project(hidden))
    assert all(t == w for t, w in zip(tops, want) if t >= 0)


@pytest.mark.parametrize("isa", ISAS)
def test_rows_the_screen_cannot_settle_are_left_to_the_full_product(isa):
    flat = torch.ones(VOCAB, 64) * 0.01  # every column equal: all VOCAB of them candidates
    lm = lean_model("bf16", isa, flat)
    assert screen.MOST < VOCAB
    hidden = torch.randn(3, 64)
    hidden[1, 5] = float("nan")
    tops, _ = lm.screen(hidden)
    assert tops == [-1, -1, -1]
    logits = Logits(hidden, lm.project, VOCAB, screen=lm.screen)
    assert [logits.top(r) for r in range(3)] == first_maxes(lm.project(hidden))


def test_no_screen_for_int8_heads_or_when_turned_off(monkeypatch):
    head = planted_head(2)
    assert lean_model("int8", ISAS[0], head).screen is None
    monkeypatch.setenv(screen.DISABLE, "1")
    assert lean_model("bf16", ISAS[0], head).screen is None


class CountingScreen:
    """A screen in Python: settles even rows only, screened rows = exact rows + 0.5 at column 0."""

    def __init__(self, head):
        self.head, self.calls = head, []

    def __call__(self, hidden):
        self.calls.append(len(hidden))
        exact = self.head(hidden)
        tops = [t if i % 2 == 0 else -1 for i, t in enumerate(first_maxes(exact))]
        return tops, self._rough(exact)

    def _rough(self, exact):
        return exact + torch.nn.functional.one_hot(torch.zeros(len(exact), dtype=torch.long), exact.shape[1]) * 0.5

    def rough(self, hidden):
        self.calls.append(("rough", len(hidden)))
        return self._rough(self.head(hidden))

    def settle(self, hidden, rough):
        self.calls.append(("settle", len(hidden)))
        assert torch.allclose(rough, self._rough(self.head(hidden)), atol=1e-5)  # the rows' own screened logits
        return first_maxes(self.head(hidden))


def fake_pass(seed: int, rows: int, vocab: int = 50):
    """A pass of ``rows`` random hidden rows [rows, 8] whose Logits read a CountingScreen of a random
    head: (its exact logits [rows, vocab], the screen, the Logits)."""
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(vocab, 8, generator=g)
    project = lambda h: h @ w.T  # noqa: E731
    hidden = torch.randn(rows, 8, generator=g)
    fake = CountingScreen(project)
    return project(hidden), fake, Logits(hidden, project, vocab, screen=fake)


def test_a_pass_of_a_block_or_fewer_rows_is_screened_at_its_first_read():
    exact, fake, logits = fake_pass(2, 6)  # a draft of 5 tokens below the pending one
    want = first_maxes(exact)
    assert [logits.top(r) for r in range(4)] == want[:4]
    assert fake.calls == [("rough", 6), ("settle", 2), ("settle", 2)]  # one product for every row
    single = Logits(logits.hidden[:1], fake.head, 50, screen=fake)  # a plain step: one call, settled at once
    assert single.top(0) == want[0] and fake.calls[3:] == [1]


def test_rows_screened_at_once_are_settled_as_read():
    exact, fake, logits = fake_pass(1, 10)
    logits.screened(list(range(10)), settle=False)
    assert fake.calls == [("rough", 10)] and logits.tops == {} and logits.open == set(range(10))
    assert logits.top(3) == first_maxes(exact[3:4])[0]
    assert fake.calls[1:] == [("settle", 2)] and logits.open == set(range(10)) - {3, 4}  # with the next row
    assert logits.top(4) == first_maxes(exact[4:5])[0] and len(fake.calls) == 2
    assert logits.top(9) == first_maxes(exact[9:10])[0] and fake.calls[2:] == [("settle", 1)]  # the last row alone
    assert logits.computed() == 0  # nothing projected
    # drafting from the open rows: their screened logits, no settling
    assert torch.allclose(rough(logits, [0, 5]), fake._rough(exact[[0, 5]])) and len(fake.calls) == 3
    # guesses, which a draft takes as the row's own argmax, settles the open rows in one call
    assert guesses(logits, [6, 7]) == first_maxes(exact[6:8]) and fake.calls[3:] == [("settle", 2)]
    assert 6 not in logits.open and 7 not in logits.open


def test_logits_read_argmaxes_and_drafting_rows_from_a_screen():
    exact, fake, logits = fake_pass(0, 12)
    assert logits.top(0) == first_maxes(exact[:1])[0]
    assert fake.calls == [2] and logits.computed() == 0  # rows 0-1 screened, nothing projected
    assert logits.top(1) == first_maxes(exact[1:2])[0]  # odd rows are left open: the full product
    assert logits.computed() == 2  # rows 1-2, as a first read projects
    assert logits.top(4) == first_maxes(exact[4:5])[0]  # then a block of 8 screened, rows 4-5 settled
    assert fake.calls == [2, ("rough", 8), ("settle", 2)] and logits.open == {6, 7, 8, 9, 10, 11}
    # drafting rows: screened where not projected, exact where projected
    got = rough(logits, [1, 3])
    assert torch.allclose(got[0], exact[1]) and torch.allclose(got[1], exact[3] + torch.eye(50)[0] * 0.5)
    assert guesses(logits, [0, 11]) == [logits.top(0), first_maxes((exact[11] + torch.eye(50)[0] * 0.5)[None])[0]]
    plain = Logits.of(exact)
    assert torch.equal(rough(plain, [3]), exact[3:4]) and guesses(plain, [3]) == first_maxes(exact[3:4])


@pytest.mark.parametrize("isa", ISAS)
def test_the_likeliest_token_and_its_probability_are_a_softmaxs(isa):
    lm = lean_model("bf16", isa, planted_head(0))
    g = torch.Generator().manual_seed(3)
    wide = torch.randn(6, VOCAB + 37, generator=g) * 4  # rows of a wider matrix, read in place
    wide[1, 100] = 60.0  # a certain row
    wide[2] = 0.0  # a flat row: the first column, 1 / VOCAB
    wide[3, 5] = -math.inf
    wide[4, 7], wide[4, 8] = 30.0, 30.0  # a tie: the first
    z = wide[:, :VOCAB]
    tokens, probs = lm.screen.likeliest(z)
    conf, best = torch.softmax(z, dim=-1).max(dim=-1)
    assert tokens == best.tolist() == first_maxes(z)
    assert tokens[2] == 0 and tokens[4] == 7
    assert probs == pytest.approx(conf.tolist(), rel=1e-5)
    plain = Logits.of(z)  # no screen: a softmax
    assert likeliest(plain, [1, 2]) == ([100, 0], pytest.approx([1.0, 1 / VOCAB], rel=1e-5))


@pytest.mark.parametrize("isa", ISAS)
def test_a_value_that_is_not_a_number_is_passed_over(isa):
    vocab = VOCAB + 13  # a vocabulary that ends inside a vector: its last values summed one by one
    lm = lean_model("bf16", isa, torch.cat([planted_head(0), planted_head(1)[:13]]))
    z = torch.randn(2, vocab, generator=torch.Generator().manual_seed(4))
    z[0, 3] = z[1, vocab - 2] = math.nan  # in a whole vector, and in the last values
    tokens, probs = lm.screen.likeliest(z)
    clean = torch.nan_to_num(z, nan=-math.inf)
    conf, best = torch.softmax(clean, dim=-1).max(dim=-1)
    assert tokens == best.tolist()
    assert probs == pytest.approx(conf.tolist(), rel=1e-5)


@pytest.mark.parametrize("method", ["ar", "lookahead", "jacobi"])
def test_greedy_decoding_is_the_same_with_and_without_the_screen(tiny_dir, method):
    model = polyverse.load(str(tiny_dir), progress=False, dtype="bf16")
    lm = model.backend.lean
    if lm is None or lm.screen is None:
        pytest.skip("no lean pass here")
    prompt = model.tokenizer.encode("the screen keeps every argmax")
    with_screen = model.generate(prompt, method=method, max_new_tokens=40).token_ids
    kept, lm.screen = lm.screen, None
    try:
        without = model.generate(prompt, method=method, max_new_tokens=40).token_ids
    finally:
        lm.screen = kept
    assert list(with_screen) == list(without)
