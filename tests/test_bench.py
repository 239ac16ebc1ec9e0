"""`polyverse bench` on a tiny model: end to end, the exactness check, and bad input."""

import json

import pytest
from typer.testing import CliRunner

import polyverse
from polyverse.bench.contenders import Contender, Run
from polyverse.bench.data import load_set, read_jsonl
from polyverse.bench.runner import BenchConfig, run_bench
from polyverse.cli import app
from polyverse.errors import ConfigError

runner = CliRunner()


def invoke(*args):
    return runner.invoke(app, [str(a) for a in args])


@pytest.fixture()
def data_file(tmp_path):
    path = tmp_path / "d.jsonl"
    rows = [{"prompt": "hello there"}, {"question": "what is 2+2?"},
            {"messages": [{"role": "user", "content": "say hi"}]}]
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    return path


def test_bench_runs_end_to_end_and_writes_its_files(tiny_dir, data_file, tmp_path):
    out = tmp_path / "out"
    md = tmp_path / "BENCH.md"
    r = invoke("bench", "--model", tiny_dir, "--data", f"{data_file},mtbench-like", "--limit", 2, "-n", 12,
               "--methods", "ar,prompt_lookup,auto", "--out", out, "--markdown", md)
    assert r.exit_code == 0, r.output
    for name in ("results.json", "report.md", "speedup.png", "accepted.png"):
        assert (out / name).stat().st_size > 0
    doc = json.loads((out / "results.json").read_text())
    assert set(doc["sets"]) == {"d", "mtbench-like"}
    rows = doc["sets"]["d"]
    assert list(rows) == ["generate", "generate(prompt_lookup=10)", "ar", "prompt_lookup", "auto"]
    for row in rows.values():
        assert len(row["prompts"]) == 2
        assert row["summary"]["exact"] == 2  # lossless methods and greedy peers equal ar
    assert rows["generate"]["summary"]["ratio_median"] == 1.0
    assert all(p["accepted_per_pass"] for p in rows["auto"]["prompts"])
    assert doc["environment"]["threads"] >= 1 and doc["environment"]["torch"]
    report = (out / "report.md").read_text()
    assert "| auto |" in report and "speedup.png" in report
    assert "out/speedup.png" in md.read_text()  # image paths relative to the extra copy


def test_a_bench_rewrites_only_its_own_section_of_a_page():
    from polyverse.bench.report import splice

    page = "# Benchmarks\n\nother machine: 12 tok/s\n"
    once = splice(page, "benchmarks", "### polyverse bench\nrun 1")
    assert once.startswith(page.rstrip()) and "run 1" in once
    twice = splice(once + "\nlater notes\n", "benchmarks", "### polyverse bench\nrun 2")
    assert "run 2" in twice and "run 1" not in twice
    assert "other machine: 12 tok/s" in twice and twice.rstrip().endswith("later notes")
    both = splice(twice, "benchmarks/llamacpp", "llama run")
    assert "run 2" in both and "llama run" in both
    assert splice("", "x", "new") == "<!-- bench:x -->\nnew\n<!-- /bench:x -->\n"


def test_a_section_takes_its_heading_level_from_where_it_sits():
    from polyverse.bench.report import depth_at

    kept = "# Benchmarks\n## This machine\n#### Every method\n\n<!-- bench:out -->\n##### polyverse bench\n"
    assert depth_at(kept, "out") == 5  # under "####", not the "#####" of its own previous run
    assert depth_at("# Benchmarks\n", "out") == 3  # a new section at the end of a page
    assert depth_at("", "out") == 1
    assert depth_at("#" * 6 + " deep\n<!-- bench:out -->", "out") == 6


class Broken(Contender):
    """A deliberately wrong method: ar's output with one token changed."""

    def run(self, model, ids, max_new_tokens, temperature=0.0, seed=0):
        r = Contender("ar", "ar").run(model, ids, max_new_tokens, temperature, seed)
        tokens = list(r.tokens)
        tokens[3] = (tokens[3] + 1) % model.backend.vocab_size
        return Run(tokens, r.seconds, r.passes, r.accepted_per_pass)


