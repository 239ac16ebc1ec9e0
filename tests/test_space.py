"""SPACE: the data transform, the decoding layout (k = 2, hand-drawn), the proposer, a smoke fit."""

import json
import random
from types import SimpleNamespace

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from polyverse.backends.transformers import TransformersBackend
from polyverse.config import GenerationConfig
from polyverse.draft import Draft
from polyverse.errors import ConfigError
from polyverse.layout import chain_feed, draft_feed, visibility
from polyverse.loop import Observation, decode
from polyverse.methods.ar import ARProposer
from polyverse.methods.space import (DEFAULT_K, SpaceConfig, SpaceProposer, best_count, find_mask_id, make, space_draft,
                                     trained_k)
from polyverse.models.tiny import tiny_model
from polyverse.registry import MethodContext
from polyverse.train.space.data import (IGNORE, Sample, add_mask_token, collate, collate_packed, group_layout,
                                       group_positions, gsm8k_answer, pack, transform)
from polyverse.verify import Verdict

M = 99  # the mask id used in the hand-made cases


class CutAt:
    """A stand-in random stream: cut (random() < p) at response index ``c``."""

    def __init__(self, c: int) -> None:
        self.c = c

    def random(self) -> float:
        return 0.0

    def randrange(self, n: int) -> int:
        assert 0 <= self.c < n
        return self.c


def test_transform_cut_sample_hand_made():
    s = Sample(prompt=(1, 2), response=(10, 11, 12, 13))
    ids, labels = transform(s, CutAt(1), k=2, p=0.5, mask_id=M)
    assert ids == [1, 2, 10, M, M, M]
    assert labels == [IGNORE, IGNORE, 10, 11, 12, 13]


def test_transform_cut_near_the_end_pads_labels():
    s = Sample(prompt=(1,), response=(10, 11, 12))
    ids, labels = transform(s, CutAt(2), k=3, p=1.0, mask_id=M)
    assert ids == [1, 10, 11, M, M, M, M]
    assert labels == [IGNORE, 10, 11, 12, IGNORE, IGNORE, IGNORE]


def test_transform_uncut_sample_is_plain_sft_with_prompt_masked():
    s = Sample(prompt=(1, 2, 3), response=(10, 11))
    ids, labels = transform(s, random.Random(0), k=5, p=0.0, mask_id=M)
    assert ids == [1, 2, 3, 10, 11]
    assert labels == [IGNORE, IGNORE, IGNORE, 10, 11]


def test_transform_cuts_about_p_of_the_samples():
    s = Sample(prompt=(1,), response=tuple(range(10, 30)))
    rng = random.Random(3)
    cut = sum(M in transform(s, rng, k=5, p=0.5, mask_id=M)[0] for _ in range(2000))
    assert 900 < cut < 1100


def test_collate_pads_right():
    batch = collate([([1, 2, 3], [IGNORE, 2, 3]), ([4], [4])], pad_id=0)
    assert batch["input_ids"].tolist() == [[1, 2, 3], [4, 0, 0]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1], [1, 0, 0]]
    assert batch["labels"].tolist() == [[IGNORE, 2, 3], [4, IGNORE, IGNORE]]


def test_gsm8k_answer_drops_calculator_annotations():
    assert gsm8k_answer("48/2 = <<48/2=24>>24 clips.\n#### 72") == "48/2 = 24 clips.\n#### 72"


def test_space_draft_hand_drawn_k2():
    # pending token x = 7 at position 20; candidates a = 30, b = 31; k = 2 masks per group
    draft, groups = space_draft([30, 31], k=2, mask_id=M)
    assert groups == [[2, 3], [4, 5], [6, 7]]
    feed = draft_feed(7, 20, draft)
    #                     x   a   b   M   M   M   M   M   M
    assert feed.tokens == (7, 30, 31, M, M, M, M, M, M)
    assert feed.positions == (20, 21, 22, 21, 22, 22, 23, 23, 24)
    vis = visibility(feed.parents).int().tolist()
    expected = [
        # x  a  b  m  m  m  m  m  m
        [1, 0, 0, 0, 0, 0, 0, 0, 0],  # x
        [1, 1, 0, 0, 0, 0, 0, 0, 0],  # a: candidate 1
        [1, 1, 1, 0, 0, 0, 0, 0, 0],  # b: candidate 2 (the masks are hidden from it)
        [1, 0, 0, 1, 0, 0, 0, 0, 0],  # group below x, mask 1
        [1, 0, 0, 1, 1, 0, 0, 0, 0],  # group below x, mask 2
        [1, 1, 0, 0, 0, 1, 0, 0, 0],  # group below a, mask 1
        [1, 1, 0, 0, 0, 1, 1, 0, 0],  # group below a, mask 2
        [1, 1, 1, 0, 0, 0, 0, 1, 0],  # group below b, mask 1
        [1, 1, 1, 0, 0, 0, 0, 1, 1],  # group below b, mask 2
    ]
    assert vis == expected


