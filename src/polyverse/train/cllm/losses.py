"""CLLM losses: global consistency (state vs stop-gradient fixed point) and AR with label smoothing."""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F


def consistency_mask(state: Sequence[int], fixed: Sequence[int], length: int) -> list[bool]:
    """Block positions the consistency loss trains: from the first wrong token of the state on.

    The correct prefix of a state already predicts like the fixed point; positions past the
    fixed point's length (padding, or a block cut at EOS) are not trained either.
    Example: state [4, 5, 9, 9], fixed [4, 5, 6, 7], length 4 -> [F, F, T, T].
    """
    m = min(len(fixed), len(state), length)
    first = next((i for i in range(m) if state[i] != fixed[i]), m)
    return [first <= i < m for i in range(length)]


def consistency_loss(student: torch.Tensor, teacher: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean over masked positions of KL(p_teacher || p_student); no gradient reaches the teacher.

    student, teacher: [B, n, V] logits of the block positions given the intermediate state and
    given the fixed point; mask: [B, n] bool. Zero (with a graph) when nothing is masked in.
    """
    teacher = teacher.detach()
    log_s = F.log_softmax(student.float(), dim=-1)  # [B, n, V]
    log_t = F.log_softmax(teacher.float(), dim=-1)  # [B, n, V]
    kl = (log_t.exp() * (log_t - log_s)).sum(-1)  # [B, n]
    m = mask.to(kl.dtype)
    return (kl * m).sum() / m.sum().clamp(min=1.0)


def ar_loss(logits: torch.Tensor, labels: torch.Tensor, label_smoothing: float = 0.1) -> torch.Tensor:
    """Cross-entropy of [B, n, V] logits against [B, n] labels (-100 = ignored), label-smoothed."""
    if not bool((labels != -100).any()):
        return logits.sum() * 0.0
    return F.cross_entropy(logits.float().reshape(-1, logits.shape[-1]), labels.reshape(-1),
                           ignore_index=-100, label_smoothing=label_smoothing)
