"""Multiverse curator: GSM8K rules, dependency detection, checks, the five LLM stages, files, LLM clients."""

import json
import socket
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from polyverse.multiverse.curate import (
    PROMPTS, CurateConfig, LLMError, LLMUnavailable, LocalLLM, RulesConfig, Sample, check, convert_text,
    curate_file, curate_sample, distance, make_llm, run_stages,
)
from polyverse.multiverse.curate.rules import NotConvertible, find_blocks
from polyverse.multiverse.curate.steps import dependencies, parse_solution, parse_step, question_numbers, uses
from polyverse.multiverse.grammar import validate

# --- rule-based conversion ---------------------------------------------------------------------

SHOP_Q = "Tom buys 3 pens at $2 each and 4 books at $5 each. He pays with $50. How much change does he get?"
SHOP_A = ("The pens cost 3*2 = $<<3*2=6>>6.\nThe books cost 4*5 = $<<4*5=20>>20.\n"
          "In total he spends 6+20 = $<<6+20=26>>26.\nHis change is 50-26 = $<<50-26=24>>24.\n#### 24")
SHOP_S = """<Think>
Let's think in parallel.
<Parallel>
<Goal>
<Outline>
1: The pens cost 3*2.
</Outline>
<Outline>
2: The books cost 4*5.
</Outline>
</Goal>
<Path>
1: The pens cost 3*2 = $6.
</Path>
<Path>
2: The books cost 4*5 = $20.
</Path>
<Conclusion>
In total he spends 6+20 = $26.
</Conclusion>
</Parallel>
His change is 50-26 = $24.
</Think>
#### 24"""

FARM_Q = ("A farm has 12 cows, 8 pigs and 5 horses. A cow eats 3 kg of hay a day, a pig 2 kg and a horse 6 kg. "
          "How much hay do they eat in a week?")
FARM_A = ("Every animal eats hay each day.\nThe cows eat 12 * 3 = <<12*3=36>>36 kg.\n"
          "The pigs eat 8 * 2 = <<8*2=16>>16 kg.\nThe horses eat <<5*6=30>>30 kg.\n"
          "In a day they eat 36 + 16 + 30 = <<36+16+30=82>>82 kg.\nIn a week they eat 82 * 7 = <<82*7=574>>574 kg.\n"
          "#### 574")
FARM_S = """<Think>
Every animal eats hay each day.
Let's think in parallel.
<Parallel>
<Goal>
<Outline>
1: The cows eat 12 * 3 kg.
</Outline>
<Outline>
2: The pigs eat 8 * 2 kg.
</Outline>
<Outline>
3: The horses eat 5*6 kg.
</Outline>
</Goal>
<Path>
1: The cows eat 12 * 3 = 36 kg.
</Path>
<Path>
2: The pigs eat 8 * 2 = 16 kg.
</Path>
<Path>
3: The horses eat 30 kg.
</Path>
<Conclusion>
In a day they eat 36 + 16 + 30 = 82 kg.
</Conclusion>
</Parallel>
In a week they eat 82 * 7 = 574 kg.
</Think>
#### 574"""

READ_Q = "Ann reads 20 pages a day for 3 days. Ben reads 15 pages a day for 4 days. By how much do they differ?"
READ_A = ("Ann reads 20 * 3 = <<20*3=60>>60 pages.\nBen reads 15 * 4 = <<15*4=60>>60 pages.\n"
          "They read the same number, so they differ by 0.\n#### 0")
READ_S = """<Think>
<Parallel>
<Goal>
<Outline>
1: Ann reads 20 * 3 pages.
</Outline>
<Outline>
2: Ben reads 15 * 4 pages.
</Outline>
</Goal>
<Path>
1: Ann reads 20 * 3 = 60 pages.
</Path>
<Path>
2: Ben reads 15 * 4 = 60 pages.
</Path>
<Conclusion>
So we have 60 pages and 60 pages.
</Conclusion>
</Parallel>
They read the same number, so they differ by 0.
</Think>
#### 0"""

NATALIA_Q = ("Natalia sold clips to 48 of her friends in April, and then she sold half as many clips in May. "
             "How many clips did Natalia sell altogether in April and May?")
