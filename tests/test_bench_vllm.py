"""The vLLM rows of `polyverse bench` (``bench.vllm_peer``), with vLLM's job replaced by a script."""

from __future__ import annotations

import pytest

from polyverse.bench import vllm_peer
from polyverse.bench.data import BenchPrompt, BenchSet
from polyverse.errors import PolyverseError


def fake_job(python, job, **kw):
    """Greedy writes each prompt reversed; speculation does the same, twice as fast, except the
    n-gram row, which changes one token of the second prompt."""
    spec = job["speculative"]
    speed = 1.0 if spec is None else 2.0
    single = {}
    for name, prompts in job["sets"].items():
        rows = []
        for i, p in enumerate(prompts):
            toks = list(reversed(p))[: job["max_tokens"]]
            if spec and spec["method"] == "ngram" and i == 1:
                toks[0] += 1
            rows.append({"tokens": toks, "seconds": len(toks) / (10.0 * speed)})
        single[name] = rows
    every = [p for ps in job["sets"].values() for p in ps]
    chosen = [every[i % len(every)] for i in range(job["batch"])]
    toks = [list(reversed(p)) for p in chosen]
    return {"single": single, "batch": {"prompts": chosen, "tokens": toks, "seconds": 1.0 / speed}}


def test_rows_summary_and_report(monkeypatch, tmp_path):
    monkeypatch.setattr(vllm_peer, "run_job", fake_job)
    (tmp_path / "config.json").write_text("{}")
    sets = [BenchSet("chat", (BenchPrompt("c0", (1, 2, 3)), BenchPrompt("c1", (4, 5)))),
            BenchSet("code", (BenchPrompt("k0", (7, 8, 9, 10)),))]
    rows, summary = vllm_peer.vllm_rows(tmp_path / "python", tmp_path, sets, 8, "float32", batch=4)
    assert [r.name for r in rows] == ["vllm", "vllm ngram", "vllm + polyverse auto"]
    assert rows[0].run(None, [4, 5], 8).tokens == [5, 4]
    with pytest.raises(PolyverseError, match="no run"):
        rows[0].run(None, [6], 8)
    chat = summary["rows"]["vllm ngram"]["sets"]["chat"]
    assert chat["same_as_greedy"] == 1 and chat["prompts"] == 2
    auto = summary["rows"]["vllm + polyverse auto"]
    assert auto["sets"]["code"]["tokens_per_s"] == pytest.approx(20.0)
    assert auto["batch"]["same_as_greedy"] == 4
    text = "\n".join(vllm_peer.markdown(summary))
    assert "| vllm + polyverse auto | 20.0 | 2.00 / 1.00 | 2/2 |" in text
    assert "| vllm ngram | 20.0 | 2.00 / 1.00 | 1/2 |" in text


def test_a_directory_without_a_config_is_refused(tmp_path):
    with pytest.raises(Exception, match="config.json"):
        vllm_peer.vllm_rows(tmp_path / "python", tmp_path, [], 8, "float32")
