"""`space`: SPACE auto-correct decoding (arXiv 2402.11809) for a model fine-tuned with [MASK] tokens.

A SPACE model, given a context followed by [MASK] tokens, predicts at each mask the token one
further on: the mask at position x stands in for the unknown token at x and its logits predict
the token at x + 1 (``polyverse.train.space.data`` builds the training samples that way). One
pass holds the pending token t, then the candidates c1..cn proposed by the last pass as a chain,
and a group of k masks hanging below t and below each candidate:

    t ─ c1 ─ c2 ─ ... ─ cn          (the draft that is verified)
    └ M M .. M   (k masks below t)
         └ M M .. M   (k masks below c1)   ...   below cn

A mask group sees its own ancestors only and nothing later sees it (it is a side branch of the
tree), so the candidates' cache entries are exactly those of plain decoding and the shared
verification stays lossless: greedy output equals greedy `ar` of the same (adapted) model, and
sampled output has its distribution. The next candidates are the argmax of the mask group below
the last accepted node: they continue after the token the verification adds (the bonus token).

With ``adaptive`` (the default) the proposer does not always feed all of them: candidate j is
accepted about as often as the mask's own confidence p_j says, so a pass with n candidates is
expected to yield E(n) = 1 + p_1 + p_1 p_2 + ... + p_1..p_n tokens while it feeds
q(n) = 1 + n + (n + 1) k tokens. With the backend's measured cost curve c(q) (of passes whose
every row is read, as SPACE's are: ``cost_curve(..., every=True)``) it keeps the n
that maximises E(n) / c(q(n)): unlikely candidates, and the k masks hung below each, are not
paid for. Which candidates are fed never changes what is written, only how fast. The masks per
group are sized the same way: group j of masks yields the j-th candidate of the next pass, worth
about A_j = p_1 .. p_j (a decayed average over the groups read so far), so the proposer feeds the
k' <= k that maximises (1 + A_1 + .. + A_k') / c(1 + k' + (k' + 1) k'), the steady state of
k' candidates with k' masks below each.

Beside them, a branch may carry what the prompt and the text so far predict (an n-gram match, as
`auto` drafts it, priced by what its rows add to the pass): where the text repeats itself it runs
further than the masks' proposals. A path through it leaves no mask group below its end, so the
next pass starts again from the group below the root.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Callable, Sequence

from ..costs import CostCurve, LiveCurve, pricing
from ..draft import Draft
from ..errors import ConfigError
from ..logits import likeliest
from ..loop import Observation, Proposer
from ..options import method_options, option
from ..registry import registry
from .auto import NgramBranch

MASK_TOKEN = "[MASK]"
DEFAULT_K = 5  # masks per group when neither the options nor the adapter say
WORTH_DECAY = 0.8  # weight an average of what a depth of masks was worth keeps at each group read


@method_options("space")
class SpaceConfig:
    # = most candidates proposed per pass; None = the k the SPACE adapter was trained with (trained_k)
    k: int | None = option(None, "masks per group", lo=1, hi=16, flag="--k")
    mask_id: int | None = option(None, "the [MASK] token id (default: looked up in the tokenizer)", lo=0,
                                  hi=2**31 - 1)
    adaptive: bool = option(True, "feed only the candidates worth their pass cost")  # see the module doc
    ngram: int = option(4, "longest prompt or output n-gram matched for a branch beside the candidates (0: none)",
                        lo=0, hi=16, flag="--ngram")
    ngram_tokens: int = option(8, "most tokens in the n-gram branch", lo=1, hi=64)
    # false: the drafts depend on the prompt and the measured curve alone, run after run
    live: bool = option(True, "correct the measured pass costs by what greedy steps cost (costs.LiveCurve)")


def space_draft(candidates: Sequence[int], k: int, mask_id: int) -> tuple[Draft, list[list[int]]]:
    """The pass layout: the candidate chain first, then one group of k masks below the root and
    below each candidate. Returns (draft, groups) where groups[i] lists the draft nodes of the
    mask group below candidate i (groups[0]: below the root, groups[i]: below candidate i).

    Example: candidates (a, b), k = 2 -> tokens (a, b, M, M, M, M, M, M),
    parents (-1, 0, -1, 2, 0, 4, 1, 6), groups [[2, 3], [4, 5], [6, 7]].
    """
    tokens = [int(c) for c in candidates]
    parents = list(range(-1, len(tokens) - 1))
    groups: list[list[int]] = []
    for owner in range(-1, len(candidates)):
        group, parent = [], owner
        for _ in range(k):
            tokens.append(mask_id)
            parents.append(parent)
            parent = len(tokens) - 1
            group.append(parent)
        groups.append(group)
    return Draft(tuple(tokens), tuple(parents)), groups


def best_count(confidences: Sequence[float], k: int, cost: Callable[[int], float]) -> int:
    """How many of the candidates (in chain order, with confidences p_1..p_m) to feed: the n in
    0..m maximising E(n) / cost(1 + n + (n + 1) k), E(n) = 1 + p_1 + p_1 p_2 + ... + p_1..p_n.

    Example: k = 1, cost(q) = q (every token costs the same), p = (0.9, 0.1):
    n = 0 -> 1 / 2 = 0.5, n = 1 -> 1.9 / 4 = 0.475, n = 2 -> 1.99 / 6 -> 0 candidates.
    With a flat cost (cost(q) = 1) every candidate is worth feeding: 2.
    """
    best_n, best_rate = 0, 1.0 / cost(1 + k)
    expected, chain = 1.0, 1.0
    for n, p in enumerate(confidences, 1):
        chain *= p
        expected += chain
        rate = expected / cost(1 + n + (n + 1) * k)
        if rate > best_rate:
            best_n, best_rate = n, rate
    return best_n


class SpaceProposer(Proposer):
    # verification reads the accepted chain's rows and observe a mask group's rows: lazily that is two
    # or three LM-head products a pass (each streaming the whole head), at once one product
    reads_every_row = True

    def __init__(self, config: SpaceConfig, mask_id: int, cost: Callable[[int], float] | None = None,
                 curve: "CostCurve | LiveCurve | None" = None) -> None:
        """``cost``: seconds of a pass feeding q tokens (None = feed every candidate); ``curve``: the
        backend's measured pass costs, which price the n-gram branch (None, or ``ngram`` 0: no branch);
        a ``LiveCurve`` is told what each pass cost (by the loop: ``Proposer.live``)."""
        self.k = config.k if config.k is not None else DEFAULT_K
        self.mask_id = mask_id
        self.cost = cost
        self.live = curve if isinstance(curve, LiveCurve) else None
        self.candidates: list[int] = []
        self.draft = Draft.empty()  # the layout of the last draft proposed
        self.proposed = Draft.empty()  # that draft with the n-gram branch, as proposed (before any pruning by the loop)
        self.groups: list[list[int]] = []
        self.ngrams: NgramBranch | None = None
        if curve is not None and config.ngram > 0:
            self.ngrams = NgramBranch(curve, config.ngram, config.ngram_tokens)
        self.masks = self.k  # masks per group in the next pass
        self.worth: list[float] = []  # A_j: decayed averages of p_1 .. p_j over the groups read

    def start(self, context: Sequence[int]) -> None:
        self.candidates = []
        self.masks = self.k
        self.worth = []
        if self.ngrams is not None:
            self.ngrams.start(context)

    def mask_count(self) -> int:
        """Masks per group for the next pass: the k' <= k that maximises (1 + A_1 + .. + A_k') /
        c(1 + k' + (k' + 1) k'); all k until the groups have been read (or without a cost).

        Example: A = (0.6, 0.2, 0.05), c(q) = 9 + q / 2: k' = 1 -> 1.6 / 11, 2 -> 1.8 / 13.5,
        3 -> 1.85 / 17 -> 1 mask per group.
        """
        if self.cost is None or len(self.worth) < self.k:
            return self.k
        best, best_rate, expected = self.k, 0.0, 1.0
        for kk in range(1, self.k + 1):
            expected += self.worth[kk - 1]
            rate = expected / self.cost(1 + kk + (kk + 1) * kk)
            if rate > best_rate:
                best, best_rate = kk, rate
        return best

    def propose(self, context: Sequence[int]) -> Draft:
        self.draft, self.groups = space_draft(self.candidates, self.masks, self.mask_id)
        branch = self.ngrams.propose(context, len(self.draft)) if self.ngrams is not None else []
        # below the root, after the layout: the candidates' nodes and groups keep their numbers
        self.proposed = Draft.tree([branch], base=self.draft) if branch else self.draft
        return self.proposed

    def observe(self, obs: Observation) -> None:
        if self.ngrams is not None:
            self.ngrams.credit(obs.verdict.tokens)
        # the loop may prune nodes (the token budget, a grammar) and add some (a grammar's forced
        # tokens), renumbering the draft: follow each of ours by its token path
        if obs.draft is self.proposed:  # fed as proposed: the layout's nodes kept their numbers
            index = {i: i for i in range(len(self.draft))}
        else:
            index = self.draft.node_map(obs.draft)  # our node -> its index in the fed draft
        ours = {new: old for old, new in index.items()}
        path = [ours.get(i) for i in obs.verdict.accepted]
        if path != list(range(len(path))) or len(path) > len(self.candidates):
            self.candidates = []  # the path went through a mask node (a [MASK] output) or a node the loop added
            return
        last = len(path)  # group index: 0 = below the root, i = below candidate i
        rows = []
        for node in self.groups[last]:
            if node not in index:
                break
            rows.append(1 + index[node])  # logits row of the group's next mask
        proposals, conf = likeliest(obs.logits, rows)  # from the screened rows: drafts only
        cut = proposals.index(self.mask_id) if self.mask_id in proposals else len(proposals)
        chain = 1.0
        for j, p in enumerate(conf):  # what each depth of masks was worth here
            chain *= p if j < cut else 0.0
            if j < len(self.worth):
                self.worth[j] = WORTH_DECAY * self.worth[j] + (1 - WORTH_DECAY) * chain
            else:
                self.worth.append(chain)
        self.masks = self.mask_count()
        if self.cost is not None:
            cut = best_count(conf[:cut], self.masks, self.cost)
        self.candidates = proposals[:cut]


def find_mask_id(config: SpaceConfig, ctx) -> int:
    """The [MASK] id from the config or the model's tokenizer; a clear error when there is none."""
    if config.mask_id is not None:
        mask_id = config.mask_id
    else:
        tok = ctx.model.tokenizer if ctx.model is not None else None
        # one lookup, checked by the way back (the whole vocabulary as a dict costs a request dearly)
        mask_id = tok.convert_tokens_to_ids(MASK_TOKEN) if tok is not None else None
        if mask_id is None or tok.convert_ids_to_tokens(mask_id) != MASK_TOKEN:
            raise ConfigError(
                "method 'space' needs a model fine-tuned with a [MASK] token, and this one has none: "
                "load a SPACE adapter (--adapter space-gsm8k) or train one with `polyverse train space fit`"
            )
    if mask_id >= ctx.backend.vocab_size:
        raise ConfigError(f"space mask_id {mask_id} is outside the model's vocabulary of {ctx.backend.vocab_size}")
    return mask_id


def trained_k(model, default: int = DEFAULT_K) -> int:
    """The k of the SPACE adapter a loaded model was made with (its ``polyverse.json``), else ``default``:
    masks deeper than the trained groups propose little and each costs a fed token per group."""
    meta = model.adapter if model is not None else {}
    k = meta.get("config", {}).get("k") if meta.get("method") == "space" else None
    return k if isinstance(k, int) and 1 <= k <= 16 else default


def make(config: SpaceConfig, ctx) -> SpaceProposer:
    mask_id = find_mask_id(config, ctx)
    if config.k is None:
        config = replace(config, k=trained_k(ctx.model))
    # priced as its passes run: every row's logits read at once (``reads_every_row``)
    curve = pricing(ctx, config.live, every=True) if config.adaptive or config.ngram > 0 else None
    return SpaceProposer(config, mask_id, curve if config.adaptive else None, curve)


registry.register("space", SpaceConfig, make,
                  "SPACE auto-correct decoding: a [MASK]-trained model verifies and proposes in one pass")
