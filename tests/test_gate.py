"""The evaluation gate: refuses a worse (or not significantly better) ranker, accepts a
better one, and runs inside `recsys models promote` on SQLite and PostgreSQL."""

from __future__ import annotations

import random
import re

import pytest

from recsys.gate import ValidationResults, decide


def rr(values: list[float]) -> dict[str, float]:
    return {f"u{i}": v for i, v in enumerate(values)}


def results(
    values: list[float], baseline: list[float] | None = None, retrieval: list[float] | None = None
) -> ValidationResults:
    """What training stores for validation users with these reciprocal ranks."""
    return ValidationResults(
        rr(values),
        None if baseline is None else rr(baseline),
        None if retrieval is None else rr(retrieval),
    )


def noisy(base: list[float], delta: float, seed: int) -> list[float]:
    rng = random.Random(seed)
    return [min(1.0, max(0.0, b + delta + rng.uniform(-0.05, 0.05))) for b in base]


_RNG = random.Random(0)  # one generator for the whole list: the values vary
BASE = [_RNG.choice([1.0, 0.5, 1 / 3, 0.25, 0.1]) for _ in range(60)]


def mean_diff_points(candidate: list[float], reference: list[float]) -> str:
    """The gate's ΔMRR (x100) of two per-user lists, as its reason prints it."""
    diffs = [c - r for c, r in zip(candidate, reference, strict=True)]
    return f"{100 * sum(diffs) / len(diffs):+.2f}"


def test_base_values_vary():
    assert len(set(BASE)) == 5 and BASE[:4] == [0.25, 0.25, 1.0, 1 / 3]


@pytest.mark.parametrize(
    ("candidate", "reference", "allowed", "rule"),
    [
        (noisy(BASE, 0.10, 1), BASE, True, None),
        (noisy(BASE, -0.10, 2), BASE, False, "below the margin of 0.50 MRR points"),
        (BASE, BASE, False, "below the margin of 0.50 MRR points"),
    ],
)
def test_decide_against_promoted(candidate, reference, allowed, rule):
    d = decide(results(candidate), results(reference), "promoted v1", margin=0.5)
    assert d.allowed is allowed
    stats = rf"ΔMRR {re.escape(mean_diff_points(candidate, reference))} \[[-+]\d+\.\d\d, "
    stats += r"[-+]\d+\.\d\d\] over 60 users vs promoted v1"
    assert re.fullmatch(stats + (f": {rule}" if rule else ""), d.reason), d.reason


# The two rules, each on data that passes the other one: a refusal names the rule that failed.
CONSISTENT_SMALL_GAIN = ([b + 0.004 for b in BASE], BASE)  # +0.40 on every user
NOISY_LARGER_GAIN = ([0.5] * 10, [0.3, 0.68] * 5)  # +20 / -18 points: mean +1.00


def test_a_significant_gain_below_the_margin_is_refused_by_the_margin_rule():
    cand, ref = CONSISTENT_SMALL_GAIN
    d = decide(results(cand), results(ref), "promoted v1", margin=0.5)
    assert not d.allowed
    assert d.reason == (
        "ΔMRR +0.40 [+0.40, +0.40] over 60 users vs promoted v1: "
        "below the margin of 0.50 MRR points"
    )
    # the interval excludes zero, so a lower margin lets the same gain through
    assert decide(results(cand), results(ref), "promoted v1", margin=0.3).allowed


def test_a_gain_above_the_margin_whose_interval_holds_zero_is_refused_by_the_interval_rule():
    cand, ref = NOISY_LARGER_GAIN
    for margin in (0.5, 0.0):  # above the margin either way: only the interval refuses
        d = decide(results(cand), results(ref), "promoted v1", margin=margin)
        assert not d.allowed
        assert re.fullmatch(
            r"ΔMRR \+1\.00 \[-\d+\.\d\d, \+\d+\.\d\d\] over 10 users vs promoted v1: "
            r"the 95% interval does not exclude zero",
            d.reason,
        ), d.reason
        assert "margin" not in d.reason


def test_decide_without_promoted_uses_base_model_and_retrieval():
    better = noisy(BASE, 0.10, 3)
    ok = decide(results(better, baseline=BASE), None, "promoted", 0.5)
    assert ok.allowed and "the model it was tuned from" in ok.reason
    better_retrieval = results(better, BASE, retrieval=noisy(BASE, 0.3, 4))
    worse_than_retrieval = decide(better_retrieval, None, "promoted", 0.5)
    assert not worse_than_retrieval.allowed
    assert "worse than the retrieval order" in worse_than_retrieval.reason
    lenient = decide(better_retrieval, None, "promoted", 0.5, require_beat_retrieval=False)
    assert lenient.allowed


def test_validation_results_round_trip_through_stored_metrics():
    """Training stores them in a version's metrics (JSON in the registry); the gate reads
    them back from there."""
    import json

    written = results(BASE, baseline=BASE[::-1], retrieval=BASE[1:])
    stored = json.loads(json.dumps({"mrr": 0.3, **written.to_metrics()}))
    assert set(stored) == {"mrr", "val_rr", "val_rr_baseline", "val_rr_retrieval"}
    assert ValidationResults.from_metrics(stored) == written
    assert ValidationResults.from_metrics({"val_rr": rr(BASE)}) == ValidationResults(rr(BASE))
    assert ValidationResults.from_metrics({"mrr": 0.3}) is None
    assert ValidationResults.from_metrics({"val_rr": [0.5]}) is None  # not per user


@pytest.mark.parametrize(
    ("cand", "ref", "reason"),
    [
        (None, None, "no per-user validation results"),
        (ValidationResults({}), None, "no per-user validation results"),
        (results(BASE), None, "nothing to compare"),
        (results(BASE), ValidationResults({"other": 1.0}), "only 0 validation users in common"),
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