NATALIA_A = ("Natalia sold 48/2 = <<48/2=24>>24 clips in May.\n"
             "Natalia sold 48+24 = <<48+24=72>>72 clips altogether in April and May.\n#### 72")


@pytest.mark.parametrize("question, answer, expected, cfg", [
    (SHOP_Q, SHOP_A, SHOP_S, RulesConfig()),
    (FARM_Q, FARM_A, FARM_S, RulesConfig()),
    (READ_Q, READ_A, READ_S, RulesConfig(cue="")),
])
def test_rules_exact_text(question, answer, expected, cfg):
    text = convert_text(question, answer, cfg)
    assert text == expected
    assert validate(text) == []
    assert distance(parse_solution(answer).text, text) == 0.0


def test_rules_reject_a_chain():
    with pytest.raises(NotConvertible, match="^no independent steps$"):
        convert_text(NATALIA_Q, NATALIA_A)


# --- dependency detection ----------------------------------------------------------------------

ROQUE_Q = "It takes Roque two hours to walk to work and one hour to bike. He walks three times a week."
ROQUE_A = ("He walks 2*3 = <<2*3=6>>6 hours.\nBoth ways that is 6*2 = <<6*2=12>>12 hours.\n"
           "He bikes 1*2 = <<1*2=2>>2 hours.\nBoth ways that is 2*2 = <<2*2=4>>4 hours.\n"
           "In total 12+4 = <<12+4=16>>16 hours.\n#### 16")


def test_step_numbers():
    s = parse_step("Thus, Alexis paid S = 184 - 143 = $<<184-143=41>>41 for the shoes.")
    assert s.text == "Thus, Alexis paid S = 184 - 143 = $41 for the shoes."
    assert s.computed == {"41"} and s.used == {"184", "143"}  # "= 184 - ..." starts an expression
    f = parse_step("Then 3 * 1/4 = 3/4 of the tank is full, 1,200.0 litres")
    assert f.computed == {"3/4"} and {"1/4", "3", "1200"} <= f.used and "4" not in f.computed


def test_dependencies():
    steps = parse_solution(ROQUE_A).steps
    assert dependencies(steps, frozenset()) == ({*()}, {0}, {*()}, {2}, {1, 3})
    given = question_numbers(ROQUE_Q)  # "two" -> 2: the question states 2 as well
    assert "2" in given and "3" in given
    assert dependencies(steps, given) == ({*()}, {0}, {*()}, {*()}, {1, 3})
    assert uses(steps) == dependencies(steps, frozenset())
    # default: every use of an earlier result counts, so 1*2 = 2 and 2*2 don't share a block
    order = find_blocks(steps, uses(steps), uses(steps))
    assert order[0] == 0 and order[2:] == [3, 4]
    assert order[1].steps == (1, 2) and order[1].conclusion is None  # step 4 uses only one of them
    # the brief's rule (question numbers are given) joins steps 2 and 3: a wrong block
    loose = [b.steps for b in find_blocks(steps, dependencies(steps, given), uses(steps)) if not isinstance(b, int)]
    assert loose == [(1, 2, 3)]
    assert convert_text(ROQUE_Q, ROQUE_A).count("<Path>") == 2  # convert() uses the default rule
    assert convert_text(ROQUE_Q, ROQUE_A, RulesConfig(question_given=True)).count("<Path>") == 3


# --- content and grammar checks ----------------------------------------------------------------

def test_distance_check_accepts_faithful_and_rejects_altered():
    original = parse_solution(SHOP_A).text
    assert check(original, SHOP_S, 0.35).ok
    light = SHOP_S.replace("His change is", "So his change is")  # a small edit: kept, distance > 0
    v = check(original, light, 0.35)
    assert v.ok and 0 < v.distance < 0.1
    altered = SHOP_S.replace("1: The pens cost 3*2 = $6.", "1: A pen is a writing tool; three of them are here.") \
                    .replace("2: The books cost 4*5 = $20.", "2: Books are bound sheets of printed paper to read.")
    v = check(original, altered, 0.35)
    assert not v.ok and v.reason.startswith("content distance ") and v.reason.endswith(" > 0.35")
    assert float(v.reason.split()[2]) == pytest.approx(v.distance, abs=0.01) and v.distance > 0.35
    # Goal outlines and a summary conclusion are not content: changing them changes nothing
    assert distance(original, SHOP_S.replace("1: The pens cost 3*2.", "1: whatever")) == 0.0


