"""`polyverse export gguf|hf`: write a model (adapters merged) as a GGUF file for llama.cpp, or as a
Hugging Face directory (safetensors) for vLLM and other engines."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from ..errors import ConfigError
from .common import clean_exit, progress

export_app = typer.Typer(no_args_is_help=True, help="Export a model for other engines.")


@export_app.command("gguf")
def export_gguf_cmd(
    out: str = typer.Option(..., "--out", help="The .gguf file to write."),
    model: str = typer.Option("SmolLM2-135M-Instruct", "--model", help="Bundled model name or a .gguf file."),
    adapter: Optional[str] = typer.Option(None, "--adapter", help="Adapter merged into the weights (e.g. multiverse-gsm8k)."),
    qtype: str = typer.Option("f16", "--type", help="f16, q8_0 or q4_1 (norms stay f32)."),
) -> None:
    """GGUF of the model with the adapter merged, so that fine-tunes run on `--backend llamacpp`."""
    from ..export import TYPES, export_gguf
    from ..models.load import BUNDLED_NAME, bundled_gguf

    with clean_exit():
        if qtype not in TYPES:
            raise ConfigError(f"--type must be one of {', '.join(TYPES)}, got '{qtype}'")
        if not out.endswith(".gguf"):
            raise ConfigError("--out must name a .gguf file")
        source = bundled_gguf() if model == BUNDLED_NAME else Path(model)
        if source.suffix.lower() != ".gguf":
            raise ConfigError("export reads the tokenizer metadata from the model's GGUF: pass the bundled model or a .gguf")
        from .common import load

        lm = load(model, adapter=adapter)
        Path(out).parent.mkdir(parents=True, exist_ok=True)
        n = len(lm.hf_model.state_dict())
        with progress() as bar:
            task = bar.add_task("export", total=n)
            export_gguf(lm, Path(out), qtype, source, tick=lambda name: bar.update(task, advance=1, description=name))
    typer.echo(f"wrote {out} ({Path(out).stat().st_size / 2**20:.1f} MiB, {qtype})")


@export_app.command("hf")
def export_hf_cmd(
    out: str = typer.Option(..., "--out", help="The folder to write (config, safetensors weights, tokenizer)."),
    model: str = typer.Option("SmolLM2-135M-Instruct", "--model", help="Bundled model name, HF directory or .gguf file."),
    adapter: Optional[str] = typer.Option(None, "--adapter", help="Adapter merged into the weights (e.g. cllm-gsm8k)."),
) -> None:
    """Hugging Face directory of the model with the adapter merged (fp32 safetensors): what vLLM,
    transformers and other engines load as a plain model."""
    with clean_exit():
        target = Path(out)
        if target.exists() and any(target.iterdir()):
            raise ConfigError(f"--out {out} exists and is not empty")
        from .common import load

        lm = load(model, adapter=adapter)
        with progress() as bar:
            task = bar.add_task("export", total=2)
            target.mkdir(parents=True, exist_ok=True)
            lm.hf_model.save_pretrained(target, safe_serialization=True)
            bar.update(task, advance=1)
            lm.tokenizer.save_pretrained(target)
            bar.update(task, advance=1)
    typer.echo(f"wrote {out} (model{' + ' + adapter if adapter else ''}, safetensors)")
