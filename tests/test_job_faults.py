"""Job runs whose worker died: heartbeats, lost runs, redelivered tasks; the schedule."""

from __future__ import annotations

from datetime import timedelta

import pytest

from recsys import job_runs
from recsys.db.models import utcnow
from recsys.db.runs import job_run, job_runs_of_task, update_job_run
from recsys.errors import UserError


def test_a_redelivered_task_marks_the_lost_run_and_runs_again(engine):
    first = job_runs.start_job("batch", {"k": 5}, task_id="t-1", engine=engine)
    # its worker was killed: no heartbeat for longer than LOST_AFTER_S
    stale = utcnow() - timedelta(seconds=job_runs.LOST_AFTER_S + 5)
    update_job_run(first, engine=engine, heartbeat_at=stale)
    assert job_runs.shown_status(job_run(first, engine=engine)) == "lost"
    second = job_runs.start_job("batch", {"k": 5}, task_id="t-1", engine=engine)
    lost = job_run(first, engine=engine)
    assert lost.status == "failed" and f"retried as job {second}" in lost.error
    assert [r.id for r in job_runs_of_task("t-1", engine=engine)] == [first, second]
    assert job_runs.shown_status(job_run(second, engine=engine)) == "running"


def test_a_duplicate_delivery_while_the_first_run_is_alive_does_nothing(engine):
    first = job_runs.start_job("loop", {}, task_id="t-2", engine=engine)
    with pytest.raises(job_runs.AlreadyRunning, match=f"running as job {first}"):
        job_runs.start_job("loop", {}, task_id="t-2", engine=engine)
    assert len(job_runs_of_task("t-2", engine=engine)) == 1


def test_the_heartbeat_keeps_a_long_job_alive(engine):
    job = job_runs.start_job("train", {}, task_id="t-3", engine=engine)
    update_job_run(job, engine=engine, heartbeat_at=utcnow() - timedelta(hours=1))
    with job_runs.Heartbeat(job, engine=engine, every_s=0.05):
        import time

        time.sleep(0.3)
    assert job_runs.shown_status(job_run(job, engine=engine)) == "running"


def test_finished_runs_are_never_lost(engine):
    job = job_runs.start_job("batch", {}, engine=engine)
    job_runs.finish_job(job, {"users_written": 1}, engine=engine)
    update_job_run(job, engine=engine, heartbeat_at=utcnow() - timedelta(days=1))
    assert job_runs.shown_status(job_run(job, engine=engine)) == "succeeded"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("30s", timedelta(seconds=30)),
        ("2.5", timedelta(seconds=2.5)),
        ("off", None),
    ],
)
def test_schedules_in_seconds_or_off(text, expected):
    from jobs.celery_app import parse_schedule

    assert parse_schedule(text) == expected


def test_a_crontab_schedule():
    from celery.schedules import crontab

    from jobs.celery_app import parse_schedule

    assert parse_schedule("0 4 * * 0") == crontab(minute="0", hour="4", day_of_week="0")


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("every night", "five-field crontab"),
        ("0 4 * *", "five-field crontab"),
        ("-5s", "more than 0 seconds"),
    ],
)
def test_bad_schedules_are_refused(text, message):
    from jobs.celery_app import parse_schedule

    with pytest.raises(UserError, match=message):
        parse_schedule(text)


def test_the_beat_schedule_comes_from_the_settings():
    from jobs.celery_app import beat_schedule
    from recsys.settings import Settings

    entries = beat_schedule(
        Settings(loop_schedule="5s", batch_schedule="off", prune_schedule="off", batch_shards=3)
    )
    assert list(entries) == ["closed-loop"]
    assert entries["closed-loop"]["schedule"] == timedelta(seconds=5)
    every = beat_schedule(Settings(batch_shards=3))
    assert every["nightly-batch-recommendations"]["kwargs"] == {"shards": 3}
    assert every["prune"]["task"] == "jobs.tasks.prune"
    assert every["prune"]["schedule"].day_of_week == {0}  # Sundays, by default
