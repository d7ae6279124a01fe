"""`recsys db upgrade|downgrade|current`: Alembic migrations of the configured database."""

from __future__ import annotations

import typer

URL_OPTION = typer.Option(
    None, "--url", help="SQLAlchemy URL; default RECSYS_DATABASE_URL or the SQLite file in var/"
)


def register(app: typer.Typer) -> None:
    db_app = typer.Typer(help="Database migrations (Alembic).", no_args_is_help=True)

    @db_app.command("upgrade")
    def upgrade(
        revision: str = typer.Argument("head", help="target revision"), url: str | None = URL_OPTION
    ) -> None:
        """Migrate the database up (default: to the newest revision)."""
        from recsys.db import migrate

        migrate.upgrade(url, revision)
        typer.echo(f"database at revision {migrate.current_revision(url)}")

    @db_app.command("downgrade")
    def downgrade(
        revision: str = typer.Argument("-1", help="target revision; 'base' drops every table"),
        url: str | None = URL_OPTION,
    ) -> None:
        """Migrate the database down (default: one revision)."""
        from recsys.db import migrate

        migrate.downgrade(url, revision)
        typer.echo(f"database at revision {migrate.current_revision(url) or 'base'}")

    @db_app.command("current")
    def current(url: str | None = URL_OPTION) -> None:
        """Print the database's revision and the newest one available."""
        from recsys.db import migrate

        typer.echo(f"current: {migrate.current_revision(url) or 'base'}")
        typer.echo(f"head:    {migrate.head_revision()}")

    app.add_typer(db_app, name="db")