def test_grammar_invalid_is_rejected_with_the_grammar_reason():
    broken = SHOP_S.replace("</Path>\n<Path>\n2:", "<Path>\n2:", 1)
    v = check(parse_solution(SHOP_A).text, broken, 0.35)
    assert not v.ok and v.reason.startswith("grammar: line ") and "unclosed-tag" in v.reason
    assert check("some text", "<Think>\nsome text\n</Think>", 0.35).reason == "no parallel block"


# --- the five LLM stages with a scripted LLM ---------------------------------------------------

ROOMS = ("We need the area of both rooms.\nThe kitchen is 3 by 4, so its area is 12.\n"
         "The hall is 2 by 5, so its area is 10.\nTogether that makes 22 square meters.")
ROOMS_FINAL = """<Think>
We need the area of both rooms.
<Parallel>
<Goal>
<Outline>
1: Find the kitchen's area.
</Outline>
<Outline>
2: Find the hall's area.
</Outline>
</Goal>
<Path>
1: The kitchen is 3 by 4, so its area is 12.
</Path>
<Path>
2: The hall is 2 by 5, so its area is 10.
</Path>
<Conclusion>
The two areas are 12 and 10.
</Conclusion>
</Parallel>
Together that makes 22 square meters.
</Think>"""
ROOMS_REPLIES = {
    1: "1. Both areas are needed\n2. Kitchen area 12\n3. Hall area 10\n4. Sum 22",
    2: "1: needs none\n2: needs none\n3: needs none\n4: needs 2, 3\nIndependent groups: {2, 3}",
    3: "```\nBoth areas are needed\n<Parallel>\n<Path>\n1: Kitchen area 12\n</Path>\n<Path>\n2: Hall area 10\n"
       "</Path>\n</Parallel>\nSum 22\n```",
    4: ("We need the area of both rooms.\n<Parallel>\n<Path>\n1: The kitchen is 3 by 4, so its area is 12.\n</Path>\n"
        "<Path>\n2: The hall is 2 by 5, so its area is 10.\n</Path>\n</Parallel>\n"
        "Together that makes 22 square meters."),
    5: "Here is the final text:\n\n" + ROOMS_FINAL + "\n",
}


class ScriptedLLM:
    """Replies by stage number (read from the prompt), recording every prompt; ``None`` -> raise."""

    def __init__(self, replies, error=None):
        self.replies, self.error, self.prompts = replies, error, []

    def complete(self, prompt: str, max_tokens: int) -> str:
        self.prompts.append(prompt)
        if self.error is not None:
            raise self.error
        stage = int(prompt.split("stage ", 1)[1][0])
        reply = self.replies(prompt) if callable(self.replies) else self.replies
        return reply[stage]


def test_five_stages_chain_their_outputs():
    llm = ScriptedLLM(ROOMS_REPLIES)
    trace = run_stages(llm, ROOMS, "What is the total area?")
    assert [name for name, _ in trace.outputs] == [name for name, _ in PROMPTS] and len(llm.prompts) == 5
    assert ROOMS in llm.prompts[0] and "What is the total area?" in llm.prompts[0]
    for i in range(1, 5):  # each prompt holds the previous stage's (cleaned) output
        assert trace.outputs[i - 1][1] in llm.prompts[i]
    assert "```" not in llm.prompts[3] and ROOMS in llm.prompts[3]  # refill sees the original too
    assert trace.final == ROOMS_FINAL
    out = curate_sample(Sample("r", ROOMS, None, ROOMS), llm)
    assert (out.method, out.structured, out.reason) == ("llm", ROOMS_FINAL, None) and out.distance < 0.01


