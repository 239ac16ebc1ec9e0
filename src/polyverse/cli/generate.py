"""`polyverse generate` and `polyverse methods`: decode one prompt with any method, list the methods.

generate's per-method flags (--block, --k, --draft-model ...) are not listed here: they are made
from the option specs of the registered methods (`OptionSpec.flag`), so a method or an option is
added in its own file. They are built when typer builds the command, i.e. each time the app runs
(`Generate.__signature__`), not when this module is imported: a method registered after
``import polyverse.cli`` (a plug-in, a test) still gets its flags and its row in `polyverse methods`.
"""

from __future__ import annotations

import inspect
import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Optional

import typer
from rich.console import Console
from rich.table import Table

from ..config import GenerationConfig, SamplingConfig
from ..errors import ConfigError
from ..grammar import GrammarSpec
from ..shaping import Penalties
from ..options import OptionSpec
from ..registry import Method, registry
from . import cluster
from .common import DTYPE_OPTION, clean_exit, key_values, option_value


@dataclass(frozen=True)
class MethodFlag:
    """One `polyverse generate` flag, made from the specs of every method that declares it."""

    flag: str  # e.g. "--draft-model"
    kind: type  # the value type; str where the methods sharing the flag disagree (each then parses its own)
    help: str  # e.g. "draft/early_exit: tokens drafted per pass; space: masks per group."
    names: tuple[tuple[str, str], ...]  # (method, the option the flag sets there), e.g. (("draft", "model"),)

    @property
    def param(self) -> str:
        return self.flag.lstrip("-").replace("-", "_")

    def option_name(self, method: str) -> str:
        """The option the flag sets on ``method``; for a method without the flag, the first declaring
        method's option name, so that ``make_config`` names it in its error ("has no option block")."""
        return dict(self.names).get(method, self.names[0][1])


def method_flags(methods: Iterable[Method]) -> list[MethodFlag]:
    """The flags the methods' option specs declare, in method order. A flag several methods share is
    one flag whose help joins theirs: --k of draft, early_exit and space ->
    "draft/early_exit: tokens drafted per pass; space: masks per group."."""
    users: dict[str, list[tuple[str, OptionSpec]]] = {}
    for m in methods:
        for spec in m.specs():
            if spec.flag:
                users.setdefault(spec.flag, []).append((m.name, spec))
    flags = []
    for flag, declared in users.items():
        by_help: dict[str, list[str]] = {}
        for name, spec in declared:
            by_help.setdefault(spec.help, []).append(name)
        text = "; ".join(f"{'/'.join(names)}: {h}" for h, names in by_help.items()) + "."
        kinds = {spec.kind for _, spec in declared}
        flags.append(MethodFlag(flag, kinds.pop() if len(kinds) == 1 else str, text,
                                tuple((name, spec.name) for name, spec in declared)))
    return flags


def _before_flags(
    prompt: Optional[str] = typer.Argument(None, help="The prompt (a user message when --chat); or give --input."),
    method: str = typer.Option("auto", "--method", "-m", help="Decoding method (see `polyverse methods`)."),
    model: str = typer.Option("SmolLM2-135M-Instruct", "--model", help="Bundled model name, HF model directory, or .gguf file."),
    chat: Optional[bool] = typer.Option(None, "--chat/--no-chat", help="Apply the chat template (default: when the model has one)."),
    max_new_tokens: int = typer.Option(128, "--max-new-tokens", "-n", help="Most tokens to generate."),
    temperature: float = typer.Option(0.0, "--temperature", "-t", help="0 = greedy; > 0 samples."),
    top_k: int = typer.Option(0, "--top-k", help="Sample from the k most likely tokens (0 = off)."),
    top_p: float = typer.Option(1.0, "--top-p", help="Nucleus sampling mass (1 = off)."),
    seed: Optional[int] = typer.Option(None, "--seed", help="Seed of the sampling random stream."),
    stop: list[str] = typer.Option([], "--stop", help="Stop string (repeatable)."),
) -> None:
    """generate's own options that its help lists before the method flags."""


