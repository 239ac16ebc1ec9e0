"""`polyverse bench structured`: JSON-schema output on the bundled model, constrained `ar` against
`auto` with and without the grammar's forced tokens drafted.

Five schemas (nested objects, arrays, enums, numbers) with four chat prompts each, greedy. The
schemas bound their strings, arrays and numbers, as a schema written for an application does (a
small model left unbounded may repeat itself inside a string until the budget runs out); every
output must parse and validate; `auto`'s must equal constrained `ar`'s token for
token; tokens per pass and tokens per second show what drafting the forced tokens brings.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from typing import Callable

SCHEMAS: dict[str, dict] = {
    "person": {
        "type": "object",
        "properties": {
            "name": {"type": "string", "maxLength": 40}, "age": {"type": "integer", "minimum": 0, "maximum": 150},
            "address": {"type": "object", "properties": {"city": {"type": "string", "maxLength": 40}, "country": {"type": "string", "maxLength": 40}},
                        "required": ["city", "country"], "additionalProperties": False},
        },
        "required": ["name", "age", "address"], "additionalProperties": False,
    },
    "recipe": {
        "type": "object",
        "properties": {
            "title": {"type": "string", "maxLength": 60}, "servings": {"type": "integer", "minimum": 1, "maximum": 100},
            "ingredients": {"type": "array", "minItems": 1, "maxItems": 6, "items": {
                "type": "object", "properties": {"item": {"type": "string", "maxLength": 40}, "grams": {"type": "number", "minimum": 0, "maximum": 10000}},
                "required": ["item", "grams"], "additionalProperties": False}},
        },
        "required": ["title", "servings", "ingredients"], "additionalProperties": False,
    },
    "weather": {
        "type": "object",
        "properties": {
            "city": {"type": "string", "maxLength": 40}, "condition": {"enum": ["sunny", "cloudy", "rain", "snow", "storm"]},
            "temperature_c": {"type": "number", "minimum": -90, "maximum": 60}, "wind_kmh": {"type": "integer", "minimum": 0, "maximum": 400}, "alert": {"type": "boolean"},
        },
        "required": ["city", "condition", "temperature_c", "wind_kmh", "alert"], "additionalProperties": False,
    },
    "books": {
        "type": "object",
        "properties": {"books": {"type": "array", "minItems": 1, "maxItems": 4, "items": {
            "type": "object", "properties": {"title": {"type": "string", "maxLength": 60}, "author": {"type": "string", "maxLength": 40},
                                             "year": {"type": "integer", "minimum": -3000, "maximum": 2100}, "genres": {"type": "array", "maxItems": 3,
                                                                                     "items": {"type": "string", "maxLength": 20}}},
            "required": ["title", "author", "year", "genres"], "additionalProperties": False}}},
        "required": ["books"], "additionalProperties": False,
    },
    "ticket": {
        "type": "object",
        "properties": {
            "summary": {"type": "string", "maxLength": 120}, "priority": {"enum": ["low", "medium", "high", "urgent"]},
            "component": {"enum": ["billing", "login", "search", "checkout", "other"]},
            "steps": {"type": "array", "maxItems": 4, "items": {"type": "string", "maxLength": 80}},
            "customer": {"type": "object", "properties": {"plan": {"enum": ["free", "pro", "enterprise"]},
                                                          "seats": {"type": "integer", "minimum": 1, "maximum": 100000}},
                         "required": ["plan", "seats"], "additionalProperties": False},
        },
        "required": ["summary", "priority", "component", "steps", "customer"], "additionalProperties": False,
    },
}

PROMPTS: list[tuple[str, str]] = [
    ("person", "Describe Marie Curie as a JSON record: name, age at death, and where she lived."),
    ("person", "Make up a fictional sailor and give their details as JSON."),
    ("person", "Return JSON for a 34-year-old software engineer named Lena who lives in Oslo, Norway."),
    ("person", "Give the details of a famous painter of your choice in JSON."),
    ("recipe", "Give a simple pancake recipe as JSON."),
    ("recipe", "Write a recipe for a tomato salad for two people, as JSON with ingredient weights."),
    ("recipe", "Return a JSON recipe for banana bread."),
    ("recipe", "I need a quick vegetable soup recipe in JSON form."),
    ("weather", "Report the weather in Lisbon today as JSON: it is sunny and 24 degrees with light wind."),
    ("weather", "Give a JSON weather report for a snowy day in Montreal."),
    ("weather", "Make up a stormy weather report for Tokyo, in JSON."),
    ("weather", "Return today's weather in Cairo as JSON."),
    ("books", "List two classic science fiction novels as JSON."),
    ("books", "Recommend three books for learning about history, in JSON."),
    ("books", "Give one novel by Jane Austen as JSON with its genres."),
    ("books", "Return JSON listing two famous poetry collections."),
    ("ticket", "A customer on the pro plan with 12 seats cannot log in after resetting their password. File a "
               "support ticket as JSON."),
    ("ticket", "Write a JSON ticket: checkout page crashes when a coupon is applied; enterprise customer."),
    ("ticket", "Turn this into a JSON ticket: 'search returns nothing for names with accents', free plan user."),
    ("ticket", "A billing error charged a customer twice. Create the support ticket in JSON."),
]

CONTENDERS = [("ar", "ar", True), ("auto, forced tokens drafted", "auto", True),
              ("auto, without forced tokens", "auto", False)]


@dataclass(frozen=True)
class Row:
    schema: str
    prompt: int
    contender: str
    text: str
    tokens: int
    passes: int
    seconds: float
    parses: bool
    valid: bool
    same_as_ar: bool


def check(text: str, schema: dict) -> tuple[bool, bool]:
    """(the text parses as JSON, and it validates against ``schema``)."""
    import jsonschema

    try:
        value = json.loads(text)
    except json.JSONDecodeError:
        return False, False
    try:
        jsonschema.validate(value, schema)
    except jsonschema.ValidationError:
        return True, False
    return True, True


def run(model, max_new_tokens: int, tick: Callable[[str], None] | None = None,
        prompts: list[tuple[str, str]] = PROMPTS) -> list[Row]:
    """Every prompt under each contender, one after the other (so timings share the machine's state)."""
    from ..grammar import GrammarSpec

    grammars = {name: model.grammar(GrammarSpec.json_schema(schema)) for name, schema in SCHEMAS.items()}
    rows: list[Row] = []
    for i, (name, prompt) in enumerate(prompts):
        reference = None
        for label, method, forced in CONTENDERS:
            if tick:
                tick(f"{name} {i + 1}/{len(prompts)} {label}")
            t0 = time.perf_counter()
            gen = model.generate([{"role": "user", "content": prompt}], method=method, max_new_tokens=max_new_tokens,
                                 grammar=grammars[name], forced_drafts=forced)
            seconds = time.perf_counter() - t0
            ids = list(gen.token_ids)
            reference = ids if reference is None else reference
            parses, valid = check(gen.text, SCHEMAS[name])
            rows.append(Row(name, i, label, gen.text, len(ids), gen.stats.passes, seconds, parses, valid,
                            ids == reference))
    return rows


def markdown(rows: list[Row], cpu: str, max_new_tokens: int) -> str:
    """The summary table: per contender, outputs that parse and validate, equality with `ar`, speed."""
    lines = [f"JSON schema output, bundled model, greedy, {len({(r.schema, r.prompt) for r in rows})} prompts over "
             f"{len(SCHEMAS)} schemas, at most {max_new_tokens} tokens; {cpu}.", "",
             "| contender | parse | validate | identical to `ar` | tokens | passes | tokens/pass | tok/s |",
             "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for label, _, _ in CONTENDERS:
        mine = [r for r in rows if r.contender == label]
        if not mine:
            continue
        n = len(mine)
        tokens, passes, seconds = (sum(getattr(r, f) for r in mine) for f in ("tokens", "passes", "seconds"))
        lines.append(f"| {label} | {sum(r.parses for r in mine)}/{n} | {sum(r.valid for r in mine)}/{n} | "
                     f"{sum(r.same_as_ar for r in mine)}/{n} | {tokens} | {passes} | {tokens / max(passes, 1):.2f} | "
                     f"{tokens / max(seconds, 1e-9):.1f} |")
    return "\n".join(lines)