def test_invalid_llm_output_falls_back_to_rules_or_is_rejected():
    bad = {**ROOMS_REPLIES, 5: ROOMS_FINAL.replace("</Path>\n<Conclusion>", "<Conclusion>")}
    out = curate_sample(Sample("r", ROOMS, None, ROOMS), ScriptedLLM(bad))
    assert out.method is None and out.reason.startswith("grammar: line ") and out.structured is not None
    gsm = Sample("g", parse_solution(SHOP_A).text, SHOP_Q, SHOP_A, True)
    out = curate_sample(gsm, ScriptedLLM(bad))
    assert (out.method, out.structured) == ("rules", SHOP_S)
    out = curate_sample(gsm, ScriptedLLM(bad, error=LLMError("timed out")))
    assert out.method == "rules"
    chain = Sample("n", parse_solution(NATALIA_A).text, NATALIA_Q, NATALIA_A, True)
    out = curate_sample(chain, ScriptedLLM(bad))
    assert out.method is None and out.reason.startswith("llm: grammar: line ") \
        and out.reason.endswith("; rules: no independent steps")
    with pytest.raises(LLMUnavailable):
        curate_sample(gsm, ScriptedLLM(bad, error=LLMUnavailable("down")))
    out = curate_sample(Sample("r", ROOMS, None, ROOMS), ScriptedLLM(bad, error=LLMError("no answer in 5 s")))
    assert (out.method, out.structured, out.reason) == (None, None, "no answer in 5 s")


# --- curate_file end to end --------------------------------------------------------------------

def _jsonl(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_curate_file_end_to_end(tmp_path):
    src = tmp_path / "seq.jsonl"
    rows = [{"question": SHOP_Q, "answer": SHOP_A}, {"id": "rooms", "text": ROOMS},
            {"question": NATALIA_Q, "answer": NATALIA_A}]
    src.write_text("\n".join(json.dumps(r) for r in rows) + "\n{not json\n" + json.dumps({"id": "x", "q": 1}) + "\n")
    bad = {1: "1. a step", 2: "Independent groups: none", 3: "a step", 4: "a step",
           5: "<Think>\nno structure here\n</Think>"}
    llm = ScriptedLLM(lambda prompt: ROOMS_REPLIES if "kitchen" in prompt else bad)
    out, rej, seen = tmp_path / "out.jsonl", tmp_path / "rej.jsonl", []
    report = curate_file(src, out, rej, llm, progress=lambda n, sid, status: seen.append((n, sid, status)))
    assert _jsonl(out) == [
        {"id": "1", "question": SHOP_Q, "original": parse_solution(SHOP_A).text, "structured": SHOP_S,
         "method": "rules", "distance": 0.0},
        {"id": "rooms", "original": ROOMS, "structured": ROOMS_FINAL, "method": "llm",
         "distance": round(distance(ROOMS, ROOMS_FINAL), 4)},
    ]
    rejects = _jsonl(rej)
    assert [r["id"] for r in rejects] == ["3", "4", "x"]
    assert rejects[0] == {"id": "3", "original": parse_solution(NATALIA_A).text,
                          "structured": "<Think>\nno structure here\n</Think>",
                          "reason": "llm: no parallel block; rules: no independent steps"}
    assert rejects[1]["structured"] is None and rejects[1]["reason"].startswith("bad row (line 4): not valid JSON")
    assert rejects[2]["reason"] == "bad row (line 5): no non-empty 'text', nor 'question' with 'answer'"
    assert (report.read, report.structured, report.rejected, report.skipped) == (5, 2, 3, 0)
    assert report.methods == {"rules": 1, "llm": 1} and seen[1] == (2, "rooms", "llm")
    # resumed: every id is done, nothing is written twice; a limit stops early
    again = curate_file(src, out, rej, llm, limit=2)
    assert (again.read, again.skipped, again.structured) == (2, 2, 0) and len(_jsonl(out)) == 2
    # rules only: the free-text row cannot be converted without an LLM
    only = curate_file(src, tmp_path / "o2.jsonl", tmp_path / "r2.jsonl", None, threshold=0.2)
    assert only.methods == {"rules": 1}
    assert _jsonl(tmp_path / "r2.jsonl")[0]["reason"].startswith("not GSM8K-like")


def test_curate_file_stops_when_the_llm_is_unavailable(tmp_path):
    src = tmp_path / "seq.jsonl"
    src.write_text(json.dumps({"question": SHOP_Q, "answer": SHOP_A}) + "\n")
    with pytest.raises(LLMUnavailable):
        curate_file(src, tmp_path / "o.jsonl", tmp_path / "r.jsonl", ScriptedLLM({}, error=LLMUnavailable("down")))
    with pytest.raises(ValueError, match="threshold"):
        curate_file(src, tmp_path / "o.jsonl", tmp_path / "r.jsonl", None, threshold=0)
    with pytest.raises(ValueError, match="different"):
        curate_file(src, src, tmp_path / "r.jsonl", None)


# --- LLM clients -------------------------------------------------------------------------------

class _Handler(BaseHTTPRequestHandler):
    seen: list = []

    def _send(self, code, body):
        data = json.dumps(body).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self):
        self.seen.append(("GET", self.path, None))
        if self.path == "/v1/models":
            return self._send(200, {"object": "list", "data": [
                {"id": "fake-model", "object": "model", "created": 0, "owned_by": "test"}]})
        self._send(404, {"error": {"message": "no such route"}})

    def do_POST(self):
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        self.seen.append(("POST", self.path, body))
        if self.path != "/v1/chat/completions":
            return self._send(404, {"error": {"message": "no such route"}})
        if body["messages"][0]["content"] == "fail":
            return self._send(500, {"error": {"message": "boom"}})
        self._send(200, {
            "id": "c1", "object": "chat.completion", "created": 0, "model": body["model"],
            "choices": [{"index": 0, "finish_reason": "stop",
                         "message": {"role": "assistant", "content": "echo: " + body["messages"][0]["content"]}}],
            "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2},
        })

    def log_message(self, *args):
        pass


