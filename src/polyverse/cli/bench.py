"""`polyverse bench`: every benchmark behind one command.

`polyverse bench [OPTIONS]` measures the methods against the peers (transformers `generate`, llama.cpp
greedy) on data sets (the
group's own options, so the command reads as it always did); the subcommands are the other
benchmarks: `load` (concurrent clients against `polyverse serve`), `serve` and `soak` (its serving
benchmark and soak test), `ar-jacobi` (ar and jacobi against `generate`), `llamacpp-batch`
(whether llama.cpp's greedy argmax depends on the tokens per pass) and `multiverse` (paths in
parallel against the same tokens sequentially; also reachable as the hidden `polyverse bench-multiverse`).
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any, Optional

import typer
from rich.console import Console
from rich.table import Table

from ..errors import ConfigError, PolyverseError
from ..heap import freeze
from ..registry import registry
from .common import DTYPE_OPTION, clean_exit, err, fail, int_list, option_value, progress

bench_app = typer.Typer(invoke_without_command=True, no_args_is_help=False)


def has_mask(adapter: Optional[str]) -> bool:
    """Whether the adapter adds SPACE's [MASK] token (so `space` can run on the adapted model)."""
    if not adapter:
        return False
    from ..adapters import info, resolve

    return "[MASK]" in info(resolve(adapter)).get("added_tokens", [])


def peer_choice(peers: str, no_peers: bool, model: str, peer_gguf: Optional[str],
                temperature: float) -> tuple[bool, Optional[Path]]:
    """(include the generate peers, the GGUF the llama.cpp peer starts from or None), from the options;
    a peer asked for by name that cannot run is an error, a default one that cannot is left out with a note."""
    from ..bench.llamacpp_peer import PEER, available, source_gguf

    if no_peers and peers.strip():
        raise ConfigError("--peers and --no-peers exclude each other")
    names = {p.strip() for p in peers.split(",") if p.strip()}
    vllm_only = names == {"vllm"}  # vLLM's rows: asked for by name only (`wants_vllm`)
    names.discard("vllm")
    unknown = names - {"generate", PEER, "none"}
    if unknown:
        raise ConfigError(f"unknown peer '{sorted(unknown)[0]}' (generate, {PEER}, vllm, none)")
    if "none" in names and len(names) > 1:
        raise ConfigError("--peers none names no other peer")
    if no_peers or names == {"none"}:
        return False, None
    if vllm_only:  # --peers vllm: vLLM's rows alone
        return False, None
    explicit = PEER in names or peer_gguf is not None
    names = names or {"generate", PEER}
    if PEER not in names:
        if peer_gguf:
            raise ConfigError("--peer-gguf is the llama.cpp peer's file, and --peers leaves that peer out")
        return "generate" in names, None
    source = Path(peer_gguf) if peer_gguf else source_gguf(model)
    why = None
    if not available():
        why = "it needs llama-cpp-python: pip install 'polyverse[llamacpp]'"
    elif temperature > 0:
        why = "it decodes greedily (--temperature 0)"
    elif source is None:
        why = "the model has no GGUF to export from: pass --peer-gguf FILE"
    elif not source.is_file() or source.suffix.lower() != ".gguf":
        why = f"no GGUF file {source}"
    if why and explicit:
        raise ConfigError(f"the llama.cpp peer cannot run: {why}")
    if why:
        err.print(f"no llama.cpp peer: {why}", highlight=False)
        source = None
    return "generate" in names, source


def wants_vllm(peers: str, temperature: float) -> bool:
    """Whether --peers names vLLM's rows (greedy only: their outputs are checked against vLLM greedy)."""
    if "vllm" not in {p.strip() for p in peers.split(",")}:
        return False
    if temperature > 0:
        raise ConfigError("the vLLM rows decode greedily (--temperature 0)")
    return True


