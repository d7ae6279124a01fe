"""`recsys rank`: JSON in, RankResult JSON out; bad requests exit 2 with one clear line."""

import json

import pytest

from tests.fixtures.cli import run_cli

GOOD = {
    "task": "rec-movie",
    "history": ["Toy Story (1995)", "Heat (1995)"],
    "candidates": [
        {"id": "50", "text": "Star Wars (1977)", "score": 0.8},
        {"id": "1", "text": "Casino (1995)", "score": 0.5},
        {"id": "7", "text": "Twelve Monkeys (1995)"},
    ],
}


@pytest.mark.parametrize("mode", ["incremental", "score", "direct", "reason"])
def test_rank_prints_result_json(monkeypatch, capsys, tmp_path, tiny_model_dir, mode):
    path = tmp_path / "req.json"
    path.write_text(json.dumps({**GOOD, "mode": mode}))
    args = ["rank", "--request", str(path), "--model", str(tiny_model_dir), "--device", "cpu"]
    code, out, _ = run_cli(monkeypatch, capsys, [*args, "--max-new-tokens", "8"])
    assert code == 0
    result = json.loads(out)
    assert sorted(result["order"]) == ["1", "50", "7"]
    assert result["mode"] == mode
    assert len(result["steps"]) == 2
    assert {"order", "steps", "log_propensity", "mode", "model", "elapsed_ms", "fallback"} <= set(
        result
    )
    assert (result["log_propensity"] is None) == (mode == "reason")


def test_rank_reads_stdin_and_honours_deadline(monkeypatch, capsys, tiny_model_dir):
    req = json.dumps({**GOOD, "deadline_ms": 0})
    args = ["rank", "-r", "-", "--model", str(tiny_model_dir), "--device", "cpu"]
    code, out, _ = run_cli(monkeypatch, capsys, args, stdin=req)
    assert code == 0
    result = json.loads(out)
    assert result["order"] == ["50", "1", "7"]  # retrieval score order
    assert result["fallback"] is True


@pytest.mark.parametrize(
    ("request_text", "message"),
    [
        ("not json", "not valid JSON"),
        ("[1, 2]", "must be a JSON object"),
        (json.dumps({**GOOD, "candidates": []}), "no candidates"),
        (json.dumps({**GOOD, "task": "rec-books"}), "unknown task"),
        (json.dumps({**GOOD, "mode": "vote"}), "unknown mode"),
        (
            json.dumps(
                {**GOOD, "candidates": [{"id": "1", "text": "a"}, {"id": "1", "text": "b"}]}
            ),
            "duplicate candidate id",
        ),
        (json.dumps({**GOOD, "candidates": [{"id": "1", "text": "  "}]}), "empty text"),
        (
            json.dumps({**GOOD, "candidates": [{"id": str(i), "text": "x"} for i in range(501)]}),
            "too many candidates",
        ),
        (json.dumps({**GOOD, "temperature": -1}), "temperature must be"),
        (json.dumps({**GOOD, "colour": "red"}), "unknown request field"),
        (json.dumps({"task": "passage", "candidates": GOOD["candidates"]}), "needs a non-empty"),
    ],
)
def test_invalid_requests_exit_2_with_a_clear_message(monkeypatch, capsys, request_text, message):
    code, out, err = run_cli(monkeypatch, capsys, ["rank", "-r", "-"], stdin=request_text)
    assert code == 2
    assert out == ""
    assert message in err
    assert "Traceback" not in err
    assert len(err.strip().splitlines()) == 1


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--request", "/no/such/request.json"], "not found"),
        (["-r", "-", "--model", "/no/such/model"], "does not exist"),
        (["-r", "-", "--device", "quantum"], "unknown device"),
    ],
)
def test_bad_paths_and_options_exit_2(monkeypatch, capsys, args, message):
    code, _, err = run_cli(monkeypatch, capsys, ["rank", *args], stdin=json.dumps(GOOD))
    assert code == 2
    assert message in err


def test_promoted_model_without_a_promoted_version_exits_2(monkeypatch, capsys, sqlite_url):
    from recsys.settings import get_settings

    monkeypatch.setenv("RECSYS_DATABASE_URL", sqlite_url)
    get_settings.cache_clear()
    try:
        args = ["rank", "-r", "-", "--model", "promoted"]
        code, out, err = run_cli(monkeypatch, capsys, args, stdin=json.dumps(GOOD))
    finally:
        get_settings.cache_clear()
    assert code == 2
    assert out == ""
    assert "no ranker version is promoted" in err


def test_library_deprecation_warnings_are_not_shown_to_a_user(tmp_path, tiny_model_dir):
    """transformers' `past_key_values` FutureWarning (raised inside torch's module call)
    and the like are filtered at the command-line boundary; the answer is unchanged."""
    import os
    import subprocess
    import sys

    path = tmp_path / "req.json"
    path.write_text(json.dumps(GOOD))
    args = [
        sys.executable,
        "-c",
        "from recsys.cli import main; main()",
        "rank",
        "--request",
        str(path),
        "--model",
        str(tiny_model_dir),
        "--device",
        "cpu",
    ]
    done = subprocess.run(args, capture_output=True, text=True, env={**os.environ}, timeout=300)
    assert done.returncode == 0, done.stderr
    assert sorted(json.loads(done.stdout)["order"]) == ["1", "50", "7"]
    assert "Warning" not in done.stderr, done.stderr
