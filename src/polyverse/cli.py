"""The command line: `polyverse generate`, `polyverse methods`, `polyverse bench`.

Bad input ends with a one-line error on stderr and exit status 2, never a traceback.
"""

from __future__ import annotations

import json
import os
import sys
from typing import Any, Optional

import typer
from rich.console import Console
from rich.table import Table

from . import registry
from .config import GenerationConfig, SamplingConfig
from .cli_common import _fail, _parse_value, _progress, err
from .cli_export import export_app
from .cli_multiverse import bench_multiverse, curate, multiverse_app
from .cli_serve import serve
from .cli_train import train_app
from .errors import ConfigError, PolyverseError

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="Parallel decoding for language models: many tokens per forward pass, same output.")
app.add_typer(train_app, name="train")  # the CLLM and SPACE pipelines (cli_train.py)
train_app.add_typer(multiverse_app, name="multiverse")  # Multiverse SFT (cli_multiverse.py)
app.command("curate")(curate)
app.add_typer(export_app, name="export")  # `polyverse export gguf` (cli_export.py)
app.command("bench-multiverse")(bench_multiverse)
app.command("serve")(serve)  # the OpenAI-compatible server (cli_serve.py)


def _method_options(flags: dict[str, Any], option: list[str]) -> dict[str, Any]:
    """Method options from the dedicated flags that were given, then from --option KEY=VALUE."""
    options: dict[str, Any] = {k: v for k, v in flags.items() if v is not None}
    for item in option:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"--option takes KEY=VALUE, got '{item}'")
        options[key.strip().replace("-", "_")] = _parse_value(value.strip())
    return options


@app.command()
def generate(
    prompt: str = typer.Argument(..., help="The prompt (a user message when --chat)."),
    method: str = typer.Option("auto", "--method", "-m", help="Decoding method (see `polyverse methods`)."),
    model: str = typer.Option("SmolLM2-135M-Instruct", "--model", help="Bundled model name, HF model directory, or .gguf file."),
    chat: Optional[bool] = typer.Option(None, "--chat/--no-chat", help="Apply the chat template (default: when the model has one)."),
    max_new_tokens: int = typer.Option(128, "--max-new-tokens", "-n", help="Most tokens to generate."),
    temperature: float = typer.Option(0.0, "--temperature", "-t", help="0 = greedy; > 0 samples."),
    top_k: int = typer.Option(0, "--top-k", help="Sample from the k most likely tokens (0 = off)."),
    top_p: float = typer.Option(1.0, "--top-p", help="Nucleus sampling mass (1 = off)."),
    seed: Optional[int] = typer.Option(None, "--seed", help="Seed of the sampling random stream."),
    stop: list[str] = typer.Option([], "--stop", help="Stop string (repeatable)."),
    block: Optional[int] = typer.Option(None, "--block", help="jacobi: tokens guessed per pass."),
    window: Optional[int] = typer.Option(None, "--window", help="lookahead: window W."),
    ngram: Optional[int] = typer.Option(None, "--ngram", help="lookahead: n-gram size N; prompt_lookup/auto: longest match."),
    guesses: Optional[int] = typer.Option(None, "--guesses", help="lookahead: n-grams verified per pass G."),
    num_tokens: Optional[int] = typer.Option(None, "--num-tokens", help="prompt_lookup: tokens drafted per candidate."),
    candidates: Optional[int] = typer.Option(None, "--candidates", help="prompt_lookup/auto: continuations per pass."),
    draft_model: Optional[str] = typer.Option(None, "--draft-model", help="draft: the draft model (same tokenizer)."),
    k: Optional[int] = typer.Option(None, "--k", help="draft/early_exit: tokens drafted per pass; space: masks per group."),
    layers: Optional[int] = typer.Option(None, "--layers", help="early_exit: the target's first L layers draft."),
    max_tokens: Optional[int] = typer.Option(None, "--max-tokens", help="auto: most draft tokens per candidate."),
    option: list[str] = typer.Option([], "--option", "-o", help="Method option KEY=VALUE (repeatable)."),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object (text, token ids, statistics) instead."),
    adapter: Optional[str] = typer.Option(None, "--adapter", help="Adapter name (e.g. cllm-gsm8k) or folder."),
    backend: str = typer.Option("transformers", "--backend", help="transformers, or llamacpp (the model's GGUF "
                                "through llama.cpp; pip install 'polyverse[llamacpp]')."),
) -> None:
    """Generate text, streaming it as tokens are accepted, then one line of statistics."""
    try:
        if not prompt.strip():
            raise ConfigError("the prompt is empty")
        GenerationConfig(max_new_tokens=max_new_tokens, sampling=SamplingConfig(temperature, top_k, top_p), stop=tuple(stop))
        spec = registry.get(method)
        flags = dict(block=block, window=window, ngram=ngram, guesses=guesses, num_tokens=num_tokens,
                     candidates=candidates, model=draft_model, k=k, layers=layers, max_tokens=max_tokens)
        options = _method_options(flags, option)
        spec.make_config(options)

        from .api import load

        lm = load(model, adapter=adapter, progress=not as_json, backend=backend)
        live = None
        if method == "multiverse" and not as_json:  # one panel per path as they grow
            from rich.live import Live

            from .multiverse.view import render

            live = Live(console=Console(), refresh_per_second=8, transient=False)
        on_update = (lambda engine, update: live.update(render(engine))) if live else None
        stream = lm.stream(prompt, method=method, options=options, chat=chat, max_new_tokens=max_new_tokens,
                           temperature=temperature, top_k=top_k, top_p=top_p, seed=seed, stop=stop,
                           **({"on_update": on_update} if on_update else {}))
        if live:
            with live:
                result = stream.result()
            typer.echo(result.text)
        else:
            for chunk in stream:
                if not as_json and chunk.text:
                    sys.stdout.write(chunk.text)
                    sys.stdout.flush()
            result = stream.result()
    except PolyverseError as exc:
        _fail(str(exc))
    except KeyboardInterrupt:
        _fail("interrupted", 130)
    if as_json:
        out = result.to_dict()
        out["model"] = model
        out["stats"].pop("accepted_per_pass", None)
        out["accepted_per_pass"] = result.stats.accepted_per_pass
        typer.echo(json.dumps(out))
    else:
        typer.echo("")
        typer.echo(f"[{method}] {result.stats.line()}")