def llamacpp_contender(lm, source: Path, adapter: Optional[str], exported: bool):
    """The llama.cpp greedy row: on the model's F16 GGUF (exported once with a progress bar, then
    cached), or on ``source`` as given (``exported`` False: --peer-gguf)."""
    from ..bench.llamacpp_peer import f16_gguf, peer

    if exported:
        with progress() as bar:
            def start(n: int):
                task = bar.add_task("llama.cpp peer: exporting the F16 GGUF (once)", total=n)
                return lambda name: bar.update(task, advance=1)

            path = f16_gguf(lm, source, adapter, start=start)
        err.print(f"llama.cpp peer: {path}", highlight=False)
    else:
        path = source
    return peer(path)


@bench_app.callback()
def bench(
    ctx: typer.Context,
    model: str = typer.Option("SmolLM2-135M-Instruct", "--model", help="Bundled model name, HF model directory, or .gguf file."),
    methods: str = typer.Option("", "--methods", help="Comma-separated polyverse methods (default: every method that "
                                "needs no extra model; draft too when --draft-model is given, space with a SPACE adapter)."),
    data: str = typer.Option("humaneval", "--data", help="Comma-separated: humaneval, gsm8k, grounded, mtbench-like, or PATH.jsonl."),
    max_new_tokens: int = typer.Option(128, "--max-new-tokens", "-n", help="Most new tokens per prompt."),
    limit: int = typer.Option(20, "--limit", help="Prompts per data set."),
    temperature: float = typer.Option(0.0, "--temperature", "-t", help="0 = greedy (outputs checked against ar)."),
    out: str = typer.Option("bench-out", "--out", help="Folder for results.json, report.md and the plots."),
    draft_model: Optional[str] = typer.Option(None, "--draft-model", help="Draft model: adds `draft` and generate(assistant_model=)."),
    prompt_lookup_tokens: int = typer.Option(10, "--prompt-lookup-tokens", help="prompt_lookup_num_tokens of the generate peer."),
    peers: str = typer.Option("", "--peers", help="Comma-separated peer rows: generate (transformers generate, with "
                              "prompt lookup, and assisted with --draft-model), llamacpp (llama.cpp greedy on the "
                              "model's F16 GGUF, exported once and cached). Default: generate, plus llamacpp when "
                              "llama-cpp-python is installed, the run is greedy and the model has a GGUF (the bundled "
                              "model, a .gguf, or --peer-gguf); vllm (vLLM greedy, vLLM's n-gram speculation and "
                              "vLLM with polyverse's proposer, in the environment `make vllm-env` makes: only by name)."),
    vllm_python: Optional[str] = typer.Option(None, "--vllm-python", help="The vLLM environment's python for --peers vllm "
                                              "(default .venv-vllm/bin/python)."),
    vllm_dtype: str = typer.Option("float32", "--vllm-dtype", help="Weight type of the vLLM rows: float32 (the default: "
                                   "vLLM's CPU passes of several tokens then give its one-token greedy bits, so "
                                   "speculation is exact) or bfloat16."),
    no_peers: bool = typer.Option(False, "--no-peers", help="No peer rows (polyverse methods only)."),
    peer_gguf: Optional[str] = typer.Option(None, "--peer-gguf", help="GGUF file of the llama.cpp peer instead of the "
                                            "model's F16 export (e.g. a quantised file, or for an HF directory model)."),
    baseline: str = typer.Option("generate", "--baseline", help="Contender the ratios are taken against: a row name, "
                                 "or llamacpp for the llama.cpp greedy row."),
    chat: Optional[bool] = typer.Option(None, "--chat/--no-chat", help="Chat template on every set (default: chat sets "
                                        "when the model has one; HumanEval as plain completion)."),
    option: list[str] = typer.Option([], "--option", "-o", help="Method option METHOD.KEY=VALUE (repeatable)."),
    markdown: Optional[str] = typer.Option(None, "--markdown", help="Also write the report into this file (e.g. BENCHMARKS.md): "
                                          "its own section, marked by the --out folder; the rest of the file is kept."),
    seed: int = typer.Option(0, "--seed", help="Seed of sampled runs."),
    adapter: Optional[str] = typer.Option(None, "--adapter", help="Adapter applied to the model (every row)."),
    backend: str = typer.Option("transformers", "--backend", help="Backend of the polyverse rows: transformers, or "
                                "llamacpp (the model's GGUF; `ar` is then llama.cpp greedy, the generate peers stay transformers)."),
    dtype: Optional[str] = DTYPE_OPTION,
) -> None:
    """Measure methods against the peers (transformers generate, llama.cpp greedy) on data sets: table, results.json, report.md, plots."""
    if ctx.invoked_subcommand is not None:  # `polyverse bench load ...`: these options are the method bench's own
        given = [p.opts[0] for p in ctx.command.params  # typer's click reports DEFAULT for options not typed
                 if getattr(ctx.get_parameter_source(p.name), "name", "DEFAULT") != "DEFAULT"]
        if given:
            fail(f"{', '.join(given)} belong to `polyverse bench` itself, not to `polyverse bench {ctx.invoked_subcommand}`")
        return
    from ..bench import report
    from ..bench.contenders import Contender
    from ..bench.data import load_set, raw_prompts
    from ..bench.llamacpp_peer import F16_ROW, PEER, row_name
    from ..bench.runner import REFERENCE, BenchConfig, run_bench

    with clean_exit("interrupted: nothing written"):
        want_generate, llama_source = peer_choice(peers, no_peers, model, peer_gguf, temperature)
        want_vllm = wants_vllm(peers, temperature)
        if want_vllm:
            if vllm_dtype not in ("float32", "bfloat16"):
                raise ConfigError(f"--vllm-dtype must be float32 or bfloat16, got '{vllm_dtype}'")
            from ..bench.vllm_server import find_vllm_python

            vllm_py = find_vllm_python(vllm_python)
            if vllm_py is None:
                raise ConfigError("--peers vllm: no vLLM environment (make vllm-env, or --vllm-python PATH)")
            if adapter:
                raise ConfigError("--peers vllm runs the model as stored: merge the adapter first "
                                  "(polyverse export) and bench the exported directory")
        if baseline in (PEER, "llama.cpp"):
            if llama_source is None:
                raise ConfigError(f"--baseline {baseline} names the llama.cpp peer, which is not in this run")
            baseline = row_name(llama_source) if peer_gguf else F16_ROW
        if baseline == "generate" and not want_generate and want_vllm:
            baseline = "vllm"  # the default baseline is not in this run: vLLM greedy is
        cfg = BenchConfig(max_new_tokens=max_new_tokens, temperature=temperature, seed=seed, baseline=baseline)
        if methods.strip():
            wanted = [m.strip() for m in methods.split(",") if m.strip()]
        else:
            wanted = [m.name for m in registry if (m.name != "draft" or draft_model) and (m.name != "space" or has_mask(adapter))
                      and m.name != "multiverse"  # structured output: its own benchmark (`polyverse bench multiverse`)
                      and (m.name != "early_exit" or backend == "transformers")]
        per_method: dict[str, dict[str, Any]] = {m: {} for m in wanted}
        for item in option:
            key, sep, value = item.partition("=")
            meth, dot, opt = key.partition(".")
            if not sep or not dot or not opt:
                raise ConfigError(f"--option takes METHOD.KEY=VALUE, got '{item}'")
            if meth not in per_method:
                raise ConfigError(f"--option '{item}' names method '{meth}', which is not benchmarked")
            name, parsed = option_value(registry.get(meth), opt, value)
            per_method[meth][name] = parsed
        if "draft" in per_method and draft_model:
            per_method["draft"].setdefault("model", draft_model)
        for m, opts in per_method.items():
            registry.get(m).make_config(opts)  # unknown methods and bad options fail before any loading
        set_names = [d.strip() for d in data.split(",") if d.strip()]
        if not set_names:
            raise ConfigError("--data names no data set")
        for d in set_names:
            raw_prompts(d, limit)  # missing files and bad lines fail before the model loads

        from .common import load

        lm = load(model, adapter=adapter, backend=backend, dtype=dtype)
        contenders: list[Contender] = []
        if want_generate:
            contenders.append(Contender("generate"))
            contenders.append(Contender(f"generate(prompt_lookup={prompt_lookup_tokens})", None,
                                        {"prompt_lookup_num_tokens": prompt_lookup_tokens}))
            if draft_model:
                contenders.append(Contender("generate(assistant_model)", None, {"assistant_model": load(draft_model)}))
        if llama_source is not None:
            contenders.append(llamacpp_contender(lm, llama_source, adapter, exported=peer_gguf is None))
        if REFERENCE not in per_method and temperature == 0:
            per_method = {REFERENCE: {}, **per_method}  # the exactness reference
        contenders += [Contender(m, m, opts) for m, opts in per_method.items()]
        sets = [load_set(d, lm, limit, chat) for d in set_names]
        vllm_summary = None
        if want_vllm:
            from ..bench.vllm_peer import SPECULATIVE, vllm_rows
            from ..models.load import resolve

            with progress() as bar:
                task = bar.add_task("vLLM rows", total=1 + len(SPECULATIVE))
                rows, vllm_summary = vllm_rows(vllm_py, resolve(model), sets, max_new_tokens, vllm_dtype,
                                               tick=lambda what, done: bar.update(task, advance=int(done), description=what))
            contenders += rows
        freeze()  # the peers' engines and models too (heap)
        total = sum(len(s.prompts) for s in sets) * len(contenders)
        with progress() as bar:
            task = bar.add_task("warm-up", total=total)
            doc = run_bench(lm, contenders, sets, cfg, tick=lambda what: bar.update(task, advance=1, description=what))
        if vllm_summary is not None:
            doc["vllm"] = vllm_summary
        command = "polyverse bench " + " ".join(sys.argv[2:]) if sys.argv[1:2] == ["bench"] else None
        paths = report.write(doc, Path(out), command)
        if markdown:
            md = Path(markdown)
            rel = os.path.relpath(Path(out).resolve(), md.resolve().parent)  # image links from the copy's folder
            page = md.read_text() if md.is_file() else ""  # other runs' and machines' sections are kept
            key = Path(rel).as_posix()
            section = report.markdown(doc, command, image_prefix=f"{key}/", depth=report.depth_at(page, key))
            md.write_text(report.splice(page, key, section))
    con = Console(width=max(Console().width, 120))
    for set_name in doc["sets"]:
        table = Table(title=f"{set_name}: {cfg.max_new_tokens} new tokens, baseline {baseline}")
        for i, h in enumerate(report.HEADER):
            table.add_column(h, no_wrap=i == 0, justify="left" if i in (0, 5) else "right")
        for r in report.table_rows(doc, set_name):
            table.add_row(*r)
        con.print(table)
    con.print("wrote " + ", ".join(str(p) for p in paths.values()))


