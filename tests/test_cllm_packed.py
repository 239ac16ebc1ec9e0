"""Packed CLLM training: state layout, trained rows, synthetic states, the on-policy refine, a smoke fit."""

import random

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from polyverse.backends.transformers import TransformersBackend
from polyverse.errors import ConfigError
from polyverse.models.tiny import tiny_model
from polyverse.train.cllm import packed
from polyverse.train.cllm.collect import CollectConfig, collect_prompt
from polyverse.train.cllm.fit import FitConfig, fit
from polyverse.train.space.data import IGNORE

N = 4


@pytest.fixture(scope="module")
def model():
    m = tiny_model(seed=5)
    m.eval()
    return m


def _logits(model, batch, ids=None):
    with torch.no_grad():
        return model(input_ids=batch["input_ids"] if ids is None else ids, attention_mask=batch["attention_mask"],
                     position_ids=batch["position_ids"]).logits  # [B, L, V]


def test_a_state_equal_to_the_fixed_point_predicts_like_the_real_rows(model):
    """The layout is the decoder's: group token j at position a + j sees the answer before a and its
    own earlier tokens, so fed the right tokens its rows equal the real rows a + j (the teacher)."""
    sample = packed.JacobiSample((5, 6, 7), tuple(range(10, 30)))
    p = packed.pack(sample, random.Random(0), N, 5)
    batch = packed.collate([p], N)
    ids = batch["input_ids"].clone()
    known = batch["truth"] != IGNORE
    ids[known] = batch["truth"][known]
    logits = _logits(model, batch, ids)[0]  # [L, V]
    s = p.n_real
    for g, a in enumerate(p.anchors):
        for j in range(N):
            if a + j < s:
                assert torch.allclose(logits[s + N * g + j], logits[a + j], atol=1e-4), (g, j)
    # and a wrong token changes the rows after it
    ids[0, s + 1] = (int(ids[0, s + 1]) + 1) % 40
    assert not torch.allclose(_logits(model, batch, ids)[0, s + 1], logits[s + 1], atol=1e-4)


def test_trained_rows_start_at_the_first_wrong_token_and_stay_inside_the_answer():
    ids = torch.tensor([[4, 5, 9, 9], [4, 5, 6, 7], [1, 5, 6, 7]])
    truth = torch.tensor([[4, 5, 6, 7], [4, 5, 6, 7], [4, 5, 6, IGNORE]])
    rows = packed.trained_rows(ids, truth, torch.tensor([4, 9, 3]))
    assert rows.tolist() == [[False, False, True, False],  # row 3 would predict past the answer (room 4)
                             [False] * 4,  # converged: nothing to learn
                             [True, True, False, False]]  # room 3: rows 0, 1 only


@settings(max_examples=60, deadline=None)
@given(st.lists(st.integers(0, 30), min_size=3, max_size=30), st.integers(2, 8), st.integers(0, 10 ** 6))
def test_noisy_states_have_a_right_prefix_then_a_wrong_token(full, n, seed):
    rng = random.Random(seed)
    a = rng.randrange(1, len(full))
    state = packed.noisy_state(full, a, n, rng)
    truth = full[a : a + n]
    assert len(state) == n
    wrong = [j for j in range(len(truth)) if state[j] != truth[j]]
    assert wrong, "a state equal to the fixed point trains nothing"
    assert state[: wrong[0]] == truth[: wrong[0]]


def test_collate_targets_are_the_answer_and_teachers_point_at_real_rows():
    sample = packed.JacobiSample((1, 2), (3, 4, 5, 6, 7))
    p = packed.pack(sample, random.Random(1), 3, 2)
    b = packed.collate([p, packed.pack(packed.JacobiSample((1,), (8, 9)), random.Random(2), 3, 2)], 3)
    assert b["targets"][0, : p.n_real].tolist() == [IGNORE, 3, 4, 5, 6, 7, IGNORE]  # row i -> token i + 1
    t = b["teacher"][0]
    assert bool((t[t >= 0] < p.n_real).all()) and int((t >= 0).sum()) > 0
    assert b["n_real"].tolist() == [7, 3] and b["anchors"].shape == (2, 2)
    pos = b["position_ids"][0].tolist()
    assert pos[: p.n_real] == list(range(p.n_real))
    assert all(pos[p.n_real + 3 * g + j] == a + j for g, a in enumerate(p.anchors) for j in range(3))


