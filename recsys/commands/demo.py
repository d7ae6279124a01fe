"""`recsys demo`: the end-to-end main job on the embedded default (see recsys.pipeline)."""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

import typer


def register(app: typer.Typer) -> None:
    @app.command("demo")
    def demo(
        data: Path | None = typer.Option(
            None,
            "--data",
            help="MovieLens folder (u.data + u.item); default <data_dir>/movielens-100k",
        ),
        users: int = typer.Option(
            20, "--users", help="users re-ranked by IRanker, a seeded sample (0 = all)"
        ),
        k: int = typer.Option(20, "--k", help="candidates retrieved per user"),
        model: str | None = typer.Option(
            None, "--model", help="ranker: default | promoted | version | HF dir | .gguf"
        ),
        device: str | None = typer.Option(None, "--device", help="cpu | cuda | auto (settings)"),
        dtype: str | None = typer.Option(
            None, "--dtype", help="auto | float32 | bfloat16 | float16 (settings)"
        ),
        rerank: bool = typer.Option(True, "--rerank/--no-rerank", help="run the IRanker stage"),
        ltr: bool = typer.Option(
            True, "--ltr/--no-ltr", help="the LambdaMART stage after fusion, as recsys batch"
        ),
        next_source: bool = typer.Option(
            True,
            "--next-source/--no-next-source",
            help="retrieval also fuses the `next` source (items that followed the user's last "
            "items), as recsys batch (docs/retrieval.md)",
        ),
        embeddings: str = typer.Option(
            "minilm", "--embeddings", help="item text embeddings: minilm | hashing | off"
        ),
        cf_epochs: int = typer.Option(30, "--cf-epochs", help="LightFM WARP epochs"),
        seed: int = typer.Option(7, "--seed"),
        progress: bool = typer.Option(True, "--progress/--no-progress"),
        report_json: Path | None = typer.Option(None, "--report", help="also write JSON here"),
        url: str | None = typer.Option(None, "--url", help="database URL (RECSYS_DATABASE_URL)"),
    ) -> None:
        """Ingest MovieLens, train CF + embed items + build FAISS indexes, retrieve top-K,
        re-rank with IRanker, store the lists, print examples, metrics and stage times."""
        import os

        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        from recsys.pipeline import DemoConfig, format_report, run_demo
        from recsys.settings import get_settings

        settings = get_settings()
        if settings.torch_threads:
            import torch

            torch.set_num_threads(settings.torch_threads)
        config = DemoConfig(
            data=data or settings.data_dir / "movielens-100k",
            users=users,
            k=k,
            seed=seed,
            model=model,
            device=device,
            dtype=dtype,
            rerank=rerank,
            ltr=ltr,
            next_source=next_source,
            embeddings=embeddings,
            cf_epochs=cf_epochs,
            progress=progress,
            database_url=url or settings.database_url,
            artifact_dir=settings.resolved_artifact_dir,
        )
        report = run_demo(config, echo=typer.echo)
        typer.echo(format_report(report))
        if report_json:
            report_json.parent.mkdir(parents=True, exist_ok=True)
            report_json.write_text(json.dumps(asdict(report), indent=2))