@bench_app.command("passes")
def bench_passes(
    model: str = typer.Option("SmolLM2-135M-Instruct", "--model", help="Bundled model name or HF model directory."),
    context: int = typer.Option(250, "--context", help="Cached tokens before each timed pass."),
    reps: int = typer.Option(7, "--reps", help="Timed passes per size (the fastest is kept)."),
    llama: bool = typer.Option(True, "--llamacpp/--no-llamacpp", help="Include llama.cpp on F16, Q8_0 and Q4_1 exports."),
    out: str = typer.Option("bench-out/passes.json", "--out", help="JSON file of the figures."),
) -> None:
    """What one pass costs by tokens fed: the lean pass per weight type and instruction set, transformers, llama.cpp."""
    from ..bench import passes

    with clean_exit("interrupted: nothing written"):
        if context < 1 or reps < 1:
            raise ConfigError("--context and --reps must be at least 1")
        from .common import load

        lm = load(model, dtype="fp32")
        rows = passes.engines(lm, llama)
        with progress() as bar:
            task = bar.add_task("passes", total=len(rows))
            doc = passes.measure_all(lm, context, reps, llama=llama,
                                     tick=lambda name: bar.update(task, advance=1, description=name))
        from ..bench.runner import cpu_name

        doc["cpu"] = cpu_name()
        Path(out).parent.mkdir(parents=True, exist_ok=True)
        Path(out).write_text(json.dumps(doc, indent=1))
    Console(width=max(Console().width, 120)).print(passes.markdown(doc, doc["cpu"]))