def test_exactness_check_catches_a_wrong_method(tiny):
    sets = [load_set("mtbench-like", tiny, 2)]
    doc = run_bench(tiny, [Contender("generate"), Contender("ar", "ar"), Broken("broken", "ar")], sets,
                    BenchConfig(max_new_tokens=10))
    rows = doc["sets"]["mtbench-like"]
    assert rows["ar"]["summary"]["exact"] == 2
    assert rows["broken"]["summary"]["exact"] == 0
    m = rows["broken"]["prompts"][0]["mismatch"]
    assert m["position"] == 3 and m["got"] == (m["expected"] + 1) % tiny.backend.vocab_size
    assert m["margin"] > 0  # greedy chose the expected token, so its logit is the larger


def test_sampled_runs_are_not_judged(tiny):
    sets = [load_set("mtbench-like", tiny, 1)]
    doc = run_bench(tiny, [Contender("generate"), Contender("ar", "ar")], sets,
                    BenchConfig(max_new_tokens=8, temperature=1.0))
    assert doc["sets"]["mtbench-like"]["ar"]["summary"]["exact"] is None


def test_jsonl_reader_names_the_bad_line(tmp_path):
    path = tmp_path / "bad.jsonl"
    path.write_text('{"prompt": "fine"}\n\n{"text": "no usable field"}\n')
    with pytest.raises(ConfigError, match=r"bad.jsonl, line 3: no usable field"):
        read_jsonl(path, 10)
    path.write_text('{"prompt": "fine"}\n{not json\n')
    with pytest.raises(ConfigError, match=r"line 2: not valid JSON"):
        read_jsonl(path, 10)


BAD = [
    (["--data", "/nonexistent/data.jsonl"], "data file not found: /nonexistent/data.jsonl"),
    (["--data", "nosuchset"], "unknown data set 'nosuchset'"),
    (["--methods", "ar,warp_drive"], "unknown method 'warp_drive'"),
    (["--methods", "ar", "-o", "jacobi.block=4"], "names method 'jacobi', which is not benchmarked"),
    (["--methods", "jacobi", "-o", "jacobi.block=0"], "block"),
    (["--limit", "0"], "--limit must be at least 1"),
    (["-n", "0"], "--max-new-tokens must be at least 1"),
]


@pytest.mark.parametrize("args,message", BAD)
def test_bad_input_is_one_clear_line(args, message):
    r = invoke("bench", *args)
    assert r.exit_code == 2, r.output
    assert message in r.stderr
    assert "Traceback" not in r.output and len(r.stderr.strip().splitlines()) == 1


def test_bad_jsonl_line_is_named_on_the_command_line(tmp_path):
    path = tmp_path / "x.jsonl"
    path.write_text('{"prompt": "a"}\n{"answer": "b"}\n')
    r = invoke("bench", "--data", path)
    assert r.exit_code == 2 and "x.jsonl, line 2: no usable field" in r.stderr


def test_assisted_generate_peer_runs_and_matches_ar(tiny):
    """The generate(assistant_model=...) row (given with --draft-model) on a tiny target/draft pair."""
    sets = [load_set("mtbench-like", tiny, 1)]
    doc = run_bench(tiny, [Contender("generate"), Contender("ar", "ar"),
                           Contender("generate(assistant_model)", None, {"assistant_model": tiny})],
                    sets, BenchConfig(max_new_tokens=10))
    row = doc["sets"]["mtbench-like"]["generate(assistant_model)"]
    assert row["summary"]["exact"] == 1 and row["prompts"][0]["new_tokens"] >= 1


# --- one entry point: the method bench is `polyverse bench` itself, the other benchmarks its subcommands ---


def test_bench_group_still_runs_the_method_bench_without_a_subcommand(tiny_dir, tmp_path):
    r = invoke("bench", "--model", tiny_dir, "--data", "humaneval", "--limit", 1, "-n", 4, "--methods", "ar",
               "--no-peers", "--baseline", "ar", "--out", tmp_path / "out")
    assert r.exit_code == 0, r.output
    doc = json.loads((tmp_path / "out" / "results.json").read_text())
    assert list(doc["sets"]["humaneval"]) == ["ar"]


