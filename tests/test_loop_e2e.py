"""The closed loop end to end, as an operator runs it: a real Redis broker, a real worker and
beat (separate processes) on a seconds-long schedule, a running API server; on SQLite and on
PostgreSQL, with a tiny model. And a worker killed with `kill -9` mid-task."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path

import pytest

from recsys.settings import get_settings
from tests.fixtures.waiting import wait_for

LOOP_ENV = {
    "RECSYS_EMBEDDINGS": "hashing",
    "RECSYS_LOOP_SCHEDULE": "2s",
    "RECSYS_BATCH_SCHEDULE": "off",
    "RECSYS_LOOP_MIN_REQUESTS": "20",
    "RECSYS_LOOP_STEPS": "20",
    "RECSYS_LOOP_LR": "3e-3",
    "RECSYS_LOOP_REPLAY_DRAWS": "2",
    "RECSYS_AUTO_PROMOTE": "true",
    "RECSYS_TORCH_THREADS": "1",
    "RECSYS_TASK_HEARTBEAT_S": "1",
    "RECSYS_TASK_VISIBILITY_TIMEOUT_S": "8",
}


def settings_env(database_url: str, redis_url: str, tmp_path: Path, monkeypatch):  # type: ignore[no-untyped-def]
    """Settings shared by this process (the server) and the worker and beat processes."""
    env = {
        **LOOP_ENV,
        "RECSYS_DATABASE_URL": database_url,
        "RECSYS_BROKER_URL": redis_url,
        "RECSYS_VAR_DIR": str(tmp_path / "var"),
        "RECSYS_TASK_QUEUE": f"recsys-loop-{uuid.uuid4().hex[:8]}",
    }
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    get_settings.cache_clear()
    yield env
    get_settings.cache_clear()


@pytest.fixture
def loop_env(database_url, redis_url, tmp_path, monkeypatch):  # type: ignore[no-untyped-def]
    yield from settings_env(database_url, redis_url, tmp_path, monkeypatch)


@pytest.fixture
def sqlite_loop_env(sqlite_url, redis_url, tmp_path, monkeypatch):  # type: ignore[no-untyped-def]
    """The fault test needs no second database: what it checks is the broker's."""
    yield from settings_env(sqlite_url, redis_url, tmp_path, monkeypatch)


@contextmanager
def celery_process(
    kind: str, env: dict[str, str], log: Path, *extra: str
) -> Iterator[subprocess.Popen]:
    args = [sys.executable, "-m", "celery", "-A", "jobs.celery_app", kind, "-l", "info", *extra]
    with log.open("w") as out:
        proc = subprocess.Popen(
            args, env={**os.environ, **env}, stdout=out, stderr=out, start_new_session=True
        )
        try:
            yield proc
        finally:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGTERM)
                try:
                    proc.wait(timeout=20)
                except subprocess.TimeoutExpired:
                    os.killpg(proc.pid, signal.SIGKILL)
                    proc.wait()


def worker(env: dict[str, str], log: Path, name: str):  # type: ignore[no-untyped-def]
    return celery_process(
        "worker", env, log, "--pool", "solo", "-n", f"{name}@%h", "-Q", env["RECSYS_TASK_QUEUE"]
    )


def register_base(engine, model_dir: Path) -> None:
    from recsys.db.registry import register_model
    from recsys.registry import promote

    register_model("ranker", "v0", str(model_dir), engine=engine)
    promote("ranker", "v0", force=True, engine=engine)


@pytest.mark.timeout(600)
def test_simulate_train_gate_promote_and_the_server_answers_with_the_new_version(
    loop_env, tmp_path, tiny_model_dir
):
    from fastapi.testclient import TestClient

    from recsys.api import create_app
    from recsys.db.engine import get_engine
    from recsys.db.migrate import ensure_schema
    from recsys.simulate import SimulationConfig, simulate
    from tests.fixtures.loop_world import build_world

    settings = get_settings().model_copy(
        update={"model": "promoted", "reload_poll_s": 0.5, "require_api_key": False}
    )
    ensure_schema()
    engine = get_engine()
    traffic = build_world(engine, settings.resolved_artifact_dir)
    register_base(engine, tiny_model_dir)
    logs = [tmp_path / "worker.log", tmp_path / "beat.log"]
    with TestClient(create_app(settings=settings)) as client:
        assert client.get("/v1/model").json()["version"] == "v0"
        simulated = simulate(client, traffic, SimulationConfig(k=8, concurrency=4), progress=False)
        assert simulated.answered == len(traffic)
        with (
            worker(loop_env, logs[0], "loop"),
            celery_process("beat", loop_env, logs[1], "-s", str(tmp_path / "beat-schedule")),
        ):
            new = wait_for(
                lambda: (v := client.get("/v1/model").json()["version"]) != "v0" and v,
                420,
                "the server did not serve a promoted version",
                logs,
            )
            # the server may switch while the turn still writes its replay report
            promoted = wait_for(
                lambda: [r for r in loop_turns(engine) if r.result.get("status") == "promoted"],
                240,
                "the promoting loop turn did not finish",
                logs,
            )
        answer = client.post("/v1/recommend", json={"user_id": "u1", "k": 5})
    assert answer.status_code == 200 and answer.json()["model"]
    turns = loop_turns(engine)
    assert [r.result["candidate"] for r in promoted] == [new]
    result = promoted[0].result
    assert result["gate"]["allowed"] and "ΔMRR" in result["gate"]["reason"]
    report = Path(result["replay_report"])
    assert report.is_file() and (report.parent / "replay.png").is_file()
    assert all(r.status in ("succeeded", "running") for r in turns)


