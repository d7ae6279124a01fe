"""The small access functions every other stage uses. No SQL is written outside recsys/db.

Callers speak in external ids (the strings users and items have in the outside world); this
module maps them to internal keys. Each public function runs in one transaction of its own:
it either fully happens or not at all. Writes that may be repeated (logging events, writing a
recommendation run) are idempotent, so a retried job never duplicates rows.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping, Sequence, Sized
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.orm import Session

from recsys.db.engine import copy_rows, get_engine, session_scope, write_connection
from recsys.db.models import (
    Impression,
    Interaction,
    Item,
    ModelKind,
    ModelStatus,
    ModelVersion,
    Recommendation,
    User,
    utcnow,
)
from recsys.errors import UserError

ID_LOOKUP_CHUNK = 5_000  # below SQLite's 32,766 bound parameters per statement
# PostgreSQL batches at least this big go through COPY + a temporary table; smaller ones (an
# API request's impressions) use plain statements and create no temporary table.
COPY_THRESHOLD = 1_000
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)

# ---------------------------------------------------------------------------------------------
# records passed in and out


@dataclass(frozen=True)
class HistoryItem:
    item_id: str
    title: str | None
    event: str
    value: float | None
    timestamp: datetime


@dataclass(frozen=True)
class ItemRecord:
    item_id: str
    title: str | None = None
    text: str | None = None
    attributes: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class InteractionRecord:
    user_id: str
    item_id: str
    event: str
    timestamp: datetime
    value: float | None = None
    source: str = "api"


@dataclass(frozen=True)
class ImpressionRecord:
    request_id: str
    user_id: str
    item_id: str
    position: int
    policy: str
    propensity: float | None = None
    model_version: str | None = None
    context: dict[str, Any] = field(default_factory=dict)
    timestamp: datetime | None = None


@dataclass(frozen=True)
class RecommendationRow:
    user_id: str
    rank: int
    item_id: str
    score: float | None
    model_version: str | None
    run_id: str


@dataclass(frozen=True)
class ModelVersionInfo:
    kind: str
    version: str
    artifact_uri: str
    sha256: str | None
    metrics: dict[str, Any]
    status: str
    created_at: datetime
    promoted_at: datetime | None
    retired_at: datetime | None


# ---------------------------------------------------------------------------------------------
# shared building blocks (also used by recsys.ingest)


def upsert(conn: Connection, table: sa.Table) -> Any:
    """`INSERT` that supports `.on_conflict_do_nothing/update` on the connection's backend."""
    name = conn.dialect.name
    if name == "postgresql":
        return postgresql.insert(table)
    if name == "sqlite":
        return sqlite.insert(table)
    raise UserError(f"unsupported database {name!r}: use SQLite or PostgreSQL")


def to_microseconds(timestamp: datetime) -> int:
    """Microseconds since the epoch, UTC (naive datetimes are taken as UTC)."""
    if timestamp.tzinfo is None:
        timestamp = timestamp.replace(tzinfo=UTC)
    return (timestamp - _EPOCH) // timedelta(microseconds=1)


def event_id(source: str, user_id: str, item_id: str, timestamp_us: int, event: str) -> str:
    """The idempotency key of an interaction: the same event loaded twice is stored once."""
    key = "\x1f".join((source, user_id, item_id, str(timestamp_us), event))
    return hashlib.blake2b(key.encode(), digest_size=16).hexdigest()


