"""`recsys committee OUT --member M --member M ...`: several trained rankers as one
(ranking.backends.committee; docs/ranking.md "Committees")."""

from __future__ import annotations

import typer


def register(app: typer.Typer) -> None:
    @app.command("committee")
    def committee(
        out: str = typer.Argument(..., help="the committee folder to write"),
        members: list[str] = typer.Option(
            ..., "--member", help="a member model (folder or spec); repeat, 1 to 8"
        ),
        weights: list[float] | None = typer.Option(
            None, "--weight", help="one per member, in order (normalised); default equal"
        ),
        fusion_alpha: float | None = typer.Option(
            None, "--fusion-alpha", help="the serving weight the card records (see the card)"
        ),
        overwrite: bool = typer.Option(False, "--overwrite", help="replace OUT's committee"),
    ) -> None:
        """Write a committee folder: its members' step distributions are pooled (a weighted
        geometric mean) at every ranking step. Serve or evaluate it as any model folder."""
        from recsys.committee import make_committee

        folder = make_committee(
            out, members, weights or None, fusion_alpha=fusion_alpha, overwrite=overwrite
        )
        typer.echo(f"wrote {folder}")
