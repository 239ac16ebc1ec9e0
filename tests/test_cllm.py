"""CLLM pipeline: losses on hand-made tensors, trajectory collection, checkpoint/resume, a smoke fit."""

import json
import math
from dataclasses import replace

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

import polyverse
from polyverse.errors import ConfigError
from polyverse.backends.transformers import TransformersBackend
from polyverse.models.tiny import tiny_model
from polyverse.train.cllm.collect import CollectConfig, Trajectory, clean, collect, collect_prompt, done_prompts, longest_run
from polyverse.train.cllm.fit import FitConfig, collate, example, fit
from polyverse.train.common import lr_at, save_adapter
from polyverse.train.cllm.losses import ar_loss, consistency_loss, consistency_mask


# ---- losses -------------------------------------------------------------------------------------

def test_consistency_mask_skips_the_correct_prefix_and_padding():
    assert consistency_mask([4, 5, 9, 9], [4, 5, 6, 7], 4) == [False, False, True, True]
    assert consistency_mask([4, 5, 6, 7], [4, 5, 6, 7], 4) == [False] * 4  # converged: nothing to learn
    assert consistency_mask([1, 5, 6], [4, 5, 6], 5) == [True, True, True, False, False]  # padding off


def test_consistency_loss_is_masked_kl_with_stop_gradient_on_the_fixed_point():
    torch.manual_seed(0)
    student = torch.randn(1, 3, 5, requires_grad=True)
    teacher = torch.randn(1, 3, 5, requires_grad=True)
    mask = torch.tensor([[False, True, True]])
    loss = consistency_loss(student, teacher, mask)
    p = teacher.detach().softmax(-1)
    kl = (p * (p.log() - student.detach().log_softmax(-1))).sum(-1)[0]  # [3]
    assert math.isclose(float(loss.detach()), float(kl[1:].mean()), rel_tol=1e-5)
    loss.backward()
    assert teacher.grad is None  # stop-gradient on the fixed point's prediction
    assert torch.all(student.grad[0, 0] == 0) and student.grad[0, 1:].abs().sum() > 0  # masked row untouched
    # equal distributions cost nothing
    same = consistency_loss(teacher.detach().clone(), teacher, torch.ones(1, 3, dtype=torch.bool))
    assert float(same) < 1e-6


def test_ar_loss_ignores_padding_and_smooths_labels():
    logits = torch.tensor([[[2.0, 0.0, 0.0], [0.0, 3.0, 0.0], [9.0, 9.0, 9.0]]])
    labels = torch.tensor([[0, 1, -100]])
    plain = ar_loss(logits, labels, 0.0)
    expect = -(logits[0, 0].log_softmax(-1)[0] + logits[0, 1].log_softmax(-1)[1]) / 2
    assert math.isclose(float(plain), float(expect), rel_tol=1e-5)
    assert float(ar_loss(logits, labels, 0.1)) > float(plain)  # smoothing penalises confident rows
    assert float(ar_loss(logits, torch.full((1, 3), -100), 0.1)) == 0.0


def test_collate_pads_labels_and_mask():
    rec = [Trajectory("a", 0, (1, 2, 3), ((3, 3, 3), (7, 3, 3), (7, 8, 9)), (7, 8, 9)),
           Trajectory("b", 0, (1, 2), ((2, 2, 2), (5, 6, 2)), (5, 6))]
    import random

    batch = collate([example(rec[0], random.Random(0), 64), example(rec[1], random.Random(0), 64)])
    assert batch["teacher"].tolist() == [[1, 2, 3, 7, 8, 9], [1, 2, 5, 6, 0, 0]]
    assert batch["attention"].tolist() == [[1] * 6, [1, 1, 1, 1, 0, 0]]
    assert batch["rows"][0].tolist() == [2, 3, 4] and batch["rows"][1, :2].tolist() == [1, 2]
    assert batch["labels"].tolist() == [[7, 8, 9], [5, 6, -100]]
    assert batch["mask"][1, 2].item() is False


# ---- collection ---------------------------------------------------------------------------------