@bench_app.command("dtypes")
def bench_dtypes(
    model: str = typer.Option("SmolLM2-135M-Instruct", "--model", help="Bundled model name or HF model directory."),
    data: str = typer.Option("mtbench-like,gsm8k,grounded,humaneval", "--data", help="Comma-separated data sets (as `polyverse bench`)."),
    limit: int = typer.Option(10, "--limit", help="Prompts per data set."),
    max_new_tokens: int = typer.Option(128, "--max-new-tokens", "-n", help="Most new tokens per prompt."),
    out: str = typer.Option("bench-out/dtypes.json", "--out", help="JSON file of the per-prompt figures."),
) -> None:
    """How often greedy `ar` in bf16 and int8 departs from fp32 greedy: first differing token, fp32 margin."""
    from dataclasses import asdict

    from ..backends.cpu.lean import DTYPES
    from ..bench import dtypes
    from ..bench.data import load_set, raw_prompts
    from ..bench.runner import cpu_name

    with clean_exit("interrupted: nothing written"):
        names = [d.strip() for d in data.split(",") if d.strip()]
        if not names:
            raise ConfigError("--data names no data set")
        for d in names:
            raw_prompts(d, limit)
        from .common import load

        models = {d: load(model, dtype=d, progress=False) for d in DTYPES}
        sets = [load_set(d, models["fp32"], limit) for d in names]
        with progress() as bar:
            task = bar.add_task("dtypes", total=sum(len(s.prompts) for s in sets) * len(models))
            rows = dtypes.compare(models, sets, max_new_tokens,
                                  tick=lambda what: bar.update(task, advance=1, description=what))
        Path(out).parent.mkdir(parents=True, exist_ok=True)
        Path(out).write_text(json.dumps({"cpu": cpu_name(), "max_new_tokens": max_new_tokens,
                                         "rows": [asdict(r) for r in rows]}, indent=1))
    Console(width=max(Console().width, 120)).print(dtypes.markdown(rows, cpu_name(), max_new_tokens))