def test_bench_lists_its_subcommands():
    r = invoke("bench", "--help")
    assert r.exit_code == 0
    for name in ("load", "ar-jacobi", "multiverse", "--data", "--limit"):
        assert name in r.stdout


@pytest.mark.parametrize("args,message", [
    (["--limit", "3", "ar-jacobi"], "--limit belong to `polyverse bench` itself, not to `polyverse bench ar-jacobi`"),
    (["load", "--clients", "0"], "--clients must be at least 1"),
    (["load", "--duration", "0"], "--duration must be above 0"),
    (["load", "--method", "warp"], "unknown method 'warp'"),
    (["ar-jacobi", "--blocks", "four"], "--blocks takes comma-separated integers"),
    (["ar-jacobi", "--blocks", "0"], "--blocks takes positive block sizes"),
    (["multiverse", "--paths", "0"], "positive counts"),
])
def test_subcommand_bad_input_is_one_clear_line(args, message):
    r = invoke("bench", *args)
    assert r.exit_code == 2, r.output
    assert message in r.stderr
    assert "Traceback" not in r.output and len(r.stderr.strip().splitlines()) == 1


def test_ar_jacobi_compares_with_generate(tiny_dir, tmp_path):
    r = invoke("bench", "ar-jacobi", "--model", tiny_dir, "--prompts", 1, "-n", 8, "--blocks", 2,
               "--out", tmp_path / "aj.json")
    assert r.exit_code == 0, r.output
    lines = r.stdout.splitlines()
    assert lines[0].startswith("load: ") and "torch threads" in lines[0]
    assert any(line.startswith("method") and "x generate (median)" in line for line in lines)
    rows = json.loads((tmp_path / "aj.json").read_text())["rows"]
    assert list(rows) == ["generate", "polyverse ar", "polyverse jacobi n=2"]
    assert all(row["mismatches"] == 0 for row in rows.values())  # greedy methods write generate's tokens


def test_load_percentiles_and_metrics():
    from polyverse.bench.load import mean_accepted, pct

    assert pct([3.0, 1.0, 2.0, 4.0], 50) == 2.0 and pct([1.0, 2.0], 99) == 2.0
    assert pct([], 50) != pct([], 50)  # nan
    metrics = ('polyverse_accepted_tokens_per_pass_sum{method="ar"} 6\n'
               'polyverse_accepted_tokens_per_pass_count{method="ar"} 4\n')
    assert mean_accepted(metrics, "ar") == 1.5 and mean_accepted(metrics, "auto") is None


def test_load_runs_a_server_and_reports(tiny_dir, tmp_path):
    out = tmp_path / "load.json"
    r = invoke("bench", "load", "--model", tiny_dir, "--method", "ar", "--clients", 2, "--duration", 1,
               "--max-tokens", 4, "--idle", 0, "--rss-slack-mib", 4096, "--out", out)
    assert r.exit_code == 0, r.output
    fig = json.loads(out.read_text())
    assert fig["requests_ok"] >= 2 and fig["requests_failed"] == 0 and fig["server_error_lines"] == 0
    assert fig["completion_tokens"] >= 1 and fig["accepted_per_pass_mean"] == 1.0
    assert json.loads(r.stdout) == fig


def test_each_bench_row_prefills_its_whole_prompt(tiny_dir, monkeypatch):
    """The lean pass keeps computed prompt prefixes for later requests; in the bench every row runs
    the same prompt, and copying the row before's cells would skip a prefill no peer skips."""
    from polyverse.backends.cpu.prefix import PrefixStore
    from polyverse.bench.contenders import Contender

    model = polyverse.load(str(tiny_dir), progress=False, dtype="fp32")
    if model.backend.decode_model.prefixes is None:
        pytest.skip("the lean CPU pass is not available here")
    restored = []
    original = PrefixStore.restore
    monkeypatch.setattr(PrefixStore, "restore", lambda self, t, c: restored.append(original(self, t, c)) or restored[-1])
    ids = list(range(3, 40))
    for method in ("ar", "auto"):
        Contender(method, method).run(model, ids, 4)
    assert restored == [0, 0]
    model.generate(ids, max_new_tokens=4)  # outside the bench the store serves the repeated prompt
    assert restored[-1] > 0
