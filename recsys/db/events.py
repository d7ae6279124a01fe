"""What users did (interactions) and what they were shown (impressions), and logged traffic:
each logged response joined with what the user did next (`LoggedRequest`, the one shape of
logged traffic that training episodes and replay are built from).

Writes may be repeated: an interaction's `event_id` hashes (source, user, item, timestamp,
event), so logging the same event twice stores it once.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from ranking.types import is_valid_abstain, is_valid_alpha
from recsys.db.bulk import StagedLoad
from recsys.db.catalogue import ItemRecord, ensure_items, ensure_users
from recsys.db.engine import write_connection
from recsys.db.models import Impression, Interaction, Item, User, utcnow
from recsys.errors import UserError

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


@dataclass(frozen=True)
class InteractionRecord:
    user_id: str
    item_id: str
    event: str
    timestamp: datetime
    value: float | None = None
    source: str = "api"
    key: str | None = None  # the idempotency key; None: a hash of (source, user, item, time, event)


@dataclass(frozen=True)
class HistoryItem:
    item_id: str
    title: str | None
    event: str
    value: float | None
    timestamp: datetime


@dataclass(frozen=True)
class ImpressionRecord:
    """One item shown at one position of one response (what `log_impressions` stores)."""

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
class LoggedCandidate:
    item_id: str
    text: str  # the item title (its id when untitled)
    score: float | None = None  # the retrieval score the ranker logged, if any
    # the candidate's signals as the ranker got them (e.g. `interactions`, which fusion's
    # abstention reads: ranking.fusion), so a replayed request is the one served
    signals: dict[str, float | int | str] = field(default_factory=dict)


@dataclass(frozen=True)
class LoggedRequest:
    """One logged response with its outcome: the candidates the ranker was given, the order
    shown (best first), the item the user then chose (`ground_truth`), the titles of the
    user's history before it and the log-probability of the shown ranking under the logging
    policy (None when it logged none)."""

    request_id: str
    user_id: str
    task: str
    candidates: tuple[LoggedCandidate, ...]
    shown: tuple[str, ...]
    ground_truth: str
    history: tuple[str, ...] = ()
    log_propensity: float | None = None
    policy: str = ""
    history_ids: tuple[str, ...] = ()  # the history's item ids (hybrid prompts read them)
    model_version: str | None = None
    timestamp: datetime | None = None
    # the fusion weight (+inf: the retrieval order) and abstention threshold the ranking was
    # served with; None where the impression did not log them
    fusion_alpha: float | None = None
    fusion_abstain_below: int | None = None


@dataclass(frozen=True)
class InteractionLog:
    """Interactions in time order as parallel columns (external ids; seconds since the epoch)."""

    users: list[str]
    items: list[str]
    seconds: list[float]


def event_id(source: str, user_id: str, item_id: str, timestamp_us: int, event: str) -> str:
    """The idempotency key of an interaction: the same event loaded twice is stored once."""
    key = "\x1f".join((source, user_id, item_id, str(timestamp_us), event))
    return hashlib.blake2b(key.encode(), digest_size=16).hexdigest()


def _utc(timestamp: datetime) -> datetime:
    return timestamp if timestamp.tzinfo else timestamp.replace(tzinfo=UTC)


def epoch_micros(moment: datetime) -> int:
    """Microseconds since 1970 UTC (a naive time is UTC): the unit of event ids, and of
    the `ts_us` column ingestion reads."""
    return (_utc(moment) - _EPOCH) // timedelta(microseconds=1)


def log_interactions(records: Sequence[InteractionRecord], *, engine: Engine) -> int:
    """Store events (creating unknown users/items) through the bulk load; an event already
    stored is skipped. Returns how many were new."""
    if not records:
        return 0
    rows = []
    for r in records:
        key = r.key or event_id(r.source, r.user_id, r.item_id, epoch_micros(r.timestamp), r.event)
        rows.append((key, r.user_id, r.item_id, r.event, r.value, _utc(r.timestamp), r.source))
    items = [ItemRecord(i) for i in dict.fromkeys(r.item_id for r in records)]
    with engine.connect() as conn, StagedLoad(conn) as stage:
        stage.add_items(items, catalogue=False)
        stage.add_events(rows)
        added, _, _ = stage.merge()
    return added


def log_impressions(records: Sequence[ImpressionRecord], *, engine: Engine) -> int:
    """Store what was shown (creating unknown users/items). Returns the number of rows stored."""
    if not records:
        return 0
    now = utcnow()
    with write_connection(engine) as conn:
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


def user_history(
    user_id: str,
    limit: int = 20,
    *,
    before: datetime | None = None,
    events: Sequence[str] | None = None,
    engine: Engine,
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
    with engine.connect() as conn:
        rows = conn.execute(query).all()
    return [HistoryItem(*row) for row in reversed(rows)]


def interaction_log(*, engine: Engine, source: str | None = None) -> InteractionLog:
    """All interactions (of one source, or of every source when None) in time order, ties in
    insertion order."""
    i, u, it = Interaction.__table__, User.__table__, Item.__table__
    query = (
        sa.select(u.c.external_id, it.c.external_id, i.c.timestamp)
        .join(u, u.c.id == i.c.user_id)
        .join(it, it.c.id == i.c.item_id)
        .order_by(i.c.timestamp, i.c.id)
    )
    if source is not None:
        query = query.where(i.c.source == source)
    with engine.connect() as conn:
        rows = conn.execute(query).all()
    return InteractionLog(
        [r[0] for r in rows], [r[1] for r in rows], [r[2].timestamp() for r in rows]
    )


def logged_requests(
    *,
    engine: Engine,
    history_len: int = 20,
    window: timedelta = timedelta(days=7),
    limit: int | None = None,
    since: datetime | None = None,
) -> list[LoggedRequest]:
    """Logged responses joined with what the user did next, for off-policy learning and replay.

    One record per request that has a ground truth - the first interaction of the same user
    with one of the shown items within `window` after the impression - in the order the
    requests were shown. The history holds the titles of the user's last `history_len` items
    before the impression (and their ids); the impression context supplies `task` (default
    rec-movie), the ranking's `log_propensity` (read from the first position) and each
    item's `score` and `signals`;
    candidates are in the order the ranker was given them (the context's `input_index`,
    so a training prompt is the prompt that was served), `shown` in the order shown.
    `since` keeps the requests shown at or after that time."""
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
            imp.c.policy,
            imp.c.model_version,
            imp.c.context,
            imp.c.timestamp,
        )
        .join(users, users.c.id == imp.c.user_id)
        .join(items, items.c.id == imp.c.item_id)
        .order_by(imp.c.timestamp, imp.c.request_id, imp.c.position)
    )
    if since is not None:
        shown = shown.where(imp.c.timestamp >= _utc(since))
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
    out = []
    for request_id, rows in requests.items():
        if request_id not in truth:
            continue
        first = rows[0]
        context = first.context or {}
        history = user_history(first.user, history_len, before=first.timestamp, engine=engine)
        out.append(
            LoggedRequest(
                request_id=request_id,
                user_id=first.user,
                task=context.get("task") or "rec-movie",
                candidates=tuple(_logged_candidate(r) for r in _as_given(rows)),
                shown=tuple(r.item for r in rows),
                ground_truth=truth[request_id],
                history=tuple(h.title or h.item_id for h in history),
                history_ids=tuple(h.item_id for h in history),
                log_propensity=context.get("log_propensity"),
                policy=first.policy,
                model_version=first.model_version,
                timestamp=first.timestamp,
                **_served_fusion(context),
            )
        )
        if limit is not None and len(out) >= limit:
            break
    return out


def _served_fusion(context: dict[str, Any]) -> dict[str, Any]:
    """The logged fusion weight (JSON null: the retrieval order, an infinite weight) and
    abstention threshold, each None when the context lacks it or holds a bad value."""
    out: dict[str, Any] = {}
    if "fusion_alpha" in context:
        alpha = context["fusion_alpha"]
        if alpha is None:
            out["fusion_alpha"] = math.inf
        elif is_valid_alpha(alpha):
            out["fusion_alpha"] = float(alpha)
    if is_valid_abstain(context.get("fusion_abstain_below")):
        out["fusion_abstain_below"] = int(context["fusion_abstain_below"])
    return out


def _logged_candidate(row: Any) -> LoggedCandidate:
    context = row.context or {}
    signals = context.get("signals")
    return LoggedCandidate(row.item, row.title or row.item, context.get("score"),
                           dict(signals) if isinstance(signals, dict) else {})  # fmt: skip


def _as_given(rows: Sequence[Any]) -> list[Any]:
    """Impression rows in the order the ranker received the candidates (logged as
    `input_index`; rows logged without it keep the order shown)."""

    def index(pair: tuple[int, Any]) -> int:
        position, row = pair
        given = (row.context or {}).get("input_index")
        return given if isinstance(given, int) else position

    return [row for _, row in sorted(enumerate(rows), key=index)]


def traffic_since(since: datetime, *, engine: Engine) -> tuple[int, int]:
    """(impressions, interactions) recorded at or after `since` (`recsys status`)."""
    count = sa.select(sa.func.count())
    with engine.connect() as conn:
        shown = conn.execute(
            count.select_from(Impression).where(Impression.timestamp >= _utc(since))
        ).scalar_one()
        acted = conn.execute(
            count.select_from(Interaction).where(Interaction.timestamp >= _utc(since))
        ).scalar_one()
    return int(shown), int(acted)


def count_impressions_before(cutoff: datetime, *, engine: Engine) -> int:
    """Logged impressions older than `cutoff` (UTC)."""
    imp = Impression.__table__
    query = sa.select(sa.func.count()).select_from(imp).where(imp.c.timestamp < cutoff)
    with engine.connect() as conn:
        return int(conn.scalar(query) or 0)


def delete_impressions_before(cutoff: datetime, *, engine: Engine, chunk: int = 10_000) -> int:
    """Delete logged impressions older than `cutoff`, `chunk` rows per transaction (short
    locks on a table the service keeps writing to; an interrupted run deleted whole chunks,
    oldest first, and a re-run finishes the rest)."""
    imp = Impression.__table__
    deleted = 0
    while True:
        oldest = sa.select(imp.c.id).where(imp.c.timestamp < cutoff).order_by(imp.c.id).limit(chunk)
        with write_connection(engine) as conn:
            ids = list(conn.scalars(oldest))
            if ids:
                conn.execute(sa.delete(imp).where(imp.c.id.in_(ids)))
        deleted += len(ids)
        if len(ids) < chunk:
            return deleted
