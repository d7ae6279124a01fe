"""Offline replay: known-answer comparisons and exact propensities of logged rankings."""

from __future__ import annotations

import dataclasses
import math

import pytest

from ranking.types import Candidate, RankRequest
from recsys.errors import UserError
from recsys.replay.replay import (
    LoggedRequest,
    incremental_log_propensity,
    logged_requests_from_episodes,
    replay,
)


def episodes(n: int = 12, k: int = 6) -> list[dict]:
    return [
        {
            "task": "rec-movie",
            "history": ["Heat (1995)", "Fargo (1996)"],
            "candidates": [
                {"id": f"{u}-{j}", "text": f"Movie {j} ({1980 + j})", "score": float(k - j)}
                for j in range(k)
            ],
            "order": [f"{u}-{j}" for j in range(k)],
            "ground_truth": f"{u}-{u % k}",
            "log_propensity": None,
        }
        for u in range(n)
    ]


def oracle(logged):
    truth = {e.request.ids[0].split("-")[0]: e.ground_truth for e in logged}

    def rank(requests):
        out = []
        for r in requests:
            t = truth[r.ids[0].split("-")[0]]
            out.append([t] + [i for i in r.ids if i != t])
        return out

    return rank


def test_oracle_against_worst_order_has_a_known_difference():
    logged = logged_requests_from_episodes(episodes())
    best = oracle(logged)

    def worst(requests):
        return [list(reversed(o)) for o in best(requests)]

    report = replay(logged, worst, best)
    assert report.policies["B"]["mrr"] == 1.0
    assert report.policies["A"]["mrr"] == pytest.approx(1 / 6)
    diff = report.difference["mrr"]
    assert diff["mean"] == pytest.approx(5 / 6)
    assert diff["low"] > 0  # the interval excludes zero
    assert "| mrr |" in report.markdown("worst", "oracle")


def test_replaying_nothing_says_what_to_do():
    with pytest.raises(UserError, match="log impressions first"):
        replay([], oracle([]), oracle([]))


def test_logged_propensity_equals_the_engines_sampling_propensity(tiny_ranker):
    """The engine's log_propensity of a sampled ranking equals the teacher-forced one."""
    request = RankRequest(
        task="rec-movie",
        history=("Heat (1995)",),
        candidates=tuple(Candidate(str(i), f"Movie number {i}") for i in range(7)),
        temperature=1.0,
        seed=3,
    )
    result = tiny_ranker.rank(request)
    entry = LoggedRequest(
        dataclasses.replace(request, temperature=0.0), tuple(result.order), "3", None
    )
    teacher_forced = incremental_log_propensity(tiny_ranker.backend)(entry)
    assert teacher_forced == pytest.approx(result.log_propensity, abs=1e-4)
    assert teacher_forced < 0 and math.isfinite(teacher_forced)


def test_off_policy_estimates_of_the_logging_policy_itself(tiny_ranker):
    """Target = logging policy: every weight is 1, so IPS = SNIPS = the logged mean."""
    logged = []
    for u in range(5):
        ep = episodes(1, 5)[0]
        request = logged_requests_from_episodes([ep])[0].request
        sampled = tiny_ranker.rank(dataclasses.replace(request, temperature=1.0, seed=u))
        ep.update(order=sampled.order, log_propensity=sampled.log_propensity)
        logged.append(logged_requests_from_episodes([ep])[0])
    by_order = oracle(logged)
    report = replay(
        logged,
        by_order,
        by_order,
        target_log_propensity=incremental_log_propensity(tiny_ranker.backend),
    )
    ope = report.off_policy
    assert ope["ess"] == pytest.approx(5.0, abs=1e-3)
    mean = ope["logging policy (on-policy mean)"]
    assert ope["ips"].startswith(mean) and ope["snips"].startswith(mean)


def test_replay_command_on_logged_traffic(database_url, tmp_path):
    """Impressions + later interactions in the database -> report.md / json / png."""
    import json
    from datetime import timedelta

    from typer.testing import CliRunner

    from recsys.cli import app
    from recsys.db.engine import make_engine
    from recsys.db.migrate import ensure_schema
    from recsys.db.models import utcnow
    from recsys.db.repository import (
        ImpressionRecord,
        InteractionRecord,
        log_impressions,
        log_interactions,
    )

    ensure_schema(database_url)
    engine = make_engine(database_url)
    now = utcnow()
    shown = ["i1", "i2", "i3", "i4"]  # logged order; the user then picks i4 (shown last)
    for u in range(6):
        log_impressions(
            [
                ImpressionRecord(
                    f"req{u}",
                    f"u{u}",
                    item,
                    pos,
                    "iranker-incremental",
                    context={"task": "rec-movie", "score": float(pos), "log_propensity": -2.0},
                    timestamp=now,
                )
                for pos, item in enumerate(shown)
            ],
            engine=engine,
        )
        log_interactions(
            [InteractionRecord(f"u{u}", "i4", "click", now + timedelta(minutes=5))],
            engine=engine,
        )
    engine.dispose()
    result = CliRunner().invoke(
        app,
        [
            "replay",
            "--a",
            "logged",
            "--b",
            "retrieval",
            "--url",
            database_url,
            "--out",
            str(tmp_path),
        ],
    )
    assert result.exit_code == 0, result.output
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["n"] == 6
    assert report["policies"]["A"]["mrr"] == pytest.approx(0.25)  # i4 shown 4th
    assert report["policies"]["B"]["mrr"] == 1.0  # highest score first
    assert (tmp_path / "replay.png").stat().st_size > 1000
    assert "| mrr |" in (tmp_path / "report.md").read_text()