def ensure_users(conn: Connection, external_ids: Iterable[str]) -> dict[str, int]:
    """Create the users that do not exist yet; return external id -> internal key."""
    wanted = sorted(set(external_ids))  # sorted: concurrent writers lock keys in one order
    if not wanted:
        return {}
    table = User.__table__
    now = utcnow()
    if _use_copy(conn, wanted):
        stage = _stage(conn, "recsys_stage_users", {"external_id": "text"}, [(u,) for u in wanted])
        source = sa.select(
            stage.c.external_id,
            sa.cast(sa.literal("{}"), postgresql.JSONB),
            sa.literal(now, User.created_at.type),
            sa.literal(now, User.updated_at.type),
        ).order_by(stage.c.external_id)
        stmt = upsert(conn, table).from_select(
            ["external_id", "attributes", "created_at", "updated_at"], source
        )
        conn.execute(stmt.on_conflict_do_nothing(index_elements=["external_id"]))
        return _staged_ids(conn, table, stage)
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
    ordered = [by_id[k] for k in sorted(by_id)]
    stmt = upsert(conn, table)
    stage = None
    if _use_copy(conn, ordered):
        from psycopg.types.json import Jsonb

        stage = _stage(
            conn,
            "recsys_stage_items",
            {"external_id": "text", "title": "text", "text": "text", "attributes": "jsonb"},
            [(i.item_id, i.title, i.text, Jsonb(i.attributes)) for i in ordered],
        )
        source = sa.select(
            *stage.c, sa.literal(now, Item.created_at.type), sa.literal(now, Item.updated_at.type)
        ).order_by(stage.c.external_id)
        columns = ["external_id", "title", "text", "attributes", "created_at", "updated_at"]
        stmt = stmt.from_select(columns, source)
    stmt = update_items_on_conflict(stmt, catalogue=catalogue)
    if stage is not None:
        conn.execute(stmt)
        return _staged_ids(conn, table, stage)
    rows = [
        {
            "external_id": i.item_id,
            "title": i.title,
            "text": i.text,
            "attributes": i.attributes,
            "created_at": now,
            "updated_at": now,
        }
        for i in ordered
    ]
    conn.execute(stmt, rows)
    return lookup_ids(conn, table, list(by_id))


def update_items_on_conflict(stmt: Any, *, catalogue: bool) -> Any:
    """The upsert rule for items: a given title/text replaces the stored one, a missing one
    keeps it; a catalogue also replaces the attributes. Only rows that change are rewritten,
    so re-loading a catalogue writes nothing."""
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


def _use_copy(conn: Connection, rows: Sized) -> bool:
    return conn.dialect.name == "postgresql" and len(rows) >= COPY_THRESHOLD


def _stage(
    conn: Connection, name: str, columns: Mapping[str, str], rows: Iterable[tuple[Any, ...]]
) -> sa.TableClause:
    """PostgreSQL: COPY rows into a temporary table (dropped at commit) to insert from it
    in one statement; COPY is the fastest way in, far ahead of row-by-row statements."""
    definition = ", ".join(f"{column} {kind}" for column, kind in columns.items())
    conn.exec_driver_sql(
        f"CREATE TEMPORARY TABLE IF NOT EXISTS {name} ({definition}) ON COMMIT DROP"
    )
    conn.exec_driver_sql(f"TRUNCATE {name}")
    copy_rows(conn, name, list(columns), rows)
    return sa.table(name, *(sa.column(c) for c in columns))


def _staged_ids(conn: Connection, table: sa.Table, stage: sa.TableClause) -> dict[str, int]:
    query = sa.select(table.c.external_id, table.c.id).join(
        stage, stage.c.external_id == table.c.external_id
    )
    return dict(conn.execute(query).tuples().all())


INTERACTION_COLUMNS = ("event_id", "user_id", "item_id", "event", "value", "timestamp", "source")
_STAGE = "recsys_stage_interactions"


def bulk_insert_interactions(conn: Connection, rows: Sequence[tuple[Any, ...]]) -> None:
    """Insert many interactions, skipping event ids already stored. Each row is a tuple in
    INTERACTION_COLUMNS order with an aware UTC datetime. The fast path of each backend:
    PostgreSQL COPYs into a temporary table and inserts from it with ON CONFLICT DO NOTHING
    (far fewer round trips than VALUES lists); SQLite runs the same upsert as a plain
    executemany, bypassing per-row parameter processing."""
    if not rows:
        return
    table = Interaction.__table__
    if _use_copy(conn, rows):
        _copy_then_upsert(conn, table, rows)
        return
    stmt = upsert(conn, table).on_conflict_do_nothing(index_elements=["event_id"])
    if conn.dialect.name != "sqlite":
        conn.execute(stmt, [dict(zip(INTERACTION_COLUMNS, row, strict=True)) for row in rows])
        return
    compiled = stmt.compile(dialect=conn.dialect, column_keys=list(INTERACTION_COLUMNS))
    order = [INTERACTION_COLUMNS.index(name) for name in compiled.positiontup or ()]
    stamp = INTERACTION_COLUMNS.index("timestamp")
    bind_time = table.c.timestamp.type.dialect_impl(conn.dialect).bind_processor(conn.dialect)
    to_utc = table.c.timestamp.type.process_bind_param

    def prepare(row: tuple[Any, ...]) -> tuple[Any, ...]:
        values = list(row)
        values[stamp] = (
            bind_time(to_utc(values[stamp], conn.dialect)) if bind_time else values[stamp]
        )
        return tuple(values[i] for i in order)

    conn.exec_driver_sql(str(compiled), [prepare(row) for row in rows])


