"""The command line: `polyverse generate`, `polyverse methods`.

Bad input ends with a one-line error on stderr and exit status 2, never a traceback.
"""

from __future__ import annotations

import json
import sys
from typing import Any, Optional

import typer
from rich.console import Console
from rich.table import Table

from . import registry
from .config import GenerationConfig, SamplingConfig
from .errors import ConfigError, PolyverseError

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="Parallel decoding for language models: many tokens per forward pass, same output.")
err = Console(stderr=True)


def _fail(message: str, code: int = 2) -> None:
    err.print(f"[bold red]error:[/] {message}", highlight=False, soft_wrap=True)
    raise typer.Exit(code)


def _parse_value(raw: str) -> Any:
    try:
        return json.loads(raw)
    except json.JSONDecodeError:
        return raw


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
    k: Optional[int] = typer.Option(None, "--k", help="draft/early_exit: tokens drafted per pass."),
    layers: Optional[int] = typer.Option(None, "--layers", help="early_exit: the target's first L layers draft."),
    max_tokens: Optional[int] = typer.Option(None, "--max-tokens", help="auto: most draft tokens per candidate."),
    option: list[str] = typer.Option([], "--option", "-o", help="Method option KEY=VALUE (repeatable)."),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object (text, token ids, statistics) instead."),
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

        lm = load(model, progress=not as_json)
        stream = lm.stream(prompt, method=method, options=options, chat=chat, max_new_tokens=max_new_tokens,
                           temperature=temperature, top_k=top_k, top_p=top_p, seed=seed, stop=stop)
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


def main() -> None:
    try:
        app()
    except PolyverseError as exc:  # errors raised outside a command body
        err.print(f"[bold red]error:[/] {exc}", highlight=False)
        sys.exit(2)


if __name__ == "__main__":
    main()