def test_longest_run_and_cleaning():
    assert longest_run([1, 2, 2, 2, 3]) == 3 and longest_run([]) == 0
    recs = [Trajectory("p", 0, (1,), ((5, 5),), (5,) * 8), Trajectory("p", 1, (1,), ((1, 2),), (1, 2))]
    assert clean(recs, 8) == recs[1:]


def test_fixed_points_are_the_ar_greedy_output(tiny):
    prompt = tiny.encode("hello world", chat=False)
    recs = collect_prompt(tiny.backend, "p", prompt, CollectConfig(block=5, max_new_tokens=20), tiny.eos_token_ids)
    out = [t for r in recs for t in r.fixed]
    ar = tiny.generate(prompt, method="ar", max_new_tokens=len(out)).token_ids
    assert out == list(ar)
    for i, r in enumerate(recs):
        assert r.states[0] == (r.context[-1],) * 5  # the initial guess
        assert r.states[-1][: len(r.fixed)] == r.fixed  # the last state fed holds the fixed point
        assert list(r.context) == prompt + out[: 5 * i]
    assert sum(len(r.states) > 1 for r in recs) > 0  # Jacobi needed more than one pass somewhere


def test_collection_resumes_without_loss_or_duplicates(tiny, tmp_path):
    prompts = [(f"q{i}", tiny.encode(f"prompt {i}", chat=False)) for i in range(3)]
    cfg = CollectConfig(block=4, max_new_tokens=8)
    collect(tiny, prompts[:2], tmp_path, cfg)
    path = tmp_path / "trajectories.jsonl"
    first = path.read_text()
    with path.open("a") as f:  # a write killed half-way
        f.write('{"prompt_id": "q2", "block_ind')
    assert done_prompts(path) == {"q0", "q1"}
    counts = collect(tiny, prompts, tmp_path, cfg)
    assert counts["skipped"] == 2 and counts["prompts"] == 1
    text = path.read_text()
    assert text.startswith(first)
    ids = [json.loads(line)["prompt_id"] for line in text.splitlines()]
    assert sorted(set(ids)) == ["q0", "q1", "q2"]
    assert len(ids) == len([line for line in text.splitlines() if line.strip()])
    per = {(json.loads(line)["prompt_id"], json.loads(line).get("block_index")) for line in text.splitlines()}
    assert len(per) == len(ids)  # no block written twice


# ---- fit ----------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def records():
    model = tiny_model(seed=5)
    be = TransformersBackend(model)
    out = []
    for i, text in enumerate([[5, 6, 7, 8], [9, 10, 11], [12, 13, 14, 15, 16]]):
        out += collect_prompt(be, f"p{i}", text, CollectConfig(block=6, max_new_tokens=18), eos=())
    return out


def _trainable(model):
    return {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}


def test_checkpoint_resume_equals_an_uninterrupted_run(records, tmp_path):
    # a decaying learning rate too: the resumed run must pick up the curve where it was cut
    cfg = FitConfig(steps=4, accumulate=2, batch=2, lr=1e-3, save_every=2, seed=1, schedule="cosine", decay_from=1)
    full, hist_full = fit(tiny_model(seed=5), records, tmp_path / "a", cfg)
    _, hist_cut = fit(tiny_model(seed=5), records, tmp_path / "b", cfg, stop_after=2)  # killed after step 2
    assert [h["step"] for h in hist_cut] == [1, 2]
    resumed, hist_res = fit(tiny_model(seed=5), records, tmp_path / "b", cfg, resume=True)
    assert hist_res == hist_full
    assert [h["lr"] for h in hist_full] == [lr_at(cfg, s) for s in range(4)]
    a, b = _trainable(full), _trainable(resumed)
    assert a.keys() == b.keys() and all(torch.allclose(a[k], b[k], atol=1e-6) for k in a)
    # and the optimizer did use the schedule: the constant rate ends elsewhere
    flat, _ = fit(tiny_model(seed=5), records, tmp_path / "c", replace(cfg, schedule="constant"))
    c = _trainable(flat)
    assert not all(torch.allclose(a[k], c[k], atol=1e-6) for k in a)


