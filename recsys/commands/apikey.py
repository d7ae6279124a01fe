"""`recsys apikey create|revoke|list`: credentials for the API (RECSYS_REQUIRE_API_KEY=true)."""

from __future__ import annotations

import typer


def register(app: typer.Typer) -> None:
    keys = typer.Typer(help="API keys for `recsys serve`.", no_args_is_help=True)

    @keys.command("create")
    def create(
        name: str,
        scope: list[str] = typer.Option(["rank"], "--scope", help="repeatable; default rank"),
    ) -> None:
        """Create a key and print it once (only its hash is stored)."""
        from recsys.auth import create_api_key
        from recsys.db.engine import get_engine
        from recsys.db.migrate import ensure_schema

        ensure_schema()
        typer.echo(create_api_key(name, scope, engine=get_engine()))

    @keys.command("revoke")
    def revoke(name: str) -> None:
        from recsys.db.apikeys import revoke_api_key
        from recsys.db.engine import get_engine
        from recsys.db.migrate import ensure_schema

        ensure_schema()
        revoke_api_key(name, engine=get_engine())
        typer.echo(f"revoked {name}")

    @keys.command("list")
    def list_() -> None:
        from recsys.db.apikeys import api_keys
        from recsys.db.engine import get_engine
        from recsys.db.migrate import ensure_schema

        ensure_schema()
        for k in api_keys(engine=get_engine()):
            state = "revoked" if k.revoked else "active"
            typer.echo(f"{k.name:<24} {','.join(k.scopes):<16} {state}")

    app.add_typer(keys, name="apikey")