@pytest.fixture
def server():
    _Handler.seen = []
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()
    httpd.server_close()


def test_openai_client_against_a_local_server(server):
    llm = make_llm(server + "/v1", max_retries=0)
    assert llm.complete("hello", 50) == "echo: hello"
    (_, models_path, _), (_, chat_path, body) = _Handler.seen
    assert models_path == "/v1/models" and chat_path == "/v1/chat/completions"
    assert body["model"] == "fake-model" and body["max_tokens"] == 50 and body["temperature"] == 0.0
    named = make_llm(server + "#chosen", max_retries=0)  # a bare host gets /v1; the model is named
    assert named.complete("hi", 5) == "echo: hi" and _Handler.seen[-1][2]["model"] == "chosen"
    with pytest.raises(LLMError, match="answered 500") as exc:
        named.complete("fail", 5)
    assert not isinstance(exc.value, LLMUnavailable)


def test_openai_client_dead_url_gives_a_clear_error():
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    llm = make_llm(f"http://127.0.0.1:{port}/v1#m", timeout=5, max_retries=0)
    with pytest.raises(LLMUnavailable, match=rf"cannot reach the LLM endpoint http://127\.0\.0\.1:{port}/v1"):
        llm.complete("hello", 5)
    with pytest.raises(ValueError):
        make_llm("   ")


def test_local_llm_loads_lazily(tiny_dir):
    llm = make_llm(str(tiny_dir))
    assert isinstance(llm, LocalLLM) and llm._model is None and llm.method == "auto"
    llm = LocalLLM(str(tiny_dir), method="ar")  # "ar": the first "auto" call costs seconds on CPU
    text = llm.complete("2+2=", 4)
    assert isinstance(text, str) and llm._model is not None
    with pytest.raises(LLMError, match="local model .* failed"):
        llm.complete("2+2=", -1)


def test_config_validation():
    with pytest.raises(ValueError):
        CurateConfig(threshold=1.5)
    with pytest.raises(ValueError):
        RulesConfig(min_paths=1)


def test_docstring_examples():
    import doctest

    from polyverse.multiverse.curate import checks, llm, rules, steps

    for module in (checks, llm, rules, steps):
        assert doctest.testmod(module).failed == 0, module.__name__