def _after_flags(
    option: list[str] = typer.Option([], "--option", "-o", help="Method option KEY=VALUE (repeatable)."),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object (text, token ids, statistics) instead."),
    logprobs: Optional[int] = typer.Option(None, "--logprobs", help="Also show each token's log-probability and the "
                                           "K likeliest tokens at its position (0-20; in --json: a 'logprobs' list)."),
    json_schema: Optional[str] = typer.Option(None, "--json-schema", help="Structured output: JSON following the "
                                              "JSON schema in this file."),
    json_object: bool = typer.Option(False, "--json-object", help="Structured output: any JSON object."),
    regex: Optional[str] = typer.Option(None, "--regex", help="Structured output: text matching this regular expression."),
    grammar: Optional[str] = typer.Option(None, "--grammar", help="Structured output: text of the Lark grammar in this file."),
    presence_penalty: float = typer.Option(0.0, "--presence-penalty", help="Lower the logits of tokens already written "
                                           "(-2 to 2, as OpenAI)."),
    frequency_penalty: float = typer.Option(0.0, "--frequency-penalty", help="Lower each token's logit by this much per "
                                            "time it was written (-2 to 2, as OpenAI)."),
    adapter: Optional[str] = typer.Option(None, "--adapter", help="Adapter name (e.g. cllm-gsm8k) or folder."),
    backend: str = typer.Option("transformers", "--backend", help="transformers, or llamacpp (the model's GGUF "
                                "through llama.cpp; pip install 'polyverse[llamacpp]')."),
    dtype: Optional[str] = DTYPE_OPTION,
    input: Optional[str] = typer.Option(None, "--input", help="JSONL of prompts ('prompt', 'question' or 'messages', "
                                        "optional 'id'), decoded many at a time; needs --output."),
    output: Optional[str] = typer.Option(None, "--output", help="JSONL written with --input, one line per prompt as it "
                                         "finishes; rerunning skips the ids already there."),
    concurrency: int = typer.Option(32, "--concurrency", help="With --input: prompts decoded together, sharing each pass."),
    ray: Optional[str] = cluster.RAY_OPTION,
    workers: Optional[int] = cluster.WORKERS_OPTION,
    worker_threads: int = cluster.WORKER_THREADS_OPTION,
    shard_size: int = cluster.SHARD_SIZE_OPTION,
) -> None:
    """generate's own options that its help lists after the method flags."""


def _flag_parameter(flag: MethodFlag, taken: set[str]) -> inspect.Parameter:
    """The typer option of a method flag: None when not given, so only given flags reach the method."""
    if not flag.flag.startswith("--") or not flag.param.isidentifier() or flag.param in taken or flag.flag in taken:
        users = ", ".join(name for name, _ in flag.names)
        raise ConfigError(f"method option flag {flag.flag} (of {users}) is not a free `polyverse generate` flag")
    decl = f"{flag.flag}/--no-{flag.flag[2:]}" if flag.kind is bool else flag.flag
    return inspect.Parameter(flag.param, inspect.Parameter.KEYWORD_ONLY, annotation=Optional[flag.kind],
                             default=typer.Option(None, decl, help=flag.help))


class Generate:
    """Generate text, streaming it as tokens are accepted, then one line of statistics."""

    def __init__(self) -> None:
        self.__annotations__: dict[str, Any] = {}  # typer reads every type from the signature below

    @property
    def __signature__(self) -> inspect.Signature:
        """generate's own options with the registered methods' flags between them (read by typer)."""
        before, after = ([p.replace(kind=inspect.Parameter.KEYWORD_ONLY)
                          for p in inspect.signature(f, eval_str=True).parameters.values()]
                         for f in (_before_flags, _after_flags))
        taken = {p.name for p in before + after} | {name for p in before + after
                                                    for decl in getattr(p.default, "param_decls", None) or ()
                                                    for name in decl.split("/")}
        return inspect.Signature(before + [_flag_parameter(f, taken) for f in method_flags(registry)] + after)

    def __call__(self, **values: Any) -> None:
        flags = {f.param: f for f in method_flags(registry)}
        given = [(flags[name], v) for name, v in values.items() if name in flags and v is not None]
        generate(flags=given, **{name: v for name, v in values.items() if name not in flags})


