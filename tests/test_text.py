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
