"""Alembic, configured in code so that migrations work from an installed package and any cwd."""

from __future__ import annotations

import importlib.util
from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory

from recsys.db.engine import database_url, make_engine
from recsys.errors import UserError


def migrations_dir() -> Path:
    """The installed `migrations` package (works for editable and regular installs)."""
    spec = importlib.util.find_spec("migrations")
    for location in (spec.submodule_search_locations or []) if spec else []:
        if (Path(location) / "env.py").is_file():
            return Path(location).resolve()
    raise UserError("the `migrations` package is missing; reinstall recsys-iranker")


def alembic_config(url: str | None = None) -> Config:
    """An Alembic Config pointing at our migrations/ package and the given database."""
    config = Config()
    config.set_main_option("script_location", str(migrations_dir()))
    # passed as an attribute, not an ini option: ini values treat '%' as interpolation
    config.attributes["database_url"] = database_url(url)
    return config


def upgrade(url: str | None = None, revision: str = "head") -> None:
    """Migrate the database up to `revision` (default: the newest)."""
    _run(command.upgrade, url, revision)


def downgrade(url: str | None = None, revision: str = "-1") -> None:
    """Migrate down to `revision` (default: one step; 'base' removes every table)."""
    _run(command.downgrade, url, revision)


def _run(step, url: str | None, revision: str) -> None:  # type: ignore[no-untyped-def]
    from alembic.util import CommandError

    try:
        step(alembic_config(url), revision)
    except CommandError as exc:
        raise UserError(f"migration to {revision!r} failed: {exc}") from exc


def current_revision(url: str | None = None) -> str | None:
    """The revision the database is at (None: never migrated)."""
    engine = make_engine(url)
    try:
        with engine.connect() as conn:
            return MigrationContext.configure(conn).get_current_revision()
    finally:
        engine.dispose()


def head_revision() -> str | None:
    return ScriptDirectory.from_config(alembic_config("sqlite://")).get_current_head()


def ensure_schema(url: str | None = None) -> None:
    """Upgrade to head if the database is behind (the embedded default needs no set-up step)."""
    if current_revision(url) != head_revision():
        upgrade(url)