def generate(prompt: Optional[str], method: str, model: str, chat: Optional[bool], max_new_tokens: int, temperature: float,
             top_k: int, top_p: float, seed: Optional[int], stop: list[str], option: list[str], as_json: bool,
             adapter: Optional[str], backend: str, flags: list[tuple[MethodFlag, Any]], dtype: Optional[str] = None,
             input: Optional[str] = None, output: Optional[str] = None, concurrency: int = 32, ray: Optional[str] = None,
             workers: Optional[int] = None, worker_threads: int = 1, shard_size: int = 16,
             logprobs: Optional[int] = None, json_schema: Optional[str] = None, json_object: bool = False,
             regex: Optional[str] = None, grammar: Optional[str] = None, presence_penalty: float = 0.0,
             frequency_penalty: float = 0.0) -> None:
    """The command body: ``flags`` are the given method flags with their values."""
    with clean_exit("interrupted: finished prompts are written; rerun the same command to resume" if input else "interrupted"):
        if input is not None or output is not None:
            if prompt is not None:
                raise ConfigError("give a prompt or --input, not both")
            if input is None or output is None:
                raise ConfigError("--input and --output go together")
            if concurrency < 1:
                raise ConfigError(f"--concurrency must be at least 1, got {concurrency}")
        elif prompt is None:
            raise ConfigError("give a prompt, or --input prompts.jsonl --output out.jsonl")
        if logprobs is not None and input is not None:
            raise ConfigError("--logprobs is for one prompt, not --input files")
        if ray is not None and input is None:
            raise ConfigError("--ray runs --input files (a single prompt runs here)")
        cluster.check(ray, workers, worker_threads, shard_size)
        if prompt is not None and not prompt.strip():
            raise ConfigError("the prompt is empty")
        shaping = dict(grammar=constraint(json_schema, json_object, regex, grammar), presence_penalty=presence_penalty,
                       frequency_penalty=frequency_penalty)
        GenerationConfig(max_new_tokens=max_new_tokens, sampling=SamplingConfig(temperature, top_k, top_p), stop=tuple(stop),
                         logprobs=logprobs, penalties=Penalties.of(presence_penalty, frequency_penalty))
        spec = registry.get(method)
        options: dict[str, Any] = {}
        for flag, value in flags:  # the dedicated flags that were given, then --option KEY=VALUE
            name = flag.option_name(method)
            if isinstance(value, str):  # typed by the chosen method's spec (a flag whose methods disagree is a str)
                name, value = option_value(spec, name, value)
            options[name] = value
        options.update(key_values(spec, option))
        spec.make_config(options)

        from .common import load

        if input is not None:
            from . import generate_file

            rows = generate_file.read_prompts(Path(input))
            if ray is not None:
                from ..offline.work import JobSpec

                kwargs = dict(method=method, options=options, chat=chat, max_new_tokens=max_new_tokens,
                              temperature=temperature, top_k=top_k, top_p=top_p, seed=seed, stop=tuple(stop),
                              concurrency=concurrency, **shaping)
                spec = JobSpec("generate", model, {"adapter": adapter, "backend": backend, "dtype": dtype}, kwargs)
                counts = cluster.run(spec, rows, Path(output), generate_file.written_ids(Path(output)), ray, workers,
                                     worker_threads, shard_size, "generate")
                typer.echo(json.dumps({**counts, "output": output}) if as_json else
                           f"{counts['written']} written, {counts['skipped']} already there ({counts['shards']} shards, "
                           f"{counts['redone']} redone after a lost worker) -> {output}")
                return
            lm = load(model, adapter=adapter, progress=not as_json, backend=backend, dtype=dtype)
            kwargs = dict(method=method, options=options, chat=chat, max_new_tokens=max_new_tokens,
                          temperature=temperature, top_k=top_k, top_p=top_p, seed=seed, stop=stop, **shaping)
            from .common import progress

            with progress() as bar:
                task = bar.add_task(f"{method}, {concurrency} at a time", total=len(rows))
                counts = generate_file.run(lm, rows, Path(output), concurrency, kwargs,
                                           tick=lambda n, rid: bar.update(task, advance=n))
            rate = counts["tokens"] / counts["seconds"] if counts["seconds"] else 0.0
            typer.echo(json.dumps({**counts, "tokens_per_second": round(rate, 1), "output": output}) if as_json else
                       f"{counts['written']} written, {counts['skipped']} already there; {counts['tokens']} tokens in "
                       f"{counts['seconds']:.1f} s ({rate:.1f} tok/s) -> {output}")
            return
        lm = load(model, adapter=adapter, progress=not as_json, backend=backend, dtype=dtype)
        live = None
        if method == "multiverse" and not as_json:  # one panel per path as they grow
            from rich.live import Live

            from ..multiverse.view import render

            live = Live(console=Console(), refresh_per_second=8, transient=False)
        on_update = (lambda engine, update: live.update(render(engine))) if live else None
        stream = lm.stream(prompt, method=method, options=options, chat=chat, max_new_tokens=max_new_tokens,
                           temperature=temperature, top_k=top_k, top_p=top_p, seed=seed, stop=stop, logprobs=logprobs,
                           **shaping, **({"on_update": on_update} if on_update else {}))
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
    if as_json:
        out = result.to_dict()
        out["model"] = model
        out["stats"].pop("accepted_per_pass", None)
        out["accepted_per_pass"] = result.stats.accepted_per_pass
        if result.logprobs is not None:
            out["logprobs"] = logprob_rows(lm.tokenizer, result.logprobs)
        typer.echo(json.dumps(out))
    else:
        typer.echo("")
        if result.logprobs is not None:
            table = Table("token", "logprob", "likeliest")
            for row in logprob_rows(lm.tokenizer, result.logprobs):
                table.add_row(repr(row["text"]), f"{row['logprob']:.4f}",
                              "  ".join(f"{t!r} {lp:.3f}" for _, t, lp in row["top"]))
            Console(stderr=True).print(table)
        typer.echo(f"[{method}] {result.stats.line()}")


