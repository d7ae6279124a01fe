"""Celery jobs on a real Redis broker with a real worker; job_runs records each run."""

from __future__ import annotations

import json
import uuid

import pytest

from recsys import job_runs
from recsys.db.engine import get_engine
from recsys.db.runs import job_run, recent_job_runs
from recsys.errors import UserError
from recsys.settings import get_settings

# one private queue per test process: Celery caches its queue set after the first worker
QUEUE = f"recsys-test-{uuid.uuid4().hex[:8]}"
CSV = "user_id,item_id,timestamp,rating\nu1,i1,1000,5\nu1,i2,1001,3\nu2,i1,1002,4\n"


@pytest.fixture
def worker_app(redis_url, sqlite_url, monkeypatch):
    """A Celery app of the project's configuration on the local Redis (a private queue), with
    the project's shared tasks and a solo worker."""
    from celery.contrib.testing.worker import start_worker

    from jobs.celery_app import app as default_app
    from jobs.celery_app import make_celery
    from recsys.settings import Settings

    monkeypatch.setenv("RECSYS_DATABASE_URL", sqlite_url)
    get_settings.cache_clear()
    app = make_celery(Settings(broker_url=redis_url))
    app.conf.task_default_queue = QUEUE
    app.loader.import_default_modules()
    try:
        with start_worker(app, pool="solo", perform_ping_check=False, shutdown_timeout=20):
            yield app
    finally:
        default_app.set_default()
        get_settings.cache_clear()


def test_ingest_job_runs_on_a_worker_and_is_recorded(worker_app, tmp_path):
    ingest_file = worker_app.tasks["jobs.tasks.ingest_file"]
    path = tmp_path / "events.csv"
    path.write_text(CSV)
    result = ingest_file.delay(path=str(path), fmt="csv").get(timeout=60)
    assert result["interactions_added"] == 3
    run = job_run(result["job_id"], engine=get_engine())
    assert (run.kind, run.status, run.progress) == ("ingest", "succeeded", 1.0)
    again = ingest_file.delay(path=str(path), fmt="csv").get(timeout=60)
    assert again["interactions_added"] == 0  # a retried job adds nothing twice


def test_the_prune_job_applies_the_settings_retention_on_a_worker(worker_app):
    from datetime import timedelta

    import sqlalchemy as sa

    from recsys.db.migrate import ensure_schema
    from recsys.db.models import Recommendation, utcnow
    from recsys.db.runs import recommendation_runs, write_recommendations

    ensure_schema()
    engine = get_engine()
    write_recommendations("batch-old", {"u1": [("i1", 1.0)]}, engine=engine)
    write_recommendations("batch-new", {"u1": [("i2", 1.0)]}, engine=engine)
    table = Recommendation.__table__
    with engine.begin() as conn:
        conn.execute(sa.update(table).where(table.c.run_id == "batch-old")
                     .values(created_at=utcnow() - timedelta(days=90)))  # fmt: skip
    prune = worker_app.tasks["jobs.tasks.prune"]
    result = prune.delay().get(timeout=60)
    assert (result["recommendation_runs"], result["recommendation_rows"]) == (1, 1)
    assert [r.run_id for r in recommendation_runs(engine=engine)] == ["batch-new"]
    assert job_run(result["job_id"], engine=engine).kind == "prune"
    assert prune.delay().get(timeout=60)["recommendation_runs"] == 0  # a re-run finds nothing


def test_failed_job_keeps_its_error_and_parameters(worker_app, tmp_path):
    ingest_file = worker_app.tasks["jobs.tasks.ingest_file"]
    bad = tmp_path / "bad.csv"
    bad.write_text("user_id,item_id\nu1,i1\n")  # no timestamp column
    with pytest.raises(Exception, match="timestamp"):
        ingest_file.delay(path=str(bad), fmt="csv").get(timeout=60)
    run = recent_job_runs(1, engine=get_engine())[0]
    assert run.status == "failed"
    assert "timestamp" in run.error
    assert run.parameters["path"] == str(bad)


def test_rank_file_writes_a_permutation_per_request(tiny_ranker, tmp_path):
    from recsys.rank_file import rank_file

    requests = tmp_path / "requests.jsonl"
    lines = [
        {
            "task": "rec-game",
            "history": ["Halo"],
            "candidates": [{"id": str(i), "text": f"Game {i}"} for i in range(n)],
        }
        for n in (2, 5, 9)
    ]
    requests.write_text("\n".join(json.dumps(x) for x in lines) + "\n")
    out = tmp_path / "out" / "results.jsonl"
    progress: list[float] = []
    assert rank_file(requests, out, tiny_ranker, chunk=2, on_progress=progress.append) == 3
    results = [json.loads(line) for line in out.read_text().splitlines()]
    assert [sorted(r["order"], key=int) for r in results] == [
        [str(i) for i in range(n)] for n in (2, 5, 9)
    ]
    assert progress[-1] == 1.0