def loop_turns(engine) -> list:
    from recsys.db.runs import recent_job_runs

    return [r for r in recent_job_runs(50, engine=engine) if r.kind == "loop"]


@pytest.mark.timeout(300)
def test_a_task_whose_worker_is_killed_runs_again_on_a_live_worker_and_resumes(
    sqlite_loop_env, tmp_path, tiny_model_dir
):
    loop_env = sqlite_loop_env
    from jobs.celery_app import make_celery
    from recsys.db.engine import get_engine
    from recsys.db.migrate import ensure_schema
    from recsys.db.runs import job_runs_of_task, users_in_run
    from tests.fixtures.loop_world import N_USERS, build_world

    env = {**loop_env, "RECSYS_MODEL": str(tiny_model_dir)}
    ensure_schema()
    engine = get_engine()
    build_world(engine, get_settings().resolved_artifact_dir)
    app = make_celery(get_settings())
    options = {
        "run_id": "nightly",
        "k": 20,
        "chunk_users": 2,
        "embeddings": "hashing",
        "index_version": None,
    }
    logs = [tmp_path / "worker-a.log", tmp_path / "worker-b.log"]
    with worker(env, logs[0], "a") as first:
        task = app.send_task(
            "jobs.tasks.batch_recommendations", kwargs=options, queue=env["RECSYS_TASK_QUEUE"]
        )

        def started() -> bool:
            runs = job_runs_of_task(task.id, engine=engine)
            # progress counts ranked users; kill once some are also written
            return (
                bool(runs) and runs[0].progress > 0 and bool(users_in_run("nightly", engine=engine))
            )

        wait_for(started, 120, "the first worker did not start the batch", logs)
        os.killpg(first.pid, signal.SIGKILL)  # mid-task: nothing acknowledged, nothing said
        first.wait()
    assert job_runs_of_task(task.id, engine=engine)[0].status == "running"
    with worker(env, logs[1], "b"):

        def finished():  # type: ignore[no-untyped-def]
            runs = job_runs_of_task(task.id, engine=engine)
            return len(runs) == 2 and runs[1].status == "succeeded" and runs

        runs = wait_for(finished, 180, "the task did not run again on the live worker", logs)
    lost, retried = runs
    assert lost.status == "failed" and "lost: its worker stopped" in lost.error
    assert f"retried as job {retried.id}" in lost.error
    assert len(users_in_run("nightly", engine=engine)) == N_USERS
    assert 0 < retried.result["users_written"] < N_USERS  # resumed: the lost run's users kept


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.timeout(300)
def test_stopping_the_api_during_traffic_loses_no_acknowledged_impression_or_event(
    sqlite_loop_env, tmp_path, tiny_model_dir
):
    """SIGTERM (what an orchestrator sends) while 4 clients keep calling: every answer the
    clients got has its impressions in the database, every acknowledged event is stored."""
    import threading

    import httpx
    import sqlalchemy as sa

    from recsys.db.engine import get_engine
    from recsys.db.migrate import ensure_schema
    from recsys.db.models import Impression, Interaction
    from tests.fixtures.loop_world import build_world

    ensure_schema()
    engine = get_engine()
    traffic = build_world(engine, get_settings().resolved_artifact_dir)
    port = free_port()
    env = {
        **os.environ,
        **sqlite_loop_env,
        "RECSYS_MODEL": str(tiny_model_dir),
        "RECSYS_REQUIRE_API_KEY": "false",
    }
    log = (tmp_path / "serve.log").open("w")
    server = subprocess.Popen(
        [sys.executable, "-c", "from recsys.cli import main; main()", "serve", "--port", str(port)],
        env=env,
        stdout=log,
        stderr=log,
    )
    base = f"http://127.0.0.1:{port}"
    answered, acknowledged, lock = [], [], threading.Lock()
    started = datetime.now(UTC)  # the world's own history is from 1999

    def ready() -> bool:
        try:
            return httpx.get(f"{base}/readyz", timeout=1).status_code == 200
        except httpx.HTTPError:
            return False

    try:
        wait_for(ready, 120, "the server did not start", [tmp_path / "serve.log"])

        def client(lane: int) -> None:
            with httpx.Client(base_url=base, timeout=30) as http:
                for n, held in enumerate(traffic[lane::4]):
                    try:
                        r = http.post("/v1/recommend", json={"user_id": held.user_id, "k": 8})
                        if r.status_code == 200:
                            with lock:
                                answered.append(r.json()["request_id"])
                        event = {
                            "event_id": f"e{lane}-{n}",
                            "user_id": held.user_id,
                            "item_id": held.item_id,
                            "timestamp": time.time(),
                        }
                        e = http.post("/v1/events", json={"events": [event]})
                        if e.status_code == 200:
                            with lock:
                                acknowledged.append(event["event_id"])
                    except httpx.HTTPError:
                        return  # the server has gone away

        threads = [threading.Thread(target=client, args=(i,)) for i in range(4)]
        for t in threads:
            t.start()
        wait_for(lambda: len(answered) >= 20, 120, "no traffic was answered")
        server.send_signal(signal.SIGTERM)
        # uvicorn shuts down gracefully, then re-raises the signal: exit status -SIGTERM
        assert server.wait(timeout=60) in (0, -signal.SIGTERM)
        for t in threads:
            t.join(timeout=60)
    finally:
        if server.poll() is None:
            server.kill()
        log.close()
    with engine.connect() as conn:
        logged = set(conn.scalars(sa.select(Impression.request_id).distinct()))
        stored = conn.execute(
            sa.select(sa.func.count())
            .select_from(Interaction)
            .where(Interaction.timestamp >= started)
        ).scalar_one()
    assert answered and set(answered) <= logged
    assert stored == len(acknowledged) > 0