def test_proposer_reads_the_group_below_the_last_accepted_candidate():
    p = SpaceProposer(SpaceConfig(k=2), mask_id=M)
    p.start([1, 2])
    p.candidates = [30, 31]
    draft = p.propose([1, 2])  # nodes: a=0, b=1, groups [2, 3], [4, 5], [6, 7]
    logits = torch.zeros(9, 100)
    winners = {0: 30, 1: 55, 2: 32, 3: 40, 4: 41, 5: 50, 6: 51, 7: 60, 8: 61}  # feed row -> argmax
    for row, tok in winners.items():
        logits[row, tok] = 1.0
    # a accepted, b rejected: the next candidates come from the group below a (rows 5, 6)
    p.observe(Observation(draft, Verdict((0,), (30, 55)), logits, (1, 2, 30, 55)))
    assert p.candidates == [50, 51]
    draft2 = p.propose([1, 2, 30, 55])
    logits2 = torch.zeros(1 + 2 + 6, 100)
    for row, tok in {3: 70, 4: M}.items():  # the group below the root proposes 70, then [MASK]
        logits2[row, tok] = 1.0
    p.observe(Observation(draft2, Verdict((), (9,)), logits2, (1, 2, 30, 55, 9)))
    assert p.candidates == [70]  # cut at a proposed [MASK]


def test_trained_k_reads_a_space_adapter_only():
    def model(meta):
        return SimpleNamespace(adapter=meta)

    assert trained_k(model({"method": "space", "config": {"k": 3}})) == 3
    assert trained_k(model({"method": "cllm", "config": {"k": 3}})) == DEFAULT_K
    assert trained_k(model({"method": "space", "config": {"k": 99}})) == DEFAULT_K
    assert trained_k(model({})) == DEFAULT_K and trained_k(None) == DEFAULT_K
    assert SpaceProposer(SpaceConfig(), 7).k == DEFAULT_K


def test_best_count_hand_made():
    linear = lambda q: float(q)  # every fed token costs the same
    assert best_count([0.9, 0.1], 1, linear) == 0  # 1/2 beats 1.9/4 and 1.99/6
    assert best_count([0.9, 0.1], 1, lambda q: 1.0) == 2  # a flat cost: feed them all
    # cost 1 up to 4 tokens, then 2: k = 1 feeds 2 (n = 0), 4 (n = 1), 6 (n = 2) tokens
    step = lambda q: 1.0 if q <= 4 else 2.0
    assert best_count([0.5, 0.9], 1, step) == 1  # 1.5 / 1 beats 1 / 1 and 1.95 / 2
    assert best_count([0.0, 1.0], 1, step) == 0  # a sure second candidate behind a hopeless first
    assert best_count([], 3, step) == 0


def test_adaptive_proposer_drops_unlikely_candidates():
    cost = lambda q: 1.0 if q <= 2 else 1.2 if q <= 4 else 3.0  # k = 1: 2 tokens (n = 0), 4 (n = 1), 6 (n = 2)
    p = SpaceProposer(SpaceConfig(k=1), mask_id=M, cost=cost)
    p.start([1, 2])
    draft = p.propose([1, 2])  # no candidates: the root and its group of one mask
    assert list(draft.tokens) == [M]
    logits = torch.full((2, 100), -10.0)
    logits[0, 5] = 10.0  # the root's own prediction (the bonus token)
    logits[1, 40] = 10.0  # the mask below the root: a confident candidate
    p.observe(Observation(draft, Verdict((), (5,)), logits, (1, 2, 5)))
    assert p.candidates == [40]
    logits[1] = 0.0  # a flat mask row: confidence 1/100, expected 1.01 / 1.2 < 1 / 1
    p.observe(Observation(draft, Verdict((), (5,)), logits, (1, 2, 5)))
    assert p.candidates == []