@bench_app.command("ar-jacobi")
def bench_ar_jacobi(
    prompts: int = typer.Option(8, "--prompts", help="GSM8K dev questions (a few fixed prompts without the shared data)."),
    max_new_tokens: int = typer.Option(128, "--max-new-tokens", "-n", help="Most new tokens per prompt."),
    blocks: str = typer.Option("4,16", "--blocks", help="Jacobi block sizes, comma-separated."),
    model: str = typer.Option("SmolLM2-135M-Instruct", "--model", help="Bundled model name or HF model directory."),
    out: Optional[str] = typer.Option(None, "--out", help="Also write the per-prompt figures here as JSON."),
) -> None:
    """polyverse `ar` and `jacobi` against transformers `generate`, greedy, side by side; outputs compared."""
    import time

    import torch

    from ..bench import ar_jacobi

    with clean_exit("interrupted: nothing written"):
        sizes = list(int_list(blocks, "--blocks"))
        if not sizes or min(sizes) < 1:
            raise ConfigError("--blocks takes positive block sizes, e.g. 4,16")
        if prompts < 1 or max_new_tokens < 1:
            raise ConfigError("--prompts and --max-new-tokens must be at least 1")
        for b in sizes:
            registry.get("jacobi").make_config({"block": b})
        from ..api import load  # timed as a program loads; frozen once, after the first model is dropped

        t0 = time.perf_counter()
        lm = load(model)
        load_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        lm = load(model)
        reload_s = time.perf_counter() - t0
        typer.echo(f"load: {load_s:.2f} s, second load {reload_s:.2f} s; torch threads {torch.get_num_threads()}")
        freeze()
        encoded = [lm.encode(p, chat=True) for p in ar_jacobi.prompts(prompts)]
        with progress() as bar:
            task = bar.add_task("warm-up", total=len(encoded))
            rows = ar_jacobi.compare(lm, encoded, sizes, max_new_tokens,
                                     tick=lambda line: bar.update(task, advance=1, description=line))
    typer.echo(f"\n{len(encoded)} GSM8K prompts, {max_new_tokens} new tokens max, greedy, fp32, "
               f"{torch.get_num_threads()} threads")
    typer.echo(ar_jacobi.HEADER)
    for line in ar_jacobi.table(rows):
        typer.echo(line)
    if out:
        Path(out).parent.mkdir(parents=True, exist_ok=True)
        Path(out).write_text(json.dumps({"max_new_tokens": max_new_tokens, "blocks": sizes, "rows": rows}, indent=1))