@given(steps=st.integers(2, 500), frac=st.floats(0, 0.99), kind=st.sampled_from(["linear", "cosine"]))
def test_lr_schedule_holds_then_decays_towards_zero(steps, frac, kind):
    cfg = FitConfig(steps=steps, lr=0.5, schedule=kind, decay_from=int(frac * steps))
    lrs = [lr_at(cfg, s) for s in range(steps)]
    assert lrs[: cfg.decay_from + 1] == [0.5] * (cfg.decay_from + 1)  # held, and the decay starts at full rate
    assert all(b <= a for a, b in zip(lrs, lrs[1:])) and lrs[-1] > 0
    remaining = steps - cfg.decay_from
    assert lrs[-1] == pytest.approx(0.5 / remaining if kind == "linear" else 0.25 * (1 - math.cos(math.pi / remaining)))
    assert [lr_at(replace(cfg, schedule="constant"), s) for s in range(steps)] == [0.5] * steps


def test_bad_schedules_fail_clearly():
    with pytest.raises(ConfigError, match="schedule"):
        FitConfig(schedule="warm")
    with pytest.raises(ConfigError, match="decay_from"):
        FitConfig(steps=10, decay_from=10)


def test_smoke_fit_lowers_the_consistency_loss_and_saves_a_loadable_adapter(records, tmp_path, tiny_dir):
    cfg = FitConfig(steps=60, accumulate=1, batch=4, lr=1e-2, save_every=100, seed=0)
    model, hist = fit(tiny_model(seed=5), records, tmp_path / "ad", cfg)
    early = sum(h["consistency"] for h in hist[:5]) / 5
    late = sum(h["consistency"] for h in hist[-5:]) / 5
    assert late < 0.6 * early, (early, late)
    save_adapter(model, tmp_path / "ad", {"method": "cllm"})
    meta = json.loads((tmp_path / "ad" / "polyverse.json").read_text())
    assert meta["kind"] == "lora" and (tmp_path / "ad" / "adapter_model.safetensors").is_file()


def test_load_with_an_adapter_changes_the_model_and_bad_adapters_fail(tiny_dir, tmp_path):
    from polyverse.errors import ConfigError

    base = polyverse.load(str(tiny_dir), progress=False)
    cfg = FitConfig(steps=3, accumulate=1, batch=2, lr=1e-2, save_every=100)
    recs = collect_prompt(base.backend, "p", [5, 6, 7], CollectConfig(block=4, max_new_tokens=8), eos=())
    model, _ = fit(tiny_model(seed=3), recs, tmp_path / "ad", cfg)  # tiny_dir holds seed 3
    save_adapter(model, tmp_path / "ad", {"method": "cllm"})
    adapted = polyverse.load(str(tiny_dir), adapter=str(tmp_path / "ad"), progress=False)
    w0 = dict(base.hf_model.named_parameters())["model.layers.0.self_attn.q_proj.weight"]
    w1 = dict(adapted.hf_model.named_parameters())["model.layers.0.self_attn.q_proj.weight"]
    assert not torch.allclose(w0, w1)  # LoRA merged in
    assert "lora" not in " ".join(n for n, _ in adapted.hf_model.named_parameters())  # plain model again
    with pytest.raises(ConfigError, match="not found"):
        polyverse.load(str(tiny_dir), adapter="no-such-adapter", progress=False)
    (tmp_path / "empty").mkdir()
    with pytest.raises(ConfigError, match="is not an adapter"):
        polyverse.load(str(tiny_dir), adapter=str(tmp_path / "empty"), progress=False)


def test_grade_and_accuracy_of_final_answers():
    from types import SimpleNamespace

    from polyverse.train.cllm.evaluate import accuracy, grade

    tok = SimpleNamespace(decode=lambda ids, skip_special_tokens=True: " ".join(str(i) for i in ids))
    lm = SimpleNamespace(tokenizer=tok)
    right_then_wrong = grade(lm, [3, 72], lm, [3, 71], "72")
    assert right_then_wrong == {"correct_before": True, "correct_after": False}
    assert grade(lm, [1], lm, [1], None) == {}
    rows = [right_then_wrong, grade(lm, [5], lm, [72], "72"), {}]
    assert accuracy(rows) == {"accuracy_before": 0.5, "accuracy_after": 0.5}
    assert accuracy([{}]) == {}