def test_masks_per_group_follow_what_each_depth_was_worth():
    cost = lambda q: 9 + q / 2
    p = SpaceProposer(SpaceConfig(k=3), mask_id=M, cost=cost)
    p.start([1, 2])
    assert p.mask_count() == 3  # nothing read yet: the whole group
    p.worth = [0.6, 0.2, 0.05]  # the docstring's example
    assert p.mask_count() == 1
    p.worth = [0.95, 0.9, 0.85]  # confident masks pay for a deeper group
    assert p.mask_count() == 3
    assert SpaceProposer(SpaceConfig(k=3), mask_id=M).mask_count() == 3  # no cost: never fewer
    draft = p.propose([1, 2])  # no candidates: the root's group of 3 masks
    logits = torch.full((4, 100), -10.0)
    logits[0, 5] = 10.0
    for row in (1, 2, 3):  # three flat masks: nothing below the first is worth a row
        logits[row] = 0.0
    for _ in range(20):
        p.observe(Observation(draft, Verdict((), (5,)), logits, (1, 2, 5)))
    assert p.worth[0] < 0.05 and p.masks == 1
    assert len(p.propose([1, 2, 5]).tokens) == 1  # one mask below the root


def test_space_without_a_mask_token_is_a_clear_error():
    class Tok:  # a fast tokenizer's answers: an unknown token maps to the unknown token's id
        vocab = {"a": 0}

        def convert_tokens_to_ids(self, token):
            return self.vocab.get(token, 0)

        def convert_ids_to_tokens(self, i):
            return {v: k for k, v in self.vocab.items()}[i]

    class Lm:
        tokenizer = Tok()

    be = TransformersBackend(tiny_model(seed=1))
    with pytest.raises(ConfigError, match="SPACE adapter"):
        find_mask_id(SpaceConfig(), MethodContext(be, None, None, Lm()))
    Lm.tokenizer.vocab = {"a": 0, "[MASK]": 7}
    assert find_mask_id(SpaceConfig(), MethodContext(be, None, None, Lm())) == 7
    with pytest.raises(ConfigError, match="outside"):
        make(SpaceConfig(mask_id=10_000), MethodContext(be, None, None, None))
    with pytest.raises(ConfigError):
        SpaceConfig(k=0)


class TinyTokenizer:
    """The few tokenizer calls the SPACE pipeline makes, over a tiny model's integer vocabulary."""

    def __init__(self, size: int) -> None:
        self.vocab = {f"t{i}": i for i in range(size)}
        self.pad_token_id = 0

    def get_vocab(self):
        return dict(self.vocab)

    def add_tokens(self, tokens, special_tokens=False):
        for t in tokens:
            self.vocab.setdefault(t, len(self.vocab))

    def convert_tokens_to_ids(self, token):
        return self.vocab[token]

    def convert_ids_to_tokens(self, i):
        return {v: k for k, v in self.vocab.items()}[i]


def test_add_mask_token_grows_the_embedding_with_the_mean_row():
    m = tiny_model(seed=2, vocab_size=50)
    tok = TinyTokenizer(50)
    old = m.get_input_embeddings().weight.detach().clone()
    mask_id = add_mask_token(m, tok)
    assert mask_id == 50 and tok.get_vocab()["[MASK]"] == 50
    emb = m.get_input_embeddings().weight
    assert emb.shape[0] == 51
    assert torch.allclose(emb[50], old.mean(0), atol=1e-6)
    assert add_mask_token(m, tok) == 50 and m.get_input_embeddings().weight.shape[0] == 51  # idempotent


def test_smoke_fit_lowers_the_mask_loss_and_space_stays_lossless(tmp_path):
    from polyverse.train.space.fit import SpaceFitConfig, fit

    torch.manual_seed(0)
    m = tiny_model(seed=3, vocab_size=40)
    tok = TinyTokenizer(40)
    # responses count upward: the future is predictable, so the mask rows can learn it
    samples = [Sample((1, 2), tuple(range(s, s + 12))) for s in range(5, 25)]
    cfg = SpaceFitConfig(steps=40, batch=4, lr=1e-2, k=3, p=0.7, lora_rank=8, lora_alpha=16, save_every=40)
    trained, history, mask_id = fit(m, tok, samples, tmp_path / "out", cfg)
    first = sum(h["mask"] for h in history[:5]) / 5
    last = sum(h["mask"] for h in history[-5:]) / 5
    assert last < 0.7 * first, (first, last)
    assert (tmp_path / "out" / "checkpoints" / "step-40").is_dir()
    # the adapter as shipped: LoRA + the [MASK] row, applied to a fresh base model and tokenizer
    from polyverse.adapters import apply, info
    from polyverse.train.common import save_adapter

    save_adapter(trained, tmp_path / "adapter", {"method": "space", "added_tokens": ["[MASK]"], "vocab_size": mask_id + 1,
                                                  "config": {"k": 3}})
    fresh_tok = TinyTokenizer(40)
    loaded = apply(tiny_model(seed=3, vocab_size=40), str(tmp_path / "adapter"), fresh_tok)
    assert fresh_tok.get_vocab()["[MASK]"] == mask_id
    assert trained_k(SimpleNamespace(adapter=info(tmp_path / "adapter"))) == 3  # decoding defaults to the trained k
    merged = trained.merge_and_unload().eval()
    assert torch.allclose(loaded.get_input_embeddings().weight, merged.get_input_embeddings().weight, atol=1e-6)
    probe = torch.tensor([[1, 2, 9, mask_id, mask_id]])
    with torch.no_grad():
        assert torch.allclose(loaded(input_ids=probe).logits, merged(input_ids=probe).logits, atol=1e-4)
    be = TransformersBackend(merged)
    prompt = [1, 2, 9, 10]
    cfg_g = GenerationConfig(max_new_tokens=12)
    ar = [t for s in decode(be, ARProposer(), prompt, cfg_g) for t in s.tokens]
    steps = list(decode(be, SpaceProposer(SpaceConfig(k=3), mask_id), prompt, cfg_g))
    got = [t for s in steps for t in s.tokens]
    assert got == ar
    assert len(steps) < len(got)  # the trained mask rows make some of their proposals accepted


