import json
import subprocess
import sys

import pytest
from typer.testing import CliRunner

from polyverse.cli import app

runner = CliRunner()


def invoke(*args):
    return runner.invoke(app, [str(a) for a in args])


def test_generate_json_is_one_object_with_text_ids_and_stats(tiny_dir, tiny):
    r = invoke("generate", "Hello", "--model", tiny_dir, "--method", "jacobi", "--block", 4,
               "--no-chat", "-n", 20, "--json")
    assert r.exit_code == 0, r.output
    out = json.loads(r.stdout)
    assert out["method"] == "jacobi" and len(out["token_ids"]) == 20
    assert out["stats"]["passes"] >= 1 and out["stats"]["new_tokens"] == 20
    ar = tiny.generate("Hello", method="ar", max_new_tokens=20, chat=False)
    assert out["token_ids"] == list(ar.token_ids)
    assert out["text"] == ar.text


def test_generate_streams_text_then_one_stats_line(tiny_dir, tiny):
    r = invoke("generate", "Hello", "--model", tiny_dir, "--no-chat", "-n", 12)
    assert r.exit_code == 0, r.output
    ar = tiny.generate("Hello", method="ar", max_new_tokens=12, chat=False)
    text, stats = r.stdout.rstrip("\n").rsplit("\n", 1)
    assert text == ar.text
    assert "tok/s" in stats and "tokens/pass" in stats and "forward passes" in stats


def test_chat_and_sampling_options(tiny_dir):
    args = ["generate", "hi", "--model", tiny_dir, "--chat", "-n", 10, "-t", "0.9", "--top-k", 20,
            "--top-p", "0.9", "--seed", 3, "--json"]
    a, b = invoke(*args), invoke(*args)
    assert a.exit_code == 0, a.output
    assert json.loads(a.stdout)["token_ids"] == json.loads(b.stdout)["token_ids"]


def test_methods_lists_builtins():
    r = invoke("methods")
    assert r.exit_code == 0 and "jacobi" in r.stdout and "ar" in r.stdout


BAD = [
    (["generate", "x", "--method", "nope"], "unknown method 'nope'"),
    (["generate", "x", "--model", "no/such/model"], "unknown model"),
    (["generate", "x", "-n", "0"], "max_new_tokens must be >= 1"),
    (["generate", "x", "-t", "-0.5"], "temperature must be >= 0"),
    (["generate", "   "], "the prompt is empty"),
    (["generate", "x", "--block", "0", "-m", "jacobi"], "block"),
    (["generate", "x", "--block", "4", "-m", "ar"], "has no option block"),
    (["generate", "x", "--top-p", "2"], "top_p"),
    (["generate", "x", "-m", "lookahead", "--window", "0"], "window W must be"),
    (["generate", "x", "-m", "lookahead", "--ngram", "1"], "ngram N must be"),
    (["generate", "x", "-m", "draft"], "needs a draft model"),
    (["generate", "x", "-m", "prompt_lookup", "--window", "3"], "has no option window"),
    (["generate", "x", "-o", "nokeyvalue"], "KEY=VALUE"),
]


@pytest.mark.parametrize("args,message", BAD)
def test_bad_input_is_one_clear_line(args, message):
    r = invoke(*args)
    assert r.exit_code == 2
    assert message in r.stderr
    assert "Traceback" not in r.output and len(r.stderr.strip().splitlines()) == 1


def test_path_that_is_not_a_model(tmp_path):
    (tmp_path / "notes.txt").write_text("hi")
    for path in (tmp_path, tmp_path / "notes.txt"):
        r = invoke("generate", "x", "--model", path)
        assert r.exit_code == 2 and "is not a model" in r.stderr


def test_prompt_longer_than_context(tiny_dir):
    r = invoke("generate", "a" * 600, "--model", tiny_dir, "--no-chat")
    assert r.exit_code == 2 and "context holds 512" in r.stderr


