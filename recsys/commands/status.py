"""`recsys status`: database, broker and workers, served and promoted versions, the index,
recent traffic and jobs; exit code 1 when something is down."""

from __future__ import annotations

import json

import typer


def register(app: typer.Typer) -> None:
    @app.command("status")
    def status(as_json: bool = typer.Option(False, "--json", help="one JSON object")) -> None:
        """One line per part with OK or DOWN; non-zero exit when anything is down."""
        from recsys.settings import get_settings
        from recsys.status import as_json as to_json
        from recsys.status import system_status

        checks = system_status(get_settings())
        if as_json:
            typer.echo(json.dumps(to_json(checks), indent=2, default=str))
        else:
            for check in checks:
                typer.echo(f"{'OK  ' if check.ok else 'DOWN'} {check.name:<9} {check.detail}")
        if not all(c.ok for c in checks):
            raise SystemExit(1)  # (typer.Exit is swallowed in non-standalone mode)
