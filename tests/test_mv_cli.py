"""Multiverse through the API and the CLI: guided answers, the path view, clear errors."""

import pytest
from typer.testing import CliRunner

from polyverse.multiverse.grammar import validate

runner = CliRunner()


def invoke(*args):
    return runner.invoke(__import__("polyverse.cli", fromlist=["app"]).app, [str(a) for a in args])


def test_guided_generate_shows_each_path_then_the_structured_answer(tiny_dir):
    r = invoke("generate", "Plan a picnic.", "--model", tiny_dir, "-m", "multiverse", "-o", "guided=true",
               "-o", "paths=2", "-o", "max_path_tokens=24", "-o", "outline_tokens=4", "-n", 200)
    assert r.exit_code == 0, r.output
    assert "path 1" in r.output and "path 2" in r.output  # the live panels
    text = r.output[r.output.index("<Parallel>"):r.output.rindex("</Parallel>") + len("</Parallel>")]
    assert validate(text) == []
    assert "[multiverse]" in r.output


def test_stream_gives_settled_text_and_stats(tiny):
    chunks = list(tiny.stream("Plan a picnic.", method="multiverse", options={"guided": True, "paths": 3,
                              "max_path_tokens": 24, "outline_tokens": 4}, max_new_tokens=400))
    g_text = "".join(c.text for c in chunks)
    assert g_text.count("<Path>") == 3 and validate(g_text) == []
    # a pass that decodes 3 open paths writes 3 tokens
    assert max(len(c.tokens) for c in chunks) >= 3 or max(c.step.accepted for c in chunks) >= 3


@pytest.mark.parametrize("args, message", [
    (["-m", "multiverse", "--block", "4"], "has no option block"),
    (["-m", "multiverse", "-o", "max_paths=0"], "max_paths must be an integer in [1, 16]"),
    (["-m", "multiverse", "-o", "guided=true", "-o", "paths=9"], "paths must lie"),
])
def test_bad_multiverse_options_are_one_line(tiny_dir, args, message):
    r = invoke("generate", "hi", "--model", tiny_dir, *args)
    assert r.exit_code == 2 and message in r.output and "Traceback" not in r.output


def test_bench_multiverse_rejects_bad_counts():
    r = invoke("bench-multiverse", "--paths", "two")
    assert r.exit_code == 2 and "comma-separated integers" in r.output
    r = invoke("bench-multiverse", "--paths", "0")
    assert r.exit_code == 2 and "positive counts" in r.output