def test_no_traceback_from_the_real_entry_point(tmp_path):
    r = subprocess.run([sys.executable, "-m", "polyverse.cli", "generate", "x", "--model", str(tmp_path)],
                       capture_output=True, text=True)
    assert r.returncode == 2
    assert "Traceback" not in r.stderr and "is not a model" in r.stderr


def test_draft_model_with_another_tokenizer(tiny_dir):
    r = invoke("generate", "x", "--model", tiny_dir, "-m", "draft", "--draft-model", "SmolLM2-135M-Instruct")
    assert r.exit_code == 2 and "another tokenizer" in r.stderr


def test_method_flags_reach_the_method(tiny_dir, tiny):
    r = invoke("generate", "Hello Hello Hello", "--model", tiny_dir, "--no-chat", "-n", 16, "--json",
               "-m", "lookahead", "--window", 2, "--ngram", 2, "--guesses", 1)
    assert r.exit_code == 0, r.output
    out = json.loads(r.stdout)
    ar = tiny.generate("Hello Hello Hello", method="ar", max_new_tokens=16, chat=False)
    assert out["token_ids"] == list(ar.token_ids)
    # W = 2, N = 2: a 2-token window plus at most one 1-token guess per pass
    assert out["stats"]["drafted"] <= 3 * out["stats"]["passes"]


def test_a_registered_methods_flag_reaches_generate_and_methods(tiny_dir, tiny, monkeypatch):
    """generate's method flags and the methods table are made from the option specs at run time,
    so a method registered after the CLI was imported gets its flag, its help and its row."""
    from polyverse.methods.ar import ARConfig, make as make_ar
    from polyverse.options import method_options, option
    from polyverse.registry import registry

    @method_options("echo_test")
    class EchoConfig:
        copies: int = option(2, "copies per pass", lo=1, hi=8, flag="--echo-copies")
        block: int = option(3, "echo block", lo=1, flag="--block")  # shares jacobi's flag
        word: str = option("", "a word")

    seen = []

    def make(cfg, ctx):
        seen.append(cfg)
        return make_ar(ARConfig(), ctx)

    monkeypatch.setattr(registry, "_methods", dict(registry._methods))  # the registration is undone after the test
    registry.register("echo_test", EchoConfig, make, "repeat after me")

    r = runner.invoke(app, ["generate", "--help"], env={"COLUMNS": "250"})
    assert r.exit_code == 0
    assert "--echo-copies" in r.stdout and "echo_test: copies per pass." in r.stdout
    assert "echo_test: echo block; jacobi: tokens guessed per pass." in r.stdout  # one --block, helps joined
    r = invoke("methods")
    assert r.exit_code == 0 and "echo_test" in r.stdout and "copies=2, block=3, word=''" in r.stdout

    r = invoke("generate", "Hello", "--model", tiny_dir, "--no-chat", "-n", 4, "--json", "-m", "echo_test",
               "--echo-copies", 5, "--block", 7, "-o", "word=1e3")
    assert r.exit_code == 0, r.output
    assert seen[-1] == EchoConfig(copies=5, block=7, word="1e3")  # typed by the spec: the str stays as written
    r = invoke("generate", "x", "-m", "echo_test", "--echo-copies", 9)
    assert r.exit_code == 2 and "echo_test copies must be an integer in [1, 8], got 9" in r.stderr
    r = invoke("generate", "x", "-m", "ar", "--echo-copies", 2)
    assert r.exit_code == 2 and "has no option copies" in r.stderr
    r = invoke("generate", "x", "-m", "echo_test", "--echo-copies", "two")
    assert r.exit_code == 2 and "Traceback" not in r.output  # click's own usage error