@bench_app.command("llamacpp-batch")
def bench_llamacpp_batch(
    model: str = typer.Option("SmolLM2-135M-Instruct", "--model", help="Bundled model name or .gguf file."),
    gguf: Optional[str] = typer.Option(None, "--gguf", help="GGUF llama.cpp runs (default: the model's F16 export, "
                                       "cached, as the bench's llama.cpp peer runs it)."),
    data: str = typer.Option("mtbench-like", "--data", help="Data set: humaneval, gsm8k, grounded, mtbench-like, or PATH.jsonl."),
    limit: int = typer.Option(10, "--limit", help="Prompts."),
    max_new_tokens: int = typer.Option(64, "--max-new-tokens", "-n", help="Greedy tokens per prompt."),
    ks: str = typer.Option("2,4,8,16", "--ks", help="Tokens per pass compared with one, comma-separated."),
    out: Optional[str] = typer.Option(None, "--out", help="Also write the figures here as JSON."),
) -> None:
    """Whether llama.cpp's greedy argmax changes when a pass feeds k tokens instead of one (teacher forced)."""
    from ..bench.data import load_set, raw_prompts
    from ..bench.llamacpp_batch import BatchConfig, header, measure, table
    from ..bench.llamacpp_peer import available, f16_gguf, source_gguf

    with clean_exit("interrupted: nothing written"):
        sizes = int_list(ks, "--ks")
        cfg = BatchConfig(max_new_tokens=max_new_tokens, ks=sizes)
        raw_prompts(data, limit)
        if not available():
            raise ConfigError("llama-cpp-python is not installed: pip install 'polyverse[llamacpp]'")
        source = Path(gguf) if gguf else source_gguf(model)
        if source is None or not source.is_file():
            raise ConfigError(f"no GGUF to run: {gguf or model} (pass the bundled model, a .gguf, or --gguf FILE)")
        from ..api import Model, load
        from ..backends.llamacpp import LlamaCppBackend

        lm = load(model)
        if not gguf:
            with progress() as bar:
                def start(n: int):
                    task = bar.add_task("exporting the F16 GGUF (once)", total=n)
                    return lambda name: bar.update(task, advance=1)

                source = f16_gguf(lm, source, start=start)
        llm = Model(lm.hf_model, lm.tokenizer, f"{source.name}@llamacpp", backend=LlamaCppBackend(source))
        prompts = [p.ids for p in load_set(data, llm, limit).prompts]
        with progress() as bar:
            task = bar.add_task("prompts", total=len(prompts))
            doc = measure(llm.backend, prompts, cfg, llm.eos_token_ids,
                          tick=lambda what: bar.update(task, advance=1, description=what))
    doc["gguf"] = str(source)
    typer.echo(f"{source.name}: {len(prompts)} prompts of {data}, {max_new_tokens} greedy tokens each, "
               "teacher forced k tokens per pass against one per pass")
    typer.echo(header(doc))
    for line in table(doc):
        typer.echo(line)
    w = doc["whole_prompt"]
    typer.echo(f"whole prompt in one pass (not its last token alone): first token differs on "
               f"{w['prompts_first_token_differs']}/{w['prompts']} prompts, max |logit diff| {w['max_abs_logit_diff']}")
    if out:
        Path(out).parent.mkdir(parents=True, exist_ok=True)
        Path(out).write_text(json.dumps(doc, indent=1))


