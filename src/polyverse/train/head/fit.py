"""Fitting a draft head on ``data.Examples``.

The loss of an example: cross-entropy of the first guess (over the head's tokens), the same for the
second guess made from the head's own output z (as decoding chains it), weighted ``second``, and a
smooth-L1 pull of z toward the target's next hidden state, weighted ``feature`` (z is what the next
step reads, so it should look like what the target would have there). The head's tokens are the
``vocab`` most frequent among the targets' choices: the guesses are read through those LM-head rows only.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F

from ...errors import ConfigError
from ...heads import DraftHead, HeadShape
from .data import Examples


@dataclass(frozen=True)
class HeadFitConfig:
    inner: int = 1024  # the head's width
    vocab: int = 4096  # tokens it can guess (the most frequent choices)
    epochs: int = 6
    batch: int = 256
    lr: float = 1e-3
    weight_decay: float = 0.01
    second: float = 0.5  # weight of the second guess's loss
    feature: float = 1.0  # weight of the pull toward the next hidden state
    seed: int = 0

    def __post_init__(self) -> None:
        for name in ("inner", "vocab", "epochs", "batch"):
            if getattr(self, name) < 1:
                raise ConfigError(f"--{name} must be at least 1, got {getattr(self, name)}")
        if self.lr <= 0:
            raise ConfigError(f"--lr must be positive, got {self.lr}")


def vocabulary(targets: torch.Tensor, size: int) -> torch.Tensor:
    """The ``size`` most frequent token ids of ``targets`` (ties: the smaller id first) [<= size]."""
    counts = Counter(targets.flatten().tolist())
    ranked = sorted(counts, key=lambda t: (-counts[t], t))[:size]
    return torch.tensor(ranked, dtype=torch.long)


def fit(hf_model, data: Examples, cfg: HeadFitConfig, tick: Callable[[int, float], None] | None = None) -> DraftHead:
    """Train a head on ``data``; ``tick(step, loss)`` after every step."""
    gen = torch.Generator().manual_seed(cfg.seed)
    torch.manual_seed(cfg.seed)  # the layers' initial weights
    ids = vocabulary(data.targets, cfg.vocab)
    embed = hf_model.get_input_embeddings().weight.detach().float()  # [V, H]
    rows = hf_model.get_output_embeddings().weight.detach().float()[ids]  # [V', H]
    index = torch.full((embed.shape[0],), -100, dtype=torch.long)  # token id -> its row in ``rows``; -100: none
    index[ids] = torch.arange(len(ids))
    head = DraftHead(HeadShape(embed.shape[1], cfg.inner, len(ids)), ids)
    steps_per_epoch = max(1, len(data) // cfg.batch)
    opt = torch.optim.AdamW(head.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, cfg.lr, total_steps=cfg.epochs * steps_per_epoch)
    head.train()
    step = 0
    for _ in range(cfg.epochs):
        order = torch.randperm(len(data), generator=gen)
        for i in range(steps_per_epoch):
            pick = order[i * cfg.batch: (i + 1) * cfg.batch]
            tokens, targets = data.tokens[pick], data.targets[pick]  # [B, 2]
            z = head(data.hidden[pick].float(), embed[tokens[:, 0]])  # [B, H]
            first = F.cross_entropy(z @ rows.T, index[targets[:, 0]], ignore_index=-100)
            pull = F.smooth_l1_loss(z, data.next_hidden[pick].float())
            z2 = head(z, embed[tokens[:, 1]])
            second = F.cross_entropy(z2 @ rows.T, index[targets[:, 1]], ignore_index=-100)
            loss = first + cfg.second * second + cfg.feature * pull
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
            step += 1
            if tick:
                tick(step, loss.item())
    return head.eval()


@torch.inference_mode()
def accuracy(hf_model, head: DraftHead, data: Examples) -> float:
    """Share of examples whose first guess is the target's choice (``data``: held out)."""
    embed = hf_model.get_input_embeddings().weight.detach().float()
    rows = hf_model.get_output_embeddings().weight.detach().float()[head.ids]
    right = 0
    for lo in range(0, len(data), 1024):
        z = head(data.hidden[lo: lo + 1024].float(), embed[data.tokens[lo: lo + 1024, 0]])
        right += int((head.ids[(z @ rows.T).argmax(dim=-1)] == data.targets[lo: lo + 1024, 0]).sum())
    return right / max(1, len(data))
