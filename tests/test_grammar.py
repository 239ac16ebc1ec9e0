"""Structured output: grammars compile or fail clearly, states walk drafts, and every method stays
lossless under a grammar (greedy identical to constrained `ar`, sampling with its distribution)."""

import json
import re

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from polyverse import ConfigError, Draft, GrammarSpec
from polyverse.config import GenerationConfig, SamplingConfig
from polyverse.grammar import compile_grammar
from polyverse.models.tiny import char_tokenizer
from polyverse.shaping import Shaper

from stats_util import Z_REJECT, chi_square_z
from test_lossless import LOSSLESS_CASES, PROMPT, backend, make_proposer, model
from polyverse.loop import decode
from polyverse.sampling import make_generator

TOKENIZER = char_tokenizer()  # ids 3.. are printable ASCII: with 8 ids, 3-7 are "0"-"4"; id 2 ends
EOS = 2
DIGITS = {"0": 3, "1": 4, "2": 5, "3": 6, "4": 7}
PATTERNS = ["0(12|3)[0-4]*", "(1|23)+4", "[0-4]{2}0{3}[1-4]*", "(01234)*"]  # forced runs, choices, an end


def grammar(pattern: str, vocab: int = 8):
    return compile_grammar(GrammarSpec.regex(pattern), TOKENIZER, vocab, (EOS,))


def text(ids) -> str:
    back = {v: k for k, v in DIGITS.items()}
    return "".join(back[t] for t in ids if t != EOS)


def allowed(state, path=()) -> set[int]:
    return set(state.mask(path).nonzero().flatten().tolist())


def test_a_state_masks_walks_and_forces():
    state = grammar("0(12|3)[0-4]*").state()
    assert allowed(state) == {DIGITS["0"]} and state.forced() == [DIGITS["0"]]
    assert allowed(state, [DIGITS["0"]]) == {DIGITS["1"], DIGITS["3"]}
    assert allowed(state, [DIGITS["0"], DIGITS["1"]]) == {DIGITS["2"]}
    assert state.valid([DIGITS[c] for c in "0124"]) == 4 and state.valid([DIGITS[c] for c in "04"]) == 1
    assert allowed(state) == {DIGITS["0"]}  # walking a path moved nothing
    state.advance([DIGITS[c] for c in "012"])
    assert allowed(state) == {EOS} | set(DIGITS.values())  # complete: it may end, or go on
    assert state.valid([DIGITS["4"], EOS, DIGITS["4"]]) == 2  # nothing after the end
    with pytest.raises(ConfigError, match="cannot be followed with this model's vocabulary"):
        state.advance([0])  # <unk>: outside the grammar (a request error, not a crash)


def test_end_tokens_only_where_the_grammar_may_end():
    state = grammar("(1|23)+4").state()
    assert EOS not in allowed(state)
    state.advance([DIGITS["1"], DIGITS["4"]])
    assert allowed(state) == {EOS}


@pytest.mark.parametrize("spec,problem", [
    (GrammarSpec.regex("(ab"), "unclosed group"),
    (GrammarSpec.lark("start: foo"), "unknown name"),
    (GrammarSpec("json_schema", '{"type": "objekt"}'), "objekt"),
    (GrammarSpec("json_schema", '{"properties": {"a": {"$ref": "#/nope"}}}'), "/nope"),
])
def test_bad_grammars_say_what_is_wrong(spec, problem):
    with pytest.raises(ConfigError, match=f"the {spec.kind.replace('_', ' ')} is invalid: .*{re.escape(problem)}"):
        compile_grammar(spec, TOKENIZER, 100, (EOS,))


def test_specs_are_checked_when_made():
    with pytest.raises(ConfigError, match="unknown grammar kind"):
        GrammarSpec("yaml", "a: 1")
    with pytest.raises(ConfigError, match="is empty"):
        GrammarSpec.regex("  ")
    with pytest.raises(ConfigError, match="not valid JSON"):
        GrammarSpec.json_schema("{type: object}")
    with pytest.raises(ConfigError, match="must be a JSON object"):
        GrammarSpec.json_schema("[1, 2]")

    class Pet:  # anything with pydantic's model_json_schema
        @staticmethod
        def model_json_schema():
            return {"type": "object", "properties": {"name": {"type": "string"}}}

    assert json.loads(GrammarSpec.json_schema(Pet).source)["properties"] == {"name": {"type": "string"}}