def _copy_then_upsert(conn: Connection, table: sa.Table, rows: Sequence[tuple[Any, ...]]) -> None:
    kinds = ("text", "bigint", "bigint", "text", "double precision", "timestamptz", "text")
    stage = _stage(conn, _STAGE, dict(zip(INTERACTION_COLUMNS, kinds, strict=True)), rows)
    conn.execute(
        upsert(conn, table)
        .from_select(list(INTERACTION_COLUMNS), sa.select(*stage.c))
        .on_conflict_do_nothing(index_elements=["event_id"])
    )


# ---------------------------------------------------------------------------------------------
# reads


def user_history(
    user_id: str,
    limit: int = 20,
    *,
    before: datetime | None = None,
    events: Sequence[str] | None = None,
    engine: Engine | None = None,
) -> list[HistoryItem]:
    """The user's last `limit` interactions (optionally only `events`, only before `before`),
    oldest first, with item titles. Unknown users have an empty history. (The serving path:
    one index range scan on (user_id, timestamp), newest first, stopping after `limit`.)"""
    if limit < 1:
        raise UserError(f"history limit must be at least 1, got {limit}")
    i, users, items = Interaction.__table__, User.__table__, Item.__table__
    query = (
        sa.select(items.c.external_id, items.c.title, i.c.event, i.c.value, i.c.timestamp)
        .join(items, items.c.id == i.c.item_id)
        .where(
            i.c.user_id
            == sa.select(users.c.id).where(users.c.external_id == user_id).scalar_subquery()
        )
        .order_by(i.c.timestamp.desc(), i.c.id.desc())
        .limit(limit)
    )
    if before is not None:
        query = query.where(i.c.timestamp < before)
    if events:
        query = query.where(i.c.event.in_(list(events)))
    with (engine or get_engine()).connect() as conn:
        rows = conn.execute(query).all()
    return [HistoryItem(*row) for row in reversed(rows)]


def user_histories(
    user_ids: Sequence[str],
    limit: int = 20,
    *,
    before: datetime | None = None,
    events: Sequence[str] | None = None,
    engine: Engine | None = None,
) -> dict[str, list[HistoryItem]]:
    """`user_history` for many users in one query per chunk (nightly batch jobs)."""
    if limit < 1:
        raise UserError(f"history limit must be at least 1, got {limit}")
    i, users, items = Interaction.__table__, User.__table__, Item.__table__
    recency = (
        sa.func.row_number()
        .over(partition_by=i.c.user_id, order_by=(i.c.timestamp.desc(), i.c.id.desc()))
        .label("recency")
    )
    result: dict[str, list[HistoryItem]] = {}
    engine = engine or get_engine()
    with engine.connect() as conn:
        for start in range(0, len(user_ids), ID_LOOKUP_CHUNK):
            chunk = list(user_ids[start : start + ID_LOOKUP_CHUNK])
            inner = (
                sa.select(
                    users.c.external_id.label("user"),
                    i.c.item_id,
                    i.c.event,
                    i.c.value,
                    i.c.timestamp,
                    recency,
                )
                .join(users, users.c.id == i.c.user_id)
                .where(users.c.external_id.in_(chunk))
            )
            if before is not None:
                inner = inner.where(i.c.timestamp < before)
            if events:
                inner = inner.where(i.c.event.in_(list(events)))
            recent = inner.subquery()
            query = (
                sa.select(
                    recent.c.user,
                    items.c.external_id,
                    items.c.title,
                    recent.c.event,
                    recent.c.value,
                    recent.c.timestamp,
                )
                .join(items, items.c.id == recent.c.item_id)
                .where(recent.c.recency <= limit)
                .order_by(recent.c.user, recent.c.recency.desc())
            )
            for user, item, title, event, value, timestamp in conn.execute(query):
                result.setdefault(user, []).append(
                    HistoryItem(item, title, event, value, timestamp)
                )
    return result


