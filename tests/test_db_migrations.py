"""Alembic migrations on SQLite and PostgreSQL: round trip, models match, CLI from any cwd."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import sqlalchemy as sa
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext

from recsys.db import migrate
from recsys.db.engine import make_engine
from recsys.db.models import Base
from recsys.errors import UserError

TABLES = {
    "users",
    "items",
    "interactions",
    "impressions",
    "recommendations",
    "model_versions",
    "job_runs",
    "api_keys",
    "model_events",
}


def _tables(url: str) -> set[str]:
    engine = make_engine(url)
    try:
        with engine.connect() as conn:
            return set(sa.inspect(conn).get_table_names()) - {"alembic_version"}
    finally:
        engine.dispose()


def test_upgrade_downgrade_upgrade_round_trip(database_url: str) -> None:
    migrate.upgrade(database_url)
    assert _tables(database_url) == TABLES
    assert migrate.current_revision(database_url) == migrate.head_revision()

    migrate.downgrade(database_url, "base")
    assert _tables(database_url) == set()
    assert migrate.current_revision(database_url) is None

    migrate.upgrade(database_url)
    assert _tables(database_url) == TABLES


def test_migrations_match_the_models(database_url: str) -> None:
    """A model change without a migration (or the reverse) shows up here."""
    migrate.upgrade(database_url)
    engine = make_engine(database_url)
    try:
        with engine.connect() as conn:
            diff = compare_metadata(MigrationContext.configure(conn), Base.metadata)
    finally:
        engine.dispose()
    assert diff == []


def test_hot_query_indexes_exist(database_url: str) -> None:
    migrate.upgrade(database_url)
    engine = make_engine(database_url)
    try:
        with engine.connect() as conn:
            inspector = sa.inspect(conn)
            indexed = {
                table: {tuple(ix["column_names"]) for ix in inspector.get_indexes(table)}
                | {tuple(uq["column_names"]) for uq in inspector.get_unique_constraints(table)}
                for table in ("interactions", "impressions", "recommendations")
            }
    finally:
        engine.dispose()
    assert ("user_id", "timestamp") in indexed["interactions"]
    assert ("request_id",) in indexed["impressions"]
    assert ("run_id", "user_id", "rank") in indexed["recommendations"]


def test_sqlite_runs_in_wal_mode_with_foreign_keys(sqlite_url: str) -> None:
    migrate.upgrade(sqlite_url)
    engine = make_engine(sqlite_url)
    try:
        with engine.connect() as conn:
            assert conn.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
            assert conn.exec_driver_sql("PRAGMA foreign_keys").scalar() == 1
        with pytest.raises(sa.exc.IntegrityError, match="FOREIGN KEY"), engine.begin() as conn:
            conn.exec_driver_sql(
                "INSERT INTO interactions (event_id, user_id, item_id, event, timestamp, source)"
                " VALUES ('x', 99, 99, 'view', '2024-01-01 00:00:00', 'test')"
            )
    finally:
        engine.dispose()


def test_unknown_revision_is_a_user_error(sqlite_url: str) -> None:
    with pytest.raises(UserError, match="migration to 'nope' failed"):
        migrate.upgrade(sqlite_url, "nope")


def test_cli_db_upgrade_and_downgrade_from_another_directory(tmp_path) -> None:
    """`recsys db ...` finds its migrations from any cwd (configured in code, no alembic.ini)."""
    url = f"sqlite:///{tmp_path / 'cli.db'}"
    env = {**os.environ, "RECSYS_DATABASE_URL": url}
    run = [sys.executable, "-c", "from recsys.cli import main; main()", "db"]
    up = subprocess.run([*run, "upgrade"], cwd=tmp_path, env=env, capture_output=True, text=True)
    assert up.returncode == 0, up.stderr
    assert f"database at revision {migrate.head_revision()}" in up.stdout
    assert _tables(url) == TABLES

    down = subprocess.run(
        [*run, "downgrade", "base"], cwd=tmp_path, env=env, capture_output=True, text=True
    )
    assert down.returncode == 0, down.stderr
    assert _tables(url) == set()

    bad = subprocess.run(
        [*run, "upgrade", "zzzz"], cwd=tmp_path, env=env, capture_output=True, text=True
    )
    assert bad.returncode == 2
    assert "error: migration to 'zzzz' failed" in bad.stderr
    assert "Traceback" not in bad.stderr