def test_drafts_are_cut_where_the_grammar_refuses_and_get_the_forced_tokens():
    shaper = Shaper(8, grammar=grammar("0(12|3)[0-4]*").state())
    d = {c: DIGITS[c] for c in DIGITS}
    # a tree: "0 1 2", "0 4" (refused at 4), "1" (refused at the root)
    draft = Draft((d["0"], d["1"], d["2"], d["4"], d["1"]), (-1, 0, 1, 0, -1))
    out = shaper.draft(draft, max_depth=8)
    assert out.tokens == (d["0"], d["1"], d["2"]) and out.parents == (-1, 0, 1)  # the forced "0" was there already
    assert shaper.draft(Draft.empty(), 8).tokens == (d["0"],)  # nothing proposed: the forced token alone
    assert shaper.draft(Draft.empty(), 0).tokens == ()  # no room
    plain = Shaper(8, grammar=grammar("0(12|3)[0-4]*").state(), forced_drafts=False)
    assert plain.draft(Draft.empty(), 8).tokens == ()


def test_each_row_is_masked_for_its_own_path():
    shaper = Shaper(8, grammar=grammar("0(12|3)[0-4]*").state())
    draft = Draft.chain([DIGITS["0"], DIGITS["1"]])
    rows = shaper.rows(torch.zeros(3, 8), draft)
    finite = [set(torch.isfinite(rows[i]).nonzero().flatten().tolist()) for i in range(3)]
    assert finite == [{DIGITS["0"]}, {DIGITS["1"], DIGITS["3"]}, {DIGITS["2"]}]
    assert torch.equal(rows[[0, 2]], torch.stack([rows[0], rows[2]]))


def run(method, options, m, prompt, cfg, seed=0):
    be = backend(m)
    gen = make_generator(seed)
    steps = list(decode(be, make_proposer(method, options, be, cfg, gen), prompt, cfg, gen))
    return [t for s in steps for t in s.tokens], steps