def items_by_ids(item_ids: Sequence[str], *, engine: Engine | None = None) -> dict[str, ItemRecord]:
    """The items with these external ids; ids that do not exist are absent from the result."""
    table = Item.__table__
    cols = (table.c.external_id, table.c.title, table.c.text, table.c.attributes)
    found: dict[str, ItemRecord] = {}
    wanted = list(dict.fromkeys(item_ids))
    with (engine or get_engine()).connect() as conn:
        for start in range(0, len(wanted), ID_LOOKUP_CHUNK):
            chunk = wanted[start : start + ID_LOOKUP_CHUNK]
            for ext, title, text, attrs in conn.execute(
                sa.select(*cols).where(table.c.external_id.in_(chunk))
            ):
                found[ext] = ItemRecord(ext, title, text, attrs or {})
    return found


def count_rows(model: type, *, engine: Engine | None = None) -> int:
    with (engine or get_engine()).connect() as conn:
        return conn.execute(sa.select(sa.func.count()).select_from(model.__table__)).scalar_one()


# ---------------------------------------------------------------------------------------------
# writes


def log_interactions(records: Sequence[InteractionRecord], *, engine: Engine | None = None) -> int:
    """Store events (creating unknown users/items); an event already stored is skipped.
    Returns how many were new."""
    if not records:
        return 0
    table = Interaction.__table__
    with write_connection(engine or get_engine()) as conn:
        user_keys = ensure_users(conn, (r.user_id for r in records))
        item_keys = ensure_items(conn, (ItemRecord(r.item_id) for r in records))
        rows = [
            (
                event_id(r.source, r.user_id, r.item_id, to_microseconds(r.timestamp), r.event),
                user_keys[r.user_id],
                item_keys[r.item_id],
                r.event,
                r.value,
                r.timestamp if r.timestamp.tzinfo else r.timestamp.replace(tzinfo=UTC),
                r.source,
            )
            for r in records
        ]
        before = _count(conn, table)
        bulk_insert_interactions(conn, rows)
        return _count(conn, table) - before


def log_impressions(records: Sequence[ImpressionRecord], *, engine: Engine | None = None) -> int:
    """Store what was shown (creating unknown users/items). Returns the number of rows stored."""
    if not records:
        return 0
    now = utcnow()
    with write_connection(engine or get_engine()) as conn:
        user_keys = ensure_users(conn, (r.user_id for r in records))
        item_keys = ensure_items(conn, (ItemRecord(r.item_id) for r in records))
        rows = [
            {
                "request_id": r.request_id,
                "user_id": user_keys[r.user_id],
                "item_id": item_keys[r.item_id],
                "position": r.position,
                "propensity": r.propensity,
                "policy": r.policy,
                "model_version": r.model_version,
                "context": r.context,
                "timestamp": r.timestamp or now,
            }
            for r in records
        ]
        conn.execute(sa.insert(Impression.__table__), rows)
    return len(rows)


def impressions_for_request(
    request_id: str, *, engine: Engine | None = None
) -> list[ImpressionRecord]:
    """The impressions of one response, in position order."""
    imp, users, items = Impression.__table__, User.__table__, Item.__table__
    query = (
        sa.select(imp, users.c.external_id.label("user"), items.c.external_id.label("item"))
        .join(users, users.c.id == imp.c.user_id)
        .join(items, items.c.id == imp.c.item_id)
        .where(imp.c.request_id == request_id)
        .order_by(imp.c.position)
    )
    with (engine or get_engine()).connect() as conn:
        rows = conn.execute(query).mappings().all()
    return [
        ImpressionRecord(
            request_id=r["request_id"],
            user_id=r["user"],
            item_id=r["item"],
            position=r["position"],
            policy=r["policy"],
            propensity=r["propensity"],
            model_version=r["model_version"],
            context=r["context"],
            timestamp=r["timestamp"],
        )
        for r in rows
    ]


