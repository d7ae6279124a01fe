"""`recsys models ...` end to end on a SQLite file: register, promote, list, rollback, retire,
and bad input as user errors."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from recsys.cli import app
from recsys.errors import UserError


def test_models_register_promote_rollback_retire(sqlite_url: str, tmp_path) -> None:
    artifact = tmp_path / "cf.npz"
    artifact.write_bytes(b"factors")
    runner = CliRunner()

    def run(*args: str):  # type: ignore[no-untyped-def]
        result = runner.invoke(app, ["models", *args, "--url", sqlite_url])
        assert result.exit_code == 0, result.output
        return result.output

    run("register", "cf", "v1", str(artifact), "--metrics", '{"mrr": 0.5}')
    run("register", "cf", "v2", str(artifact))
    assert "gates: artifact present, sha256 matches" in run("promote", "cf", "v1")
    run("promote", "cf", "v2")
    listed = json.loads(run("list", "--kind", "cf", "--json"))
    assert {m["version"]: m["status"] for m in listed} == {"v1": "candidate", "v2": "promoted"}
    assert listed[-1]["metrics"] == {"mrr": 0.5}
    assert "cf         v1" in run("rollback", "cf")
    assert "retired" in run("list")
    run("retire", "cf", "v2")
    events = [line.split()[3:9] for line in run("history", "--kind", "cf").splitlines()]
    assert events == [  # newest first; retiring the retired v2 again records nothing
        ["v1", "promoted", "rollback", "from", "v2"],
        ["v2", "retired", "rolled", "back", "to", "v1"],
        ["v2", "promoted", "artifact", "present,", "sha256", "matches;"],
        ["v1", "promoted", "artifact", "present,", "sha256", "matches;"],
        ["v2", "registered"],
        ["v1", "registered"],
    ]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["register", "cf", "v1", "{tmp}/missing.npz"], "does not exist"),
        (["register", "cf", "v1", "s3://b/m", "--metrics", "[1]"], "must be a JSON object"),
        (["register", "cf", "v1", "s3://b/m", "--metrics", "{"], "not valid JSON"),
        (["promote", "cf", "nope"], "no cf model version 'nope'"),
        (["rollback", "bogus"], "unknown model kind 'bogus'"),
    ],
)
def test_models_bad_input_is_a_user_error(sqlite_url: str, tmp_path, args, message) -> None:
    """UserError is what recsys.cli.main turns into `error: ...` and exit code 2."""
    args = [a.replace("{tmp}", str(tmp_path)) for a in args]
    result = CliRunner().invoke(app, ["models", *args, "--url", sqlite_url])
    assert isinstance(result.exception, UserError), result.output
    assert message in str(result.exception)
