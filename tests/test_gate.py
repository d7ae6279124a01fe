"""The evaluation gate: refuses a worse (or not significantly better) ranker, accepts a
better one, and runs inside `recsys models promote` on SQLite and PostgreSQL."""

from __future__ import annotations

import random
import re

import pytest

from recsys.gate import decide, paired_bootstrap


def rr(values: list[float]) -> dict[str, float]:
    return {f"u{i}": v for i, v in enumerate(values)}


def noisy(base: list[float], delta: float, seed: int) -> list[float]:
    rng = random.Random(seed)
    return [min(1.0, max(0.0, b + delta + rng.uniform(-0.05, 0.05))) for b in base]


BASE = [random.Random(0).choice([1.0, 0.5, 1 / 3, 0.25, 0.1]) for _ in range(60)]


def test_paired_bootstrap_hand_worked():
    mean, low, high = paired_bootstrap([1.0, 1.0, 1.0], [0.0, 0.0, 0.0])
    assert (mean, low, high) == (1.0, 1.0, 1.0)
    mean, low, high = paired_bootstrap([1.0, 0.0], [0.0, 1.0], n_boot=500)
    assert mean == 0.0 and low < 0 < high
    with pytest.raises(ValueError, match="same length"):
        paired_bootstrap([1.0], [])


@pytest.mark.parametrize(
    ("candidate", "reference", "allowed", "reason"),
    [
        (noisy(BASE, 0.10, 1), BASE, True, r"ΔMRR \+\d"),
        (noisy(BASE, -0.10, 2), BASE, False, "below the margin"),
        (BASE, BASE, False, "below the margin"),
        # a tiny gain on few users: above a zero margin but not significant
        (
            [*BASE[:10]],
            [b + random.Random(i).uniform(-0.3, 0.29) for i, b in enumerate(BASE[:10])],
            False,
            "below the margin|does not exclude zero",
        ),
    ],
)
def test_decide_against_promoted(candidate, reference, allowed, reason):
    d = decide({"val_rr": rr(candidate)}, {"val_rr": rr(reference)}, "promoted v1", margin=0.5)
    assert d.allowed is allowed
    assert re.search(reason, d.reason), d.reason


def test_decide_without_promoted_uses_base_model_and_retrieval():
    better = noisy(BASE, 0.10, 3)
    ok = decide({"val_rr": rr(better), "val_rr_baseline": rr(BASE)}, None, "promoted", 0.5)
    assert ok.allowed and "the model it was tuned from" in ok.reason
    worse_than_retrieval = decide(
        {
            "val_rr": rr(better),
            "val_rr_baseline": rr(BASE),
            "val_rr_retrieval": rr(noisy(BASE, 0.3, 4)),
        },
        None,
        "promoted",
        0.5,
    )
    assert not worse_than_retrieval.allowed
    assert "worse than the retrieval order" in worse_than_retrieval.reason
    lenient = decide(
        {
            "val_rr": rr(better),
            "val_rr_baseline": rr(BASE),
            "val_rr_retrieval": rr(noisy(BASE, 0.3, 4)),
        },
        None,
        "promoted",
        0.5,
        require_beat_retrieval=False,
    )
    assert lenient.allowed


@pytest.mark.parametrize(
    ("cand", "ref", "reason"),
    [
        ({}, None, "no per-user validation results"),
        ({"val_rr": rr(BASE)}, None, "nothing to compare"),
        ({"val_rr": rr(BASE)}, {"val_rr": {"other": 1.0}}, "only 0 validation users in common"),
    ],
)
def test_decide_refuses_without_evidence(cand, ref, reason):
    d = decide(cand, ref, "promoted v1", margin=0.5)
    assert not d.allowed and reason in d.reason


def test_promote_command_runs_the_gate(database_url, tmp_path, monkeypatch):
    """`recsys models promote ranker V` refuses a worse candidate with the gate's reason
    and promotes a better one."""
    import json

    from typer.testing import CliRunner

    from recsys.cli import app

    monkeypatch.setenv("RECSYS_DATABASE_URL", database_url)
    from recsys.settings import get_settings

    get_settings.cache_clear()
    runner = CliRunner()
    art = tmp_path / "model"
    art.mkdir()
    (art / "config.json").write_text("{}")

    def register(version: str, values: list[float]) -> None:
        metrics = json.dumps({"val_rr": rr(values), "val_rr_baseline": rr(BASE)})
        res = runner.invoke(
            app,
            [
                "models",
                "register",
                "ranker",
                version,
                str(art),
                "--metrics",
                metrics,
                "--url",
                database_url,
            ],
        )
        assert res.exit_code == 0, res.output

    register("v1", noisy(BASE, 0.10, 5))
    res = runner.invoke(app, ["models", "promote", "ranker", "v1", "--url", database_url])
    assert res.exit_code == 0, res.output
    register("v2-worse", noisy(BASE, 0.0, 6))
    res = runner.invoke(app, ["models", "promote", "ranker", "v2-worse", "--url", database_url])
    assert res.exit_code != 0
    assert "below the margin" in str(res.exception) + res.output
    register("v3-better", noisy(BASE, 0.4, 7))
    res = runner.invoke(app, ["models", "promote", "ranker", "v3-better", "--url", database_url])
    assert res.exit_code == 0, res.output
    assert "vs promoted v1" in res.output
    get_settings.cache_clear()