def training_impressions(
    *,
    history_len: int = 20,
    window: timedelta = timedelta(days=7),
    limit: int | None = None,
    engine: Engine | None = None,
) -> list[dict[str, Any]]:
    """Logged responses joined with what the user did next, for off-policy learning.

    One dict per request that has a ground truth - the first interaction of the same user with
    one of the shown items within `window` after the impression:
    `request_id, user, task, candidates [{id, text, score}], order (shown order), ground_truth,
    history (titles of the user's last `history_len` items before the impression),
    log_propensity (of the whole logged ranking, from the impression context), policy,
    model_version, timestamp`. Candidate text is the item title (its id when untitled); the
    score comes from the impression context's "score" key when the ranker logged one."""
    engine = engine or get_engine()
    imp, users, items, inter = (
        Impression.__table__,
        User.__table__,
        Item.__table__,
        Interaction.__table__,
    )
    shown = (
        sa.select(
            imp.c.request_id,
            users.c.external_id.label("user"),
            items.c.external_id.label("item"),
            items.c.title,
            imp.c.position,
            imp.c.policy,
            imp.c.model_version,
            imp.c.context,
            imp.c.timestamp,
        )
        .join(users, users.c.id == imp.c.user_id)
        .join(items, items.c.id == imp.c.item_id)
        .order_by(imp.c.timestamp, imp.c.request_id, imp.c.position)
    )
    followed = (
        sa.select(imp.c.request_id, items.c.external_id, inter.c.timestamp, imp.c.timestamp)
        .join(inter, (inter.c.user_id == imp.c.user_id) & (inter.c.item_id == imp.c.item_id))
        .join(items, items.c.id == imp.c.item_id)
        .where(inter.c.timestamp >= imp.c.timestamp)
        .order_by(inter.c.timestamp, inter.c.id)
    )
    with engine.connect() as conn:
        requests: dict[str, list[Any]] = {}
        for row in conn.execute(shown):
            requests.setdefault(row.request_id, []).append(row)
        truth: dict[str, str] = {}
        for request_id, item, acted_at, shown_at in conn.execute(followed):
            if request_id not in truth and acted_at - shown_at <= window:
                truth[request_id] = item
    episodes = []
    for request_id, rows in requests.items():
        if request_id not in truth:
            continue
        first = rows[0]
        history = user_history(first.user, history_len, before=first.timestamp, engine=engine)
        episodes.append(
            {
                "request_id": request_id,
                "user": first.user,
                "task": (first.context or {}).get("task", "rec-movie"),
                "candidates": [
                    {
                        "id": r.item,
                        "text": r.title or r.item,
                        "score": (r.context or {}).get("score"),
                    }
                    for r in rows
                ],
                "order": [r.item for r in rows],
                "ground_truth": truth[request_id],
                "history": [h.title or h.item_id for h in history],
                "log_propensity": (first.context or {}).get("log_propensity"),
                "policy": first.policy,
                "model_version": first.model_version,
                "timestamp": first.timestamp,
            }
        )
        if limit is not None and len(episodes) >= limit:
            break
    return episodes


def write_recommendations(
    run_id: str,
    lists: Mapping[str, Sequence[tuple[str, float | None]]],
    *,
    model_version: str | None = None,
    engine: Engine | None = None,
) -> int:
    """Store each user's ranked list (item id, score), best first, for one run. Writing a user's
    list again in the same run replaces it, so a retried shard leaves no duplicates."""
    if not lists:
        return 0
    table = Recommendation.__table__
    now = utcnow()
    with write_connection(engine or get_engine()) as conn:
        user_keys = ensure_users(conn, lists)
        item_keys = ensure_items(
            conn, (ItemRecord(i) for ranked in lists.values() for i, _ in ranked)
        )
        users = list(user_keys.values())
        for start in range(0, len(users), ID_LOOKUP_CHUNK):
            conn.execute(
                sa.delete(table).where(
                    table.c.run_id == run_id,
                    table.c.user_id.in_(users[start : start + ID_LOOKUP_CHUNK]),
                )
            )
        rows = [
            {
                "run_id": run_id,
                "user_id": user_keys[user],
                "rank": rank,
                "item_id": item_keys[item],
                "score": score,
                "model_version": model_version,
                "created_at": now,
            }
            for user, ranked in lists.items()
            for rank, (item, score) in enumerate(ranked, start=1)
        ]
        if rows:
            conn.execute(sa.insert(table), rows)
    return len(rows)


