"""Users and items: external ids <-> internal keys, the item upsert rule, item reads.

Callers speak in external ids (the strings users and items have in the outside world); the
functions here map them to internal keys. `ensure_users` / `ensure_items` run inside a caller's
write transaction (they take its connection); the reads take an engine.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from recsys.db.engine import upsert
from recsys.db.models import Item, User, utcnow

ID_LOOKUP_CHUNK = 5_000  # below SQLite's 32,766 bound parameters per statement


@dataclass(frozen=True)
class ItemRecord:
    item_id: str
    title: str | None = None
    text: str | None = None
    attributes: dict[str, Any] = field(default_factory=dict)


def ensure_users(conn: Connection, external_ids: Iterable[str]) -> dict[str, int]:
    """Create the users that do not exist yet; return external id -> internal key."""
    wanted = sorted(set(external_ids))  # sorted: concurrent writers lock keys in one order
    if not wanted:
        return {}
    table = User.__table__
    now = utcnow()
    rows = [
        {"external_id": u, "attributes": {}, "created_at": now, "updated_at": now} for u in wanted
    ]
    conn.execute(upsert(conn, table).on_conflict_do_nothing(index_elements=["external_id"]), rows)
    return lookup_ids(conn, table, wanted)


def ensure_items(
    conn: Connection, items: Iterable[ItemRecord], *, catalogue: bool = False
) -> dict[str, int]:
    """Create missing items (with their attributes); update the title/text of existing ones
    when given and changed. A `catalogue` (the authoritative item list) also replaces the
    attributes. Returns external id -> internal key."""
    by_id = {item.item_id: item for item in items}
    if not by_id:
        return {}
    table = Item.__table__
    now = utcnow()
    rows = [
        {
            "external_id": i.item_id,
            "title": i.title,
            "text": i.text,
            "attributes": i.attributes,
            "created_at": now,
            "updated_at": now,
        }
        for i in (by_id[k] for k in sorted(by_id))
    ]
    conn.execute(update_items_on_conflict(upsert(conn, table), catalogue=catalogue), rows)
    return lookup_ids(conn, table, list(by_id))


def update_items_on_conflict(stmt: Any, *, catalogue: bool) -> Any:
    """The upsert rule for items (also the bulk load's): a given title/text replaces the
    stored one, a missing one keeps it; a catalogue also replaces the attributes. Only rows
    that change are rewritten, so re-loading a catalogue writes nothing."""
    table = Item.__table__
    title = sa.func.coalesce(stmt.excluded.title, table.c.title)
    text = sa.func.coalesce(stmt.excluded.text, table.c.text)
    updates = {"title": title, "text": text, "updated_at": stmt.excluded.updated_at}
    changed = [table.c.title.is_distinct_from(title), table.c.text.is_distinct_from(text)]
    if catalogue:
        updates["attributes"] = stmt.excluded.attributes
        changed.append(table.c.attributes.is_distinct_from(stmt.excluded.attributes))
    return stmt.on_conflict_do_update(
        index_elements=["external_id"], set_=updates, where=sa.or_(*changed)
    )


def lookup_ids(conn: Connection, table: sa.Table, external_ids: Sequence[str]) -> dict[str, int]:
    """external id -> internal key for those that exist."""
    found: dict[str, int] = {}
    for start in range(0, len(external_ids), ID_LOOKUP_CHUNK):
        chunk = external_ids[start : start + ID_LOOKUP_CHUNK]
        query = sa.select(table.c.external_id, table.c.id).where(table.c.external_id.in_(chunk))
        found.update(conn.execute(query).tuples().all())
    return found


_ITEM_COLUMNS = (
    Item.__table__.c.external_id,
    Item.__table__.c.title,
    Item.__table__.c.text,
    Item.__table__.c.attributes,
)


def items_by_ids(item_ids: Sequence[str], *, engine: Engine) -> dict[str, ItemRecord]:
    """The items with these external ids; ids that do not exist are absent from the result."""
    table = Item.__table__
    found: dict[str, ItemRecord] = {}
    wanted = list(dict.fromkeys(item_ids))
    with engine.connect() as conn:
        for start in range(0, len(wanted), ID_LOOKUP_CHUNK):
            chunk = wanted[start : start + ID_LOOKUP_CHUNK]
            query = sa.select(*_ITEM_COLUMNS).where(table.c.external_id.in_(chunk))
            for ext, title, text, attrs in conn.execute(query):
                found[ext] = ItemRecord(ext, title, text, attrs or {})
    return found


def all_items(*, engine: Engine) -> list[ItemRecord]:
    """Every item of the catalogue (title, text, attributes), in no particular order."""
    with engine.connect() as conn:
        rows = conn.execute(sa.select(*_ITEM_COLUMNS)).all()
    return [ItemRecord(ext, title, text, attrs or {}) for ext, title, text, attrs in rows]