@app.command("methods")
def list_methods() -> None:
    """List the registered decoding methods and their options."""
    table = Table("method", "options", "what it does")
    for m in registry:
        opts = ", ".join(f"{k}={v!r}" for k, v in m.options().items()) or "-"
        table.add_row(m.name, opts, m.summary)
    Console().print(table)


def _has_mask(adapter: Optional[str]) -> bool:
    """Whether the adapter adds SPACE's [MASK] token (so `space` can run on the adapted model)."""
    if not adapter:
        return False
    from .adapters import info, resolve

    return "[MASK]" in info(resolve(adapter)).get("added_tokens", [])


@app.command()
def bench(
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
    peers: bool = typer.Option(True, "--peers/--no-peers", help="Include the transformers generate peers."),
    baseline: str = typer.Option("generate", "--baseline", help="Contender the ratios are taken against."),
    chat: Optional[bool] = typer.Option(None, "--chat/--no-chat", help="Chat template on every set (default: chat sets "
                                        "when the model has one; HumanEval as plain completion)."),
    option: list[str] = typer.Option([], "--option", "-o", help="Method option METHOD.KEY=VALUE (repeatable)."),
    markdown: Optional[str] = typer.Option(None, "--markdown", help="Also write the report to this file (e.g. BENCHMARKS.md)."),
    seed: int = typer.Option(0, "--seed", help="Seed of sampled runs."),
    adapter: Optional[str] = typer.Option(None, "--adapter", help="Adapter applied to the model (every row)."),
    backend: str = typer.Option("transformers", "--backend", help="Backend of the polyverse rows: transformers, or "
                                "llamacpp (the model's GGUF; `ar` is then llama.cpp greedy, the generate peers stay transformers)."),
) -> None:
    """Measure methods against the transformers peers on data sets: table, results.json, report.md, plots."""
    from pathlib import Path

    from .bench import report
    from .bench.contenders import Contender
    from .bench.data import load_set, raw_prompts
    from .bench.runner import REFERENCE, BenchConfig, run_bench

    try:
        cfg = BenchConfig(max_new_tokens=max_new_tokens, temperature=temperature, seed=seed, baseline=baseline)
        if methods.strip():
            wanted = [m.strip() for m in methods.split(",") if m.strip()]
        else:
            wanted = [m.name for m in registry if (m.name != "draft" or draft_model) and (m.name != "space" or _has_mask(adapter))
                      and m.name != "multiverse"  # structured output: its own benchmark (bench/multiverse.py)
                      and (m.name != "early_exit" or backend == "transformers")]
        per_method: dict[str, dict[str, Any]] = {m: {} for m in wanted}
        for item in option:
            key, sep, value = item.partition("=")
            meth, dot, opt = key.partition(".")
            if not sep or not dot or not opt:
                raise ConfigError(f"--option takes METHOD.KEY=VALUE, got '{item}'")
            if meth not in per_method:
                raise ConfigError(f"--option '{item}' names method '{meth}', which is not benchmarked")
            per_method[meth][opt.strip().replace("-", "_")] = _parse_value(value.strip())
        if "draft" in per_method and draft_model:
            per_method["draft"].setdefault("model", draft_model)
        for m, opts in per_method.items():
            registry.get(m).make_config(opts)  # unknown methods and bad options fail before any loading
        set_names = [d.strip() for d in data.split(",") if d.strip()]
        if not set_names:
            raise ConfigError("--data names no data set")
        for d in set_names:
            raw_prompts(d, limit)  # missing files and bad lines fail before the model loads

        from .api import load

        lm = load(model, adapter=adapter, backend=backend)
        contenders: list[Contender] = []
        if peers:
            contenders.append(Contender("generate"))
            contenders.append(Contender(f"generate(prompt_lookup={prompt_lookup_tokens})", None,
                                        {"prompt_lookup_num_tokens": prompt_lookup_tokens}))
            if draft_model:
                contenders.append(Contender("generate(assistant_model)", None, {"assistant_model": load(draft_model)}))
        if REFERENCE not in per_method and temperature == 0:
            per_method = {REFERENCE: {}, **per_method}  # the exactness reference
        contenders += [Contender(m, m, opts) for m, opts in per_method.items()]
        sets = [load_set(d, lm, limit, chat) for d in set_names]
        total = sum(len(s.prompts) for s in sets) * len(contenders)
        with _progress() as bar:
            task = bar.add_task("warm-up", total=total)
            doc = run_bench(lm, contenders, sets, cfg, tick=lambda what: bar.update(task, advance=1, description=what))
        command = "polyverse bench " + " ".join(sys.argv[2:]) if sys.argv[1:2] == ["bench"] else None
        paths = report.write(doc, Path(out), command)
        if markdown:
            md = Path(markdown)
            rel = os.path.relpath(Path(out).resolve(), md.resolve().parent)  # image links from the copy's folder
            md.write_text(report.markdown(doc, command, image_prefix=f"{Path(rel).as_posix()}/"))
    except PolyverseError as exc:
        _fail(str(exc))
    except KeyboardInterrupt:
        _fail("interrupted: nothing written", 130)
    con = Console(width=max(Console().width, 120))
    for set_name in doc["sets"]:
        table = Table(title=f"{set_name}: {cfg.max_new_tokens} new tokens, baseline {baseline}")
        for i, h in enumerate(report.HEADER):
            table.add_column(h, no_wrap=i == 0, justify="left" if i in (0, 5) else "right")
        for r in report.table_rows(doc, set_name):
            table.add_row(*r)
        con.print(table)
    con.print("wrote " + ", ".join(str(p) for p in paths.values()))


def main() -> None:
    try:
        app()
    except PolyverseError as exc:  # errors raised outside a command body
        err.print(f"[bold red]error:[/] {exc}", highlight=False)
        sys.exit(2)


if __name__ == "__main__":
    main()