def users_in_run(run_id: str, *, engine: Engine | None = None) -> set[str]:
    """External ids of the users that already have a list in `run_id` (to resume a run)."""
    rec, users = Recommendation.__table__, User.__table__
    query = (
        sa.select(users.c.external_id)
        .join(rec, rec.c.user_id == users.c.id)
        .where(rec.c.run_id == run_id)
        .distinct()
    )
    with (engine or get_engine()).connect() as conn:
        return set(conn.scalars(query))


def recommendations_for(
    user_id: str, run_id: str | None = None, *, engine: Engine | None = None
) -> list[RecommendationRow]:
    """A user's list from `run_id`, or from the newest run that has one; best first."""
    rec, users, items = Recommendation.__table__, User.__table__, Item.__table__
    with (engine or get_engine()).connect() as conn:
        user_key = lookup_ids(conn, users, [user_id]).get(user_id)
        if user_key is None:
            return []
        if run_id is None:
            run_id = conn.execute(
                sa.select(rec.c.run_id)
                .where(rec.c.user_id == user_key)
                .order_by(rec.c.created_at.desc(), rec.c.id.desc())
                .limit(1)
            ).scalar()
        query = (
            sa.select(rec.c.rank, items.c.external_id, rec.c.score, rec.c.model_version)
            .join(items, items.c.id == rec.c.item_id)
            .where(rec.c.run_id == run_id, rec.c.user_id == user_key)
            .order_by(rec.c.rank)
        )
        return [
            RecommendationRow(user_id, rank, item, score, version, run_id or "")
            for rank, item, score, version in conn.execute(query)
        ]


def _count(conn: Connection, table: sa.Table) -> int:
    return conn.execute(sa.select(sa.func.count()).select_from(table)).scalar_one()


# ---------------------------------------------------------------------------------------------
# model registry: at most one promoted version per kind; rollback returns to the previous one


def _info(mv: ModelVersion) -> ModelVersionInfo:
    return ModelVersionInfo(
        kind=mv.kind,
        version=mv.version,
        artifact_uri=mv.artifact_uri,
        sha256=mv.sha256,
        metrics=dict(mv.metrics or {}),
        status=mv.status,
        created_at=mv.created_at,
        promoted_at=mv.promoted_at,
        retired_at=mv.retired_at,
    )


def _check_kind(kind: str) -> str:
    allowed = [k.value for k in ModelKind]
    if kind not in allowed:
        raise UserError(f"unknown model kind {kind!r}; use one of: {', '.join(allowed)}")
    return kind


def _registry_session(engine: Engine | None) -> AbstractContextManager[Session]:
    return session_scope(engine or get_engine(), write=True)


def _get_version(session: Session, kind: str, version: str) -> ModelVersion:
    mv = session.scalar(
        sa.select(ModelVersion).where(ModelVersion.kind == kind, ModelVersion.version == version)
    )
    if mv is None:
        raise UserError(
            f"no {kind} model version {version!r}; see `recsys models list --kind {kind}`"
        )
    return mv


def _promoted(session: Session, kind: str) -> ModelVersion | None:
    return session.scalar(
        sa.select(ModelVersion)
        .where(ModelVersion.kind == kind, ModelVersion.status == ModelStatus.PROMOTED.value)
        .with_for_update()
    )


def register_model(
    kind: str,
    version: str,
    artifact_uri: str,
    *,
    sha256: str | None = None,
    metrics: Mapping[str, Any] | None = None,
    engine: Engine | None = None,
) -> ModelVersionInfo:
    """Add a candidate version. Registering the same (kind, version) twice is refused."""
    _check_kind(kind)
    with _registry_session(engine) as session:
        existing = session.scalar(
            sa.select(ModelVersion).where(
                ModelVersion.kind == kind, ModelVersion.version == version
            )
        )
        if existing is not None:
            raise UserError(f"{kind} model version {version!r} is already registered")
        mv = ModelVersion(
            kind=kind,
            version=version,
            artifact_uri=artifact_uri,
            sha256=sha256,
            metrics=dict(metrics or {}),
            status=ModelStatus.CANDIDATE.value,
            created_at=utcnow(),
        )
        session.add(mv)
        session.flush()
        return _info(mv)


