"""The Multiverse engine: decode, fork one path per outline at ``</Goal>``, run the paths in the
same forward passes, merge them, and go on with the Conclusion.

Layout: flattened. All branches live in one KV cache; each path is a backend *sequence* (see
``layout``): a fork makes every committed cell of the parent visible to the children, a path's
cells join its parent when it closes, so the Conclusion sees everything and the merge costs
nothing. Each pass feeds the queued tokens of every open branch, each chain below the context of
its own sequence, and asks for one logits row per branch. Positions follow ``attention``: paths
restart after ``</Goal>``, the Conclusion starts after the longest path. With ``parallel=False``
the same engine runs the paths one after another (the sequential baseline: the same tokens, one
logits row per pass).

Budgets: ``max_new_tokens`` counts sequential length (as the paper does): the furthest position
written minus the prompt. (The method's runner also caps the merged output, ``written``, so a
request never gets more tokens than it asked for.) A block with more outlines than ``max_paths``, or nested deeper than
``max_depth``, is not forked (its text goes on as plain decoding). A path that reaches
``max_path_tokens`` is closed with a forced ``</Path>``. A model that never writes the tags is
plain AR decoding: one branch, one token per pass.
"""

from __future__ import annotations

import re
import time
from typing import Callable, Iterator, Sequence

import torch

from ..config import GenerationConfig
from ..layout import Feed
from ..loop import prefill
from ..sampling import make_generator, sample, target_probs
from .attention import Label
from .branch import Branch, MultiverseConfig, Update
from .sequence import CONCLUSION_END, CONCLUSION_SEED, GOAL_END, PARALLEL_CLOSE, PATH_END, PATH_SEED

_OUTLINE = re.compile(r"<Outline>\s*(\d+(?:\.\d+)*)\s*:")
_TAG_TOKENS: dict[tuple, torch.Tensor] = {}


def tag_tokens(tokenizer, vocab_size: int, keep: tuple[int, ...] = ()) -> torch.Tensor:
    """Ids of the tokens whose text holds '<' (guided content may not open or close tags), below
    ``vocab_size`` and not in ``keep`` (end-of-text stays allowed); computed once per tokenizer."""
    key = (id(tokenizer), len(tokenizer), vocab_size, keep)
    if key not in _TAG_TOKENS:
        pieces = tokenizer.convert_ids_to_tokens(list(range(min(len(tokenizer), vocab_size))))
        _TAG_TOKENS[key] = torch.tensor([i for i, p in enumerate(pieces) if p and "<" in p and i not in keep],
                                        dtype=torch.long)
    return _TAG_TOKENS[key]


Pick = Callable[[Branch, torch.Tensor], int]


