"""The Celery application. With RECSYS_BROKER_URL unset, tasks run in-process (eager): the
embedded default needs no broker. With a Redis URL, workers on any number of machines share
the queue and the database.

    celery -A jobs.celery_app worker -l info      # a worker
    celery -A jobs.celery_app beat -l info        # the schedule (settings: RECSYS_*_SCHEDULE)

Faults: a task is acknowledged only when it is done (acks_late), so a worker that dies
mid-task leaves it unacknowledged; Redis hands it to a live worker after
RECSYS_TASK_VISIBILITY_TIMEOUT_S, and recsys.job_runs marks the dead worker's run lost.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from celery import Celery
from celery.schedules import crontab

from recsys.errors import UserError
from recsys.settings import Settings, get_settings


def parse_schedule(text: str) -> crontab | timedelta | None:
    """A five-field crontab ("0 4 * * *", UTC), a period in seconds ("30", "30s"), or
    "off" (None)."""
    text = text.strip()
    if text.lower() in ("off", "none", ""):
        return None
    seconds = text[:-1] if text.endswith("s") else text
    try:
        period = float(seconds)
    except ValueError:
        fields = text.split()
        if len(fields) != 5:
            raise UserError(
                f"schedule {text!r}: give a five-field crontab like '0 4 * * *', a number of "
                "seconds like '30s', or 'off'"
            ) from None
        minute, hour, day_of_month, month, day_of_week = fields
        return crontab(
            minute=minute,
            hour=hour,
            day_of_month=day_of_month,
            month_of_year=month,
            day_of_week=day_of_week,
        )
    if period <= 0:
        raise UserError(f"schedule {text!r}: a period must be more than 0 seconds")
    return timedelta(seconds=period)


def beat_schedule(settings: Settings) -> dict[str, dict[str, Any]]:
    """The nightly batch (fanned out over `batch_shards`), the closed loop and the weekly
    prune (recsys.retention)."""
    entries = {
        "nightly-batch-recommendations": (
            "jobs.tasks.nightly_batch",
            settings.batch_schedule,
            {"shards": settings.batch_shards},
        ),
        "closed-loop": ("jobs.tasks.improve_ranker", settings.loop_schedule, {}),
        "prune": ("jobs.tasks.prune", settings.prune_schedule, {}),
    }
    out = {}
    for name, (task, text, kwargs) in entries.items():
        when = parse_schedule(text)
        if when is not None:
            # a turn not started before the next one is due is dropped, so turns never pile
            # up behind a long one
            expires = when.total_seconds() if isinstance(when, timedelta) else 3600
            out[name] = {
                "task": task,
                "schedule": when,
                "kwargs": kwargs,
                "options": {"expires": expires},
            }
    return out


def make_celery(settings: Settings | None = None) -> Celery:
    from recsys.job_runs import LOST_BEATS, lost_after_s

    settings = settings or get_settings()
    lost_after = lost_after_s(settings.task_heartbeat_s)
    if settings.task_visibility_timeout_s <= lost_after:
        raise UserError(
            f"RECSYS_TASK_VISIBILITY_TIMEOUT_S={settings.task_visibility_timeout_s} must exceed "
            f"{LOST_BEATS} heartbeats ({lost_after:g} s, RECSYS_TASK_HEARTBEAT_S): a task "
            "redelivered sooner would find its first run still counted alive and be dropped"
        )
    broker = settings.broker_url or "memory://"
    backend = settings.result_backend or settings.broker_url or "cache+memory://"
    app = Celery("recsys", broker=broker, backend=backend, include=["jobs.tasks"])
    transport = {"visibility_timeout": settings.task_visibility_timeout_s}
    app.conf.update(
        task_always_eager=settings.broker_url is None,
        task_eager_propagates=True,
        # a job is acknowledged only when done: a worker that dies hands it to another
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        worker_prefetch_multiplier=1,
        broker_transport_options=transport,
        task_default_queue=settings.task_queue,
        result_backend_transport_options=transport,
        task_serializer="json",
        result_serializer="json",
        accept_content=["json"],
        timezone="UTC",
        beat_schedule=beat_schedule(settings),
        broker_connection_retry_on_startup=True,
        # what tasks print (libraries' loading bars) is not a warning; progress that matters
        # goes to job_runs (recsys.progress)
        worker_redirect_stdouts_level="INFO",
    )
    return app


app = make_celery()
app.set_default()
