"""`recsys status`: each part's state, the password never shown, exit 1 when one is down."""

from __future__ import annotations

import json

import pytest

from recsys.settings import get_settings
from tests.fixtures.cli import run_cli


@pytest.fixture
def env(monkeypatch, tmp_path, sqlite_url):
    def set_env(**values: str) -> None:
        for name, value in {
            "RECSYS_DATABASE_URL": sqlite_url,
            "RECSYS_VAR_DIR": str(tmp_path),
            **values,
        }.items():
            monkeypatch.setenv(name, value)
        get_settings.cache_clear()

    yield set_env
    get_settings.cache_clear()


def status(monkeypatch, capsys) -> tuple[int, dict]:
    code, out, _ = run_cli(monkeypatch, capsys, ["status", "--json"])
    return code, json.loads(out)


def by_name(report: dict) -> dict:
    return {c["name"]: c for c in report["checks"]}


def test_a_healthy_embedded_install(env, monkeypatch, capsys, tmp_path):
    from recsys.db.engine import get_engine
    from recsys.db.migrate import ensure_schema
    from recsys.db.registry import register_model

    env()
    ensure_schema()
    register_model("index", "idx-1", str(tmp_path), engine=get_engine())
    code, report = status(monkeypatch, capsys)
    checks = by_name(report)
    assert code == 0 and report["ok"]
    assert checks["database"]["data"]["revision"] == checks["database"]["data"]["head"]
    assert "jobs run in process" in checks["broker"]["detail"]
    assert checks["models"]["data"]["index"] == "idx-1"
    assert checks["activity"]["data"]["impressions_24h"] == 0
    code, out, _ = run_cli(monkeypatch, capsys, ["status"])
    assert code == 0 and out.splitlines()[0].startswith("OK   database")


def test_an_old_schema_is_reported(env, monkeypatch, capsys, sqlite_url):
    from recsys.db.migrate import upgrade

    env()
    upgrade(sqlite_url, "0001")
    code, report = status(monkeypatch, capsys)
    checks = by_name(report)
    assert code == 1 and not report["ok"]
    assert "recsys db upgrade" in checks["database"]["detail"]


def test_no_retrieval_index_is_reported(env, monkeypatch, capsys):
    from recsys.db.migrate import ensure_schema

    env()
    ensure_schema()
    code, report = status(monkeypatch, capsys)
    assert code == 1 and "no retrieval index registered" in by_name(report)["models"]["detail"]


@pytest.mark.parametrize(
    ("settings", "part", "message"),
    [
        (
            {"RECSYS_DATABASE_URL": "postgresql+psycopg://ops:s3cret@127.0.0.1:1/x"},
            "database",
            "postgresql+psycopg://ops:***@127.0.0.1:1/x",
        ),
        ({"RECSYS_BROKER_URL": "redis://127.0.0.1:1/0"}, "broker", "unreachable"),
    ],
)
def test_a_part_that_is_down_fails_the_status(env, monkeypatch, capsys, settings, part, message):
    env(**settings)
    code, report = status(monkeypatch, capsys)
    check = by_name(report)[part]
    assert code == 1 and not check["ok"] and message in check["detail"]
    assert "s3cret" not in json.dumps(report)


def test_a_broker_without_workers_is_down(env, monkeypatch, capsys, redis_url):
    from recsys.db.migrate import ensure_schema

    env(RECSYS_BROKER_URL=redis_url)
    ensure_schema()
    code, report = status(monkeypatch, capsys)
    assert code == 1 and "no worker answered" in by_name(report)["broker"]["detail"]
