"""vLLM rows of `polyverse bench`: vLLM greedy, vLLM's n-gram speculation, and vLLM with polyverse's
proposer (``integrations.vllm``), on the bench's own prompts (as token ids), in vLLM's environment.

vLLM cannot be imported next to polyverse's transformers, so each row is one job of
``integrations.vllm_job`` run by the vLLM environment's python: the prompts one at a time (the
rows of the table, ratios against the run's baseline like every row), then a batch of
``batch`` prompts submitted together (where a proposer must back off). The rows are run before
the in-process contenders and replayed to the table; greedy output of the speculative rows is
checked against vLLM greedy's, token for token.
"""

from __future__ import annotations

import json
import os
import subprocess
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

from ..errors import ConfigError, PolyverseError
from .contenders import Contender, Run
from .data import BenchSet
from .vllm_server import log_tail

GREEDY = "vllm"
# vLLM's documented n-gram set-up (5 tokens, suffixes of up to 4) and polyverse's proposer with room
# for long drafts (it sizes them itself)
SPECULATIVE = {
    "vllm ngram": {"method": "ngram", "num_speculative_tokens": 5, "prompt_lookup_max": 4},
    "vllm + polyverse auto": {"method": "custom_class", "model": "polyverse.integrations.vllm.Auto",
                              "num_speculative_tokens": 8},
}
BATCH = 16


@dataclass(frozen=True)
class ReplayedPeer(Contender):
    """A row whose runs were made elsewhere (another process): replayed per prompt."""

    runs: dict = field(default_factory=dict, compare=False)  # prompt token ids -> Run

    def run(self, model, ids: list[int], max_new_tokens: int, temperature: float = 0.0, seed: int = 0) -> Run:
        try:
            return self.runs[tuple(ids)]
        except KeyError:
            raise PolyverseError(f"row '{self.name}' has no run for a prompt of {len(ids)} tokens") from None


def run_job(python: Path, job: dict, threads: str = "0-1", kv_gib: int = 2, timeout: float = 3600.0) -> dict:
    """One job in vLLM's environment; its result, or a clear error with the log's tail."""
    if not Path(python).exists():
        raise ConfigError(f"no vLLM environment: {python} does not exist (create it with `make vllm-env`)")
    work = Path(tempfile.mkdtemp(prefix="polyverse-vllm-job-"))
    (work / "job.json").write_text(json.dumps(job))
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    env.update(VLLM_CPU_KVCACHE_SPACE=str(kv_gib), VLLM_CPU_OMP_THREADS_BIND=threads, HF_HUB_OFFLINE="1", NO_COLOR="1")
    log = work / "vllm.log"
    with open(log, "w") as out:
        try:
            rc = subprocess.run([str(python), "-m", "polyverse.integrations.vllm_job", str(work / "job.json"),
                                 str(work / "out.json")], stdout=out, stderr=subprocess.STDOUT, env=env,
                                stdin=subprocess.DEVNULL, timeout=timeout).returncode
        except subprocess.TimeoutExpired:
            raise PolyverseError(f"the vLLM job did not finish within {timeout:.0f} s (log {log})") from None
    if rc != 0 or not (work / "out.json").exists():
        raise PolyverseError(f"the vLLM job exited with status {rc} (log {log}):\n{log_tail(log)}")
    return json.loads((work / "out.json").read_text())


def same_tokens(a: Sequence[Sequence[int]], b: Sequence[Sequence[int]]) -> int:
    return sum(list(x) == list(y) for x, y in zip(a, b))


