"""Incremental detokenisation with stop strings, for streaming text as tokens are accepted."""

from __future__ import annotations

from typing import Sequence


def decode_stream(tokenizer):
    """An incremental decoder for a fast tokenizer (``tokenizers.decoders.DecodeStream``: each id's
    new text from the last few ids, not the whole output decoded again at every step), or None where
    the tokenizer is not one (then every push decodes all ids)."""
    core = getattr(tokenizer, "_tokenizer", None)
    try:
        from tokenizers import Tokenizer
        from tokenizers.decoders import DecodeStream
    except ImportError:
        return None
    if not isinstance(core, Tokenizer) or getattr(tokenizer, "clean_up_tokenization_spaces", False):
        return None
    stream = DecodeStream(skip_special_tokens=True)
    return lambda token: stream.step(core, token)


class TextStream:
    """Turns a growing list of token ids into text pieces safe to print, honouring stop strings.

    Text that could still turn into a stop string, or that ends in an incomplete UTF-8
    character, is held back until it is settled.

    Example: stop ("\\n\\n",), tokens decoding to "Hi\\n" then "Hi\\n\\nBye": the first push
    gives "Hi", the second gives "" and reports the stop, with text "Hi\\n" in all.
    """

    def __init__(self, tokenizer, stop: Sequence[str] = (), pieces: bool = True) -> None:
        """``pieces`` False: no one reads the text before the end (``Stream.result``), so without stop
        strings the ids are decoded once, at the final push."""
        self.tokenizer = tokenizer
        self.lazy = not pieces and not stop
        self._behind = False  # ids pushed lazily that ``text`` does not show yet
        self.stop = tuple(stop)
        self.hold = max((len(s) for s in self.stop), default=1) - 1
        self.ids: list[int] = []
        self.text = ""
        self.emitted = 0
        self.stopped = False
        self._step = decode_stream(tokenizer)
        self._decoded = ""  # the settled text of every id so far (with ``_step``)

    def settled(self) -> str:
        """The text of every id pushed so far (decoded now where the pushes were lazy)."""
        if self._behind:
            self.text, self._behind = self._decode(self.ids), False
        return self.text

    def _decode(self, ids: Sequence[int]) -> str:
        return self.tokenizer.decode(list(ids), skip_special_tokens=True)

    def push(self, tokens: Sequence[int], final: bool = False) -> str:
        """Add tokens; return the new text that is safe to show."""
        if self.stopped:
            return ""
        start = len(self.ids)
        new = [int(t) for t in tokens]
        self.ids.extend(new)
        self._behind = self.lazy and not final
        if self._behind:
            return ""
        if self._step is None or final:  # the last text is always the whole decode
            text = self._decode(self.ids)
        else:  # text still short of a whole character is not in _decoded yet: held back as before
            self._decoded += "".join(self._step(t) or "" for t in new)
            text = self._decoded
        hit = self._find_stop(text)
        if hit is not None:
            at, length = hit
            text = text[:at]
            self.stopped = True
            # keep the tokens up to the one that completed the stop string
            for m in range(start + 1, len(self.ids) + 1):
                if len(self._decode(self.ids[:m])) >= at + length:
                    del self.ids[m:]
                    break
        self.text = text
        end = len(text)
        if not (final or self.stopped):
            end = max(self.emitted, end - self.hold)
            while end > self.emitted and text[end - 1] == "\ufffd":
                end -= 1
        piece = text[self.emitted : end]
        self.emitted = end
        return piece

    def _find_stop(self, text: str) -> tuple[int, int] | None:
        """(index, length) of the earliest stop string in the unsettled text, if any."""
        begin = max(0, self.emitted - self.hold)
        hits = [(text.find(s, begin), len(s)) for s in self.stop]
        hits = [h for h in hits if h[0] >= 0]
        return min(hits) if hits else None