def get_model(kind: str, version: str, *, engine: Engine | None = None) -> ModelVersionInfo:
    with _registry_session(engine) as session:
        return _info(_get_version(session, _check_kind(kind), version))


def current_model(kind: str, *, engine: Engine | None = None) -> ModelVersionInfo | None:
    """The promoted version of `kind`, or None when none is promoted."""
    _check_kind(kind)
    query = sa.select(ModelVersion).where(
        ModelVersion.kind == kind, ModelVersion.status == ModelStatus.PROMOTED.value
    )
    with Session(engine or get_engine()) as session:
        mv = session.scalar(query)
        return _info(mv) if mv else None


def list_models(kind: str | None = None, *, engine: Engine | None = None) -> list[ModelVersionInfo]:
    """Every registered version (of one kind), newest first."""
    query = sa.select(ModelVersion).order_by(ModelVersion.created_at.desc(), ModelVersion.id.desc())
    if kind is not None:
        query = query.where(ModelVersion.kind == _check_kind(kind))
    with Session(engine or get_engine()) as session:
        return [_info(mv) for mv in session.scalars(query)]


def promote_model(kind: str, version: str, *, engine: Engine | None = None) -> ModelVersionInfo:
    """Make `version` the promoted one; the previously promoted version becomes a candidate
    (and stays the rollback target). Use recsys.registry.promote, which applies the gates."""
    _check_kind(kind)
    with _registry_session(engine) as session:
        mv = _get_version(session, kind, version)
        if mv.status == ModelStatus.RETIRED.value:
            raise UserError(f"{kind} {version!r} is retired; register a new version instead")
        if mv.status == ModelStatus.PROMOTED.value:
            return _info(mv)
        current = _promoted(session, kind)
        if current is not None:
            current.status = ModelStatus.CANDIDATE.value
            session.flush()  # the one-promoted-per-kind index must never see two
        mv.status = ModelStatus.PROMOTED.value
        mv.promoted_at = utcnow()
        session.flush()
        return _info(mv)


def retire_model(kind: str, version: str, *, engine: Engine | None = None) -> ModelVersionInfo:
    """Take a version out of use for good. The promoted version cannot be retired: roll back
    (or promote another) first, so serving always has a model."""
    _check_kind(kind)
    with _registry_session(engine) as session:
        mv = _get_version(session, kind, version)
        if mv.status == ModelStatus.PROMOTED.value:
            raise UserError(
                f"{kind} {version!r} is the promoted version; `recsys models rollback --kind "
                f"{kind}` or promote another version before retiring it"
            )
        if mv.status != ModelStatus.RETIRED.value:
            mv.status = ModelStatus.RETIRED.value
            mv.retired_at = utcnow()
            session.flush()
        return _info(mv)


def rollback_model(kind: str, *, engine: Engine | None = None) -> ModelVersionInfo:
    """Retire the promoted version and promote the one promoted before it. Returns the newly
    promoted version."""
    _check_kind(kind)
    with _registry_session(engine) as session:
        current = _promoted(session, kind)
        if current is None:
            raise UserError(f"no {kind} version is promoted; nothing to roll back")
        previous = session.scalar(
            sa.select(ModelVersion)
            .where(
                ModelVersion.kind == kind,
                ModelVersion.status == ModelStatus.CANDIDATE.value,
                ModelVersion.promoted_at.is_not(None),
            )
            .order_by(ModelVersion.promoted_at.desc(), ModelVersion.id.desc())
            .limit(1)
        )
        if previous is None:
            raise UserError(
                f"no earlier promoted {kind} version (not retired) to roll back to from "
                f"{current.version!r}"
            )
        now = utcnow()
        current.status = ModelStatus.RETIRED.value
        current.retired_at = now
        session.flush()
        previous.status = ModelStatus.PROMOTED.value
        previous.promoted_at = now
        session.flush()
        return _info(previous)
