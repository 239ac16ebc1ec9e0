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
