"""Draft heads: the head and its files, the branch that prices its guesses, training, and auto
with a head staying token-identical to ar."""

import pytest
import torch

import polyverse
from polyverse.costs import CostCurve
from polyverse.heads import DraftHead, Drafter, HeadShape, bind, fingerprint, for_model
from polyverse.heads.head import Guess
from polyverse.logits import Logits
from polyverse.methods.auto import AutoConfig, AutoProposer
from polyverse.methods.head_branch import HeadBranch, bucket
from polyverse.models.tiny import tiny_model
from polyverse.train.head.data import examples
from polyverse.train.head.fit import HeadFitConfig, accuracy, fit, vocabulary
from polyverse.train.space.data import Sample


def test_features_are_the_rows_before_the_head_and_none_for_given_logits():
    hidden = torch.randn(3, 4)
    lazy = Logits(hidden, lambda rows: rows @ torch.ones(4, 5), 5)
    assert torch.equal(lazy.features(2), hidden[2])
    assert Logits.of(torch.randn(3, 5)).features(0) is None


def test_head_files_round_trip(tmp_path):
    torch.manual_seed(0)
    head = DraftHead(HeadShape(8, 6, 3), torch.tensor([5, 1, 9]))
    head.save(tmp_path / "h", {"base": "x", "fingerprint": [1.0]})
    again, meta = DraftHead.load(tmp_path / "h")
    assert meta["base"] == "x" and meta["vocab"] == 3 and again.ids.tolist() == [5, 1, 9]
    h, e = torch.randn(2, 8), torch.randn(2, 8)
    assert torch.equal(head(h, e), again(h, e))
    with pytest.raises(ValueError):
        DraftHead(HeadShape(8, 6, 4), torch.tensor([5, 1, 9]))


def test_drafter_guesses_only_its_tokens_with_a_probability():
    torch.manual_seed(0)
    embed = torch.randn(20, 8)
    drafter = Drafter(DraftHead(HeadShape(8, 6, 3), torch.tensor([4, 7, 11])), embed, embed)
    z, token, prob, second, second_prob = drafter.step(torch.randn(8), 3)
    assert z.shape == (8,) and token in (4, 7, 11) and 1 / 3 <= prob <= 1
    assert second in (4, 7, 11) and second != token and 0 < second_prob <= prob and prob + second_prob <= 1 + 1e-6


@pytest.mark.parametrize("kind", ["fp32", "bf16", "int8"])
def test_the_packed_head_guesses_as_torch_does(kind):
    from polyverse.backends.cpu import lean

    if lean.extension() is None or lean.isa() is None:
        pytest.skip("no lean CPU pass here")
    torch.manual_seed(0)
    embed = torch.randn(50, 64)
    head = DraftHead(HeadShape(64, 32, 40), torch.arange(5, 45))  # 40 tokens: the packed rows are padded
    plain, packed = Drafter(head, embed, embed), Drafter(head, embed, embed, kind)
    assert packed.packed and not plain.packed
    agree = 0
    for token in range(20):
        hidden = torch.randn(64)
        z1, t1, p1, _, _ = plain.step(hidden, token)
        z2, t2, p2, _, _ = packed.step(hidden, token)
        tol = 1e-4 if kind == "fp32" else 0.1
        assert torch.allclose(z1, z2, atol=tol * 10, rtol=tol) and 5 <= t2 < 45
        agree += t1 == t2
    assert agree >= (20 if kind == "fp32" else 15)


def test_buckets():
    assert [bucket(p) for p in (0.0, 0.19, 0.2, 0.5, 0.79, 0.8, 1.0)] == [0, 0, 1, 2, 3, 4, 4]


class Scripted:
    """A drafter whose guesses and probabilities are given: step i guesses script[i]."""

    def __init__(self, script):
        self.script, self.calls = script, 0

    def step(self, hidden, token):
        token, prob = self.script[self.calls % len(self.script)]
        self.calls += 1
        return Guess(hidden, token, prob, token + 1, (1 - prob) / 2)


class Rows:
    def __init__(self, n):
        self.h = torch.randn(n, 4)

    def features(self, row):
        return self.h[row]


FLAT = CostCurve((1, 2, 4, 8, 16), (1.0, 1.02, 1.04, 1.08, 1.3))
STEEP = CostCurve((1, 2, 4, 8, 16), (1.0, 2.0, 4.0, 8.0, 16.0))


def test_branch_drafts_sure_guesses_on_a_flat_curve_and_nothing_on_a_steep_one():
    for curve, drafts in ((FLAT, True), (STEEP, False)):
        branch = HeadBranch(Scripted([(7, 0.95)]), curve, 0.9, 8)
        branch.start([1, 2])
        assert branch.propose([1, 2]) == ([], 0.0)  # no hidden state yet: nothing to start from
        branch.observe(Rows(1), [])
        guesses, rate = branch.propose([1, 2])
        assert bool(guesses) == drafts
        if drafts:
            assert set(guesses) == {7} and rate > 1 / curve(1)


