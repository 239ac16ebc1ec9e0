"""`polyverse generate --input prompts.jsonl --output out.jsonl`: every line's prompt decoded, many
at a time sharing each forward pass (``Model.generate_many``), written in the input's order (a
prompt that finishes early waits for the earlier ones).

Input lines are JSON objects with a ``prompt`` (text), ``question`` (text, as in GSM8K files) or
``messages`` (a chat), and an optional ``id`` (default: the line number). Output lines hold the id,
the text, token ids, finish reason and statistics. Rerunning the same command skips the ids
already in the output (a torn last line, from a killed run, is cut off first), so a long job resumes.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from ..errors import ConfigError
from ..offline.ordered import in_order


def read_prompts(path: Path) -> list[tuple[str, Any]]:
    """(id, prompt) per line of a JSONL file; a clear error naming the line for anything else."""
    if not path.exists():
        raise ConfigError(f"input file not found: {path}")
    out, seen = [], set()
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except ValueError as exc:
            raise ConfigError(f"{path}:{n}: not JSON ({exc})") from None
        if not isinstance(row, dict):
            raise ConfigError(f"{path}:{n}: expected a JSON object with a 'prompt', 'question' or 'messages'")
        prompt = row.get("prompt", row.get("question", row.get("messages")))
        ok_text = isinstance(prompt, str) and prompt.strip()
        ok_chat = isinstance(prompt, list) and prompt and all(isinstance(m, dict) and "content" in m for m in prompt)
        if not (ok_text or ok_chat):
            raise ConfigError(f"{path}:{n}: needs a non-empty 'prompt' or 'question' (text) or 'messages' (a chat)")
        rid = str(row.get("id", n))
        if rid in seen:
            raise ConfigError(f"{path}:{n}: id '{rid}' appears twice")
        seen.add(rid)
        out.append((rid, prompt))
    if not out:
        raise ConfigError(f"{path} holds no prompts")
    return out


def written_ids(path: Path) -> set[str]:
    """Ids already in the output (``train.distill.done_ids``: a torn last line is cut off first); a
    clear error when the file is not an output of this command."""
    from ..train.distill import done_ids

    try:
        return done_ids(path)
    except (ValueError, KeyError, TypeError):
        raise ConfigError(f"{path} holds lines that are not polyverse generate output (no 'id'): "
                          "name another --output") from None


def output_line(rid: str, gen) -> str:
    """One output line: the id, the text, token ids, finish reason and statistics."""
    row = {"id": rid, **gen.to_dict()}
    row["stats"].pop("accepted_per_pass", None)
    return json.dumps(row) + "\n"


def run(lm, rows: list[tuple[str, Any]], output: Path, concurrency: int, kwargs: dict, tick=None) -> dict:
    """Decode the rows whose ids are not in ``output`` yet, appending one line per finished prompt.
    Returns counts: written, skipped, and the tokens and seconds of this run."""
    import time

    done = written_ids(output)
    todo = [(rid, p) for rid, p in rows if rid not in done]
    counts = {"written": 0, "skipped": len(rows) - len(todo), "tokens": 0, "seconds": 0.0}
    if tick:
        tick(counts["skipped"], None)
    if not todo:
        return counts
    output.parent.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    with output.open("a", encoding="utf-8") as out:
        for i, gen in in_order(lm.generate_many([p for _, p in todo], concurrency=concurrency, **kwargs)):
            out.write(output_line(todo[i][0], gen))
            out.flush()
            os.fsync(out.fileno())
            counts["written"] += 1
            counts["tokens"] += len(gen.token_ids)
            if tick:
                tick(1, todo[i][0])
    counts["seconds"] = round(time.perf_counter() - t0, 2)
    return counts
