"""Generation jobs in vLLM's offline engine, run by the python of vLLM's environment.

polyverse's bench and tests run in an environment whose transformers vLLM does not accept, so they
write a job as JSON and run ``python -m polyverse.integrations.vllm_job JOB OUT`` with vLLM's
python (polyverse installed there without its dependencies: this module and the proposers import
nothing that needs them). A job: the model directory, its dtype and context length, the speculative
config (None: plain decoding), greedy ``max_tokens`` per prompt, prompt sets as token ids, and the
size of a batch run. The result: per set, each prompt run alone (tokens and seconds), then the
batch's prompts submitted together (tokens and the median seconds of ``batch_repeats`` runs, 3 by
default: one batch moves by several per cent from run to run), after the same batch untimed.

Example job: {"model": "/m", "dtype": "float32", "max_model_len": 2048, "max_tokens": 128,
"speculative": {"method": "custom_class", "model": "polyverse.integrations.vllm.Auto",
"num_speculative_tokens": 8}, "sets": {"chat": [[1, 2, 3]]}, "batch": 16}
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path


def run(job: dict) -> dict:
    from vllm import LLM, SamplingParams  # the vLLM environment's
    from vllm.inputs import TokensPrompt

    llm = LLM(model=job["model"], dtype=job.get("dtype", "float32"), max_model_len=job.get("max_model_len", 2048),
              max_num_seqs=max(job.get("batch", 1), 1), seed=0, speculative_config=job.get("speculative"))
    params = SamplingParams(temperature=0.0, max_tokens=job["max_tokens"], ignore_eos=False)

    def generate(prompts: list[list[int]]) -> tuple[list[list[int]], float]:
        t0 = time.perf_counter()
        outs = llm.generate([TokensPrompt(prompt_token_ids=p) for p in prompts], params, use_tqdm=False)
        return [list(o.outputs[0].token_ids) for o in outs], time.perf_counter() - t0

    every = [p for ps in job["sets"].values() for p in ps]
    generate(every[:1])  # warm-up: first-call compilation is not the method's cost
    result: dict = {"single": {}, "batch": None}
    for name, prompts in job["sets"].items():
        rows = []
        for p in prompts:
            toks, secs = generate([p])
            rows.append({"tokens": toks[0], "seconds": secs})
        result["single"][name] = rows
    if job.get("batch", 0) > 1:
        chosen = [every[i % len(every)] for i in range(job["batch"])]
        # the batch once untimed: the first pass of each row count builds its kernels (speculation
        # meets many row counts, plain decoding few), and a proposer learns what a batch's steps cost,
        # as in a server that has been running
        generate(chosen)
        runs = [generate(chosen) for _ in range(job.get("batch_repeats", 3))]
        toks, secs = runs[0][0], sorted(s for _, s in runs)[len(runs) // 2]  # the median time
        if any(t != toks for t, _ in runs):
            raise RuntimeError("the batch's outputs changed between repeats")
        result["batch"] = {"prompts": chosen, "tokens": toks, "seconds": secs, "repeats": [s for _, s in runs]}
    return result


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        print("usage: python -m polyverse.integrations.vllm_job JOB.json OUT.json", file=sys.stderr)
        return 2
    job = json.loads(Path(argv[0]).read_text())
    Path(argv[1]).write_text(json.dumps(run(job)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