def test_bench_runs_space_by_default_only_with_a_space_adapter(tmp_path):
    import json

    from polyverse.cli.bench import has_mask

    (tmp_path / "adapter_config.json").write_text("{}")
    (tmp_path / "polyverse.json").write_text(json.dumps({"method": "space", "added_tokens": ["[MASK]"]}))
    assert has_mask(str(tmp_path))
    assert not has_mask(None)
    assert not has_mask("cllm-gsm8k")


# --- the packed layout (--groups): many mask groups per sample, laid out as at decoding ---------


def test_group_layout_hand_drawn():
    positions, vis = group_layout(3, [1, 2], 2)
    assert positions == [0, 1, 2, 1, 2, 2, 3]
    expected = [
        [1, 0, 0, 0, 0, 0, 0],  # real tokens: causal among themselves, blind to the masks
        [1, 1, 0, 0, 0, 0, 0],
        [1, 1, 1, 0, 0, 0, 0],
        [1, 0, 0, 1, 0, 0, 0],  # group at anchor 1: real token 0 and itself
        [1, 0, 0, 1, 1, 0, 0],
        [1, 1, 0, 0, 0, 1, 0],  # group at anchor 2: real tokens 0, 1 and itself
        [1, 1, 0, 0, 0, 1, 1],
    ]
    assert vis.int().tolist() == expected
    with pytest.raises(ConfigError):
        group_layout(3, [4], 2)


@settings(max_examples=60, deadline=None)
@given(n_real=st.integers(0, 12), k=st.integers(1, 4), data=st.data())
def test_group_layout_matches_its_definition_cell_by_cell(n_real, k, data):
    anchors = data.draw(st.lists(st.integers(0, n_real), max_size=5))
    positions, vis = group_layout(n_real, anchors, k)
    L = n_real + len(anchors) * k
    assert positions == group_positions(n_real, anchors, k) and len(positions) == L and vis.shape == (L, L)

    def sees(r, c):  # the docstring's rule, one cell at a time
        if r < n_real:
            return c <= r
        g, j = divmod(r - n_real, k)
        if c < n_real:
            return c < anchors[g]
        g2, j2 = divmod(c - n_real, k)
        return g2 == g and j2 <= j

    assert vis.tolist() == [[sees(r, c) for c in range(L)] for r in range(L)]
    for g, a in enumerate(anchors):
        assert positions[n_real + g * k: n_real + (g + 1) * k] == list(range(a, a + k))


def test_pack_hand_made():
    class Cuts:
        def sample(self, population, n):
            assert list(population) == [0, 1] and n == 2
            return [1, 0]

    p = pack(Sample((7,), (10, 11, 12)), Cuts(), k=2, groups=5, mask_id=M)
    assert p.ids == (7, 10, 11, 12, M, M, M, M)
    assert p.positions == (0, 1, 2, 3, 1, 2, 2, 3)
    assert p.targets == (10, 11, 12, IGNORE, 11, 12, 12, IGNORE)
    assert p.n_real == 4 and p.anchors == (1, 2)


def test_pack_without_room_for_a_group_is_plain_sft():
    p = pack(Sample((7, 8), (10,)), random.Random(0), k=3, groups=4, mask_id=M)
    assert p.ids == (7, 8, 10) and p.targets == (IGNORE, 10, IGNORE) and p.anchors == ()


