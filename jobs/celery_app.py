"""The Celery application. With RECSYS_BROKER_URL unset, tasks run in-process (eager): the
embedded default needs no broker. With a Redis URL, workers on any number of machines share
the queue and the database.

    celery -A jobs.celery_app worker -l info      # a worker
    celery -A jobs.celery_app beat -l info        # the nightly schedule
"""

from __future__ import annotations

from celery import Celery
from celery.schedules import crontab

from recsys.settings import Settings, get_settings

BEAT_SCHEDULE = {
    "nightly-batch-recommendations": {
        "task": "jobs.tasks.batch_recommendations",
        "schedule": crontab(hour=2, minute=0),
        "kwargs": {},
    },
    "weekly-ranker-fine-tune": {
        "task": "jobs.tasks.train_ranker",
        "schedule": crontab(hour=3, minute=0, day_of_week="sunday"),
        "kwargs": {},
    },
}


def make_celery(settings: Settings | None = None) -> Celery:
    settings = settings or get_settings()
    broker = settings.broker_url or "memory://"
    backend = settings.result_backend or settings.broker_url or "cache+memory://"
    app = Celery("recsys", broker=broker, backend=backend, include=["jobs.tasks"])
    app.conf.update(
        task_always_eager=settings.broker_url is None,
        task_eager_propagates=True,
        # a job is acknowledged only when done: a worker that dies hands it to another
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        worker_prefetch_multiplier=1,
        task_serializer="json",
        result_serializer="json",
        accept_content=["json"],
        timezone="UTC",
        beat_schedule=BEAT_SCHEDULE,
        broker_connection_retry_on_startup=True,
    )
    return app


app = make_celery()
app.set_default()
