"""Incremental detokenisation with stop strings, for streaming text as tokens are accepted."""

from __future__ import annotations

from typing import Sequence


class TextStream:
    """Turns a growing list of token ids into text pieces safe to print, honouring stop strings.

    Text that could still turn into a stop string, or that ends in an incomplete UTF-8
    character, is held back until it is settled.

    Example: stop ("\\n\\n",), tokens decoding to "Hi\\n" then "Hi\\n\\nBye": the first push
    gives "Hi", the second gives "" and reports the stop, with text "Hi\\n" in all.
    """

    def __init__(self, tokenizer, stop: Sequence[str] = ()) -> None:
        self.tokenizer = tokenizer
        self.stop = tuple(stop)
        self.hold = max((len(s) for s in self.stop), default=1) - 1
        self.ids: list[int] = []
        self.text = ""
        self.emitted = 0
        self.stopped = False

    def _decode(self, ids: Sequence[int]) -> str:
        return self.tokenizer.decode(list(ids), skip_special_tokens=True)

    def push(self, tokens: Sequence[int], final: bool = False) -> str:
        """Add tokens; return the new text that is safe to show."""
        if self.stopped:
            return ""
        start = len(self.ids)
        self.ids.extend(int(t) for t in tokens)
        text = self._decode(self.ids)
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