def test_branch_learns_that_sure_guesses_fail():
    branch = HeadBranch(Scripted([(7, 0.95)]), FLAT, 0.9, 8)
    branch.start([1])
    before = branch.stats[4].alpha
    context = [1]
    for step in range(30):
        branch.observe(Rows(1), [])
        branch.propose(context)
        context = context + [8]  # the target never writes 7
        branch.written(context)
    assert branch.stats[4].alpha < before / 3
    branch.observe(Rows(1), [])
    assert branch.propose(context)[0] == []  # no longer worth a draft


def test_branch_keeps_the_row_of_the_last_accepted_token():
    branch = HeadBranch(Scripted([(7, 0.5)]), FLAT, 0.9, 8)
    rows = Rows(4)
    branch.observe(rows, [0, 1])  # draft nodes 0 and 1 accepted: rows 1 and 2; row 2 chose the pending token
    assert torch.equal(branch.hidden, rows.h[2])


def _samples(model, n=6, length=24):
    g = torch.Generator().manual_seed(1)
    out = []
    for _ in range(n):
        prompt = torch.randint(3, 100, (6,), generator=g).tolist()
        ids = model.generate(torch.tensor([prompt]), max_new_tokens=length, do_sample=False)[0].tolist()
        out.append(Sample(tuple(prompt), tuple(ids[len(prompt):])))
    return out


def test_examples_ask_for_the_targets_own_choices():
    model = tiny_model(seed=3)
    samples = _samples(model, n=2)
    data = examples(model, samples)
    assert len(data) == sum(len(s.response) - 1 for s in samples)  # from the prompt's last token to the third-last
    s = samples[0]
    ids = torch.tensor([list(s.prompt) + list(s.response)])
    with torch.no_grad():
        choice = model(ids).logits[0].argmax(-1)
    t = len(s.prompt) - 1
    assert data.tokens[0].tolist() == [s.response[0], s.response[1]]
    assert data.targets[0].tolist() == [int(choice[t + 1]), int(choice[t + 2])]


def test_vocabulary_is_the_most_frequent():
    assert vocabulary(torch.tensor([[5, 5], [3, 9], [3, 5]]), 2).tolist() == [5, 3]


def test_fitting_learns_the_targets_guesses():
    model = tiny_model(seed=3)
    data = examples(model, _samples(model))
    untrained = accuracy(model, fit(model, data, HeadFitConfig(inner=32, vocab=100, epochs=1, batch=64, lr=1e-6)), data)
    trained = accuracy(model, fit(model, data, HeadFitConfig(inner=64, vocab=100, epochs=60, batch=32, lr=3e-3)), data)
    assert trained > max(0.5, untrained + 0.2)


def test_a_head_belongs_to_its_weights(tmp_path, tiny_dir):
    model = polyverse.load(str(tiny_dir), progress=False)
    other = tiny_model(seed=4)
    head = DraftHead(HeadShape(64, 16, 4), torch.tensor([3, 4, 5, 6]))
    head.save(tmp_path / "mine", {"fingerprint": fingerprint(model.hf_model)})
    head.save(tmp_path / "other", {"fingerprint": fingerprint(other)})
    assert for_model(model, [tmp_path / "other"]) is None
    model.resources.pop("draft_head")
    assert isinstance(for_model(model, [tmp_path / "other", tmp_path / "mine"]), Drafter)


def test_auto_with_a_head_writes_what_ar_writes(tmp_path, tiny_dir):
    model = polyverse.load(str(tiny_dir), progress=False)
    data = examples(model.hf_model, _samples(model.hf_model, n=8, length=40))
    head = fit(model.hf_model, data, HeadFitConfig(inner=64, vocab=100, epochs=40, batch=32, lr=3e-3))
    head.save(tmp_path / "h", {"fingerprint": fingerprint(model.hf_model)})
    drafter = bind(tmp_path / "h", model.hf_model)
    curve = CostCurve((1, 2, 4, 8), (1.0, 1.01, 1.02, 1.05))  # drafting pays: the head's guesses get fed
    from polyverse.config import GenerationConfig
    from polyverse.loop import decode

    g = torch.Generator().manual_seed(5)
    drafted = 0
    for _ in range(4):
        prompt = torch.randint(3, 100, (5,), generator=g).tolist()
        ar = model.generate(prompt, method="ar", max_new_tokens=40).token_ids
        proposer = AutoProposer(AutoConfig(), curve, drafter)
        model.backend.reset()
        steps = list(decode(model.backend, proposer, prompt, GenerationConfig(max_new_tokens=40, eos_token_ids=model.eos_token_ids)))
        assert tuple(t for s in steps for t in s.tokens) == tuple(ar)
        drafted += proposer.head.drafts
    assert drafted > 0


