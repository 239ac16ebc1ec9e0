"""``curate_file``: a JSONL of sequential chains of thought -> structured rows and rejected rows.

Output row: ``{"id", "question" (if any), "original", "structured", "method": "llm"|"rules", "distance"}``;
reject row: ``{"id", "original", "structured" (or null), "reason"}``. Ids already in either file are
skipped, so a stopped run goes on where it stopped.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Callable

from ...errors import ConfigError
from .llm import LLM
from .pipeline import CurateConfig, Outcome, Sample, curate_sample, sample_from_row

Progress = Callable[[int, str, str], None]  # (rows read so far, row id, "llm"|"rules"|"rejected"|"skipped")


@dataclass(frozen=True)
class CurateReport:
    """Counts of one run: rows read, skipped (already done), structured (by method) and rejected
    (by reason, numbers in the reason shown as N)."""

    read: int = 0
    skipped: int = 0
    structured: int = 0
    rejected: int = 0
    methods: dict[str, int] = field(default_factory=dict)
    reasons: dict[str, int] = field(default_factory=dict)

    def line(self) -> str:
        """``"read 500 (skipped 0): 206 structured (rules 206), 294 rejected (no independent steps 294)"``"""
        by = ", ".join(f"{k} {v}" for k, v in sorted(self.methods.items()))
        why = ", ".join(f"{k} {v}" for k, v in sorted(self.reasons.items(), key=lambda kv: -kv[1]))
        return (f"read {self.read} (skipped {self.skipped}): {self.structured} structured ({by or 'none'}), "
                f"{self.rejected} rejected ({why or 'none'})")


def reason_kind(reason: str) -> str:
    """A reason with its numbers masked, for counting: ``"content distance N > N"``."""
    return re.sub(r"\d+(?:\.\d+)?", "N", reason)[:80]


def done_ids(*paths: Path) -> set[str]:
    """Ids of the rows already in these JSONL files (missing files and bad lines are ignored)."""
    ids: set[str] = set()
    for path in paths:
        if not path.is_file():
            continue
        for line in path.read_text(encoding="utf-8").splitlines():
            try:
                row = json.loads(line)
            except json.JSONDecodeError:
                continue
            if isinstance(row, dict) and "id" in row:
                ids.add(str(row["id"]))
    return ids


def _row(sample_id: str, question, original: str, out: Outcome) -> dict:
    if out.method:
        row = {"id": sample_id, **({"question": question} if question else {}), "original": original,
               "structured": out.structured, "method": out.method, "distance": round(out.distance or 0.0, 4)}
        return row
    return {"id": sample_id, "original": original, "structured": out.structured, "reason": out.reason}


def _read(line: str, n: int) -> tuple[str, Sample | None, str | None]:
    """(id, sample, None) of one JSONL line, or (id or line number, None, what is wrong)."""
    try:
        row = json.loads(line)
    except json.JSONDecodeError as exc:
        return str(n), None, f"not valid JSON ({exc.msg})"
    try:
        sample = sample_from_row(row, n)
    except ValueError as exc:
        return str(row.get("id", n)) if isinstance(row, dict) else str(n), None, str(exc)
    return sample.id, sample, None


def curate_file(in_path, out_path, rejects_path, llm: LLM | None, *, threshold: float = 0.35,
                limit: int | None = None, progress: Progress | None = None,
                config: CurateConfig | None = None) -> CurateReport:
    """Curate the first ``limit`` rows (None: all) of ``in_path``, appending to ``out_path`` and
    ``rejects_path``; ``llm`` None uses the rules only. See ``pipeline.curate_sample``."""
    src, out_p, rej_p = Path(in_path), Path(out_path), Path(rejects_path)
    cfg = replace(config or CurateConfig(), threshold=threshold)
    if not src.is_file():
        raise ConfigError(f"input file not found: {src}")
    if len({src.resolve(), out_p.resolve(), rej_p.resolve()}) < 3:
        raise ConfigError("the input, output and rejects files must be three different files")
    if limit is not None and limit < 1:
        raise ConfigError(f"limit must be at least 1, got {limit}")
    seen = done_ids(out_p, rej_p)
    counts, methods, reasons = Counter(), Counter(), Counter()
    for p in (out_p, rej_p):
        p.parent.mkdir(parents=True, exist_ok=True)
    with src.open(encoding="utf-8") as fin, out_p.open("a", encoding="utf-8") as fout, \
            rej_p.open("a", encoding="utf-8") as frej:
        for n, line in enumerate(fin, 1):
            if not line.strip():
                continue
            if limit is not None and counts["read"] >= limit:
                break
            counts["read"] += 1
            sid, sample, error = _read(line, n)
            if sid in seen:
                counts["skipped"] += 1
                status = "skipped"
            else:
                if sample is None:
                    outcome = Outcome(None, None, None, f"bad row (line {n}): {error}")
                else:
                    outcome = curate_sample(sample, llm, cfg)
                original = sample.original if sample else line.strip()
                rec = _row(sid, sample.question if sample else None, original, outcome)
                (fout if outcome.method else frej).write(json.dumps(rec, ensure_ascii=False) + "\n")
                (fout if outcome.method else frej).flush()
                seen.add(sid)
                if outcome.method:
                    counts["structured"] += 1
                    methods[outcome.method] += 1
                    status = outcome.method
                else:
                    counts["rejected"] += 1
                    reasons[reason_kind(outcome.reason or "")] += 1
                    status = "rejected"
            if progress is not None:
                progress(counts["read"], sid, status)
    return CurateReport(counts["read"], counts["skipped"], counts["structured"], counts["rejected"],
                        dict(methods), dict(reasons))
