"""Statistics of a generation, summed from the steps of the decode loop."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

from .loop import StepStats


@dataclass
class Stats:
    new_tokens: int = 0
    passes: int = 0  # decode forward passes (the prompt's prefill pass not counted)
    fed: int = 0  # tokens fed over all decode passes
    drafted: int = 0  # draft tokens proposed
    accepted_draft: int = 0  # draft tokens accepted (new_tokens minus one bonus per pass)
    decode_seconds: float = 0.0
    seconds: float = 0.0  # wall time of the whole request, prefill included
    accepted_per_pass: list[int] = field(default_factory=list)

    def add(self, step: StepStats) -> None:
        self.new_tokens += step.accepted
        self.passes += 1
        self.fed += step.fed
        self.drafted += step.drafted
        self.accepted_draft += max(step.accepted - 1, 0)
        self.decode_seconds += step.seconds
        self.accepted_per_pass.append(step.accepted)

    @property
    def tokens_per_second(self) -> float:
        return self.new_tokens / self.seconds if self.seconds > 0 else 0.0

    @property
    def mean_accepted(self) -> float:
        """Mean new tokens per decode forward pass (1.0 for plain AR)."""
        return self.new_tokens / self.passes if self.passes else 0.0

    def to_dict(self) -> dict:
        out = asdict(self)
        out["tokens_per_second"] = round(self.tokens_per_second, 3)
        out["mean_accepted"] = round(self.mean_accepted, 4)
        return out

    def line(self) -> str:
        return (
            f"{self.new_tokens} tokens in {self.seconds:.2f} s: {self.tokens_per_second:.1f} tok/s, "
            f"{self.mean_accepted:.2f} tokens/pass over {self.passes} forward passes "
            f"({self.accepted_draft}/{self.drafted} draft tokens accepted)"
        )