def test_auto_feeds_the_ngram_draft_and_the_heads_guesses_side_by_side():
    from polyverse.loop import Observation
    from polyverse.verify import Verdict

    context = [5, 6, 7, 8, 5, 6, 7, 8, 5, 6]  # the n-gram continuation after "5 6": 7 8 5 6 ...
    proposer = AutoProposer(AutoConfig(), FLAT, Scripted([(40, 0.95), (41, 0.95)]))
    proposer.start(context)
    proposer.head.observe(Rows(1), [])
    draft = proposer.propose(context)
    roots = [t for t, p in zip(draft.tokens, draft.parents) if p == -1]
    assert sorted(roots) == [7, 40]  # two branches: the n-gram's and the head's
    before = proposer.stats[proposer.last_bucket].hits
    # the head's branch carried the pass: 40 accepted, then the model wrote 9
    node = draft.tokens.index(40)
    proposer.observe(Observation(draft, Verdict((node,), (40, 9)), Rows(len(draft) + 1), tuple(context + [40, 9])))
    assert proposer.stats[proposer.last_bucket].hits < before + 0.5  # the n-gram draft is credited nothing


def test_auto_does_not_compute_guesses_where_the_ngram_run_pays_more():
    context = [5, 6, 7, 8] * 6
    head = Scripted([(40, 0.5)])
    proposer = AutoProposer(AutoConfig(), FLAT, head)
    proposer.start(context)
    for bucket_stats in proposer.stats:
        bucket_stats.hits, bucket_stats.misses = 100.0, 0.01  # the n-gram is always right
    for stats in proposer.head.stats:
        stats.hits, stats.misses = 1.0, 1.0  # the head is right half the time
    proposer.head.observe(Rows(1), [])
    assert len(proposer.propose(context)) > 8 and head.calls == 0
    for bucket_stats in proposer.stats:
        bucket_stats.hits, bucket_stats.misses = 0.01, 100.0  # now the n-gram is never right
    proposer.propose(context)
    assert head.calls > 0


def test_train_head_command_writes_a_head_that_binds(tmp_path, tiny_dir):
    import json

    from typer.testing import CliRunner

    from polyverse.cli import app

    data = tmp_path / "answers.jsonl"
    rows = [{"prompt": f"question {i}", "response": f"the answer is {i} and then some more words {i}"} for i in range(12)]
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = tmp_path / "head"
    runner = CliRunner()
    res = runner.invoke(app, ["train", "head", "--model", str(tiny_dir), "--data", str(data), "--out", str(out),
                              "--inner", "32", "--vocab", "50", "--epochs", "2", "--batch", "16", "--holdout", "0.25"])
    assert res.exit_code == 0, res.output
    meta = json.loads((out / "polyverse.json").read_text())
    assert meta["rows"] == 12 and 0 <= meta["held_out_first_guess"] <= 1 and meta["inner"] == 32
    model = polyverse.load(str(tiny_dir), progress=False)
    assert isinstance(for_model(model, [out]), Drafter)
    res = runner.invoke(app, ["train", "head", "--model", str(tiny_dir), "--data", str(tmp_path / "none.jsonl"),
                              "--out", str(out)])
    assert res.exit_code != 0 and "no such file" in res.output and "Traceback" not in res.output


def test_branch_feeds_the_runner_up_where_it_is_often_right():
    for right, fed in ((0.9, True), (0.001, False)):
        branch = HeadBranch(Scripted([(7, 0.5)]), FLAT, 0.9, 8)
        branch.start([1])
        for stats in branch.seconds:
            stats.hits, stats.misses = right, 1 - right
        branch.observe(Rows(1), [])
        guesses, _ = branch.propose([1])
        assert guesses and (branch.alt == 8) == fed
    context = [1]
    branch.observe(Rows(1), [])
    branch.propose(context)
    before = branch.seconds[branch.second[1]].hits
    branch.written(context + [8])  # the runner-up was the token written
    assert branch.seconds[bucket(0.25)].hits > before


def test_the_bundled_model_finds_its_head_and_auto_drafts_from_it(bundled):
    from polyverse.config import GenerationConfig
    from polyverse.costs import cost_curve
    from polyverse.loop import decode

    drafter = for_model(bundled)
    assert isinstance(drafter, Drafter)
    ids = bundled.encode("Write a short poem about the sea.")
    ar = bundled.generate(ids, method="ar", max_new_tokens=48).token_ids
    proposer = AutoProposer(AutoConfig(), cost_curve(bundled, bundled.backend), drafter)
    bundled.backend.reset()
    steps = list(decode(bundled.backend, proposer, ids, GenerationConfig(max_new_tokens=48, eos_token_ids=bundled.eos_token_ids)))
    assert tuple(t for s in steps for t in s.tokens) == tuple(ar)
    assert proposer.head.drafts > 0 and len(steps) < len(ar)
