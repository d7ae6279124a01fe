"""Bookkeeping of background jobs in the job_runs table: queued -> running -> succeeded/failed.

A failed job keeps its error and parameters, so it can be inspected and re-run as is.
"""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Engine
from sqlalchemy.orm import Session

from recsys.db.engine import get_engine
from recsys.db.models import JobRun, JobStatus, utcnow


def start_job(
    kind: str,
    parameters: dict[str, Any],
    *,
    task_id: str | None = None,
    engine: Engine | None = None,
) -> int:
    with Session(engine or get_engine()) as session, session.begin():
        run = JobRun(
            kind=kind,
            parameters=parameters,
            status=JobStatus.RUNNING.value,
            task_id=task_id,
            started_at=utcnow(),
        )
        session.add(run)
        session.flush()
        return run.id


def set_progress(job_id: int, progress: float, *, engine: Engine | None = None) -> None:
    _update(job_id, engine, progress=max(0.0, min(1.0, progress)))


def finish_job(job_id: int, result: dict[str, Any], *, engine: Engine | None = None) -> None:
    _update(
        job_id,
        engine,
        status=JobStatus.SUCCEEDED.value,
        progress=1.0,
        result=result,
        finished_at=utcnow(),
    )


def fail_job(job_id: int, error: str, *, engine: Engine | None = None) -> None:
    _update(job_id, engine, status=JobStatus.FAILED.value, error=error, finished_at=utcnow())


def get_job(job_id: int, *, engine: Engine | None = None) -> dict[str, Any]:
    with Session(engine or get_engine()) as session:
        run = session.get(JobRun, job_id)
        if run is None:
            from recsys.errors import UserError

            raise UserError(f"no job run {job_id}; see `recsys jobs list`")
        return {c.key: getattr(run, c.key) for c in sa.inspect(JobRun).columns}


def recent_jobs(limit: int = 20, *, engine: Engine | None = None) -> list[dict[str, Any]]:
    query = sa.select(JobRun).order_by(JobRun.id.desc()).limit(limit)
    with Session(engine or get_engine()) as session:
        return [
            {c.key: getattr(r, c.key) for c in sa.inspect(JobRun).columns}
            for r in session.scalars(query)
        ]


def _update(job_id: int, engine: Engine | None, **values: Any) -> None:
    with Session(engine or get_engine()) as session, session.begin():
        session.execute(sa.update(JobRun).where(JobRun.id == job_id).values(**values))
