"""The Multiverse engine's data: its configuration, a branch (the trunk or one path) and the
per-pass Update it reports."""

from __future__ import annotations

from dataclasses import dataclass, field

from ..errors import ConfigError
from ..options import method_options, option
from .attention import Label


@method_options("multiverse")
class MultiverseConfig:
    """Budgets and scheduling of the engine (``guided`` adds the training-free mode)."""

    # every count is bounded: a request's options must not scale its work past what a server can give it
    max_paths: int = option(8, "a block with more outlines is not forked", lo=1, hi=16)
    max_depth: int = option(2, "blocks nested deeper are not forked", lo=0, hi=4)
    max_path_tokens: int = option(256, "a longer path is closed with a forced </Path>", lo=8, hi=4096)
    parallel: bool = option(True, "false: paths one after another (the sequential baseline)")
    guided: bool = option(False, "training-free: the engine writes the tags and asks the model for the outlines")
    paths: int = option(0, "guided: number of outlines (0 = the model chooses, between min_paths and choose_max)",
                        lo=0, hi=16)
    min_paths: int = option(2, "guided: fewest outlines when the model chooses", lo=1, hi=16)
    choose_max: int = option(4, "guided: most outlines when the model chooses", lo=1, hi=16)
    outline_tokens: int = option(32, "guided: longest outline", lo=1, hi=256)

    def __post_init__(self) -> None:
        if self.max_paths < 1 or self.max_depth < 0 or self.max_path_tokens < 8:
            raise ConfigError("multiverse needs max_paths >= 1, max_depth >= 0 and max_path_tokens >= 8")
        if not 0 <= self.paths <= self.max_paths or (self.guided and not 1 <= self.min_paths <= self.max_paths):
            raise ConfigError(f"multiverse paths must lie in 1..max_paths ({self.max_paths}); 0 lets the model choose")


@dataclass
class Branch:
    label: Label
    seq: int  # the backend sequence whose context this branch sees
    number: str | None  # path number ("2.1"); None on the trunk
    parent: "Branch | None"
    pos: int  # position of the next token fed
    tokens: list[int]  # everything written on this branch, queue included
    queue: list[int] = field(default_factory=list)  # written, not fed yet
    kind: str = "trunk"  # trunk | path
    conclusion: bool = False  # writing the Conclusion of its last block
    state: str = "run"  # run | wait (children open) | closing | resume (next pass) | done
    join: tuple[int, ...] = ()  # more sequences the queued cells join
    anchor: "Branch | None" = None  # this pass, hang the chain below the anchor's last token
    mark: int = 0  # start of the current segment in ``tokens`` (tag search starts here)
    blocks: int = 0  # blocks forked from this branch
    block_start: int = 0  # first position of the paths of this branch's open block
    forks: list[tuple[int, list["Branch"]]] = field(default_factory=list)  # (index in tokens, paths)
    allowed: tuple[int, ...] | None = None  # the next token must be one of these (guided choices)
    guide: str = ""  # guided-mode state of this branch ("" = not guided)
    notes: dict = field(default_factory=dict)  # guided-mode bookkeeping

    @property
    def depth(self) -> int:
        return len(self.label)


@dataclass(frozen=True)
class Update:
    """What one pass wrote: per branch (label, path number, new tokens)."""

    writes: tuple[tuple[Label, str | None, tuple[int, ...]], ...]
    fed: int  # tokens in the pass
    rows: int  # logits rows (branches that chose a token)
    seconds: float
    finish_reason: str | None = None
