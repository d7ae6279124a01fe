"""Helpers for tests of code that uses the database (any package's tests may use them)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

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
