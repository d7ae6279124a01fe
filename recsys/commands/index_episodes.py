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
            help="MovieLens folder (u.data + u.item); default <data_dir>/movielens-100k",
        ),
        cuts: str = typer.Option(
            "2,3,4,5,6", "--cuts", help="which item from the end is the truth, one index per cut"
        ),
        users: str = typer.Option(
            "train", "--users", help="train (users the held-out rule keeps out are left out) | all"
        ),
        heldout_fraction: float = typer.Option(0.35, "--heldout-fraction"),
        heldout_seed: int = typer.Option(7, "--heldout-seed"),
        k: int = typer.Option(20, "--k", help="candidates retrieved per request"),
        next_source: bool = typer.Option(True, "--next-source/--no-next-source"),
        embeddings: str = typer.Option("minilm", "--embeddings", help="minilm | hashing | off"),
        seed: int = typer.Option(7, "--seed"),
        progress: bool = typer.Option(True, "--progress/--no-progress"),
        url: str | None = typer.Option(None, "--url", help="database URL (RECSYS_DATABASE_URL)"),
    ) -> None:
        """Build the production index at earlier cuts of every user's log and write the
        requests it would serve, with the truth, as episodes (docs/training.md)."""
        import os

        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        from recsys.errors import UserError
        from recsys.index_episodes import IndexEpisodesOptions, build_index_episodes
        from recsys.pipeline import DemoConfig, check_demo_config
        from recsys.settings import get_settings

        settings = get_settings()
        try:
            parsed = tuple(int(c) for c in cuts.split(",") if c.strip())
        except ValueError:
            raise UserError(f"--cuts {cuts!r}: give whole numbers separated by commas") from None
        index = DemoConfig(
            data=data or settings.data_dir / "movielens-100k",
            k=k,
            seed=seed,
            next_source=next_source,
            embeddings=embeddings,
            progress=progress,
            database_url=url or settings.database_url,
            artifact_dir=settings.resolved_artifact_dir,
        )
        check_demo_config(index)
        opts = IndexEpisodesOptions(
            index=index,
            out=out,
            cuts=parsed,
            users=users,
            heldout_fraction=heldout_fraction,
            heldout_seed=heldout_seed,
        )
        summaries = build_index_episodes(opts, echo=typer.echo)
        total = sum(s.episodes for s in summaries)
        typer.echo(f"wrote {total} episodes to {out}")
