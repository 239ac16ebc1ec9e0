"""The benchmark run: warm-up, then prompt by prompt every contender in turn, then figures.

Timing is fair by construction: one warm-up pass per contender, contenders interleaved per
prompt (their order rotated from prompt to prompt) so that machine drift hits all alike, and
medians of per-prompt ratios to the baseline. Exactness is judged against polyverse ``ar``
greedy: a mismatch records the first differing position and the target's logit margin there
(how close the two tokens were: float noise flips only near-ties).
"""

from __future__ import annotations

import platform
import statistics
import time
from dataclasses import dataclass, field
from typing import Callable, Sequence

import torch

from ..errors import ConfigError
from .contenders import Contender, Run
from .data import BenchSet

REFERENCE = "ar"  # the greedy reference for the exactness column


@dataclass(frozen=True)
class BenchConfig:
    max_new_tokens: int = 128
    temperature: float = 0.0
    baseline: str = "generate"
    seed: int = 0
    warmup_tokens: int = 16

    def __post_init__(self) -> None:
        if not isinstance(self.max_new_tokens, int) or self.max_new_tokens < 1:
            raise ConfigError(f"--max-new-tokens must be at least 1, got {self.max_new_tokens}")
        if self.temperature < 0:
            raise ConfigError(f"--temperature must be >= 0, got {self.temperature}")


@dataclass
class PromptResult:
    id: str
    prompt_tokens: int
    new_tokens: int
    seconds: float
    rate: float
    ratio: float  # rate / baseline rate on this prompt
    passes: int
    tokens_per_pass: float | None  # None for peers (passes not observed)
    accepted_per_pass: list[int]
    exact: bool | None  # equals the reference token for token (None: sampled, not judged)
    mismatch: dict | None = None  # {"position", "expected", "got", "margin"} on the first difference


@dataclass
class Row:
    name: str
    method: str | None
    options: dict
    prompts: list[PromptResult] = field(default_factory=list)

    def summary(self) -> dict:
        ps = self.prompts
        judged = [p for p in ps if p.exact is not None]
        passes = sum(p.passes for p in ps)
        return {
            "rate_median": statistics.median(p.rate for p in ps),
            "ratio_median": statistics.median(p.ratio for p in ps),
            "ratio_mean": statistics.mean(p.ratio for p in ps),
            "tokens_per_pass": (sum(p.new_tokens for p in ps) / passes) if passes else None,
            "passes": passes or None,
            "exact": sum(p.exact for p in judged) if judged else None,
            "judged": len(judged),
        }


def logit_margin(model, prompt: Sequence[int], ref: Sequence[int], got: Sequence[int], pos: int) -> float:
    """logit(expected) - logit(got) at the first difference, from one plain forward pass of
    the target over the prompt and the reference's first ``pos`` tokens."""
    ids = torch.tensor([list(prompt) + list(ref[:pos])])  # [1, n]
    with torch.inference_mode():
        logits = model.hf_model(ids).logits[0, -1].float()  # [V]
    return float(logits[ref[pos]] - logits[got[pos]])


def compare(model, prompt, ref: Sequence[int], got: Sequence[int]) -> tuple[bool, dict | None]:
    """(equal, first mismatch) of an output against the reference output."""
    if list(ref) == list(got):
        return True, None
    pos = next((i for i, (a, b) in enumerate(zip(ref, got)) if a != b), min(len(ref), len(got)))
    info: dict = {"position": pos, "expected": ref[pos] if pos < len(ref) else None,
                  "got": got[pos] if pos < len(got) else None, "margin": None}
    if pos < len(ref) and pos < len(got):
        info["margin"] = round(logit_margin(model, prompt, ref, got, pos), 5)
    return False, info


