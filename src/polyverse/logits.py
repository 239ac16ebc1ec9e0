"""The logits of one pass, as every backend's ``forward`` returns them: rows computed on demand.

The LM head (hidden -> vocabulary) is a large share of a pass that feeds many tokens, and most
draft rows past the first rejection are never read. ``Logits`` keeps the pass's hidden states and
projects rows in blocks as they are indexed, through the head product the backend passes in (a
callable hidden [m, H] -> logits [m, V]); a backend that computes its logits itself hands them over
whole (``Logits.of``). Where the backend has a cheaper way to a row's argmax than its full product
(a ``Screen``: the lean CPU pass's int8 screen of the head), ``top`` and ``rough`` use it, and a
greedy pass projects no row at all.
"""

from __future__ import annotations

from typing import Callable, Iterator, Protocol

import torch


def _identity(rows: torch.Tensor) -> torch.Tensor:
    return rows


def first_maxes(rows: torch.Tensor) -> list[int]:
    """Each row's ``argmax`` for rows [m, V]: the first of equal largest values, the first NaN if any.

    Float32 rows in CPU memory go through numpy, whose argmax makes the same choice: torch's spreads
    the rows over its threads, which costs more than the search itself for the few rows a pass reads.
    """
    if rows.dtype == torch.float32 and rows.device.type == "cpu" and not rows.requires_grad:
        return rows.numpy().argmax(axis=-1).tolist()
    return rows.argmax(dim=-1).tolist()


class Screen(Protocol):
    """A backend's cheap argmax of the head: hidden [m, H] -> (m argmaxes, -1 where it cannot say;
    screened logits [m, V], close to the exact ones); or in two steps, the screened logits alone
    (``rough``) and later the argmaxes of some of those rows (``settle``), or their likeliest tokens
    with their probabilities (``likeliest``)."""

    def __call__(self, hidden: torch.Tensor) -> tuple[list[int], torch.Tensor]: ...

    def rough(self, hidden: torch.Tensor) -> torch.Tensor: ...

    def settle(self, hidden: torch.Tensor, rough: torch.Tensor) -> list[int]: ...

    def likeliest(self, rough: torch.Tensor) -> tuple[list[int], list[float]]: ...


def rough(logits, rows: list[int]) -> torch.Tensor:
    """``logits.rough(rows)`` where the logits have it (a ``Logits``), else the rows themselves."""
    f = getattr(logits, "rough", None)
    return f(rows) if f is not None else logits[rows]


def guesses(logits, rows: list[int]) -> list[int]:
    """Each row's argmax as a draft token (verified later, so it need not be exact): the exact one
    where known, else the argmax of ``rough``'s rows.

    Example: rows (3, 4) of logits whose row 3 argmax is known to be 7 and whose row 4 screens to 2
    -> [7, 2].
    """
    settle = getattr(logits, "settle_open", None)
    if settle is not None:  # the screen's exact argmaxes, as a read of each row would find them
        settle(rows)
    tops = getattr(logits, "tops", {})
    if all(r in tops for r in rows):
        return [tops[r] for r in rows]
    found = first_maxes(rough(logits, rows)) if rows else []
    return [tops.get(r, t) for r, t in zip(rows, found)]


def likeliest(logits, rows: list[int]) -> tuple[list[int], list[float]]:
    """Each row's likeliest token as a draft (``rough``'s rows) and its softmax probability: how sure
    the row is of it. Through the screen where the logits have one (no softmax of rows as wide as the
    vocabulary), else a softmax.

    Example: rows ((0, ln 3), (ln 4, 0)) -> ([1, 0], [0.75, 0.8]).
    """
    z = rough(logits, rows)  # [len(rows), V]
    f = getattr(getattr(logits, "screen", None), "likeliest", None)
    if f is not None and rows and z.dtype == torch.float32:
        return f(z)
    conf, best = torch.softmax(z.float(), dim=-1).max(dim=-1)  # [len(rows)]
    return best.tolist(), conf.tolist()


def first_max(row: torch.Tensor) -> int:
    """``first_maxes`` of one row [V]."""
    return first_maxes(row.unsqueeze(0))[0]


