"""The life cycle of background jobs in the job_runs table: running -> succeeded/failed.

A failed job keeps its error and parameters, so it can be inspected (recsys.db.runs.job_run)
and re-run as is.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy.engine import Engine

from recsys.db import runs
from recsys.db.models import JobStatus, utcnow


def start_job(
    kind: str, parameters: dict[str, Any], *, task_id: str | None = None, engine: Engine
) -> int:
    return runs.insert_job_run(
        engine=engine,
        kind=kind,
        parameters=parameters,
        status=JobStatus.RUNNING.value,
        task_id=task_id,
        started_at=utcnow(),
    )


def set_progress(job_id: int, progress: float, *, engine: Engine) -> None:
    runs.update_job_run(job_id, engine=engine, progress=max(0.0, min(1.0, progress)))


def finish_job(job_id: int, result: dict[str, Any], *, engine: Engine) -> None:
    runs.update_job_run(
        job_id,
        engine=engine,
        status=JobStatus.SUCCEEDED.value,
        progress=1.0,
        result=result,
        finished_at=utcnow(),
    )


def fail_job(job_id: int, error: str, *, engine: Engine) -> None:
    runs.update_job_run(
        job_id, engine=engine, status=JobStatus.FAILED.value, error=error, finished_at=utcnow()
    )
