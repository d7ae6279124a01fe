"""`recsys prune`: delete what retention lets go (recsys.retention); a dry run unless --apply."""

from __future__ import annotations

import typer


def register(app: typer.Typer) -> None:
    @app.command("prune")
    def prune(
        apply: bool = typer.Option(False, "--apply", help="delete (default: only list)"),
        keep_versions: int | None = typer.Option(
            None, "--keep-versions", help="newest versions kept per kind (RECSYS_RETENTION_*)"
        ),
        keep_days: float | None = typer.Option(
            None, "--keep-days", help="versions younger than this many days stay"
        ),
        recommendations_days: float | None = typer.Option(
            None, "--recommendations-days", help="batch runs older than this go"
        ),
        impressions_days: float | None = typer.Option(
            None, "--impressions-days", help="impressions older than this go (default: kept)"
        ),
        url: str | None = typer.Option(None, "--url", help="database URL"),
    ) -> None:
        """Delete old artifacts, batch runs and (if asked) impressions: docs/operations.md."""
        from dataclasses import replace

        from recsys.db.engine import get_engine
        from recsys.db.migrate import ensure_schema
        from recsys.retention import Folders, RetentionPolicy, apply_prune, plan_prune
        from recsys.settings import get_settings

        settings = get_settings()
        given = {
            "keep_versions": keep_versions,
            "keep_days": keep_days,
            "recommendations_days": recommendations_days,
            "impressions_days": impressions_days,
        }
        chosen = {k: v for k, v in given.items() if v is not None}
        policy = replace(RetentionPolicy.from_settings(settings), **chosen)
        ensure_schema(url)
        engine = get_engine(url)
        folders = Folders.of(settings)
        plan = plan_prune(policy, engine=engine, folders=folders)
        for line in plan.lines():
            typer.echo(line)
        if not apply:
            typer.echo("dry run: nothing deleted; run again with --apply to delete the above")
            return
        done = apply_prune(plan, engine=engine, folders=folders)
        typer.echo("deleted: " + ", ".join(f"{v} {k.replace('_', ' ')}" for k, v in done.items()))
