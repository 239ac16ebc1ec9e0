"""polyverse's token-history drafting inside vLLM, as a speculative proposer (``custom_class``).

vLLM (0.32) builds a user proposer from a class path, ``speculative_config={"method":
"custom_class", "model": "polyverse.integrations.vllm.Auto", "num_speculative_tokens": K}``, and
after every step calls ``propose(sampled_token_ids, num_tokens_no_spec, token_ids_cpu)``: per row
of its batch, the tokens the step wrote, the length of the request's history and the history
itself. It verifies the returned chains against the target (greedy: token-identical to its greedy;
sampled: its rejection sampler keeps the target's distribution), so the proposer changes only speed.

- ``Auto``: `auto`'s drafting. The longest suffix n-gram of the request's history (prompt and
  output) that occurred before proposes what followed it; a per-request, per-match-length estimate
  of alpha (the chance a draft token is accepted) and the step cost curve vLLM shows (learned from
  the time between calls, ``step_costs``) size every request's draft together
  (``batching.budget.allocate``): long drafts for a request alone on a flat curve, shorter ones,
  down to none, as the batch grows. Alpha is judged on the whole candidate against the tokens that
  follow, also where the draft sent was cut, so a request that drafts nothing under load still
  learns, and drafts grow back as load falls.
- ``PromptLookup``: `prompt_lookup`'s drafting (the best match's K next tokens), always drafted.

Per-request state is keyed by vLLM's request id, read from the model runner that calls
``propose`` (its batch is reordered as requests finish); each state is checked against the row's
history and rebuilt from it when they disagree, so a wrong key costs time, never output.
vLLM verifies chains only: polyverse's tree drafts become their best chain here.
"""

from __future__ import annotations

import sys
import time
from typing import Any, Sequence

from ..batching.budget import Acceptance, allocate
from ..draft import Draft
from ..ngrams import NgramIndex
from .step_costs import StepCosts

NGRAM = 4  # longest suffix matched (`auto`'s default)
LOOKUP_NGRAM = 3  # `prompt_lookup`'s default
DECAY = 0.9  # weight kept by old acceptance evidence at each update (`auto`'s default)
SEED_DECAY = 0.99  # the same, for the estimate over all requests that seeds new ones
PRIOR_WEIGHT = 2.0  # drafts' worth of evidence a new request's seed counts for
# drafts go out only when they are expected to write this share more tokens per second than plain
# decoding: the estimates are noisy, a pass of a new row count first builds its kernels, and vLLM
# turns its asynchronous scheduling off for any proposer (a cost per step the curve cannot show)
MARGIN = 0.10


class _Request:
    """One request's drafting state: its history's n-gram index, alpha per match length, and the
    candidate last proposed (judged against the tokens that follow it)."""

    __slots__ = ("index", "stats", "seed", "pending", "pending_at", "pending_bucket")

    def __init__(self, ngram: int, seed: dict[int, Acceptance]) -> None:
        self.index = NgramIndex(ngram)
        # a new request starts from what drafts of each match length have done lately for all requests
        # (worth PRIOR_WEIGHT drafts), then follows its own text
        self.stats = {n: Acceptance(DECAY, PRIOR_WEIGHT * a.alpha, PRIOR_WEIGHT * (1.0 - a.alpha)) for n, a in seed.items()}
        self.seed = seed
        self.pending: list[int] = []
        self.pending_at = 0  # history position the candidate's first token predicts
        self.pending_bucket = 0

    def agrees(self, row: Any, length: int) -> bool:
        """Whether the indexed history is a prefix of the row's (checked at its ends)."""
        toks = self.index.tokens
        if len(toks) > length:
            return False
        if not toks:
            return True
        head = min(len(toks), 8)
        return [int(t) for t in row[:head]] == toks[:head] and int(row[len(toks) - 1]) == toks[-1]

    def judge(self, row: Any, length: int) -> None:
        """Score the pending candidate on the history that has arrived since it was proposed: its
        matched prefix is m hits, and a mismatch seen is a miss (tokens not yet seen count neither,
        so a candidate cut before it was sent is scored as if sent whole)."""
        if not self.pending or length <= self.pending_at:
            return
        seen = min(len(self.pending), length - self.pending_at)
        got = row[self.pending_at : self.pending_at + seen]
        m = 0
        while m < seen and int(got[m]) == self.pending[m]:
            m += 1
        for stats in (self.stats, self.seed):
            stats[self.pending_bucket].update(m, m + 1 if m < seen else m)
        self.pending = []

    def candidate(self, k: int) -> tuple[int, list[int]]:
        """(match length, up to k tokens) continuing the longest earlier match of the history's suffix."""
        idx = self.index
        for n in range(min(idx.max_n, len(idx.tokens)), 0, -1):
            found = idx.continuations(k, 1, min_n=n)
            if found:
                return n, found[0]
        return 0, []


