"""The one bulk-load path: staging tables, then one set-based merge.

File ingestion (recsys.ingest) and `events.log_interactions` both load through it. A load
first writes its rows into temporary tables of its own connection: that takes no lock on
the real tables and is invisible to everyone else, however long the file is. When every
row is in, one write transaction merges them with set-based `INSERT ... SELECT ... ON
CONFLICT` statements (users, items, then the interactions in ranges of staged rows). So a
load is all-or-nothing, a crash at any point leaves the database as it was (temporary tables
die with the connection), and on SQLite other writers (the API logging impressions) wait only
for the merge, not for the reading and validating.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from recsys.db.catalogue import ItemRecord, update_items_on_conflict
from recsys.db.engine import copy_rows, upsert, write_transaction
from recsys.db.models import Interaction, Item, User, utcnow

EVENTS = "recsys_load_events"
ITEMS = "recsys_load_items"
# SQLAlchemy reports an INSERT's row count only when asked to keep it
COUNT_ROWS = {"preserve_rowcount": True}
MERGE_BATCH = 250_000  # staged events merged per statement (one progress step)
EVENT_COLUMNS = ("event_id", "user_ext", "item_ext", "event", "value", "timestamp", "source")
ITEM_COLUMNS = ("external_id", "title", "text", "attributes", "catalogue")
_TYPES = {
    # column kind: (SQLite, PostgreSQL)
    "text": ("TEXT", "text"),
    "float": ("REAL", "double precision"),
    "time": ("TEXT", "timestamptz"),  # SQLite: the text SQLAlchemy's DateTime stores
    "json": ("TEXT", "jsonb"),
    "int": ("INTEGER", "integer"),
}
_EVENT_KINDS = ("text", "text", "text", "text", "float", "time", "text")
_ITEM_KINDS = ("text", "text", "text", "json", "int")


class StagedLoad:
    """Stage rows on `conn` with `add_events` / `add_items`, then `merge()` them; always
    `drop()` at the end (a `with` block does)."""

    def __init__(self, conn: Connection) -> None:
        self.conn = conn
        self.postgres = conn.dialect.name == "postgresql"
        column = 1 if self.postgres else 0
        self._drop_tables()
        # events are numbered as staged (seq), so the merge can go in ranges with progress
        sequence = "seq bigserial PRIMARY KEY, " if self.postgres else "seq INTEGER PRIMARY KEY, "
        for name, columns, kinds, first, last in (
            (EVENTS, EVENT_COLUMNS, _EVENT_KINDS, sequence, ""),
            (ITEMS, ITEM_COLUMNS, _ITEM_KINDS, "", ", PRIMARY KEY (external_id)"),
        ):
            definition = ", ".join(
                f"{c} {_TYPES[k][column]}" for c, k in zip(columns, kinds, strict=True)
            )
            conn.exec_driver_sql(f"CREATE TEMPORARY TABLE {name} ({first}{definition}{last})")
        conn.commit()
        self.events = sa.table(EVENTS, sa.column("seq"), *(sa.column(c) for c in EVENT_COLUMNS))
        self.items = sa.table(ITEMS, *(sa.column(c) for c in ITEM_COLUMNS))
        # the dialect's own DateTime processor: SQLite stores the text every other write path
        # stores ("YYYY-MM-DD HH:MM:SS.ffffff"), so stored times compare right with bound ones
        time_type = Interaction.__table__.c.timestamp.type.dialect_impl(conn.dialect)
        self._bind_time = time_type.bind_processor(conn.dialect) or (lambda value: value)

    def __enter__(self) -> StagedLoad:
        return self

    def __exit__(self, *exc: object) -> None:
        self.drop()

    # ------------------------------------------------------------------ staging

    def add_events(self, rows: Sequence[tuple[Any, ...]]) -> None:
        """Rows in EVENT_COLUMNS order; `timestamp` an aware UTC datetime."""
        if not rows:
            return
        if self.postgres:
            copy_rows(self.conn, EVENTS, EVENT_COLUMNS, rows)
        else:
            stamp = EVENT_COLUMNS.index("timestamp")
            bind = self._bind_time
            prepared = [(*r[:stamp], bind(r[stamp]), *r[stamp + 1 :]) for r in rows]
            self._insert_sqlite(EVENTS, EVENT_COLUMNS, prepared, ignore_duplicates=False)
        self.conn.commit()

    def add_items(self, items: Iterable[ItemRecord], *, catalogue: bool) -> None:
        """Items to create or update. The first staged row of an item wins: stage the
        catalogue before the items first seen in the interactions."""
        if self.postgres:
            from psycopg.types.json import Jsonb

            rows = [
                (i.item_id, i.title, i.text, Jsonb(i.attributes), int(catalogue)) for i in items
            ]
            # COPY cannot skip duplicates: go through a scratch table
            self.conn.exec_driver_sql(
                f"CREATE TEMPORARY TABLE IF NOT EXISTS {ITEMS}_in (LIKE {ITEMS}) ON COMMIT DROP"
            )
            copy_rows(self.conn, f"{ITEMS}_in", ITEM_COLUMNS, rows)
            self.conn.exec_driver_sql(
                f"INSERT INTO {ITEMS} SELECT DISTINCT ON (external_id) * FROM {ITEMS}_in "
                "ON CONFLICT (external_id) DO NOTHING"
            )
        else:
            rows = [
                (i.item_id, i.title, i.text, json.dumps(i.attributes), int(catalogue))
                for i in items
            ]
            self._insert_sqlite(ITEMS, ITEM_COLUMNS, rows, ignore_duplicates=True)
        self.conn.commit()

    def _insert_sqlite(
        self, table: str, columns: Sequence[str], rows: list[Any], *, ignore_duplicates: bool
    ) -> None:
        verb = "INSERT OR IGNORE" if ignore_duplicates else "INSERT"
        marks = ", ".join("?" for _ in columns)
        self.conn.exec_driver_sql(
            f"{verb} INTO {table} ({', '.join(columns)}) VALUES ({marks})", rows
        )

    def staged_items(self) -> int:
        return self.conn.execute(sa.select(sa.func.count()).select_from(self.items)).scalar_one()

    # ------------------------------------------------------------------ merging

    def merge(
        self,
        *,
        sqlite_cache_mib: int | None = None,
        progress: Callable[[int], object] | None = None,
    ) -> tuple[int, int, int]:
        """Move everything staged into the real tables in one write transaction; returns how
        many interactions, users and items were added. `progress(n)` is called as each range
        of n staged events is merged."""
        if self.conn.in_transaction():
            self.conn.commit()  # staging reads/writes only temporary tables
        with write_transaction(self.conn, sqlite_cache_mib=sqlite_cache_mib):
            items_before = self._count(Item)
            now = utcnow()
            users = self._merge_users(now)
            self._merge_items(now, catalogue=True)
            self._merge_items(now, catalogue=False)
            events = self._merge_events(progress or (lambda n: None))
            items = self._count(Item) - items_before
        return events, users, items

    def _count(self, model: Any) -> int:
        # items are upserted (a row count would include updates); under concurrent loads
        # on PostgreSQL this difference may include another load's items
        count = sa.select(sa.func.count()).select_from(model.__table__)
        return self.conn.execute(count).scalar_one()

    def _empty_json(self) -> sa.ColumnElement[Any]:
        from sqlalchemy.dialects import postgresql

        empty = sa.literal("{}")
        return sa.cast(empty, postgresql.JSONB) if self.postgres else empty

    def _merge_users(self, now: Any) -> int:
        """Returns the number of users created (by this statement: exact under concurrency)."""
        users = User.__table__
        new = (
            sa.select(
                self.events.c.user_ext,
                self._empty_json(),
                sa.literal(now, users.c.created_at.type),
                sa.literal(now, users.c.updated_at.type),
            )
            .distinct()
            .where(sa.true())  # SQLite needs a WHERE before ON CONFLICT after a SELECT
            .order_by(self.events.c.user_ext)  # concurrent loads lock keys in one order
        )
        stmt = upsert(self.conn, users).from_select(
            ["external_id", "attributes", "created_at", "updated_at"], new
        )
        stmt = stmt.on_conflict_do_nothing(index_elements=["external_id"])
        return self.conn.execute(stmt, execution_options=COUNT_ROWS).rowcount

    def _merge_items(self, now: Any, *, catalogue: bool) -> None:
        items, staged = Item.__table__, self.items
        new = (
            sa.select(
                staged.c.external_id,
                staged.c.title,
                staged.c.text,
                staged.c.attributes,
                sa.literal(now, items.c.created_at.type),
                sa.literal(now, items.c.updated_at.type),
            )
            .where(staged.c.catalogue == int(catalogue))
            .order_by(staged.c.external_id)
        )
        columns = ["external_id", "title", "text", "attributes", "created_at", "updated_at"]
        stmt = upsert(self.conn, items).from_select(columns, new)
        self.conn.execute(update_items_on_conflict(stmt, catalogue=catalogue))

    def _merge_events(self, progress: Callable[[int], object]) -> int:
        """Returns the number of events inserted: the statements' own counts, so another
        load committing meanwhile is not counted as ours."""
        last = self.conn.execute(sa.select(sa.func.max(self.events.c.seq))).scalar() or 0
        added = 0
        for low in range(0, last, MERGE_BATCH):
            high = min(low + MERGE_BATCH, last)
            added += self._merge_event_range(low, high)
            progress(high - low)
        return added

    def _merge_event_range(self, low: int, high: int) -> int:
        users, items, staged = User.__table__, Item.__table__, self.events
        new = (
            sa.select(
                staged.c.event_id,
                users.c.id,
                items.c.id,
                staged.c.event,
                staged.c.value,
                staged.c.timestamp,
                staged.c.source,
            )
            .join(users, users.c.external_id == staged.c.user_ext)
            .join(items, items.c.external_id == staged.c.item_ext)
            .where(staged.c.seq > low, staged.c.seq <= high)
        )
        columns = ["event_id", "user_id", "item_id", "event", "value", "timestamp", "source"]
        stmt = upsert(self.conn, Interaction.__table__).from_select(columns, new)
        stmt = stmt.on_conflict_do_nothing(index_elements=["event_id"])
        return self.conn.execute(stmt, execution_options=COUNT_ROWS).rowcount

    # ------------------------------------------------------------------ clean-up

    def drop(self) -> None:
        """Remove the staging tables (they would otherwise live on with the pooled connection)."""
        if self.conn.in_transaction():
            self.conn.rollback()
        self._drop_tables()
        self.conn.commit()

    def _drop_tables(self) -> None:
        for name in (EVENTS, ITEMS):
            self.conn.exec_driver_sql(f"DROP TABLE IF EXISTS {name}")
