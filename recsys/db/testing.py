"""Helpers for tests of code that uses the database (any package's tests may use them)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from recsys.db.engine import make_engine
from recsys.db.migrate import upgrade


@contextmanager
def migrated_engine(url: str) -> Iterator[Engine]:
    """An engine on `url` after `alembic upgrade head`; its pool is closed at the end (so the
    test's PostgreSQL schema can be dropped)."""
    upgrade(url)
    engine = make_engine(url)
    try:
        yield engine
    finally:
        engine.dispose()


def count_rows(model: type, *, engine: Engine) -> int:
    """How many rows the table of mapped class `model` holds."""
    with engine.connect() as conn:
        return conn.execute(sa.select(sa.func.count()).select_from(model.__table__)).scalar_one()


def create_postgres_schema(server_url: str, prefix: str = "t") -> tuple[str, str]:
    """A fresh schema on the PostgreSQL server of `server_url`: (a URL whose search_path is
    that schema, the schema's name). Drop it with `drop_postgres_schema`."""
    import uuid

    schema = f"{prefix}_{uuid.uuid4().hex[:10]}"
    engine = sa.create_engine(server_url)
    try:
        with engine.begin() as conn:
            conn.execute(sa.text(f'CREATE SCHEMA "{schema}"'))
    finally:
        engine.dispose()
    return f"{server_url}?options=-csearch_path%3D{schema}", schema


def drop_postgres_schema(server_url: str, schema: str) -> None:
    engine = sa.create_engine(server_url)
    try:
        with engine.begin() as conn:
            conn.execute(sa.text(f'DROP SCHEMA "{schema}" CASCADE'))
    finally:
        engine.dispose()
