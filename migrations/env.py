"""Alembic environment. The database URL comes from the caller (`recsys db upgrade`, which passes
it in `config.attributes["database_url"]`), else `sqlalchemy.url` in alembic.ini, else the
settings (RECSYS_DATABASE_URL or the SQLite file under var/). No schema name is set here: on
PostgreSQL the connection's search_path decides where the tables and alembic_version live."""

from __future__ import annotations

from alembic import context

from recsys.db.engine import make_engine
from recsys.db.models import Base

config = context.config
target_metadata = Base.metadata


def _url() -> str | None:
    return config.attributes.get("database_url") or config.get_main_option("sqlalchemy.url")


def run_migrations_offline() -> None:
    context.configure(
        url=_url() or make_engine().url.render_as_string(hide_password=False),
        target_metadata=target_metadata,
        literal_binds=True,
        render_as_batch=True,
    )
    with context.begin_transaction():
        context.run_migrations()


def run_migrations_online() -> None:
    connection = config.attributes.get("connection")
    if connection is not None:
        _run(connection)
        return
    engine = make_engine(_url())
    try:
        with engine.connect() as conn:
            _run(conn)
    finally:
        engine.dispose()


def _run(connection) -> None:  # type: ignore[no-untyped-def]
    # batch mode: SQLite cannot ALTER most things, Alembic copies the table instead
    context.configure(connection=connection, target_metadata=target_metadata, render_as_batch=True)
    with context.begin_transaction():
        context.run_migrations()


if context.is_offline_mode():
    run_migrations_offline()
else:
    run_migrations_online()
