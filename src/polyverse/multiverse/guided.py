"""Training-free Multiverse for any instruct model: the engine writes the structure itself.

The engine forces every tag where the grammar leaves no choice and asks the model only for
content: the outline texts, the paths and the conclusion. Where the grammar does leave a choice
(another ``<Outline>`` or ``</Goal>``) the model picks between the two, constrained to them,
unless ``paths`` fixes the count. The instruction asks for a plan of independent parts; it goes
into the prompt (``instruction``), so the request the model sees is an ordinary chat.

Trunk states: "outline" (writing outline text, up to a newline or ``outline_tokens``), "choose"
(next outline or end of Goal). Paths end at ``</Path>``, at end-of-text or at the path budget;
the Conclusion ends at ``</Conclusion>`` or end-of-text, and then the answer is complete.
"""

from __future__ import annotations

INSTRUCTION = (
    "Plan first, then answer. Split the task into independent parts that can be worked on "
    "separately, one short line per part. Then work on each part on its own. Then combine the "
    "parts into the final answer."
)
START = "<Parallel>\n<Goal>\n<Outline>\n1:"


def instruction(prompt: str) -> list[dict]:
    """The chat messages of a guided request."""
    return [{"role": "system", "content": INSTRUCTION}, {"role": "user", "content": prompt}]


def start(engine, trunk) -> None:
    """Open the block: the model goes on with the text of outline 1."""
    engine.force(trunk, START)
    trunk.guide = "outline"
    trunk.notes.update(outlines=1, outline_start=len(trunk.tokens))


def on_token(engine, br, tok: int) -> bool:
    """Guided handling of a chosen token; False leaves it to the engine's ordinary rules."""
    if br.guide == "outline":
        engine.push(br, [tok])
        text = engine.tokenizer.decode(br.tokens[br.notes["outline_start"]:], skip_special_tokens=True)
        too_long = len(br.tokens) - br.notes["outline_start"] >= engine.cfg.outline_tokens
        if "\n" in text and text.strip() or too_long:
            engine.force(br, "</Outline>\n" if text.endswith("\n") else "\n</Outline>\n")
            _next(engine, br)
        return True
    if br.guide == "choose":
        more, done = br.notes["choices"]
        if tok == more[0]:
            engine.push(br, more)
            _open_outline(engine, br)
        else:
            engine.push(br, done)
            _end_goal(engine, br)
        return True
    return False


def _next(engine, br) -> None:
    """After an outline: another one, or the end of the Goal (chosen by the model when free)."""
    n, cfg = br.notes["outlines"], engine.cfg
    if cfg.paths:
        more = n < cfg.paths
    elif n < cfg.min_paths:
        more = True
    elif n >= min(cfg.max_paths, cfg.choose_max):
        more = False
    else:
        more_ids = engine.ids(f"<Outline>\n{n + 1}:")
        done_ids = engine.ids("</Goal>")
        if more_ids[0] != done_ids[0]:
            br.guide, br.allowed = "choose", (more_ids[0], done_ids[0])
            br.notes["choices"] = (more_ids, done_ids)
            return
        more = False  # the two cannot be told apart by one token: stop at the minimum
    if more:
        engine.force(br, f"<Outline>\n{n + 1}:")
        _open_outline(engine, br)
    else:
        engine.force(br, "</Goal>")
        _end_goal(engine, br)


def _open_outline(engine, br) -> None:
    br.guide = "outline"
    br.notes["outlines"] += 1
    br.notes["outline_start"] = len(br.tokens)


def _end_goal(engine, br) -> None:
    br.guide = "paths"
    if not engine.fork(br):  # more outlines than max_paths cannot happen here; depth 0 can
        br.guide = ""