class Engine:
    """One request. Iterate ``run(prompt)`` for Updates; then ``tokens()``/``labels()`` give the
    structured output in training order."""

    def __init__(self, backend, tokenizer, config: MultiverseConfig, gen: GenerationConfig,
                 generator: torch.Generator | None = None, pick: Pick | None = None,
                 record: Callable[[Label, int, torch.Tensor], None] | None = None) -> None:
        self.backend, self.tokenizer, self.cfg, self.gen = backend, tokenizer, config, gen
        self.generator = generator if generator is not None else make_generator(gen.seed)
        self.pick = pick or self._choose
        self.record = record
        self.eos = set(gen.eos_token_ids)
        self._ids: dict[str, list[int]] = {}
        self._seqs = 0
        self.trunk: Branch | None = None
        self.prompt_len = 0
        self.passes = 0

    # -- tokens -----------------------------------------------------------------------------
    def ids(self, text: str) -> list[int]:
        if text not in self._ids:
            self._ids[text] = [int(t) for t in self.tokenizer(text, add_special_tokens=False)["input_ids"]]
        return self._ids[text]

    def _tail(self, br: Branch, n: int, drop_last: bool = False) -> str:
        seg = br.tokens[br.mark: len(br.tokens) - (1 if drop_last else 0)]
        return self.tokenizer.decode(seg[-n:], skip_special_tokens=False)

    def _wrote(self, br: Branch, tag: str) -> bool:
        """Did the last token written on ``br`` complete ``tag``?"""
        n = len(tag) + 1
        return tag in self._tail(br, n) and tag not in self._tail(br, n, drop_last=True)

    def _tag_tokens(self) -> torch.Tensor:
        return tag_tokens(self.tokenizer, self.backend.vocab_size, tuple(sorted(self.eos)))

    def _choose(self, br: Branch, row: torch.Tensor) -> int:
        if br.allowed is not None:
            keep = torch.full_like(row, float("-inf"))
            keep[list(br.allowed)] = row[list(br.allowed)]
            row = keep
        elif br.guide == "outline" and self.eos:  # an outline cannot end the answer
            row = row.clone()
            row[list(self.eos)] = float("-inf")
        elif br.guide == "path" or (br.guide and br.conclusion):  # guided content writes no tags
            row = row.clone()
            row[self._tag_tokens()] = float("-inf")
        if self.gen.sampling.greedy:
            return int(torch.argmax(row))
        return sample(target_probs(row[None], self.gen.sampling)[0], self.generator)

    # -- the loop ---------------------------------------------------------------------------
    def run(self, prompt: Sequence[int], prefilled: bool = False) -> Iterator[Update]:
        """The passes after the prompt; ``prefilled``: the caller already fed the prompt but its last
        token (``loop.prompt_chunks``)."""
        prompt = [int(t) for t in prompt] if prefilled else prefill(self.backend, prompt)
        self.prompt_len = len(prompt)
        self.trunk = Branch((), self._new_seq(), None, None, len(prompt) - 1, list(prompt), [prompt[-1]])
        if self.cfg.guided:
            from .guided import start

            start(self, self.trunk)
        elif self._tail(self.trunk, len(GOAL_END) + 1).endswith(GOAL_END):
            self.fork(self.trunk)  # the prompt holds the Goal: its paths start at once
        finish = None
        while finish is None:
            t0 = time.perf_counter()
            before = {id(b): len(b.tokens) for b in self.branches()}
            batch = self._schedule()
            if not batch:
                finish = "eos"
                break
            fed, rows = self._pass(batch)
            finish = self._finished()
            writes = tuple((b.label, b.number, tuple(b.tokens[before.get(id(b), 0):]))
                           for b in self.branches() if len(b.tokens) > before.get(id(b), 0))
            yield Update(writes, fed, rows, time.perf_counter() - t0, finish)

    def _pass(self, batch: list[Branch]) -> tuple[int, int]:
        tokens, positions, parents, seqs, want = [], [], [], [], []
        last: dict[int, int] = {}
        for br in batch:
            up = last.get(id(br.anchor), -1) if br.anchor is not None else -1
            for k, tok in enumerate(br.queue):
                tokens.append(tok)
                positions.append(br.pos + k)
                parents.append(up if k == 0 else len(tokens) - 2)
                seqs.append((br.seq,) + br.join)
            last[id(br)] = len(tokens) - 1
            if br.state == "run":
                want.append(br)
        rows = [last[id(br)] for br in want]
        logits = self.backend.forward(Feed(tuple(tokens), tuple(positions), tuple(parents), tuple(seqs)), logits_for=rows)
        self.backend.commit(range(len(tokens)))
        self.passes += 1
        for br in batch:
            br.pos += len(br.queue)
            br.queue, br.join = [], ()
            if br.state == "closing":
                br.state = "done"
        for br in self.branches():
            br.anchor = None
            if br.state == "resume":  # a conclusion that had to wait for this pass's closing tokens
                br.state = "run"
        for br, row in zip(want, logits):
            if self.record is not None:
                self.record(br.label, len(br.tokens) - 1, row)
            self._write(br, self.pick(br, row))
        return len(tokens), len(rows)

    def _schedule(self) -> list[Branch]:
        live = [b for b in self.branches() if b.queue and b.state in ("run", "wait", "closing")]
        if not self.cfg.parallel:
            running = [b for b in live if b.state == "run"]
            first = min(running, key=lambda b: b.label) if running else None
            live = [b for b in live if b.state != "run" or b is first]
        # anchors first, so that a chain hangs below a token already in the feed
        placed: list[Branch] = []
        rest = list(live)
        while rest:
            ready = [b for b in rest if b.anchor is None or b.anchor not in rest]
            placed.extend(ready)
            rest = [b for b in rest if b not in ready]
        return placed

    def branches(self) -> list[Branch]:
        """Every branch, the trunk first, each path before its own paths (tree order)."""
        out, todo = [], [self.trunk]
        while todo:
            br = todo.pop()
            out.append(br)
            todo.extend(reversed([kid for _, kids in br.forks for kid in kids]))
        return out

    def sequential_length(self) -> int:
        """Positions advanced past the prompt: the furthest token written (the budget's measure)."""
        return max(b.pos + len(b.queue) - 1 for b in self.branches()) - (self.prompt_len - 1)

    def written(self) -> int:
        """Tokens written past the prompt by every branch (the budget's measure)."""
        return sum(len(b.tokens) for b in self.branches()) - self.prompt_len

    def _finished(self) -> str | None:
        if self.trunk.state == "done":
            return "eos"
        return "length" if self.sequential_length() >= self.gen.max_new_tokens else None

    def _new_seq(self) -> int:
        self._seqs += 1
        return self._seqs - 1

    # -- writing and events -----------------------------------------------------------------
    def force(self, br: Branch, text: str) -> None:
        self.push(br, self.ids(text))

    @staticmethod
    def push(br: Branch, ids) -> None:
        """Write tokens on ``br``: they join its text and are fed in the next pass."""
        br.tokens.extend(ids)
        br.queue.extend(ids)

    def _write(self, br: Branch, tok: int) -> None:
        br.allowed = None
        if br.guide:
            from .guided import on_token

            if on_token(self, br, tok):
                return
        if tok in self.eos:
            if br.conclusion:  # the grammar cannot end here: close what is open
                self.force(br, "\n" + CONCLUSION_END + PARALLEL_CLOSE)
                br.conclusion = False
            if br.kind == "path":
                self.force(br, "\n" + PATH_END)
                self._close(br)
            else:
                br.tokens.append(tok)
                br.state = "done"
            return
        self.push(br, [tok])
        self.after_write(br)

    def after_write(self, br: Branch) -> None:
        """React to tags the branch's last token completed; enforce the path budget."""
        if br.conclusion and self._wrote(br, CONCLUSION_END):
            self.force(br, PARALLEL_CLOSE)
            br.conclusion, br.mark = False, len(br.tokens)
            if br.guide and br.kind == "trunk":
                br.state = "done"
        elif br.kind == "path" and not br.conclusion and self._wrote(br, PATH_END):
            self._close(br)
        elif self._wrote(br, GOAL_END) and self.fork(br):
            pass
        elif br.guide and br.kind == "trunk" and br.conclusion and len(br.tokens) - br.mark >= self.cfg.max_path_tokens:
            self.force(br, "\n" + CONCLUSION_END + PARALLEL_CLOSE)
            br.state = "done"
        elif br.kind == "path" and self._path_length(br) + self._closing(br) >= self.cfg.max_path_tokens:
            if br.conclusion:
                self.force(br, "\n" + CONCLUSION_END + PARALLEL_CLOSE)
                br.conclusion = False
            self.force(br, "\n" + PATH_END)
            self._close(br)

    @staticmethod
    def _path_length(br: Branch) -> int:
        """Sequential length of a path so far (seed, nested blocks and queue included)."""
        return br.pos + len(br.queue) - br.parent.block_start

    def _closing(self, br: Branch) -> int:
        """Tokens the forced close of this path will add."""
        tail = "\n" + CONCLUSION_END + PARALLEL_CLOSE if br.conclusion else ""
        return len(self.ids(tail + "\n" + PATH_END))

    def fork(self, br: Branch) -> bool:
        """Open one path per outline of the Goal just closed on ``br``; False when not forked."""
        since = max(br.forks[-1][0] if br.forks else 0, len(br.tokens) - 2048)
        goal = self.tokenizer.decode(br.tokens[since:], skip_special_tokens=False)
        goal = goal[goal.rfind("<Goal>"):]
        numbers = _OUTLINE.findall(goal)
        outlines = [t.strip().rstrip(".:") for t in re.findall(r"<Outline>\s*[\d.]+\s*:(.*?)</Outline>", goal, re.S)]
        if not numbers or len(numbers) > self.cfg.max_paths or br.depth >= self.cfg.max_depth:
            return False
        block, start = br.blocks, br.pos + len(br.queue)
        br.blocks += 1
        br.block_start = start
        kids = []
        for i in range(1, len(numbers) + 1):
            number = f"{br.number}.{i}" if br.number else str(i)
            kid = Branch(br.label + ((block, i),), self._new_seq(), number, br, start, [], kind="path", anchor=br,
                         guide="path" if br.guide else "")
            self.backend.copy_seq(br.seq, kid.seq)
            seed = PATH_SEED.format(number=number)
            if br.guide:  # training-free: the path opens by restating its outline
                seed += " " + outlines[i - 1] + ":"
            self.force(kid, seed)
            kids.append(kid)
        br.join = tuple(k.seq for k in kids)
        br.state = "wait"
        br.forks.append((len(br.tokens), kids))
        return True

    def _close(self, br: Branch) -> None:
        parent = br.parent
        br.state = "closing"
        br.join = (parent.seq,)
        self.backend.copy_seq(br.seq, parent.seq)
        kids = parent.forks[-1][1]
        if any(k.state not in ("closing", "done") for k in kids):
            return
        longest = max(k.pos + len(k.queue) for k in kids) - parent.block_start
        parent.pos = parent.block_start + longest
        parent.conclusion, parent.mark = True, len(parent.tokens)
        self.force(parent, CONCLUSION_SEED)
        closing = [k for k in kids if k.state == "closing"]
        if closing == [br]:
            parent.anchor, parent.state = br, "run"
        else:  # several paths close in this pass: the conclusion starts once they are all in the cache
            parent.state = "resume"

    # -- the result -------------------------------------------------------------------------
    def flat(self, br: Branch | None = None) -> tuple[list[int], list[Label]]:
        """Output tokens in training order (paths one after another) with their labels, prompt included."""
        br = br or self.trunk
        toks: list[int] = []
        labels: list[Label] = []
        at = 0
        for cut, kids in br.forks:
            toks += br.tokens[at:cut]
            labels += [br.label] * (cut - at)
            for kid in kids:
                t, l = self.flat(kid)
                toks += t
                labels += l
            at = cut
        toks += br.tokens[at:]
        labels += [br.label] * (len(br.tokens) - at)
        return toks, labels

    def text(self) -> str:
        toks, _ = self.flat()
        return self.tokenizer.decode(toks[self.prompt_len:], skip_special_tokens=True)

