"""Draft-head examples: what the target's hidden states say, and what the target writes next.

The target reads each sample (prompt + answer) once. At every answer position t it gives the hidden
state h_t (after the final norm) and its own choice y_t (argmax); the text's token there is x_{t+1}.
An example asks the head, from (h_t, x_{t+1}), for y_{t+1} (the token the target will choose after
x_{t+1}) and for h_{t+1} (the hidden state it will have there), and, one step further on its own
output, from (z, x_{t+2}) for y_{t+2}. The targets are the target's choices, not the text, so any
text teaches what verification accepts; the target's own answers (``polyverse train distill``)
teach it on the text it will meet.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

import torch

from ..space.data import Sample


@dataclass(frozen=True)
class Examples:
    hidden: torch.Tensor  # [N, H] float16: h_t
    next_hidden: torch.Tensor  # [N, H] float16: h_{t+1}
    tokens: torch.Tensor  # [N, 2] x_{t+1}, x_{t+2}: the text's tokens fed to the head
    targets: torch.Tensor  # [N, 2] y_{t+1}, y_{t+2}: the target's choices the head should guess

    def __len__(self) -> int:
        return self.hidden.shape[0]


@torch.inference_mode()
def examples(hf_model, samples: Sequence[Sample], tick: Callable[[], None] | None = None) -> Examples:
    """Examples from every answer position of ``samples`` with two tokens after it."""
    parts: list[tuple[torch.Tensor, ...]] = []
    body = hf_model.get_decoder() if hasattr(hf_model, "get_decoder") else hf_model.model
    head = hf_model.get_output_embeddings()
    for sample in samples:
        ids = torch.tensor(list(sample.prompt) + list(sample.response))  # [n]
        start, n = len(sample.prompt) - 1, len(ids)  # h_t for t = the prompt's last token .. n - 3
        if n - 3 < start:
            if tick:
                tick()
            continue
        hidden = body(input_ids=ids[None]).last_hidden_state[0].float()  # [n, H]
        choice = head(hidden).argmax(dim=-1)  # [n]: y_t, the target's choice after token t
        t = torch.arange(start, n - 2)  # [m]
        parts.append((hidden[t].half(), hidden[t + 1].half(),
                       torch.stack([ids[t + 1], ids[t + 2]], dim=1), torch.stack([choice[t + 1], choice[t + 2]], dim=1)))
        if tick:
            tick()
    if not parts:
        raise ValueError("no sample has an answer of at least two tokens")
    return Examples(*(torch.cat([p[i] for p in parts]) for i in range(4)))