def test_from_trajectories_rebuilds_the_greedy_answer_and_anchors_states():
    be = TransformersBackend(tiny_model(seed=5))
    recs = collect_prompt(be, "p", [5, 6, 7], CollectConfig(block=4, max_new_tokens=12), eos=())
    (s,) = packed.from_trajectories(recs)
    assert s.prompt == (5, 6, 7)
    assert list(s.response) == [t for r in recs for t in r.fixed]
    for a, state in s.states:
        rec = next(r for r in recs if len(r.context) == a)
        assert state in rec.states[:-1]


def test_refine_is_one_jacobi_update_of_each_state(model):
    sample = packed.JacobiSample((5, 6, 7), tuple(range(10, 26)))
    p = packed.pack(sample, random.Random(3), N, 3)
    batch = packed.collate([p], N)
    old = batch["input_ids"][0].tolist()
    packed.refine(batch, _logits(model, batch), N)
    full = list(sample.prompt) + list(sample.response)
    s = p.n_real
    for g, a in enumerate(p.anchors):
        state = old[s + N * g : s + N * (g + 1)]
        with torch.no_grad():  # the plain causal pass the decoder makes: prefix, then the state
            direct = model(input_ids=torch.tensor([full[:a] + state])).logits[0].argmax(-1)  # [a + N]
        expect = direct[a - 1 : a - 1 + N].tolist()
        assert batch["input_ids"][0, s + N * g : s + N * (g + 1)].tolist() == expect
    # the trained rows follow the new states
    again = packed.collate([p], N)
    again["input_ids"] = batch["input_ids"].clone()
    packed.label_rows(again, 0, p.anchors, N)
    assert torch.equal(again["teacher"], batch["teacher"])


@pytest.fixture(scope="module")
def records():
    be = TransformersBackend(tiny_model(seed=5))
    out = []
    for i, text in enumerate([[5, 6, 7, 8], [9, 10, 11], [12, 13, 14, 15, 16]]):
        out += collect_prompt(be, f"p{i}", text, CollectConfig(block=6, max_new_tokens=18), eos=())
    return out


def test_packed_fit_lowers_the_consistency_loss_and_resumes_exactly(records, tmp_path):
    cfg = FitConfig(steps=60, accumulate=1, batch=2, lr=1e-2, save_every=100, groups=6, block=N, refine=0.5, ar_weight=1.0)
    _, hist = fit(tiny_model(seed=5), records, tmp_path / "a", cfg)
    early = sum(h["consistency"] for h in hist[:5]) / 5
    late = sum(h["consistency"] for h in hist[-5:]) / 5
    assert late < 0.7 * early, (early, late)
    samples = packed.from_trajectories(records)
    short = FitConfig(steps=4, accumulate=2, batch=2, lr=1e-3, save_every=2, groups=4, block=N, refine=0.5)
    _, whole = fit(tiny_model(seed=5), samples, tmp_path / "b", short)
    fit(tiny_model(seed=5), samples, tmp_path / "c", short, stop_after=2)
    _, resumed = fit(tiny_model(seed=5), samples, tmp_path / "c", short, resume=True)
    assert resumed == whole


def test_samples_without_states_need_packed_training(tmp_path):
    with pytest.raises(ConfigError, match="packed"):
        fit(tiny_model(seed=5), [packed.JacobiSample((1,), (2, 3))], tmp_path, FitConfig(steps=1))
    with pytest.raises(ConfigError, match="refine"):
        FitConfig(groups=4, refine=1.5)