def constraint(json_schema: Optional[str], json_object: bool, regex: Optional[str],
               grammar: Optional[str]) -> Optional[GrammarSpec]:
    """The structured-output flags as one GrammarSpec (None: none given); files are read here."""
    given = [flag for flag, value in (("--json-schema", json_schema), ("--json-object", json_object or None),
                                      ("--regex", regex), ("--grammar", grammar)) if value is not None]
    if len(given) > 1:
        raise ConfigError(f"{given[0]} and {given[1]} both constrain the output: give one")
    if json_object:
        return GrammarSpec.json_object()
    if regex is not None:
        return GrammarSpec.regex(regex)
    for path, make in ((json_schema, GrammarSpec.json_schema), (grammar, GrammarSpec.lark)):
        if path is not None:
            try:
                text = Path(path).read_text()
            except (OSError, UnicodeDecodeError) as exc:
                raise ConfigError(f"cannot read {path}: {exc.strerror if isinstance(exc, OSError) else exc}") from None
            return make(text)
    return None


def logprob_rows(tokenizer, entries) -> list[dict]:
    """``logprobs.TokenLogprob`` entries as JSON rows: token id and text, logprob, top [id, text, logprob]."""
    text = lambda t: tokenizer.decode([t])  # noqa: E731
    return [{"token": e.token, "text": text(e.token), "logprob": e.logprob,
             "top": [[t, text(t), lp] for t, lp in e.top]} for e in entries]



def list_methods() -> None:
    """List the registered decoding methods and their options."""
    table = Table("method", "options", "what it does")
    for m in registry:
        opts = ", ".join(f"{s.name}={s.default!r}" for s in m.specs()) or "-"
        table.add_row(m.name, opts, m.summary)
    Console().print(table)
