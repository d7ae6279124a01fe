"""Logs (docs/operations.md, "Logs"): `RECSYS_LOG_FORMAT=json` writes one JSON object per
line, the API writes one access record per request (its request id, the user's hash, the
model version, the latency; never the raw user id or item texts), the command line writes
only JSON lines in json mode, the text format is uvicorn's `LEVEL:    message`, and a bad
setting is one clear line."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys

import pytest
from fastapi.testclient import TestClient

from recsys.api import create_app
from recsys.logs import JsonFormatter, configure_logging, install_salt, user_hash
from recsys.settings import Settings
from tests.fixtures.cli import run_cli

REQUEST = {
    "task": "rec-movie",
    "history": ["Toy Story (1995)", "Fargo (1996)"],
    "candidates": [
        {"id": "50", "text": "Star Wars (1977)", "score": 0.9},
        {"id": "1", "text": "GoldenEye (1995)", "score": 0.2},
        {"id": "7", "text": "Twelve Monkeys (1995)", "score": 0.5},
    ],
}
USER = "alice@example.com"


@pytest.fixture
def restore_logging():
    """configure_logging changes the process's root logger: put it back afterwards."""
    from recsys.logs import OUR_LOGGERS

    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    levels = {n: logging.getLogger(n).level for n in OUR_LOGGERS}
    yield
    root.handlers[:] = handlers
    root.setLevel(level)
    for name, lvl in levels.items():
        logging.getLogger(name).setLevel(lvl)


def test_json_format_is_one_object_per_line_with_the_fields(monkeypatch, capsys, restore_logging):
    monkeypatch.setenv("RECSYS_LOG_FORMAT", "json")
    monkeypatch.setenv("TQDM_DISABLE", "")  # (so that monkeypatch removes it afterwards)
    monkeypatch.delenv("TQDM_DISABLE")
    configure_logging(Settings())
    assert os.environ["TQDM_DISABLE"] == "1"  # no progress bars between the JSON lines
    configure_logging(Settings())  # again: still one handler, one line per record
    log = logging.getLogger("recsys.test")
    log.warning("two\nlines", extra={"request_id": "r1", "n": 3, "path": object()})
    try:
        raise ValueError("boom")
    except ValueError:
        log.exception("failed")
    logging.getLogger("recsys.test").info("shown: our loggers log from RECSYS_LOG_LEVEL")
    logging.getLogger("some.library").info("not shown: other libraries from WARNING")
    lines = capsys.readouterr().err.splitlines()
    records = [json.loads(line) for line in lines]
    assert len(records) == 3
    first = records[0]
    assert first["level"] == "WARNING" and first["logger"] == "recsys.test"
    assert first["message"] == "two\nlines"
    assert first["request_id"] == "r1" and first["n"] == 3
    assert first["path"].startswith("<object object")  # not JSON: its str()
    assert first["time"].endswith("Z") and "T" in first["time"]
    assert "msg" not in first and "args" not in first and "levelno" not in first
    assert records[1]["message"] == "failed"
    assert "ValueError: boom" in records[1]["exc_info"]
    assert records[2]["level"] == "INFO"


def test_text_format_is_unchanged(monkeypatch, capsys, restore_logging):
    monkeypatch.delenv("RECSYS_LOG_FORMAT", raising=False)
    configure_logging(Settings())
    logging.getLogger("recsys.test").warning("impression buffer full")
    logging.getLogger("uvicorn.error").info("Uvicorn running")
    assert (
        capsys.readouterr().err == "WARNING:  impression buffer full\nINFO:     Uvicorn running\n"
    )


def test_transformers_lines_join_the_format_once_a_model_is_loaded(
    monkeypatch, capsys, restore_logging
):
    from transformers.utils import logging as hf_logging

    from recsys.logs import route_library_logs

    monkeypatch.setenv("RECSYS_LOG_FORMAT", "json")
    configure_logging(Settings())
    route_library_logs()
    try:
        hf_logging.get_logger("transformers.modeling_utils").warning("weights not used")
        (line,) = capsys.readouterr().err.splitlines()
        assert json.loads(line)["message"] == "weights not used"
    finally:  # transformers' own handler back, as other tests expect
        hf_logging.disable_propagation()
        hf_logging.enable_default_handler()


def test_user_hash_is_keyed_and_stable(tmp_path):
    salt = install_salt(tmp_path)
    assert install_salt(tmp_path) == salt  # per install: made once, then read
    assert (tmp_path / "log-salt").stat().st_mode & 0o777 == 0o600
    assert user_hash(USER, salt) == user_hash(USER, salt) != user_hash(USER, b"other key")
    assert USER not in user_hash(USER, salt) and len(user_hash(USER, salt)) == 16


def access_records(caplog) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.name == "recsys.access"]


