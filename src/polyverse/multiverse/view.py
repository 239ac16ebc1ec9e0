"""The terminal view of a Multiverse run: one panel per path as it grows, then the conclusion."""

from __future__ import annotations

from rich.console import Group
from rich.panel import Panel
from rich.text import Text

COLOURS = ("cyan", "magenta", "green", "yellow", "blue", "red", "bright_cyan", "bright_magenta")


def _tail(text: str, lines: int) -> str:
    rows = text.rstrip("\n").split("\n")
    return "\n".join(rows[-lines:])


def render(engine, lines: int = 6) -> Group:
    """Trunk (its latest lines), the paths of every block (each its own panel), in tree order."""
    tok = engine.tokenizer
    parts = []
    for br in engine.branches():
        start = engine.prompt_len if br.kind == "trunk" else 0
        text = tok.decode(br.tokens[start:], skip_special_tokens=True)
        if br.kind == "trunk":
            title, colour = "trunk", "white"
        else:
            title = f"path {br.number}  ({br.state}, {len(br.tokens)} tokens)"
            colour = COLOURS[(int(br.number.split(".")[-1]) - 1) % len(COLOURS)]
        indent = "  " * br.depth
        parts.append(Panel(Text(_tail(text, lines) or " ", style=colour), title=indent + title,
                           title_align="left", border_style=colour, expand=True))
    return Group(*parts)