def cpu_name() -> str:
    """The CPU's model name and the instruction set the lean pass runs on, e.g. "AMD EPYC (avx512)"."""
    from ..backends.cpu import lean

    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next((ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name")), cpu)
    except OSError:
        pass
    try:
        isa = lean.isa()
    except ValueError:
        isa = None
    return f"{cpu} ({isa or 'no AVX2'})"


def weight_type(model) -> str:
    """What the polyverse rows run: "bf16 (lean pass)", "fp32 (transformers)", or the hf dtype."""
    lean_model = getattr(model.backend, "lean", None)
    if lean_model is not None:
        return f"{lean_model.dtype} (lean pass, {lean_model.isa})"
    weights = getattr(model.backend, "weights", None)
    if weights is not None and not isinstance(weights, str):  # llama.cpp's loaded GGUF
        from .llamacpp_peer import weight_type as gguf_type

        return f"{gguf_type(model.backend.path)} (llama.cpp)"
    return f"{weights} (transformers)" if weights else str(next(model.hf_model.parameters()).dtype)


def environment(model) -> dict:
    import transformers

    import polyverse

    return {
        "date": time.strftime("%Y-%m-%d %H:%M"),
        "model": model.name,
        "dtype": weight_type(model),
        "polyverse": getattr(polyverse, "__version__", "?"),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "python": platform.python_version(),
        "threads": torch.get_num_threads(),
        "cpu": cpu_name(),
        "platform": platform.platform(),
    }


def run_bench(model, contenders: Sequence[Contender], sets: Sequence[BenchSet], cfg: BenchConfig,
              tick: Callable[[str], None] | None = None) -> dict:
    """Run every contender on every prompt of every set; returns the results document."""
    names = [c.name for c in contenders]
    if len(set(names)) != len(names):
        raise ConfigError(f"contender names must be unique: {names}")
    if cfg.baseline not in names:
        raise ConfigError(f"baseline '{cfg.baseline}' is not among the contenders: {', '.join(names)}")
    greedy = cfg.temperature == 0
    ref_name = next((c.name for c in contenders if c.method == REFERENCE and not c.options), None)
    warm = next(p.ids for s in sets for p in s.prompts)
    for c in contenders:  # warm-up: first-call costs (allocations, kernels, cost curves) kept out
        c.run(model, list(warm), cfg.warmup_tokens, cfg.temperature, cfg.seed)
    doc: dict = {"environment": environment(model), "config": {
        "max_new_tokens": cfg.max_new_tokens, "temperature": cfg.temperature, "baseline": cfg.baseline,
        "seed": cfg.seed, "reference": ref_name if greedy else None}, "sets": {}}
    for s in sets:
        rows = {c.name: Row(c.name, c.method, {k: str(v) for k, v in c.options.items()}) for c in contenders}
        for i, p in enumerate(s.prompts):
            order = list(contenders[i % len(contenders):]) + list(contenders[: i % len(contenders)])
            runs: dict[str, Run] = {}
            for c in order:
                runs[c.name] = c.run(model, list(p.ids), cfg.max_new_tokens, cfg.temperature, cfg.seed)
                if tick:
                    tick(f"{s.name} {i + 1}/{len(s.prompts)} {c.name}")
            base = runs[cfg.baseline].rate
            ref = runs[ref_name].tokens if greedy and ref_name else None
            for c in contenders:
                r = runs[c.name]
                exact, mismatch = (None, None) if ref is None else compare(model, p.ids, ref, r.tokens)
                rows[c.name].prompts.append(PromptResult(
                    p.id, len(p.ids), len(r.tokens), round(r.seconds, 5), round(r.rate, 4),
                    round(r.rate / base, 5) if base > 0 else 0.0, r.passes, round(r.tokens_per_pass, 4) if r.passes else None,
                    r.accepted_per_pass, exact, mismatch))
        doc["sets"][s.name] = {name: {"method": row.method, "options": row.options, "summary": row.summary(),
                                      "prompts": [vars(pr) for pr in row.prompts]} for name, row in rows.items()}
    return doc