@bench_app.command("multiverse")
def bench_multiverse(
    model: str = typer.Option("SmolLM2-135M-Instruct", "--model", help="Bundled model name or HF model directory."),
    paths: str = typer.Option("2,4,8", "--paths", help="Comma-separated path counts."),
    path_tokens: int = typer.Option(64, "--path-tokens", help="Tokens per path (the same in every run)."),
    out: Optional[str] = typer.Option(None, "--out", help="Also write the rows as JSON here."),
    guided: bool = typer.Option(False, "--guided", help="Instead: the training-free mode on 10 varied prompts "
                                "(how many answers are valid structure)."),
) -> None:
    """Multiverse paths in parallel against the same tokens written sequentially (tokens/s, parallelism, speedup)."""
    from dataclasses import asdict

    from ..bench.multiverse import GUIDED_PROMPTS, HEADER, guided_validity, measure, table

    if guided:
        from .common import load

        lm = load(model)
        with progress() as bar:
            task = bar.add_task("guided", total=len(GUIDED_PROMPTS))
            doc = guided_validity(lm, path_tokens=path_tokens, tick=lambda what: bar.update(task, advance=1, description=what))
        t = Table("prompt", "valid", "paths", "tokens/pass", "tok/s", title="Training-free Multiverse")
        for r in doc["rows"]:
            t.add_row(r["prompt"][:50], "yes" if r["valid"] else "no: " + "; ".join(r["errors"])[:60], str(r["paths"]),
                      f"{r['tokens_per_pass']:.2f}", f"{r['tokens_per_second']:.1f}")
        Console(width=max(Console().width, 140)).print(t)
        typer.echo(f"valid structure on {doc['valid']} of {doc['n']} prompts")
        if out:
            Path(out).parent.mkdir(parents=True, exist_ok=True)
            Path(out).write_text(json.dumps(doc, indent=1))
        return

    try:
        counts = int_list(paths, "--paths")
        if not counts or min(counts) < 1:
            raise ConfigError("--paths takes positive counts, e.g. 2,4,8")
        if path_tokens < 16:
            raise ConfigError("--path-tokens must be at least 16")
    except PolyverseError as exc:
        fail(str(exc))
    from .common import load

    lm = load(model)
    with progress() as bar:
        task = bar.add_task("warm-up", total=2 * len(counts))
        rows = measure(lm, counts, path_tokens, tick=lambda what: bar.update(task, advance=1, description=what))
    t = Table(*HEADER, title=f"Multiverse on {model}: {path_tokens} tokens per path")
    for r in table(rows):
        t.add_row(*r)
    Console(width=max(Console().width, 140)).print(t)
    if out:
        Path(out).parent.mkdir(parents=True, exist_ok=True)
        Path(out).write_text(json.dumps([asdict(r) | {"degree": r.degree, "speedup": r.speedup} for r in rows], indent=1))


from . import bench_serving, bench_structured  # noqa: E402,F401  (more commands registered on bench_app)
