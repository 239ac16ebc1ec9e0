"""The serving benchmark's figures: ratios, the report and the plot from a run's results (no servers)."""

import doctest
import json

from polyverse.bench import serve


def row(clients, tps, round_="sweep", ttft=0.1):
    return {"clients": clients, "round": round_, "tokens_per_s": tps, "requests_per_s": tps / 50,
            "ttft_s": {"p50": ttft, "p99": 2 * ttft}, "latency_s": {"p50": 1.0, "p99": 2.0},
            "requests_failed": 0, "rows_per_pass": 3.0, "requests_per_pass": 1.5}


def fake_run(failed=0, rss_back=True):
    ours = {"server": "polyverse (auto)", "rows": [row(1, 70.0), row(16, 350.0), row(16, 340.0, "second")],
            "memory": {"rss_start_mib": 1000.0, "rss_after_mib": [1010.0, 1005.0], "rss_back": rss_back},
            "server_error_lines": []}
    ours["rows"][1]["requests_failed"] = failed
    peer = {"server": "vLLM CPU (bfloat16)", "rows": [row(1, 35.0), row(16, 300.0), row(16, 310.0, "second")],
            "memory": {"rss_start_mib": 4000.0, "rss_after_mib": [4100.0, 4200.0], "rss_back": False}}
    out = {"machine": "test CPU", "config": {"model": "m", "max_tokens": 64, "prompts": "mtbench-like", "duration": 30.0},
           "servers": [ours, peer]}
    out["ratios"] = serve.ratios(out)
    return out


def test_module_examples():
    assert doctest.testmod(serve).failed == 0


def test_ratios_compare_sweep_rounds_only():
    r = fake_run()["ratios"]
    assert r["scaling"] == 5.0
    assert r["vLLM CPU (bfloat16)"] == {1: 2.0, 16: round(350 / 300, 2)}


def test_report_plot_and_pass_verdict(tmp_path):
    out = fake_run()
    text = serve.report(out)
    assert "| polyverse (auto) | 16 | sweep | 350.0 |" in text and "5.0x" in text and "vLLM CPU (bfloat16)" in text
    serve.write(out, tmp_path / "run")
    assert json.loads((tmp_path / "run" / "results.json").read_text())["ratios"]["scaling"] == 5.0
    assert (tmp_path / "run" / "serving.png").stat().st_size > 1000
    assert serve.passed(out)
    assert not serve.passed(fake_run(failed=1)) and not serve.passed(fake_run(rss_back=False))
