"""Engines and sessions. One place decides how we talk to SQLite and PostgreSQL.

SQLite gets WAL (readers never block the writer), enforced foreign keys, a busy timeout so
concurrent writers wait instead of failing, and real transactions: the sqlite3 driver's legacy
mode would skip BEGIN for DDL and SELECT, which breaks atomic migrations and repeatable reads.
A write transaction can ask for `BEGIN IMMEDIATE` (see `write_connection`), which takes the
write lock up front, so two writers queue on the busy timeout instead of failing with
"database is locked" when one of them upgrades a read snapshot.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.orm import Session

from recsys.errors import UserError

SQLITE_BUSY_TIMEOUT_MS = 60_000
SQLITE_DEFAULT_CACHE = -2000  # SQLite's own default: 2 MiB
_IMMEDIATE = "recsys_sqlite_immediate"

_engines: dict[str, Engine] = {}
_engines_lock = threading.Lock()


def database_url(url: str | None = None) -> str:
    """The URL to use: the argument, else RECSYS_DATABASE_URL, else the SQLite file in var/."""
    if url:
        return url
    from recsys.settings import get_settings

    return get_settings().resolved_database_url


def make_engine(url: str | None = None, **kwargs: object) -> Engine:
    """A new engine for `url` (default: the settings' database) with our SQLite set-up."""
    try:
        parsed = sa.make_url(database_url(url))
    except sa.exc.ArgumentError as exc:
        raise UserError(f"invalid database URL {url!r}: {exc}; set RECSYS_DATABASE_URL") from exc
    if parsed.get_backend_name() == "sqlite":
        _ensure_sqlite_dir(parsed)
        engine = sa.create_engine(parsed, **kwargs)
        _configure_sqlite(engine)
        return engine
    if parsed.drivername == "postgresql":
        parsed = parsed.set(drivername="postgresql+psycopg")  # psycopg 3 is what we ship
    return sa.create_engine(parsed, pool_pre_ping=True, **kwargs)


def get_engine(url: str | None = None) -> Engine:
    """A process-wide cached engine per URL (engines own connection pools: share them)."""
    key = database_url(url)
    with _engines_lock:
        if key not in _engines:
            _engines[key] = make_engine(key)
        return _engines[key]


def dispose_engines() -> None:
    """Close every cached engine's pool (tests, and after a fork)."""
    with _engines_lock:
        for engine in _engines.values():
            engine.dispose()
        _engines.clear()


def _ensure_sqlite_dir(url: sa.URL) -> None:
    if url.database and url.database != ":memory:" and not url.database.startswith("file:"):
        Path(url.database).expanduser().parent.mkdir(parents=True, exist_ok=True)


def _configure_sqlite(engine: Engine) -> None:
    @sa.event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection, _record) -> None:  # type: ignore[no-untyped-def]
        dbapi_connection.isolation_level = None  # we emit BEGIN ourselves, below
        cursor = dbapi_connection.cursor()
        cursor.execute(f"PRAGMA busy_timeout = {SQLITE_BUSY_TIMEOUT_MS}")
        cursor.execute("PRAGMA journal_mode = WAL")
        cursor.execute("PRAGMA synchronous = NORMAL")  # durable at checkpoints; safe with WAL
        cursor.execute("PRAGMA foreign_keys = ON")
        cursor.close()

    @sa.event.listens_for(engine, "begin")
    def _on_begin(conn: Connection) -> None:
        immediate = conn.get_execution_options().get(_IMMEDIATE, False)
        conn.exec_driver_sql("BEGIN IMMEDIATE" if immediate else "BEGIN")


@contextmanager
def write_connection(
    engine: Engine, *, sqlite_cache_mib: int | None = None
) -> Iterator[Connection]:
    """A connection in one write transaction: committed at the end, rolled back on error."""
    with engine.connect() as conn, write_transaction(conn, sqlite_cache_mib=sqlite_cache_mib):
        yield conn


@contextmanager
def write_transaction(conn: Connection, *, sqlite_cache_mib: int | None = None) -> Iterator[None]:
    """One write transaction on an open connection that has none in progress. On SQLite the
    write lock is taken at BEGIN, so concurrent writers queue instead of failing.
    `sqlite_cache_mib` enlarges SQLite's page cache for this transaction (bulk loads into big
    indexes); the default is restored before the connection goes back to the pool."""
    sized = sqlite_cache_mib is not None and conn.dialect.name == "sqlite"
    if sized:
        conn.exec_driver_sql(f"PRAGMA cache_size = -{int(sqlite_cache_mib) * 1024}")
        conn.commit()  # ends the implicit transaction the PRAGMA began
    conn.execution_options(**{_IMMEDIATE: True})  # modifies this Connection in place
    try:
        with conn.begin():
            yield
    finally:
        conn.execution_options(**{_IMMEDIATE: False})
        if sized:
            conn.exec_driver_sql(f"PRAGMA cache_size = {SQLITE_DEFAULT_CACHE}")
            conn.commit()


def copy_rows(
    conn: Connection, table: str, columns: Sequence[str], rows: Iterable[Sequence[Any]]
) -> None:
    """PostgreSQL COPY ... FROM STDIN of `rows` into `table` (psycopg 3), in the connection's
    current transaction: the fastest way to bring many rows in."""
    with conn.connection.driver_connection.cursor().copy(
        f"COPY {table} ({', '.join(columns)}) FROM STDIN"
    ) as copy:
        for row in rows:
            copy.write_row(row)


def upsert(conn: Connection, table: sa.Table) -> Any:
    """`INSERT` that supports `.on_conflict_do_nothing/update` on the connection's backend."""
    name = conn.dialect.name
    if name == "postgresql":
        return postgresql.insert(table)
    if name == "sqlite":
        return sqlite.insert(table)
    raise UserError(f"unsupported database {name!r}: use SQLite or PostgreSQL")


@contextmanager
def session_scope(engine: Engine, *, write: bool = False) -> Iterator[Session]:
    """An ORM session in one transaction: commit on success, roll back on any error."""
    if write:
        with write_connection(engine) as conn, Session(bind=conn, expire_on_commit=False) as s:
            yield s
            s.flush()
        return
    with Session(engine, expire_on_commit=False) as session, session.begin():
        yield session
