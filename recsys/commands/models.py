"""`recsys models list|register|promote|rollback|retire|history`: the model registry."""

from __future__ import annotations

import json

import typer

KIND_HELP = "ranker | cf | index | embeddings"
URL_OPTION = typer.Option(None, "--url", help="database URL; default RECSYS_DATABASE_URL")


def _engine(url: str | None):  # type: ignore[no-untyped-def]
    from recsys.db.engine import get_engine
    from recsys.db.migrate import ensure_schema

    ensure_schema(url)
    return get_engine(url)


def _line(info) -> str:  # type: ignore[no-untyped-def]
    when = info.promoted_at or info.created_at
    metrics = json.dumps(info.metrics, sort_keys=True) if info.metrics else ""
    return (
        f"{info.kind:<10} {info.version:<24} {info.status:<9} {when:%Y-%m-%d %H:%M} "
        f"{info.artifact_uri} {metrics}".rstrip()
    )


def register(app: typer.Typer) -> None:
    models_app = typer.Typer(
        help="Model registry: versions, promotion, rollback.", no_args_is_help=True
    )

    @models_app.command("list")
    def list_(
        kind: str | None = typer.Option(None, "--kind", help=KIND_HELP),
        as_json: bool = typer.Option(False, "--json", help="print JSON instead of a table"),
        url: str | None = URL_OPTION,
    ) -> None:
        """List registered versions, newest first."""
        from dataclasses import asdict

        from recsys.db.registry import list_models

        versions = list_models(kind, engine=_engine(url))
        if as_json:
            typer.echo(json.dumps([asdict(v) for v in versions], default=str, indent=2))
            return
        if not versions:
            typer.echo("no model versions registered")
        for info in versions:
            typer.echo(_line(info))

    @models_app.command("register")
    def register_(
        kind: str = typer.Argument(..., help=KIND_HELP),
        version: str = typer.Argument(...),
        artifact: str = typer.Argument(..., help="path or URI of the artifact"),
        metrics: str | None = typer.Option(None, "--metrics", help="JSON object of metrics"),
        checksum: bool = typer.Option(True, help="record the sha256 of a local artifact"),
        url: str | None = URL_OPTION,
    ) -> None:
        """Register a new candidate version."""
        from recsys import registry
        from recsys.db.registry import register_model
        from recsys.errors import UserError

        try:
            parsed = json.loads(metrics) if metrics else {}
        except json.JSONDecodeError as exc:
            raise UserError(f"--metrics is not valid JSON: {exc}") from exc
        if not isinstance(parsed, dict):
            raise UserError("--metrics must be a JSON object, e.g. '{\"mrr\": 0.31}'")
        path = registry.local_artifact_path(artifact)
        if path is not None and not path.exists():
            raise UserError(f"artifact {path} does not exist")
        sha = registry.sha256_of(path) if checksum and path is not None else None
        info = register_model(
            kind, version, artifact, sha256=sha, metrics=parsed, engine=_engine(url)
        )
        typer.echo(_line(info))

    @models_app.command("promote")
    def promote(
        kind: str = typer.Argument(..., help=KIND_HELP),
        version: str = typer.Argument(...),
        force: bool = typer.Option(False, "--force", help="skip the promotion gates"),
        url: str | None = URL_OPTION,
    ) -> None:
        """Make a version the served one (after the promotion gates pass)."""
        from recsys import registry
        from recsys.gate import evaluation_gate

        # rankers must beat the promoted one (recsys.gate)
        info, decision = registry.promote(
            kind, version, force=force, extra_gates=[evaluation_gate], engine=_engine(url)
        )
        typer.echo(f"promoted: {_line(info)}\n  gates: {decision.reason}")

    @models_app.command("rollback")
    def rollback(
        kind: str = typer.Argument(..., help=KIND_HELP), url: str | None = URL_OPTION
    ) -> None:
        """Retire the promoted version and promote the one before it."""
        from recsys.db.registry import rollback_model

        info = rollback_model(kind, engine=_engine(url))
        typer.echo(f"promoted: {_line(info)}")

    @models_app.command("retire")
    def retire(
        kind: str = typer.Argument(..., help=KIND_HELP),
        version: str = typer.Argument(...),
        url: str | None = URL_OPTION,
    ) -> None:
        """Take a (non-promoted) version out of use for good."""
        from recsys.db.registry import retire_model

        info = retire_model(kind, version, engine=_engine(url))
        typer.echo(f"retired: {_line(info)}")

    @models_app.command("history")
    def history(
        kind: str | None = typer.Option(None, "--kind", help=KIND_HELP),
        limit: int = typer.Option(50, "--limit", min=1, max=10_000),
        url: str | None = URL_OPTION,
    ) -> None:
        """Registrations, promotions (with the gates' reasons) and retirements, newest first."""
        from recsys.db.registry import model_history

        events = model_history(kind, limit=limit, engine=_engine(url))
        if not events:
            typer.echo("no registry events")
        for e in events:
            reason = f"  {e.reason}" if e.reason else ""
            typer.echo(f"{e.at:%Y-%m-%d %H:%M:%S} {e.kind:<10} {e.version:<24} {e.action}{reason}")

    app.add_typer(models_app, name="models")
