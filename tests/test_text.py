from polyverse.models.tiny import char_tokenizer
from polyverse.text import TextStream


def ids(s):
    return char_tokenizer()(s)["input_ids"]


def test_stream_without_stop_emits_everything():
    ts = TextStream(char_tokenizer())
    out = ts.push(ids("Hello")) + ts.push(ids(" world"), final=True)
    assert out == "Hello world" and ts.text == "Hello world"


def test_stop_string_cuts_text_and_tokens():
    ts = TextStream(char_tokenizer(), stop=["END"])
    out = ts.push(ids("abc E"))
    assert out == "abc"  # "E" is held back: it may start the stop string
    out += ts.push(ids("NDxyz"))
    assert ts.stopped
    assert out == "abc " and ts.text == "abc "
    # tokens kept up to the one that completed the stop string
    assert char_tokenizer().decode(ts.ids) == "abc END"


def test_stop_string_across_steps_not_emitted():
    ts = TextStream(char_tokenizer(), stop=["\n\n"])
    pieces = [ts.push(ids("Hi\n")), ts.push(ids("\nBye"))]
    assert "".join(pieces) == "Hi" and ts.stopped


def test_held_text_released_at_the_end():
    ts = TextStream(char_tokenizer(), stop=["XYZ"])
    assert ts.push(ids("abcX")) == "ab"
    assert ts.push(ids("Y"), final=True) == "cXY"


def test_incremental_text_is_the_whole_decode_at_every_step(bundled):
    """The bundled (byte-level) tokenizer decodes step by step, not the whole output again each
    time: the text shown so far is always a prefix of the whole decode, characters split over
    tokens (accents, emoji, CJK) included, and the last push gives exactly the whole decode."""
    tok = bundled.tokenizer
    text = "Ducks: 16 - 3 - 4 = 9 eggs, $18 a day. Café, naïve, 日本語 🙂🦆 done."
    ids = tok.encode(text, add_special_tokens=False)
    ts = TextStream(tok)
    assert ts._step is not None  # the incremental path is the one tested
    shown = ""
    for i, t in enumerate(ids):
        shown += ts.push([t], final=i == len(ids) - 1)
        assert tok.decode(ids[: i + 1]).startswith(shown)
    assert shown == ts.text == tok.decode(ids) == text


def test_text_read_only_at_the_end_is_decoded_once_without_stop_strings():
    ts = TextStream(char_tokenizer(), pieces=False)
    assert ts.push(ids("Hello")) == "" and ts.settled() == "Hello"  # settled decodes what was pushed
    assert ts.push(ids(" world")) == "" and ts.push(ids("!"), final=True) == "Hello world!"
    assert ts.text == ts.settled() == "Hello world!"
    eager = TextStream(char_tokenizer(), stop=["END"], pieces=False)  # stop strings need the text each step
    eager.push(ids("abc ENDxyz"))
    assert eager.stopped and eager.settled() == "abc "


def test_generate_and_stream_give_the_same_text(tiny):
    streamed = tiny.stream("abc", max_new_tokens=12, temperature=1.0, seed=5)
    pieces = "".join(c.text for c in streamed)
    whole = tiny.generate("abc", max_new_tokens=12, temperature=1.0, seed=5)
    assert pieces == streamed.result().text == whole.text and len(whole.token_ids) > 3
