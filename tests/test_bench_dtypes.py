"""`polyverse bench dtypes` and `polyverse bench passes`: their pure parts and a run on a tiny model."""

import polyverse
from polyverse.bench import dtypes, passes
from polyverse.bench.data import BenchPrompt, BenchSet
from polyverse.models.tiny import tiny_model


def test_first_difference():
    assert dtypes.first_difference([1, 2, 3], [1, 2, 4]) == 2
    assert dtypes.first_difference([1, 2], [1, 2]) is None
    assert dtypes.first_difference([1], [1, 5]) == 1
    assert dtypes.first_difference([], [7]) == 0


def test_margin_is_the_fp32_logit_gap():
    model = tiny_model(seed=3, vocab_size=50)
    import torch

    with torch.inference_mode():
        logits = model(torch.tensor([[5, 6, 7, 9]])).logits[0, -1]
    gap = dtypes.margin(model, [5, 6, 7], [9, 11], 1, 4)
    assert abs(gap - float(logits[11] - logits[4])) < 1e-5
    assert dtypes.margin(model, [5], [9], 1, 4) is None  # past the reference's end


def test_compare_finds_departures_and_markdown_counts_them(tiny_dir):
    fp32 = polyverse.load(str(tiny_dir), progress=False)
    other = polyverse.load(str(tiny_dir), progress=False)
    ids = tuple(fp32.encode("hello there", chat=False))
    sets = [BenchSet("toy", (BenchPrompt("a", ids), BenchPrompt("b", ids[:3])))]
    same = dtypes.compare({"fp32": fp32, "bf16": other}, sets, 8)
    assert [r.position for r in same] == [None, None]  # the same model: no departure
    with_noise = polyverse.load(str(tiny_dir), progress=False)
    with_noise.hf_model.lm_head.weight.data.add_(0.5 * __import__("torch").randn_like(with_noise.hf_model.lm_head.weight))
    rows = dtypes.compare({"fp32": fp32, "int8": with_noise}, sets, 8)
    assert any(r.position is not None for r in rows)
    table = dtypes.markdown(rows + same, "toy CPU", 8)
    assert "| toy | bf16 | 0/2 |" in table
    differ = sum(r.position is not None for r in rows)
    assert f"| toy | int8 | {differ}/2 |" in table


def test_passes_markdown_has_one_row_per_engine_and_the_16_to_1_ratio():
    doc = {"sizes": [1, 8, 16], "context": 10, "reps": 2, "rows": {"a": [2.0, 3.0, 4.0], "b": [1.0, 1.0, 1.5]}}
    table = passes.markdown(doc, "toy CPU")
    assert "| a | 2.0 | 3.0 | 4.0 | 2.00x |" in table and "| b | 1.0 | 1.0 | 1.5 | 1.50x |" in table