def test_each_request_has_one_access_record_with_its_request_id(tiny_ranker, tmp_path, caplog):
    settings = Settings(batch_wait_ms=1.0, var_dir=tmp_path, log_impressions=False)
    app = create_app(ranker=tiny_ranker, settings=settings)
    with TestClient(app) as client, caplog.at_level(logging.INFO, logger="recsys.access"):
        response = client.post("/v1/rank", json={**REQUEST, "user_id": USER})
        refused = client.post("/v1/rank", json={**REQUEST, "mode": "fastest"},
                              headers={"X-Request-ID": "gateway-7.a"})  # fmt: skip
        client.get("/healthz", headers={"X-Request-ID": "not a safe id"})
    assert response.status_code == 200 and refused.status_code == 422
    ranked, bad, probe = access_records(caplog)

    answer = response.json()
    assert ranked.request_id == answer["request_id"] == response.headers["X-Request-ID"]
    assert (ranked.method, ranked.path, ranked.status) == ("POST", "/v1/rank", 200)
    assert ranked.model_version == tiny_ranker.model_id  # no registered version: the model
    assert isinstance(ranked.latency_ms, float) and ranked.latency_ms >= 0
    assert ranked.user_hash == user_hash(USER, install_salt(tmp_path))
    line = JsonFormatter().format(ranked)
    assert json.loads(line)["user_hash"] == ranked.user_hash and "\n" not in line
    for secret in (USER, *(c["text"] for c in REQUEST["candidates"]), *REQUEST["history"]):
        assert secret not in line

    assert bad.status == 422 and bad.request_id == refused.headers["X-Request-ID"]
    assert bad.client_request_id == "gateway-7.a" and bad.request_id != "gateway-7.a"
    assert not hasattr(bad, "user_hash")  # refused before the route saw a user
    assert probe.path == "/healthz" and not hasattr(probe, "client_request_id")
    assert len({ranked.request_id, bad.request_id, probe.request_id}) == 3


def test_recommend_logs_the_hashed_user_and_its_request_id(
    tiny_ranker, sqlite_engine, tmp_path, caplog
):
    from tests.test_api_service import seed_catalogue

    seed_catalogue(sqlite_engine, tmp_path)
    settings = Settings(embeddings="hashing", batch_wait_ms=1.0, reload_poll_s=0,
                        var_dir=tmp_path / "var", require_api_key=False)  # fmt: skip
    app = create_app(ranker=tiny_ranker, settings=settings, engine=sqlite_engine)
    with TestClient(app) as client, caplog.at_level(logging.INFO, logger="recsys.access"):
        response = client.post("/v1/recommend", json={"user_id": "u3", "k": 4})
    assert response.status_code == 200
    (record,) = access_records(caplog)
    assert record.request_id == response.json()["request_id"] == response.headers["X-Request-ID"]
    assert record.user_hash == user_hash("u3", install_salt(tmp_path / "var"))
    assert record.model_version == tiny_ranker.model_id and record.latency_ms >= 0
    assert "u3" not in JsonFormatter().format(record).replace(record.user_hash, "")


def cli_process(*args: str, env: dict[str, str], code: str = "") -> subprocess.CompletedProcess:
    """`recsys *args` in a fresh interpreter (its logging is its own), after `code`."""
    script = f"import sys\nfrom recsys.cli import app, main\n{code}\nmain()"
    return subprocess.run([sys.executable, "-c", script, *args], capture_output=True,
                          text=True, env={**os.environ, **env}, timeout=120)  # fmt: skip


SAY = """
import logging
@app.command("say")
def say() -> None:
    logging.getLogger("recsys.x").warning("two\\nlines", extra={"n": 1})
    logging.getLogger("uvicorn.error").info("Started server process")
    logging.getLogger("httpx").info("a library's info: not shown")
"""


def test_the_command_line_writes_only_json_lines_in_json_mode(tmp_path):
    env = {"RECSYS_LOG_FORMAT": "json", "RECSYS_VAR_DIR": str(tmp_path / "var")}
    said = cli_process("say", env=env, code=SAY)
    assert said.returncode == 0, said.stderr
    records = [json.loads(line) for line in said.stderr.splitlines()]
    assert [(r["logger"], r["message"]) for r in records] == [
        ("recsys.x", "two\nlines"), ("uvicorn.error", "Started server process")
    ]  # fmt: skip
    assert records[0]["n"] == 1
    status = cli_process("status", "--json", env=env)
    assert status.returncode in (0, 1), status.stderr  # 1: a fresh install is not migrated
    assert "ok" in json.loads(status.stdout)
    assert all(json.loads(line) for line in status.stderr.splitlines())
    text = cli_process("say", env={**env, "RECSYS_LOG_FORMAT": "text"}, code=SAY)
    assert text.stderr == "WARNING:  two\nlines\nINFO:     Started server process\n"


@pytest.mark.parametrize(
    ("name", "value", "message"),
    [
        ("RECSYS_LOG_FORMAT", "xml", "error: invalid setting RECSYS_LOG_FORMAT='xml': input "
                                     "should be 'text' or 'json'"),
        ("RECSYS_LOG_LEVEL", "loud", "error: invalid setting RECSYS_LOG_LEVEL='loud'"),
    ],
)  # fmt: skip
def test_a_bad_log_setting_is_one_clear_line(monkeypatch, capsys, name, value, message):
    from recsys.settings import get_settings

    monkeypatch.setenv(name, value)
    get_settings.cache_clear()
    try:
        code, out, err = run_cli(monkeypatch, capsys, ["status"])
    finally:
        get_settings.cache_clear()
    assert code == 2 and out == ""
    assert message in err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1
