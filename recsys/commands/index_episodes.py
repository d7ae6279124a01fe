"""`recsys index-episodes`: training episodes from the production index (recsys.index_episodes)."""

from __future__ import annotations

from pathlib import Path

import typer


def register(app: typer.Typer) -> None:
    @app.command("index-episodes")
    def index_episodes(
        out: Path = typer.Option(
            ..., "--out", help="the JSONL file written (recsys train --source)"
        ),
        data: Path | None = typer.Option(
            None,
            "--data",
            help="a MovieLens folder (u.data + u.item), ingested first; default: the database's "
            "interactions, as recsys batch reads them",
        ),
        cuts: str = typer.Option(
            "2,3,4,5,6", "--cuts", help="which item from the end is the truth, one index per cut"
        ),
        users: str = typer.Option(
            "train",
            "--users",
            help="train (users the held-out rule holds out are left out) | all | heldout (only "
            "those: a test set for recsys replay --episodes; cut 1 allowed)",
        ),
        heldout_fraction: float = typer.Option(0.35, "--heldout-fraction"),
        heldout_seed: int = typer.Option(7, "--heldout-seed"),
        task: str = typer.Option("rec-movie", "--task", help="the requests' task, as recsys batch"),
        k: int = typer.Option(20, "--k", help="candidates retrieved per request"),
        history: int = typer.Option(20, "--history", help="history items a request shows"),
        next_source: bool = typer.Option(True, "--next-source/--no-next-source"),
        ltr: bool = typer.Option(True, "--ltr/--no-ltr", help="the LambdaMART stage after fusion"),
        ltr_text: bool = typer.Option(
            False, "--ltr-text/--no-ltr-text", help="as recsys batch: title-embedding features"
        ),
        ltr_bag: int = typer.Option(
            1, "--ltr-bag", help="as recsys batch: the LambdaMART stage averages N LightGBM fits"
        ),
        embeddings: str = typer.Option("minilm", "--embeddings", help="minilm | hashing | off"),
        cf_epochs: int = typer.Option(30, "--cf-epochs", help="LightFM WARP epochs"),
        seed: int = typer.Option(7, "--seed", help="the index's seed"),
        progress: bool = typer.Option(True, "--progress/--no-progress"),
        url: str | None = typer.Option(None, "--url", help="database URL (RECSYS_DATABASE_URL)"),
    ) -> None:
        """Build the production index at earlier cuts of every user's log and write the
        requests it would serve, with the truth, as episodes (docs/training.md)."""
        import os

        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        from recsys.errors import UserError
        from recsys.index_episodes import IndexEpisodesOptions, build_index_episodes
        from recsys.pipeline import production_index_config
        from recsys.settings import get_settings

        settings = get_settings()
        try:
            parsed = tuple(int(c) for c in cuts.split(",") if c.strip())
        except ValueError:
            raise UserError(f"--cuts {cuts!r}: give whole numbers separated by commas") from None
        index = production_index_config(cf_epochs=cf_epochs, seed=seed, ltr=ltr, ltr_text=ltr_text,
                                        ltr_bag=ltr_bag, next_source=next_source)  # fmt: skip
        opts = IndexEpisodesOptions(
            out=out,
            data=data,
            index=index,
            cuts=parsed,
            users=users,
            heldout_fraction=heldout_fraction,
            heldout_seed=heldout_seed,
            task=task,
            k=k,
            history=history,
            embeddings=embeddings,
            progress=progress,
            database_url=url or settings.database_url,
            artifact_dir=settings.resolved_artifact_dir,
        )
        summaries = build_index_episodes(opts, echo=typer.echo)
        total = sum(s.episodes for s in summaries)
        typer.echo(f"wrote {total} episodes to {out}")