def test_cli_fit_on_distilled_answers_records_the_block_that_jacobi_then_uses(tiny_dir, tmp_path):
    import json

    from typer.testing import CliRunner

    import polyverse
    from polyverse.cli import app
    from polyverse.methods.jacobi import DEFAULT_BLOCK, trained_block

    data = tmp_path / "d.jsonl"
    data.write_text("".join(json.dumps({"prompt": f"question {i}", "response": "an answer " * 6}) + "\n" for i in range(3)))
    args = ["train", "cllm", "fit", "--model", str(tiny_dir), "--data", str(data), "--steps", "2", "--batch", "2",
            "--accumulate", "1", "--lora-rank", "4"]
    runner = CliRunner()
    res = runner.invoke(app, args + ["--out", str(tmp_path / "a"), "--groups", "3", "--block", "5", "--refine", "1",
                                     "--store", "fp16"])
    assert res.exit_code == 0, res.output
    meta = json.loads((tmp_path / "a" / "polyverse.json").read_text())
    assert meta["block"] == 5 and meta["config"]["groups"] == 3 and meta["store"] == "fp16"
    from safetensors.torch import load_file

    stored = load_file(str(tmp_path / "a" / "adapter_model.safetensors"))
    assert stored and all(v.dtype == torch.float16 for v in stored.values())
    adapted = polyverse.load(str(tiny_dir), adapter=str(tmp_path / "a"), progress=False)
    assert trained_block(adapted) == 5 and trained_block(polyverse.load(str(tiny_dir), progress=False)) == DEFAULT_BLOCK
    from types import SimpleNamespace

    from polyverse.methods.jacobi import JacobiConfig, make

    assert make(JacobiConfig(), SimpleNamespace(model=adapted)).n == 5  # the trained block by default
    assert make(JacobiConfig(block=3), SimpleNamespace(model=adapted)).n == 3
    out = adapted.generate("Hello", method="jacobi", max_new_tokens=12, chat=False)
    assert list(out.token_ids) == list(adapted.generate("Hello", method="ar", max_new_tokens=12, chat=False).token_ids)
    # eval on a slice of the questions: --offset skips the first ones; the adapter's block is used
    qs = tmp_path / "q.jsonl"
    qs.write_text("".join(json.dumps({"id": f"q{i}", "question": f"What is {i} + {i}?", "answer": f"x #### {2 * i}"}) + "\n"
                          for i in range(4)))
    res = runner.invoke(app, ["train", "cllm", "eval", "--model", str(tiny_dir), "--adapter", str(tmp_path / "a"),
                              "--data", str(qs), "--limit", "2", "--offset", "1", "-n", "6", "--no-chat",
                              "--out", str(tmp_path / "e.json")])
    assert res.exit_code == 0, res.output
    doc = json.loads((tmp_path / "e.json").read_text())
    assert [r["id"] for r in doc["prompts"]] == ["q1", "q2"] and doc["block"] == 5
    assert doc["environment"]["cpu"] and doc["environment"]["threads"] >= 1  # speed ratios name their CPU
    for device, msg in (("nonsense", "not a device name"), ("cuda:0", "no CUDA device here")):
        if device.startswith("cuda") and torch.cuda.is_available():
            continue
        res = runner.invoke(app, ["train", "cllm", "eval", "--model", str(tiny_dir), "--adapter", str(tmp_path / "a"),
                                  "--data", str(qs), "--limit", "1", "--device", device])
        assert res.exit_code != 0 and msg in res.output, res.output
        assert res.exception is None or isinstance(res.exception, SystemExit)
    for bad, msg in ((["--groups", "0"], "needs packed training"),
                     (["--groups", "2", "--trajectories", str(tmp_path)], "exactly one of"),
                     (["--groups", "2", "--refine", "2"], "refine must be in"),
                     (["--groups", "2", "--store", "int8"], "--store must be one of")):
        res = runner.invoke(app, args + ["--out", str(tmp_path / "b")] + bad)
        assert res.exit_code != 0 and msg in res.output, res.output
        assert res.exception is None or isinstance(res.exception, SystemExit)


def test_batches_are_built_on_one_thread_and_the_count_is_restored():
    from polyverse.train.common import one_thread

    before = torch.get_num_threads()
    with one_thread():
        assert torch.get_num_threads() == 1
    assert torch.get_num_threads() == before
    with pytest.raises(ValueError):
        with one_thread():
            raise ValueError("a batch that fails")
    assert torch.get_num_threads() == before