def test_builtin_method_flags_are_made_from_the_specs():
    from polyverse.cli.generate import method_flags
    from polyverse.registry import registry

    flags = {f.flag: f for f in method_flags(registry)}
    assert {name: f.kind for name, f in flags.items()} == {
        "--block": int, "--window": int, "--ngram": int, "--guesses": int, "--num-tokens": int, "--candidates": int,
        "--draft-model": str, "--k": int, "--layers": int, "--max-tokens": int}
    assert flags["--k"].help == "draft/early_exit: tokens drafted per pass; space: masks per group."
    assert flags["--draft-model"].option_name("draft") == "model"
    assert flags["--block"].option_name("ar") == "block"  # so that ar's config names it: "has no option block"


def test_a_method_flag_that_clashes_with_generates_own_is_refused(monkeypatch):
    from polyverse.errors import ConfigError
    from polyverse.methods.ar import make as make_ar
    from polyverse.options import method_options, option
    from polyverse.registry import registry

    @method_options("clash_test")
    class ClashConfig:
        seed: int = option(0, "a seed", flag="--seed")

    monkeypatch.setattr(registry, "_methods", dict(registry._methods))
    registry.register("clash_test", ClashConfig, make_ar, "clashes")
    with pytest.raises(ConfigError, match=r"--seed \(of clash_test\) is not a free `polyverse generate` flag"):
        invoke("generate", "--help")  # main() prints it as one line, exit 2


def test_generate_a_file_of_prompts_resumes_where_it_stopped(tiny_dir, tiny, tmp_path):
    prompts = ["abc", "hello there", "xyz xyz", "a", "cab cab cab"]
    src = tmp_path / "in.jsonl"
    src.write_text("".join(json.dumps({"prompt": p} if i % 2 else {"id": f"q{i}", "question": p}) + "\n"
                           for i, p in enumerate(prompts)))
    out = tmp_path / "out.jsonl"
    args = ["generate", "--input", src, "--output", out, "--model", tiny_dir, "--no-chat", "-n", 12, "-m", "auto",
            "--concurrency", 2, "--json"]
    r = invoke(*args)
    assert r.exit_code == 0, r.output
    rows = {row["id"]: row for row in map(json.loads, out.read_text().splitlines())}
    ids = ["q0", "2", "q2", "4", "q4"]
    assert sorted(rows) == sorted(ids)
    for rid, p in zip(ids, prompts):
        assert rows[rid]["token_ids"] == list(tiny.generate(p, method="ar", max_new_tokens=12, chat=False).token_ids)
    # drop two answers and tear the last line: a rerun writes just those two again
    lines = out.read_text().splitlines()
    out.write_text("\n".join(lines[:3]) + "\n" + lines[3][:10])
    r = invoke(*args)
    assert r.exit_code == 0, r.output
    assert json.loads(r.stdout.strip().splitlines()[-1])["skipped"] == 3
    again = {row["id"]: row for row in map(json.loads, out.read_text().splitlines())}
    assert again.keys() == rows.keys() and all(again[k]["token_ids"] == rows[k]["token_ids"] for k in rows)


@pytest.mark.parametrize("lines,message", [
    (['{"prompt": ""}'], "needs a non-empty"),
    (["not json"], "not JSON"),
    (['{"id": 1, "prompt": "a"}', '{"id": 1, "prompt": "b"}'], "appears twice"),
    ([], "holds no prompts"),
])
def test_a_bad_prompt_file_is_one_clear_line(tiny_dir, tmp_path, lines, message):
    src = tmp_path / "in.jsonl"
    src.write_text("\n".join(lines) + "\n")
    r = invoke("generate", "--input", src, "--output", tmp_path / "o.jsonl", "--model", tiny_dir)
    assert r.exit_code == 2 and message in r.output and "Traceback" not in r.output
    r = invoke("generate", "hi", "--input", src, "--output", tmp_path / "o.jsonl", "--model", tiny_dir)
    assert r.exit_code == 2 and "not both" in r.output
    r = invoke("generate", "--input", src, "--model", tiny_dir)
    assert r.exit_code == 2 and "go together" in r.output