def _runner_request_ids(rows: int) -> list[Any] | None:
    """vLLM's request ids of the batch rows, from the model runner calling ``propose`` (None where the
    caller is not one, as in tests)."""
    try:
        runner = sys._getframe(2).f_locals.get("self")
    except ValueError:  # no such caller
        return None
    ids = getattr(getattr(runner, "input_batch", None), "req_ids", None)
    if ids is None or len(ids) < rows:
        return None
    return list(ids[:rows])


class _HistoryProposer:
    """What both proposers share: vLLM's call, per-request state, step timing."""

    ngram = NGRAM

    def __init__(self, vllm_config: Any) -> None:
        spec = vllm_config.speculative_config
        self.k = int(spec.num_speculative_tokens)
        if self.k < 1:
            raise ValueError(f"num_speculative_tokens must be at least 1, got {self.k}")
        self.max_model_len = int(vllm_config.model_config.max_model_len)
        self.requests: dict[Any, _Request] = {}
        # longer suffix matches predict better: a more hopeful prior for them (as `auto`)
        self.seed = {n: Acceptance(SEED_DECAY, 2.0 if n > 1 else 1.0) for n in range(1, self.ngram + 1)}
        self.costs = StepCosts()
        self.clock = time.perf_counter  # what steps are timed with (tests script it)
        self._last: tuple[float, tuple, int] | None = None  # (end of last call, its decoding keys, tokens fed)

    def load_model(self, *args: Any, **kwargs: Any) -> None:
        """vLLM loads a proposer's model after the target's; drafting from history needs none."""

    def sizes(self, states: Sequence[_Request], candidates: Sequence[tuple[int, list[int]]]) -> list[int]:
        raise NotImplementedError

    def propose(self, sampled_token_ids: Sequence[Sequence[int]], num_tokens_no_spec: Any,
                token_ids_cpu: Any, slot_mappings: Any = None) -> list[list[int]]:
        start = self.clock()
        rows = len(sampled_token_ids)
        ids = _runner_request_ids(rows)
        keys = ids if ids is not None else list(range(rows))
        out: list[list[int]] = [[] for _ in range(rows)]
        decoding = [i for i in range(rows)
                    if len(sampled_token_ids[i]) and int(num_tokens_no_spec[i]) < self.max_model_len - 1]
        live: dict[Any, _Request] = {}
        states, candidates = [], []
        for i in decoding:
            row, length = token_ids_cpu[i], int(num_tokens_no_spec[i])
            st = self.requests.get(keys[i])
            if st is None or not st.agrees(row, length):
                st = _Request(self.ngram, self.seed)
            st.judge(row, length)
            st.index.extend(row[:length])
            live[keys[i]] = st
            states.append(st)
            candidates.append(st.candidate(min(self.k, self.max_model_len - 1 - length)))
        # a step is timed only between two calls with the same requests all decoding: a prefill's
        # tokens, which the proposer does not see, would otherwise be counted as free
        key_set = tuple(keys[i] for i in decoding)
        if self._last is not None and len(decoding) == rows and key_set == self._last[1]:
            self.costs.record(self._last[2], start - self._last[0])
        fed = 0
        for st, i, (bucket, cand), d in zip(states, decoding, candidates, self.sizes(states, candidates)):
            st.pending, st.pending_at, st.pending_bucket = cand, int(num_tokens_no_spec[i]), bucket
            out[i] = cand[:d]
            fed += 1 + d
        # states of requests still in the batch (prefilling ones keep theirs); finished ones go
        present = set(keys)
        self.requests = {k: v for k, v in {**self.requests, **live}.items() if k in present}
        self._last = (self.clock(), key_set if len(decoding) == rows else None, fed)
        return out


def cautious(a: Acceptance) -> float:
    """Alpha with one more miss counted. Example: 8 hits, 1 miss -> 0.8 (0.89 as counted)."""
    return a.hits / (a.hits + a.misses + 1.0)


class Auto(_HistoryProposer):
    """`auto` inside vLLM: drafts sized by each request's acceptance and the step cost curve."""

    def sizes(self, states: Sequence[_Request], candidates: Sequence[tuple[int, list[int]]]) -> list[int]:
        curve = self.costs.curve()
        drafts = [Draft.chain(c) for _, c in candidates]
        if curve is None:  # the first step: nothing measured yet
            return [min(len(c), 1) for _, c in candidates]
        # alpha as if one more draft had failed: a cautious estimate, so thin evidence (a request just
        # seeded) drafts where rows are nearly free and waits for its own evidence where they cost
        alphas = [cautious(st.stats[b]) if b else 0.0 for st, (b, _) in zip(states, candidates)]
        return allocate(drafts, alphas, len(drafts), curve, min_gain=MARGIN)


class PromptLookup(_HistoryProposer):
    """`prompt_lookup` inside vLLM: the best match's next K tokens, always drafted."""

    ngram = LOOKUP_NGRAM

    def sizes(self, states: Sequence[_Request], candidates: Sequence[tuple[int, list[int]]]) -> list[int]:
        return [len(c) for _, c in candidates]
