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