class Logits:
    """Rows of a [q, V] logits matrix, projected from [q, H] hidden states when first read.

    Indexing: an int gives a row [V]; a slice or a list of ints gives [k, V]; iterating gives the
    rows in order; ``len`` is q; ``full()`` is the whole [q, V] matrix.

    The first read at row r projects rows r and r+1 (two rows cost what one does, see
    ``backends.cpu.head.Projection``, and r+1 is the first draft token's child row); each later miss
    at row r projects the missing rows among r .. r+block-1 in one product. Verification walks
    drafts root first, so a draft rejected at its root costs the smallest product, and a longer
    accepted path one block per 8 rows.

    Example: q = 20, block = 8; reading rows 0, 1, 2 computes rows 0-1, then rows 2-9 once;
    row 10 then computes rows 10-17.
    """

    def __init__(self, hidden: torch.Tensor, head: Callable[[torch.Tensor], torch.Tensor], vocab: int, block: int = 8,
                 screen: "Screen | None" = None):
        self.hidden = hidden  # [q, H]: the pass's rows before the head (or its logits, for ``of``)
        self.head = head
        self.vocab = vocab
        self.block = block
        self.screen = screen
        self.rows: dict[int, torch.Tensor] = {}
        self._all: torch.Tensor | None = None  # [q, V] when every row was computed at once
        self.tops: dict[int, int] = {}  # row -> its largest logit's index, where known
        # row -> (the screened logits [m, V] it was screened with, its index there), where screened
        self.roughs: dict[int, tuple[torch.Tensor, int]] = {}
        self.open: set[int] = set()  # rows screened whose argmax the screen has not settled yet

    @classmethod
    def of(cls, logits: torch.Tensor, tops: dict[int, int] | None = None) -> "Logits":
        """Logits [q, V] already computed (a backend without a separable head, or rows asked for);
        ``tops``: row -> argmax (``first_maxes``' choice) where the backend found them already."""
        out = cls(logits, _identity, logits.shape[-1])
        out._all = logits
        if tops:
            out.tops.update(tops)
        return out

    @property
    def shape(self) -> tuple[int, int]:
        return (self.hidden.shape[0], self.vocab)

    def __len__(self) -> int:
        return self.hidden.shape[0]

    def __iter__(self) -> Iterator[torch.Tensor]:
        for i in range(len(self)):
            yield self[i]  # [V]

    def computed(self) -> int:
        """How many rows have been projected so far."""
        return len(self) if self._all is not None else len(self.rows)

    def _ensure(self, wanted: list[int]) -> None:
        missing = [r for r in wanted if r not in self.rows]
        if not missing:
            return
        lo, hi = missing[0], missing[-1] + 1
        rows = self.hidden[lo:hi] if missing == list(range(lo, hi)) else self.hidden[missing]  # a run of rows: a view
        with torch.inference_mode():
            out = self.head(rows).float()  # [m, V]
        for r, row in zip(missing, out):
            self.rows[r] = row

    def __getitem__(self, idx) -> torch.Tensor:
        q = len(self)
        if isinstance(idx, int):
            if idx < 0:
                idx += q
            if not 0 <= idx < q:
                raise IndexError(f"row {idx} of {q}")
            if self._all is not None:
                return self._all[idx]  # [V]
            if idx not in self.rows:
                size = self.block if self.rows else 2
                self._ensure(list(range(idx, min(idx + size, q))))
            return self.rows[idx]  # [V]
        rows = list(range(q))[idx] if isinstance(idx, slice) else [int(i) for i in idx]
        if not rows:
            return torch.empty(0, self.vocab)
        if self._all is not None:
            return self._all[idx] if isinstance(idx, slice) else self._all[rows]  # [len(rows), V]
        self._ensure(rows)
        return torch.stack([self.rows[r] for r in rows])  # [len(rows), V]

    def features(self, row: int) -> torch.Tensor | None:
        """The hidden state [H] row ``row`` is projected from (after the final norm: what a draft
        head reads), or None where the backend handed over logits only (``of``, ``Borrowed``)."""
        if self.head is _identity:
            return None
        return self.hidden[row]

    def top(self, row: int) -> int:
        """The index of row ``row``'s largest logit (the first of equals, as ``argmax``); a pass
        that projected several requests' rows together may have found it for all of them at once.
        With a screen, rows are screened a block at a time and a row is settled, with the next
        one, when it is read; only a row the screen leaves open is projected. The first read
        screens the whole pass where it holds at most ``block`` rows (the screen's product reads
        its int8 head once for them all, so an accepted draft needs no second product), else the
        first two rows (a long draft is often rejected at its root), then blocks of ``block``."""
        best = self.tops.get(row)
        if best is None and self.screen is not None and self._all is None and row not in self.rows:
            if row not in self.roughs:
                size = self.block if self.roughs or len(self) <= self.block else 2
                rows = [r for r in range(row, min(row + size, len(self))) if r not in self.rows]
                self.screened(rows, settle=len(rows) <= 2)
            self.settle_open([row, row + 1])  # with the next row, which a draft's chain reads next
            best = self.tops.get(row)
        if best is None:
            best = self.tops[row] = first_max(self[row])
        return best

    def _hidden(self, rows: list[int]) -> torch.Tensor:
        lo = rows[0]
        return self.hidden[lo: lo + len(rows)] if rows == list(range(lo, lo + len(rows))) else self.hidden[rows]

    def screened(self, rows: list[int], settle: bool = True) -> None:
        """Screen ``rows`` (those not screened yet) in one product: their screened logits for
        ``rough``, and their argmaxes where the screen settles them (``settle`` False: when ``top``
        reads them)."""
        rows = [r for r in rows if r not in self.roughs]
        if not rows or self.screen is None:
            return
        with torch.inference_mode():
            if settle:
                tops, rough = self.screen(self._hidden(rows))  # [m], [m, V]
            else:
                tops, rough = [None] * len(rows), self.screen.rough(self._hidden(rows))
        self.take(rows, tops, rough)

    def _roughs(self, rows: list[int]) -> torch.Tensor:
        """The screened rows [len(rows), V]: a view where they came from one screen call one after
        another (no copy of rows as wide as the vocabulary), else stacked."""
        block, first = self.roughs[rows[0]]
        if all(self.roughs[r][0] is block and self.roughs[r][1] == first + i for i, r in enumerate(rows)):
            return block[first: first + len(rows)]
        return torch.stack([b[i] for b, i in (self.roughs[r] for r in rows)])

    def settle_open(self, rows: list[int]) -> None:
        """The screen's argmaxes of those of ``rows`` screened but not settled yet, in one pass over
        the head's bounds."""
        rows = [r for r in rows if r in self.open]
        if not rows:
            return
        with torch.inference_mode():
            tops = self.screen.settle(self._hidden(rows), self._roughs(rows))
        self.take(rows, tops, None)

    def take(self, rows: list[int], tops: "list[int | None]", rough: "torch.Tensor | None") -> None:
        """Keep a screen's answers for ``rows``: argmaxes (-1: left to the full product; None: not
        settled yet) and screened rows [len(rows), V] (None: kept already; a pass that screened
        several requests' rows at once hands each its own)."""
        for i, (r, best) in enumerate(zip(rows, tops)):
            if rough is not None:
                self.roughs[r] = (rough, i)
            if best is None:
                self.open.add(r)
                continue
            self.open.discard(r)
            if best >= 0:
                self.tops[r] = best

    def rough(self, rows: list[int]) -> torch.Tensor:
        """Rows [len(rows), V] good enough to draft from, not to verify with: the screened logits
        where there is a screen (what is computed exactly already is used as it is), else the rows."""
        if self.screen is None or self._all is not None or not rows:
            return self[rows]
        self.screened([r for r in rows if r not in self.rows])
        if not any(r in self.rows for r in rows):
            return self._roughs(rows)  # [len(rows), V]
        return torch.stack([self.rows[r] if r in self.rows else self._roughs([r])[0] for r in rows])  # [len(rows), V]

    def full(self) -> torch.Tensor:
        """Every row: [q, V]."""
        return self[:]


class Borrowed(Logits):
    """Logits rows [q, V] in memory a backend lends until its next pass (llama.cpp's output buffer),
    with their argmaxes found there: a plain greedy pass reads nothing else, so the rows are copied
    only when first read, or by the backend (``settle``) before it reuses the memory while this
    object is still held."""

    def __init__(self, rows, tops: dict[int, int]) -> None:
        super().__init__(rows, _identity, rows.shape[1])  # hidden: the lent rows (numpy) until copied
        self.tops.update(tops)

    def settle(self) -> None:
        """Copy the rows out of the lent memory."""
        if self._all is None:
            self._all = self.hidden = torch.from_numpy(self.hidden.copy())  # [q, V]

    def computed(self) -> int:
        return len(self)

    def __getitem__(self, idx) -> torch.Tensor:
        self.settle()
        return super().__getitem__(idx)
