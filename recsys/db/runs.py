"""Runs: the stored lists of batch recommendation runs, and the job_runs rows of background
jobs (recsys.job_runs decides their life cycle; this module reads and writes the rows)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, fields
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Engine
from sqlalchemy.orm import Session

from recsys.db.catalogue import ID_LOOKUP_CHUNK, ItemRecord, ensure_items, ensure_users, lookup_ids
from recsys.db.engine import write_connection
from recsys.db.models import Item, JobRun, Recommendation, User, utcnow
from recsys.errors import UserError


@dataclass(frozen=True)
class RecommendationRow:
    user_id: str
    rank: int
    item_id: str
    score: float | None
    model_version: str | None
    run_id: str


@dataclass(frozen=True)
class JobRunRecord:
    id: int
    kind: str
    parameters: dict[str, Any]
    status: str
    progress: float
    parent_id: int | None
    shard_index: int | None
    shard_count: int | None
    task_id: str | None
    result: dict[str, Any]
    error: str | None
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    heartbeat_at: datetime | None = None


# ---------------------------------------------------------------------------------------------
# recommendation runs


def write_recommendations(
    run_id: str,
    lists: Mapping[str, Sequence[tuple[str, float | None]]],
    *,
    model_version: str | None = None,
    engine: Engine,
) -> int:
    """Store each user's ranked list (item id, score), best first, for one run. Writing a user's
    list again in the same run replaces it, so a retried shard leaves no duplicates."""
    if not lists:
        return 0
    table = Recommendation.__table__
    now = utcnow()
    with write_connection(engine) as conn:
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


def users_in_run(run_id: str, *, engine: Engine) -> set[str]:
    """External ids of the users that already have a list in `run_id` (to resume a run)."""
    rec, users = Recommendation.__table__, User.__table__
    query = (
        sa.select(users.c.external_id)
        .join(rec, rec.c.user_id == users.c.id)
        .where(rec.c.run_id == run_id)
        .distinct()
    )
    with engine.connect() as conn:
        return set(conn.scalars(query))


def recommendations_for(
    user_id: str, run_id: str | None = None, *, engine: Engine
) -> list[RecommendationRow]:
    """A user's list from `run_id`, or from the newest run that has one; best first."""
    rec, users, items = Recommendation.__table__, User.__table__, Item.__table__
    with engine.connect() as conn:
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


@dataclass(frozen=True)
class RunSummary:
    run_id: str
    rows: int
    last_written: datetime


def recommendation_runs(*, engine: Engine) -> list[RunSummary]:
    """Every stored run: its rows and when its last row was written, newest first."""
    rec = Recommendation.__table__
    query = (
        sa.select(rec.c.run_id, sa.func.count(), sa.func.max(rec.c.created_at))
        .group_by(rec.c.run_id)
        .order_by(sa.func.max(rec.c.created_at).desc(), rec.c.run_id.desc())
    )
    with engine.connect() as conn:
        return [RunSummary(r, int(n), last) for r, n, last in conn.execute(query)]


def delete_recommendation_run(run_id: str, *, engine: Engine) -> int:
    """Delete one run's lists, all in one transaction (a crash deletes all or none)."""
    rec = Recommendation.__table__
    with write_connection(engine) as conn:
        return int(conn.execute(sa.delete(rec).where(rec.c.run_id == run_id)).rowcount or 0)


# ---------------------------------------------------------------------------------------------
# job runs


def _job_record(run: JobRun) -> JobRunRecord:
    return JobRunRecord(**{f.name: getattr(run, f.name) for f in fields(JobRunRecord)})


def insert_job_run(*, engine: Engine, **values: Any) -> int:
    """Add a job_runs row with these column values; returns its id."""
    with Session(engine) as session, session.begin():
        run = JobRun(**values)
        session.add(run)
        session.flush()
        return run.id


def update_job_run(job_id: int, *, engine: Engine, **values: Any) -> None:
    with Session(engine) as session, session.begin():
        session.execute(sa.update(JobRun).where(JobRun.id == job_id).values(**values))


def job_run(job_id: int, *, engine: Engine) -> JobRunRecord:
    with Session(engine) as session:
        run = session.get(JobRun, job_id)
        if run is None:
            raise UserError(f"no job run {job_id}; see `recsys jobs list`")
        return _job_record(run)


def job_runs_of_task(task_id: str, *, engine: Engine) -> list[JobRunRecord]:
    """Every run of one Celery task id (a redelivered task has several), oldest first."""
    query = sa.select(JobRun).where(JobRun.task_id == task_id).order_by(JobRun.id)
    with Session(engine) as session:
        return [_job_record(r) for r in session.scalars(query)]


def recent_job_runs(limit: int = 20, *, engine: Engine) -> list[JobRunRecord]:
    """The newest `limit` job runs, newest first."""
    query = sa.select(JobRun).order_by(JobRun.id.desc()).limit(limit)
    with Session(engine) as session:
        return [_job_record(r) for r in session.scalars(query)]