@settings(max_examples=50, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(seed=st.integers(0, 7), pattern=st.sampled_from(PATTERNS), prompt=st.lists(st.integers(3, 7), min_size=1, max_size=16),
       max_new=st.integers(1, 32), case=st.sampled_from(LOSSLESS_CASES))
def test_greedy_under_a_grammar_equals_constrained_ar(seed, pattern, prompt, max_new, case):
    m = model(seed, 8)
    cfg = GenerationConfig(max_new_tokens=max_new, eos_token_ids=(EOS,), grammar=grammar(pattern))
    want, _ = run("ar", {}, m, prompt, cfg)
    got, _ = run(*case, m, prompt, cfg)
    assert got == want
    assert grammar(pattern).state().valid(want) == len(want)  # the output follows the grammar
    if want and want[-1] == EOS:
        assert re.fullmatch(pattern, text(want))


def test_forced_tokens_are_drafted_and_accepted():
    m = model(1, 8)
    prompt = [4, 5, 6]
    base = GenerationConfig(max_new_tokens=12, eos_token_ids=(EOS,), grammar=grammar("0(12|3)0{6}[1-4]*"))
    out, steps = run("prompt_lookup", {}, m, prompt, base)
    plain, plain_steps = run("prompt_lookup", {}, m, prompt, GenerationConfig(
        max_new_tokens=12, eos_token_ids=(EOS,), grammar=base.grammar, forced_drafts=False))
    assert out == plain
    assert len(steps) < len(plain_steps)  # the six forced zeros came in one pass


@torch.no_grad()
def exact_shaped(m, prompt, make_shaper, length=3, eos=None):
    """P(t1..t_length | prompt) of shaped AR sampling at temperature 1, enumerated exactly (a
    sequence stops at ``eos``)."""
    probs = {(): 1.0}
    for _ in range(length):
        nxt = {}
        for seq, p in probs.items():
            if seq and seq[-1] == eos:  # ended
                nxt[seq] = p
                continue
            logits = m(input_ids=torch.tensor([prompt + list(seq)])).logits[0, -1]
            shaper = make_shaper()
            shaper.advance(list(seq))
            q = torch.softmax(shaper.shape(logits, ()), -1)
            for t in range(q.shape[0]):
                if q[t] > 0:
                    nxt[seq + (t,)] = p * float(q[t])
        probs = nxt
    return probs


def sample_counts(method, options, m, prompt, cfg, n):
    be = backend(m)
    gen = make_generator(2024)
    counts, accepted = {}, 0
    for _ in range(n):
        steps = list(decode(be, make_proposer(method, options, be, cfg, gen), prompt, cfg, gen))
        key = tuple(t for s in steps for t in s.tokens)
        counts[key] = counts.get(key, 0) + 1
        accepted += sum(s.stats.accepted - 1 for s in steps)
    return counts, accepted


@pytest.mark.parametrize("method,options", [("ar", {}), ("auto", {}), ("draft", {"k": 2})])
def test_sampling_under_a_grammar_has_the_constrained_distribution(method, options):
    m = model(4, 8)
    g = grammar("[0-4](12|3|4[0-4])[0-4]*")
    exact = exact_shaped(m, PROMPT, lambda: Shaper(8, grammar=g.state()), eos=EOS)
    cfg = GenerationConfig(max_new_tokens=3, sampling=SamplingConfig(1.0), eos_token_ids=(EOS,), grammar=g)
    # the sampled draft (the draft model's) is the case a wrong cut would bias: more runs there
    counts, accepted = sample_counts(method, options, m, PROMPT, cfg, 1500 if method == "draft" else 1000)
    assert chi_square_z(counts, exact) < Z_REJECT
    if method != "ar":
        assert accepted > 100, accepted


def test_generate_command_takes_the_structured_output_flags(tiny_dir, tmp_path):
    from typer.testing import CliRunner

    from polyverse.cli import app

    run = lambda *a: CliRunner().invoke(app, [str(x) for x in a])  # noqa: E731
    r = run("generate", "pick", "--model", tiny_dir, "--no-chat", "-n", 20, "--regex", "(ab|c)+[0-9]", "--json")
    assert r.exit_code == 0, r.output
    assert re.fullmatch("(ab|c)+[0-9]", json.loads(r.output.strip().splitlines()[-1])["text"])
    schema = tmp_path / "schema.json"
    schema.write_text(json.dumps({"type": "object", "properties": {"ok": {"type": "boolean"}}, "required": ["ok"],
                                  "additionalProperties": False}))
    r = run("generate", "pick", "--model", tiny_dir, "--no-chat", "-n", 20, "--json-schema", schema, "--json")
    assert r.exit_code == 0, r.output
    assert json.loads(json.loads(r.output.strip().splitlines()[-1])["text"]) in ({"ok": True}, {"ok": False})
    for args, words in [(("--regex", "(ab"), "regex is invalid"), (("--json-schema", tmp_path / "none.json"), "cannot read"),
                        (("--regex", "a", "--json-object"), "give one"), (("--presence-penalty", 3), "presence_penalty")]:
        bad = run("generate", "pick", "--model", tiny_dir, *args)
        assert bad.exit_code == 2 and words in bad.output and "Traceback" not in bad.output, bad.output


def test_states_of_one_grammar_walk_independently():
    g = grammar("0(12|3)[0-4]*")
    first, second = g.state(), g.state()  # copies of the grammar's warmed start
    first.advance([DIGITS["0"], DIGITS["1"]])
    assert allowed(first) == {DIGITS["2"]}
    assert allowed(second) == {DIGITS["0"]} and allowed(g.state()) == {DIGITS["0"]}
