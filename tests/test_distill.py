"""Self-distillation data (`polyverse train distill`): greedy answers, resumable, read back by SPACE fit."""

import json

from typer.testing import CliRunner

from polyverse.cli import app
from polyverse.train.distill import DistillConfig, distill, done_ids
from polyverse.train.space.data import read_samples

runner = CliRunner()


def test_answers_are_the_greedy_output_and_a_rerun_resumes(tiny, tmp_path):
    questions = [(f"q{i}", f"question {i}") for i in range(3)]
    out = tmp_path / "d.jsonl"
    cfg = DistillConfig(max_new_tokens=12, method="jacobi")
    counts = distill(tiny, questions[:2], out, cfg)
    assert counts == {"written": 2, "skipped": 0, "truncated": counts["truncated"]}
    first = out.read_text()
    for line in first.splitlines():
        row = json.loads(line)
        ar = tiny.generate(row["prompt"], method="ar", max_new_tokens=12)
        assert row["response"] == ar.text and row["finish"] == ar.finish_reason
    with out.open("a") as f:  # a write killed half-way
        f.write('{"id": "q2", "prom')
    assert done_ids(out) == {"q0", "q1"}
    counts = distill(tiny, questions, out, cfg)
    assert counts["skipped"] == 2 and counts["written"] == 1
    text = out.read_text()
    assert text.startswith(first)
    assert [json.loads(line)["id"] for line in text.splitlines()] == ["q0", "q1", "q2"]
    samples = read_samples(out, tiny.tokenizer)  # the format SPACE fit reads
    assert len(samples) == 3


def test_cli_writes_rows_and_rejects_bad_input(tiny_dir, tmp_path):
    data = tmp_path / "q.jsonl"
    data.write_text('{"question": "two plus two"}\n{"question": "three plus one"}\n')
    out = tmp_path / "d.jsonl"
    res = runner.invoke(app, ["train", "distill", "--model", str(tiny_dir), "--data", str(data), "--out", str(out),
                              "--limit", "2", "--max-new-tokens", "6"])
    assert res.exit_code == 0, res.output
    assert "2 answers written" in res.output
    assert len(out.read_text().splitlines()) == 2
    res = runner.invoke(app, ["train", "distill", "--model", str(tiny_dir), "--data", str(data), "--out", str(out),
                              "--method", "nonsense"])
    assert res.exit_code != 0 and "unknown method" in res.output and "Traceback" not in res.output
    res = runner.invoke(app, ["train", "distill", "--model", str(tiny_dir), "--data", str(tmp_path / "none.jsonl"),
                              "--out", str(out)])
    assert res.exit_code != 0 and "not found" in res.output


def test_batched_answers_match_greedy_and_resume(tiny, tmp_path):
    from polyverse.train.distill_batched import cut_answer, distill_batched, left_pad

    ids, attention = left_pad([(5, 6), (7,)], 0)
    assert ids.tolist() == [[5, 6], [0, 7]] and attention.tolist() == [[1, 1], [0, 1]]
    assert cut_answer([4, 9, 2, 0], (2,)) == ([4, 9], "eos") and cut_answer([4, 9], (2,)) == ([4, 9], "length")
    questions = [(f"q{i}", "what is " + "two " * i) for i in range(5)]  # prompts of different lengths: padding
    out = tmp_path / "b.jsonl"
    cfg = DistillConfig(max_new_tokens=10)
    counts = distill_batched(tiny, questions[:3], out, cfg, batch=2)
    assert counts["written"] == 3 and counts["skipped"] == 0
    counts = distill_batched(tiny, questions, out, cfg, batch=4)
    assert counts["written"] == 2 and counts["skipped"] == 3
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["id"] for r in rows] == [q for q, _ in questions]
    for row in rows:
        ar = tiny.generate(row["prompt"], method="ar", max_new_tokens=10)
        assert row["response"] == ar.text and row["finish"] == ar.finish_reason and row["batched"]
    assert len(read_samples(out, tiny.tokenizer)) == 5


def test_cli_batched_rejects_bad_options(tiny_dir, tmp_path):
    data = tmp_path / "q.jsonl"
    data.write_text('{"question": "two plus two"}\n{"question": "three"}\n')
    out = tmp_path / "d.jsonl"
    res = runner.invoke(app, ["train", "distill", "--model", str(tiny_dir), "--data", str(data), "--out", str(out),
                              "--batch", "2", "--max-new-tokens", "6"])
    assert res.exit_code == 0, res.output
    assert "2 answers written" in res.output
    for bad, said in ((["--device", "cuda"], "needs --batch"), (["--batch", "-1"], "--batch"),
                      (["--batch", "2", "--device", "nonsense"], "not a device")):
        res = runner.invoke(app, ["train", "distill", "--model", str(tiny_dir), "--data", str(data),
                                  "--out", str(tmp_path / "x.jsonl"), *bad])
        assert res.exit_code != 0 and said in res.output and "Traceback" not in res.output, res.output