def test_rank_file_names_the_bad_line_and_writes_nothing(tiny_ranker, tmp_path):
    from recsys.errors import UserError
    from recsys.rank_file import rank_file

    requests = tmp_path / "requests.jsonl"
    requests.write_text(
        '{"task": "rec-game", "candidates": [{"id": "1", "text": "x"}]}\n'
        '{"task": "rec-game", "candidates": []}\n'
    )
    out = tmp_path / "results.jsonl"
    with pytest.raises(UserError, match=r"line 2: no candidates"):
        rank_file(requests, out, tiny_ranker)
    assert not out.exists()


def test_jobs_command_lists_and_shows_runs(sqlite_url):
    from typer.testing import CliRunner

    from recsys.cli import app
    from recsys.db.engine import make_engine
    from recsys.db.migrate import ensure_schema

    ensure_schema(sqlite_url)
    engine = make_engine(sqlite_url)
    ok = job_runs.start_job("batch", {"k": 20}, engine=engine)
    job_runs.finish_job(ok, {"users_written": 3}, engine=engine)
    bad = job_runs.start_job("ingest", {"path": "x.csv"}, engine=engine)
    job_runs.fail_job(bad, "UserError: x.csv not found", engine=engine)
    engine.dispose()
    runner = CliRunner()
    listed = runner.invoke(app, ["jobs", "list", "--url", sqlite_url]).output.splitlines()
    assert "failed" in listed[0] and "x.csv not found" in listed[0]  # newest first
    assert "succeeded" in listed[1] and "100.0%" in listed[1]
    shown = json.loads(runner.invoke(app, ["jobs", "show", str(ok), "--url", sqlite_url]).output)
    assert shown["parameters"] == {"k": 20} and shown["result"] == {"users_written": 3}
    missing = runner.invoke(app, ["jobs", "show", "999", "--url", sqlite_url])
    assert isinstance(missing.exception, UserError)


def test_the_nightly_batch_builds_the_index_once_and_fans_out_its_shards(worker_app, tmp_path):
    """A chord: the index is built and registered once, the shards run as a group on the
    workers, and a callback records the whole run when all are done."""
    import time

    from recsys.db.migrate import ensure_schema
    from recsys.db.registry import list_models
    from recsys.db.runs import users_in_run
    from recsys.ingest import ingest
    from tests.fixtures.data import tiny_ml100k

    ensure_schema()
    engine = get_engine()
    ingest(tiny_ml100k(tmp_path / "ml"), progress=False, engine=engine)
    nightly = worker_app.tasks["jobs.tasks.nightly_batch"]
    started = nightly.delay(
        shards=3,
        rerank=False,
        embeddings="hashing",
        run_id="night-1",
        artifact_dir=str(tmp_path / "artifacts"),
    ).get(timeout=120)
    assert started["shards"] == 3
    deadline = time.monotonic() + 120
    # the callback's row exists from its start; its result only once it has finished (a
    # loaded machine shows the row "running" for a while)
    pending = ("queued", "running")
    while not (done := [r for r in recent_job_runs(20, engine=engine)
                        if r.kind == "batch-done" and r.status not in pending]):  # fmt: skip
        assert time.monotonic() < deadline, "the chord's callback never finished"
        time.sleep(0.2)
    assert done[0].status == "succeeded", done[0].error
    result = done[0].result
    assert result["shards"] == 3 and result["users_written"] == 25
    assert result["index_version"] == started["index_version"]
    assert len(list_models("index", engine=engine)) == 1  # built once, not per shard
    shards = [r for r in recent_job_runs(20, engine=engine) if r.kind == "batch"]
    assert sorted(r.parameters["shard"] for r in shards) == [0, 1, 2]
    assert len(users_in_run("night-1", engine=engine)) == 25


def test_batch_shards_from_the_command_line_runs_in_process_without_a_broker(
    tmp_path, monkeypatch, capsys, sqlite_url
):
    from recsys.db.runs import users_in_run
    from recsys.ingest import ingest
    from tests.fixtures.cli import run_cli
    from tests.fixtures.data import tiny_ml100k

    monkeypatch.setenv("RECSYS_DATABASE_URL", sqlite_url)
    monkeypatch.setenv("RECSYS_VAR_DIR", str(tmp_path / "var"))
    get_settings.cache_clear()
    try:
        from recsys.db.migrate import ensure_schema

        ensure_schema()
        ingest(tiny_ml100k(tmp_path / "ml"), progress=False, engine=get_engine())
        args = [
            "batch",
            "--shards",
            "2",
            "--no-rerank",
            "--embeddings",
            "hashing",
            "--run-id",
            "cli-night",
        ]
        code, out, err = run_cli(monkeypatch, capsys, args)
        assert code == 0, err
        assert "fanned out 2 shards in process" in out
        assert len(users_in_run("cli-night", engine=get_engine())) == 25
    finally:
        get_settings.cache_clear()
