"""`recsys rank --request FILE|-`: rank one request (JSON) and print the RankResult as JSON."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import typer


def read_request(source: str):  # type: ignore[no-untyped-def]
    """Parse a RankRequest from a JSON file path or '-' (stdin); RequestError when invalid."""
    from ranking.errors import RequestError
    from ranking.types import RankRequest

    if source == "-":
        text = sys.stdin.read()
        where = "stdin"
    else:
        path = Path(source)
        if not path.is_file():
            raise RequestError(f"request file {source!r} not found; pass a JSON file or '-'")
        text = path.read_text(encoding="utf-8")
        where = source
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise RequestError(f"{where} is not valid JSON: {exc}") from exc
    return RankRequest.from_dict(data)


def register(app: typer.Typer) -> None:
    @app.command("rank")
    def rank(
        request: str = typer.Option(
            ..., "--request", "-r", help="request JSON file, or - for stdin"
        ),
        mode: str | None = typer.Option(None, "--mode", help="override the request's mode"),
        model: str | None = typer.Option(
            None, "--model", help="default | promoted | a registered version | HF dir | .gguf"
        ),
        device: str | None = typer.Option(None, "--device", help="auto | cpu | cuda"),
        backend: str | None = typer.Option(None, "--backend", help="transformers | vllm"),
        dtype: str | None = typer.Option(
            None, "--dtype", help="auto | float32 | bfloat16 | float16 (RECSYS_DTYPE)"
        ),
        max_new_tokens: int | None = typer.Option(
            None,
            "--max-new-tokens",
            help="reason mode: cap on generated tokens per step (RECSYS_REASON_MAX_NEW_TOKENS)",
        ),
        audit: bool = typer.Option(False, "--audit", help="keep prompts/responses in the output"),
    ) -> None:
        """Rank one request and print the result (order, steps, log_propensity, ...) as JSON."""
        import dataclasses

        from recsys import runtime

        req = read_request(request)
        if mode is not None:
            req = dataclasses.replace(req, mode=mode)  # re-validated in __post_init__
        ranker = runtime.load_ranker(model=model, device=device, backend=backend, dtype=dtype,
                                     reason_max_new_tokens=max_new_tokens)  # fmt: skip
        result = ranker.rank(req).to_dict()
        if not audit:
            result["prompt"] = None
            for step in result["steps"]:
                step["prompt"] = None
        typer.echo(json.dumps(result, indent=2))
