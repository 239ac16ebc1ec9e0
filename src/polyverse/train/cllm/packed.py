"""Packed CLLM samples: a whole greedy answer plus G Jacobi states, one forward pass per sample.

The per-record fit (``fit.example``) spends two forward passes over the whole context to train the
n rows of one state. Here a sample is the prompt and the model's own greedy answer y* (its Jacobi
fixed point), followed by up to G groups of n state tokens, each laid out exactly as the Jacobi
decoder feeds a block: the group anchored at a stands at positions a .. a + n - 1, sees the real
tokens before a and its own earlier tokens, and nothing else sees it (``space.data.group_layout``).
Group row j (state token j, at position a + j) predicts token a + j + 1; its consistency target is
the real row a + j of the same pass, which predicts that token from the true prefix: the global
consistency loss's stop-gradient fixed-point distribution, for free. The real rows carry the AR
loss. One pass thus trains the AR loss on the whole answer and up to G * n consistency rows.

States are the recorded Jacobi states of ``collect`` when the sample comes from trajectories, then
synthetic ones (``noisy_state``) up to G; ``refine`` (in ``fit``) turns a batch's states into their
Jacobi update under the model being trained, the states the decoder itself would feed next.

Example: prompt (p), answer (a, b, c), n = 2, one synthetic group at anchor 1 with state (a, x) ->
ids (p, a, b, c, a, x), positions (0, 1, 2, 3, 1, 2), truth (-, -, -, -, a, b),
teacher rows (-, -, -, -, 1, 2), trained rows: 5 only (row 4 is fed the right token a, so it
already equals its teacher).
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Sequence

import torch

from ...errors import ConfigError
from ..space.data import IGNORE, Sample, group_positions, open_groups
from .collect import Trajectory


@dataclass(frozen=True)
class JacobiSample:
    prompt: tuple[int, ...]
    response: tuple[int, ...]  # y*: the greedy answer (the Jacobi fixed point of every block)
    states: tuple[tuple[int, tuple[int, ...]], ...] = ()  # (anchor index in prompt + response, recorded state)


@dataclass(frozen=True)
class PackedStates:
    ids: tuple[int, ...]  # [L]: prompt + response + G groups of n state tokens
    positions: tuple[int, ...]  # [L]
    truth: tuple[int, ...]  # [L]: the fixed-point token each group token stands for (-100: real row or past the end)
    n_real: int
    anchors: tuple[int, ...]  # [G]
    prompt_len: int  # the AR loss is on the answer: rows prompt_len - 1 .. n_real - 2


def from_samples(samples: Sequence[Sample]) -> list[JacobiSample]:
    """Chat samples (a distilled greedy answer per prompt) with no recorded states."""
    return [JacobiSample(s.prompt, s.response) for s in samples if s.response]


def from_trajectories(records: Sequence[Trajectory], max_len: int = 512) -> list[JacobiSample]:
    """One sample per prompt: the first block's context is the prompt, the fixed points in order
    are y*; every recorded state but the last (the fixed point itself) is kept at its anchor.
    Degenerate blocks dropped by ``collect`` break the answer: it stops before the first gap.
    """
    by_prompt: dict[str, list[Trajectory]] = {}
    for r in records:
        by_prompt.setdefault(r.prompt_id, []).append(r)
    out = []
    for recs in by_prompt.values():
        recs.sort(key=lambda r: r.block_index)
        prompt, full = recs[0].context, list(recs[0].context)
        states = []
        for r in recs:
            if tuple(full) != r.context or len(full) - len(prompt) >= max_len:
                break
            states.extend((len(full), s) for s in r.states[:-1])
            full.extend(r.fixed)
        response = tuple(full[len(prompt):][:max_len])
        if response:
            out.append(JacobiSample(tuple(prompt), response, tuple(states)))
    return out


def noisy_state(full: Sequence[int], a: int, n: int, rng: random.Random) -> list[int]:
    """A synthetic Jacobi state for the block at anchor ``a`` of ``full`` (prompt + y*).

    Like the states the decoder feeds: a correct prefix of random length c < n, then a wrong token,
    then a mix of right tokens and the usual Jacobi errors: the previous state token repeated (the
    decoder's filler), the neighbouring fixed-point tokens (one position early or late), a token
    from elsewhere in the sample. Past the end of ``full`` the state repeats its last token.
    """
    truth = list(full[a : a + n])
    c = rng.randrange(min(n, len(truth))) if truth else 0
    state = truth[:c]
    for j in range(c, n):
        right = truth[j] if j < len(truth) else None
        if right is not None and j > c and rng.random() < 0.35:
            state.append(right)
            continue
        prev = state[-1] if state else full[a - 1]
        if right is None:
            state.append(int(prev))
            continue
        options = [prev, full[a + j - 1]]
        if a + j + 1 < len(full):
            options.append(full[a + j + 1])
        options.append(full[rng.randrange(len(full))])
        tok = rng.choice(options)
        if tok == right and j == c:  # the first token past the correct prefix must be wrong
            tok = next((t for t in options if t != right), full[rng.randrange(len(full))])
            if tok == right:
                tok = right + 1
        state.append(int(tok))
    return state


def pack(sample: JacobiSample, rng: random.Random, n: int, groups: int) -> PackedStates:
    """The whole sample plus up to ``groups`` states of n tokens (recorded first, then synthetic)."""
    if n < 1 or groups < 1:
        raise ConfigError(f"block and groups must be at least 1, got {n} and {groups}")
    full = list(sample.prompt) + list(sample.response)
    P, n_real = len(sample.prompt), len(full)
    if P < 1:
        raise ConfigError("a packed CLLM sample needs a prompt (the first block's pending token)")
    recorded = [s for s in sample.states if P <= s[0] < n_real]
    chosen = rng.sample(recorded, min(len(recorded), groups // 2 or 1)) if recorded else []
    anchors_free = list(range(P, n_real))
    synth = groups - len(chosen)
    groups_list = [(a, list(s)[:n] + [s[-1]] * max(0, n - len(s))) for a, s in chosen]
    for a in sorted(rng.sample(anchors_free, min(synth, len(anchors_free)))):
        groups_list.append((a, noisy_state(full, a, n, rng)))
    ids, truth = list(full), [IGNORE] * n_real
    for a, state in groups_list:
        ids.extend(state)
        truth.extend(full[a + j] if a + j < n_real else IGNORE for j in range(n))
    anchors = tuple(a for a, _ in groups_list)
    positions = group_positions(n_real, anchors, n)
    return PackedStates(tuple(ids), tuple(positions), tuple(truth), n_real, anchors, P)


def trained_rows(ids: torch.Tensor, truth: torch.Tensor, room: torch.Tensor) -> torch.Tensor:
    """[G, n] bool: the group rows the consistency loss trains, from the first wrong token of each
    state on, and only where the predicted token (a + j + 1) lies inside the answer.

    ids, truth: [G, n] group tokens and the fixed-point tokens they stand for (-100 past the end);
    room: [G] real tokens from each anchor on (row j needs j + 1 < room).
    Example: ids (4, 5, 9, 9), truth (4, 5, 6, 7), room 4 -> (F, F, T, F): row 3 predicts past the end.
    """
    n = ids.shape[-1]
    wrong = (ids != truth) & (truth != IGNORE)  # [G, n]
    seen = torch.cummax(wrong.int(), dim=-1).values.bool()  # [G, n]: a wrong token at or before j
    inside = torch.arange(n, device=ids.device)[None, :] + 1 < room[:, None]  # [G, n]
    return seen & inside


def collate(rows: Sequence[PackedStates], n: int, pad_id: int = 0) -> dict[str, torch.Tensor]:
    """Right-padded batch: input_ids, position_ids, truth, targets (next real token, AR rows of the
    answer), teacher (row index of each trained group row's target, -1 elsewhere) [B, L], the 4D
    additive mask [B, 1, L, L], n_real [B] and anchors [B, G] (-1 padding)."""
    L = max(len(r.ids) for r in rows)
    G = max(len(r.anchors) for r in rows)
    b = len(rows)
    out = {
        "input_ids": torch.full((b, L), pad_id, dtype=torch.long),
        "position_ids": torch.zeros((b, L), dtype=torch.long),
        "truth": torch.full((b, L), IGNORE, dtype=torch.long),
        "targets": torch.full((b, L), IGNORE, dtype=torch.long),
        "teacher": torch.full((b, L), -1, dtype=torch.long),
        "attention_mask": torch.full((b, 1, L, L), torch.finfo(torch.float32).min),
        "n_real": torch.zeros((b,), dtype=torch.long),
        "anchors": torch.full((b, max(G, 1)), -1, dtype=torch.long),
    }
    for i, r in enumerate(rows):
        k = len(r.ids)
        out["input_ids"][i, :k] = torch.tensor(r.ids)
        out["position_ids"][i, :k] = torch.tensor(r.positions)
        out["truth"][i, :k] = torch.tensor(r.truth)
        open_groups(out["attention_mask"][i, 0], r.n_real, r.anchors, n)
        out["n_real"][i] = r.n_real
        out["anchors"][i, : len(r.anchors)] = torch.tensor(r.anchors, dtype=torch.long)
        p = r.prompt_len
        out["targets"][i, p - 1 : r.n_real - 1] = torch.tensor(r.ids[p : r.n_real])
        label_rows(out, i, r.anchors, n)
    return out


def label_rows(batch: dict[str, torch.Tensor], i: int, anchors: Sequence[int], n: int) -> None:
    """Set ``teacher`` of row ``i`` from its current group tokens (after ``collate`` or a refine)."""
    G, s = len(anchors), int(batch["n_real"][i])
    batch["teacher"][i, s:] = -1
    if not G:
        return
    ids = batch["input_ids"][i, s : s + G * n].view(G, n)
    truth = batch["truth"][i, s : s + G * n].view(G, n)
    anc = torch.tensor(anchors, dtype=torch.long, device=ids.device)  # [G]
    rows = trained_rows(ids, truth, s - anc)  # [G, n]
    a = anc[:, None] + torch.arange(n, device=ids.device)[None, :]  # [G, n]: teacher row a + j
    batch["teacher"][i, s : s + G * n] = torch.where(rows, a, torch.full_like(a, -1)).view(-1)


def refine(batch: dict[str, torch.Tensor], logits: torch.Tensor, n: int) -> None:
    """One Jacobi update of every group in place: state token 0 becomes the argmax of the real row
    before the anchor (the pending token's row), token j the argmax of group row j - 1; the
    trained rows follow the new states. logits: [B, L, V] of a pass over the batch."""
    pred = logits.argmax(dim=-1)  # [B, L]
    for i in range(batch["input_ids"].shape[0]):
        anchors = [int(a) for a in batch["anchors"][i] if a >= 0]
        if not anchors:
            continue
        s, G = int(batch["n_real"][i]), len(anchors)
        block = pred[i, s : s + G * n].view(G, n)  # [G, n]
        first = pred[i, torch.tensor(anchors, device=pred.device) - 1][:, None]  # [G, 1]
        batch["input_ids"][i, s : s + G * n] = torch.cat([first, block[:, :-1]], dim=-1).reshape(-1)
        label_rows(batch, i, anchors, n)