def test_packed_forward_equals_the_decoder_pass_for_every_group():
    """Each group's logits in one packed training pass equal the logits the decoder reads from the
    same group (k masks below the last real token), and the real rows equal a plain causal pass."""
    m = tiny_model(seed=5, vocab_size=40).eval()
    mask_id = 39
    sample = Sample((1, 2, 3), (5, 9, 4, 11, 7, 8, 20, 6))
    packed = pack(sample, random.Random(3), k=3, groups=4, mask_id=mask_id)
    other = pack(Sample((4,), (6, 7)), random.Random(0), k=3, groups=4, mask_id=mask_id)  # padding in the batch
    batch = collate_packed([packed, other], k=3)
    with torch.no_grad():
        logits = m(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                   position_ids=batch["position_ids"]).logits[0]  # [L, V]
        real = list(sample.prompt + sample.response)
        plain = m(input_ids=torch.tensor([real])).logits[0]
    assert torch.allclose(logits[: len(real)], plain, atol=1e-4)
    assert len(packed.anchors) == 4
    be = TransformersBackend(m)
    for g, a in enumerate(packed.anchors):
        be.reset()
        if a > 1:
            be.forward(chain_feed(real[: a - 1], 0), logits_for=[])
            be.commit(range(a - 1))
        draft, groups = space_draft([], 3, mask_id)
        got = be.forward(draft_feed(real[a - 1], a - 1, draft), logits_for=[1 + i for i in groups[0]]).full()  # [3, V]
        be.commit([])
        rows = slice(packed.n_real + 3 * g, packed.n_real + 3 * (g + 1))
        assert torch.allclose(logits[rows], got, atol=1e-4), g


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_smoke_fit_packed_lowers_the_mask_loss(tmp_path, precision):
    from polyverse.train.space.fit import SpaceFitConfig, fit

    torch.manual_seed(0)
    m = tiny_model(seed=3, vocab_size=40)
    samples = [Sample((1, 2), tuple(range(s, s + 12))) for s in range(5, 25)]
    cfg = SpaceFitConfig(steps=25, batch=2, lr=1e-2, k=3, groups=6, lora_rank=8, lora_alpha=16, save_every=25,
                         precision=precision)
    trained, history, _ = fit(m, TinyTokenizer(40), samples, tmp_path / "out", cfg)
    assert all(p.dtype == torch.float32 for p in trained.parameters())  # bf16 is autocast only
    first = sum(h["mask"] for h in history[:5]) / 5
    last = sum(h["mask"] for h in history[-5:]) / 5
    assert last < 0.5 * first, (first, last)
    assert all(h["ar"] > 0 for h in history)  # the AR rows are trained in the same pass


def test_fit_config_rejects_an_unknown_precision():
    from polyverse.errors import ConfigError
    from polyverse.train.space.fit import SpaceFitConfig

    with pytest.raises(ConfigError, match="precision must be one of fp32, bf16"):
        SpaceFitConfig(precision="fp16")


def test_read_samples_drops_the_end_of_turn_of_a_cut_distilled_answer(tmp_path, tiny):
    from polyverse.train.space.data import read_samples

    tok = tiny.tokenizer
    path = tmp_path / "d.jsonl"
    path.write_text('{"prompt": "a b", "response": "c d", "finish": "eos"}\n'
                    '{"prompt": "a b", "response": "c d", "finish": "length"}\n')
    whole, cut = read_samples(path, tok)
    assert whole.prompt == cut.prompt
    assert cut.response == whole.response[:-1]


def test_cli_fit_short_bf16_run_and_clear_errors(tiny_dir, tmp_path):
    from typer.testing import CliRunner

    from polyverse.cli import app

    data = tmp_path / "d.jsonl"
    data.write_text("".join(json.dumps({"prompt": f"question {i}", "response": "an answer " * 12}) + "\n" for i in range(4)))
    args = ["train", "space", "fit", "--model", str(tiny_dir), "--data", str(data), "--steps", "2", "--batch", "2",
            "--k", "2", "--groups", "3", "--lora-rank", "4"]
    runner = CliRunner()
    res = runner.invoke(app, args + ["--out", str(tmp_path / "a"), "--max-len", "8", "--precision", "bf16"])
    assert res.exit_code == 0, res.output
    meta = json.loads((tmp_path / "a" / "polyverse.json").read_text())
    assert meta["max_len"] == 8 and meta["config"]["precision"] == "bf16"
    for bad, msg in ((["--max-len", "1"], "--max-len must be at least 2"), (["--precision", "fp8"], "precision must be one of")):
        res = runner.invoke(app, args + ["--out", str(tmp_path / "b")] + bad)
        assert res.exit_code != 0 and msg in res.output, res.output
        assert res.exception is None or isinstance(res.exception, SystemExit)

