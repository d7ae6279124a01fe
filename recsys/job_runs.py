"""The life cycle of background jobs in the job_runs table: running -> succeeded/failed.

A failed job keeps its error and parameters, so it can be inspected (recsys.db.runs.job_run)
and re-run as is.

A worker killed mid-task (`kill -9`, a lost machine) cannot say so. While a job runs, its
worker writes `heartbeat_at` every `RECSYS_TASK_HEARTBEAT_S` (default `HEARTBEAT_S`); a
running row whose heartbeat is older than `LOST_BEATS` periods is *lost*. The broker
redelivers the unacknowledged task (acks_late, the Redis visibility timeout); when it
starts again, `start_job` marks the lost row failed ("lost ... retried as job N") and the
task resumes from what the lost run wrote. A
redelivery while the first run's heartbeat is fresh is `AlreadyRunning`: the task tries
again after `LOST_BEATS` heartbeats (by then the first run has finished, or is lost); a
redelivery of a task that already succeeded is `AlreadyDone` and does nothing.
"""

from __future__ import annotations

import contextlib
import threading
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy.engine import Engine

from recsys.db import runs
from recsys.db.models import JobStatus, utcnow
from recsys.db.runs import JobRunRecord

HEARTBEAT_S = 15.0
LOST_BEATS = 4  # heartbeats missed before a run counts as lost


def lost_after_s(heartbeat_s: float) -> float:
    """How long a running job may go without a heartbeat before it counts as lost."""
    return LOST_BEATS * heartbeat_s


LOST_AFTER_S = lost_after_s(HEARTBEAT_S)


class AlreadyRunning(RuntimeError):
    """The task is running on a live worker (its heartbeat is fresh)."""


class AlreadyDone(RuntimeError):
    """A run of this task already succeeded."""


def is_lost(run: JobRunRecord, now: datetime | None = None, after_s: float = LOST_AFTER_S) -> bool:
    if run.status != JobStatus.RUNNING.value:
        return False
    beat = run.heartbeat_at or run.started_at or run.created_at
    now = now or utcnow()
    return now - beat > timedelta(seconds=after_s)


def shown_status(
    run: JobRunRecord, now: datetime | None = None, after_s: float = LOST_AFTER_S
) -> str:
    """The status for people: a running row without a recent heartbeat is 'lost'."""
    return "lost" if is_lost(run, now, after_s) else run.status


def start_job(
    kind: str,
    parameters: dict[str, Any],
    *,
    task_id: str | None = None,
    engine: Engine,
    lost_after_s: float = LOST_AFTER_S,
) -> int:
    previous = runs.job_runs_of_task(task_id, engine=engine) if task_id else []
    done = [r for r in previous if r.status == JobStatus.SUCCEEDED.value]
    if done:
        raise AlreadyDone(f"task {task_id} already succeeded as job {done[-1].id}")
    running = [r for r in previous if r.status == JobStatus.RUNNING.value]
    alive = [r for r in running if not is_lost(r, after_s=lost_after_s)]
    if alive:
        raise AlreadyRunning(f"task {task_id} is running as job {alive[-1].id} on a live worker")
    now = utcnow()
    job_id = runs.insert_job_run(
        engine=engine,
        kind=kind,
        parameters=parameters,
        status=JobStatus.RUNNING.value,
        task_id=task_id,
        started_at=now,
        heartbeat_at=now,
    )
    for lost in running:
        beat = f"{lost.heartbeat_at or lost.started_at:%Y-%m-%d %H:%M:%S}"
        error = f"lost: its worker stopped (last heartbeat {beat}); retried as job {job_id}"
        runs.update_job_run(
            lost.id, engine=engine, status=JobStatus.FAILED.value, error=error, finished_at=now
        )
    return job_id


class Heartbeat:
    """Writes a running job's heartbeat every `every_s` seconds until stopped."""

    def __init__(self, job_id: int, *, engine: Engine, every_s: float = HEARTBEAT_S) -> None:
        self.job_id, self.engine, self.every_s = job_id, engine, every_s
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"heartbeat-{job_id}", daemon=True)

    def __enter__(self) -> Heartbeat:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=5)

    def _run(self) -> None:
        while not self._stop.wait(self.every_s):
            # the database away for a moment: the next beat tries again
            with contextlib.suppress(Exception):
                runs.update_job_run(self.job_id, engine=self.engine, heartbeat_at=utcnow())


def set_progress(job_id: int, progress: float, *, engine: Engine) -> None:
    runs.update_job_run(
        job_id, engine=engine, progress=max(0.0, min(1.0, progress)), heartbeat_at=utcnow()
    )


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