def vllm_rows(python: Path, model_dir: Path, sets: Sequence[BenchSet], max_new_tokens: int, dtype: str,
              batch: int = BATCH, tick: Callable[[str, bool], None] | None = None) -> tuple[list[ReplayedPeer], dict]:
    """The vLLM rows (greedy first) and the summary of their run: per row and set the tokens/s of
    the prompts run one at a time and how many equal vLLM greedy's output, and the batch's tokens/s."""
    if not (Path(model_dir) / "config.json").exists():
        raise ConfigError(f"vLLM rows need a Hugging Face model directory: '{model_dir}' has no config.json")
    job = {"model": str(model_dir), "dtype": dtype, "max_model_len": 2048,
           "max_tokens": max_new_tokens, "batch": batch,
           "sets": {s.name: [list(p.ids) for p in s.prompts] for s in sets}}
    results: dict[str, dict] = {}
    for name, spec in [(GREEDY, None), *SPECULATIVE.items()]:
        if tick:
            tick(f"vLLM: {name}", False)
        results[name] = run_job(python, {**job, "speculative": spec})
        if tick:
            tick(f"vLLM: {name} done", True)
    rows, summary = [], {"dtype": job["dtype"], "speculative": SPECULATIVE, "batch_requests": batch, "rows": {}}
    greedy = results[GREEDY]
    for name, res in results.items():
        runs: dict = {}
        per_set = {}
        for s in sets:
            got = res["single"][s.name]
            for p, r in zip(s.prompts, got):
                runs[tuple(p.ids)] = Run(list(r["tokens"]), float(r["seconds"]))
            tokens, seconds = sum(len(r["tokens"]) for r in got), sum(r["seconds"] for r in got)
            per_set[s.name] = {"tokens_per_s": round(tokens / seconds, 2) if seconds else 0.0,
                               "same_as_greedy": same_tokens([r["tokens"] for r in got],
                                                             [r["tokens"] for r in greedy["single"][s.name]]),
                               "prompts": len(got)}
        b = res.get("batch")
        batch_doc = None if b is None else {
            "tokens_per_s": round(sum(map(len, b["tokens"])) / b["seconds"], 2),
            "same_as_greedy": same_tokens(b["tokens"], greedy["batch"]["tokens"]), "requests": len(b["tokens"])}
        summary["rows"][name] = {"sets": per_set, "batch": batch_doc}
        rows.append(ReplayedPeer(name, runs=runs))
    return rows, summary


def markdown(summary: dict, depth: int = 2) -> list[str]:
    """The vLLM rows' own table: tokens/s alone per set and of the batch, against vLLM greedy and
    vLLM's n-gram speculation, and output equal to vLLM greedy's."""
    rows = summary["rows"]
    names = list(next(iter(rows.values()))["sets"])
    greedy, ngram = rows.get(GREEDY), rows.get("vllm ngram")
    lines = ["#" * depth + f" vLLM ({summary['dtype']}): one request at a time, and {summary['batch_requests']} together",
             "", "Tokens/s over each set's prompts run one at a time; x: against vLLM greedy / vLLM ngram on the same "
             "prompts; same: outputs equal to vLLM greedy's. (The tables above judge every row against polyverse "
             "`ar` in the run's weight type: vLLM's rows differ from it where the weight types round apart.)", "",
             "| row | " + " | ".join(f"{n} tok/s | x | same" for n in names) + f" | batch of {summary['batch_requests']} tok/s | x | same |",
             "| --- |" + " ---: | ---: | ---: |" * (len(names) + 1)]
    for name, r in rows.items():
        cells = []
        for n in names:
            s = r["sets"][n]
            x = [f"{s['tokens_per_s'] / ref['sets'][n]['tokens_per_s']:.2f}" for ref in (greedy, ngram) if ref]
            cells += [f"{s['tokens_per_s']:.1f}", " / ".join(x), f"{s['same_as_greedy']}/{s['prompts']}"]
        b = r["batch"]
        if b and greedy and greedy["batch"]:
            cells += [f"{b['tokens_per_s']:.1f}", f"{b['tokens_per_s'] / greedy['batch']['tokens_per_s']:.2f}",
                      f"{b['same_as_greedy']}/{b['requests']}"]
        else:
            cells += ["-", "-", "-"]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return lines + [""]
