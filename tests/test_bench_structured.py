"""`polyverse bench structured`: its schemas compile and bound, its checks judge, its run compares."""

import json

import jsonschema
import pytest
from typer.testing import CliRunner

from polyverse.bench import structured
from polyverse.cli import app


def test_every_schema_is_valid_and_every_prompt_names_one():
    for schema in structured.SCHEMAS.values():
        jsonschema.Draft202012Validator.check_schema(schema)
    assert {name for name, _ in structured.PROMPTS} == set(structured.SCHEMAS)
    assert len(structured.PROMPTS) == 20


def test_check_tells_parse_from_validate():
    schema = structured.SCHEMAS["weather"]
    good = {"city": "Oslo", "condition": "snow", "temperature_c": -3.5, "wind_kmh": 12, "alert": False}
    assert structured.check(json.dumps(good), schema) == (True, True)
    assert structured.check(json.dumps({**good, "condition": "fog"}), schema) == (True, False)
    assert structured.check('{"city": "Os', schema) == (False, False)


def test_run_on_the_tiny_model_compares_with_ar_and_reports(tiny):
    prompts = [("weather", "weather in Oslo as JSON")]
    rows = structured.run(tiny, 120, prompts=prompts)
    assert [r.contender for r in rows] == [label for label, _, _ in structured.CONTENDERS]
    assert all(r.same_as_ar for r in rows)  # lossless under the grammar
    assert rows[1].passes < rows[2].passes  # the forced keys and punctuation come several per pass
    assert all(r.valid for r in rows if r.tokens < 120)  # what finished follows the schema
    table = structured.markdown(rows, "test CPU", 120)
    assert "| ar |" in table and "test CPU" in table


def test_bad_limits_exit_cleanly():
    r = CliRunner().invoke(app, ["bench", "structured", "--limit", "21"])
    assert r.exit_code == 2 and "--limit" in r.output
