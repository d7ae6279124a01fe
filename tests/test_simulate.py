"""`recsys simulate`: held-out interactions played as live traffic through the API; what it
logs is what training and replay read back (recsys.db.events.logged_requests)."""

from __future__ import annotations

from datetime import UTC, datetime

import numpy as np
import pytest
import sqlalchemy as sa
from fastapi.testclient import TestClient

from recsys.api import create_app
from recsys.db.models import Impression, Interaction
from recsys.errors import UserError
from recsys.settings import Settings
from recsys.simulate import (
    NextItemClicks,
    PositionClicks,
    SimulationConfig,
    held_out_interactions,
    simulate,
)
from tests.fixtures.data import tiny_ml100k

SPLIT = datetime.fromtimestamp(1020, UTC)  # tiny_ml100k: each user's last 2 of 22 ratings


@pytest.fixture
def world(engine, tmp_path):
    """The tiny MovieLens set ingested up to SPLIT, and a retrieval index built on it."""
    from recsys.batch import BatchConfig, run_batch
    from recsys.ingest import ingest

    data = tiny_ml100k(tmp_path / "ml")
    report = ingest(data, progress=False, until=SPLIT, engine=engine)
    assert report.rows_held_out == 50 and report.rows_loaded == 500
    run_batch(
        BatchConfig(
            rerank=False,
            embeddings="hashing",
            cf_factors=8,
            cf_epochs=2,
            # the index these tests were written against: the repeat test below plays the
            # same traffic twice on one database, so a click in the first run changes the
            # second (with the LambdaMART stage the first run gets one)
            ltr=False,
            artifact_dir=tmp_path / "artifacts",
            progress=False,
        ),
        engine=engine,
    )
    return data


def app_client(engine, ranker) -> TestClient:
    settings = Settings(embeddings="hashing", require_api_key=False, reload_poll_s=0)
    return TestClient(create_app(ranker=ranker, settings=settings, engine=engine))


def count(engine, table) -> int:
    with engine.connect() as conn:
        return conn.execute(sa.select(sa.func.count()).select_from(table)).scalar_one()


def test_held_out_interactions_are_the_ones_ingest_left_out(world):
    traffic = held_out_interactions(world, since=SPLIT)
    assert len(traffic) == 50 and len({h.user_id for h in traffic}) == 25
    assert all(h.timestamp >= SPLIT for h in traffic)
    assert [h.timestamp for h in traffic] == sorted(h.timestamp for h in traffic)
    assert len(held_out_interactions(world, since=SPLIT, users=5)) == 10
    first = held_out_interactions(world, since=SPLIT, per_user=1)  # each user's earliest
    assert len(first) == 25 and len({h.user_id for h in first}) == 25
    earliest = {}
    for h in traffic:
        earliest.setdefault(h.user_id, h)
    assert set(first) == set(earliest.values())
    assert len(held_out_interactions(world, since=SPLIT, per_user=1, limit=7)) == 7
    with pytest.raises(UserError, match="no interactions at or after"):
        held_out_interactions(world, since=datetime(2030, 1, 1, tzinfo=UTC))


def test_simulated_traffic_is_logged_and_reads_back_as_logged_requests(world, engine, tiny_ranker):
    from recsys.db.events import logged_requests

    traffic = held_out_interactions(world, since=SPLIT)
    config = SimulationConfig(k=8, temperature=1.0, concurrency=4)
    with app_client(engine, tiny_ranker) as client:
        report = simulate(client, traffic, config, progress=False)
    assert report.requests == report.answered == 50 and not report.errors
    assert report.events_stored == 50  # next-item: every held-out interaction happens
    assert count(engine, Impression.__table__) == 50 * 8
    logged = logged_requests(engine=engine)
    assert logged and all(r.ground_truth in r.shown for r in logged)
    assert all(r.log_propensity is not None and r.log_propensity < 0 for r in logged)
    assert report.clicks == report.shown  # the next item, clicked exactly when shown
    # a re-run posts the same event ids: nothing is stored twice
    with app_client(engine, tiny_ranker) as client:
        again = simulate(client, traffic, config, progress=False)
    assert again.events_stored == 0
    assert count(engine, Interaction.__table__) == 500 + 50


def test_draws_are_seeded_so_a_simulation_repeats(world, engine, tiny_ranker):
    traffic = held_out_interactions(world, since=SPLIT, limit=6)
    config = SimulationConfig(k=8, temperature=1.0, concurrency=1, click_model="position")
    with app_client(engine, tiny_ranker) as client:
        first = simulate(client, traffic, config, progress=False)
        second = simulate(client, traffic, config, progress=False)
    assert first.reciprocal_rank_sum == second.reciprocal_rank_sum
    assert first.clicks == second.clicks


def test_click_models():
    rng = np.random.default_rng(0)
    assert NextItemClicks().click("a", ["b", "a"], rng) == "click"
    assert NextItemClicks().click("z", ["b", "a"], rng) == "interaction"
    assert PositionClicks().click("z", ["b", "a"], rng) is None
    top = [PositionClicks().click("a", ["a", "b"], rng) for _ in range(200)]
    assert top.count("click") == 200  # examined with probability 1/log2(2) = 1
    low = [PositionClicks().click("c", ["a", "b", "c", "d"], rng) for _ in range(2000)]
    assert abs(low.count("click") / 2000 - 1 / np.log2(4)) < 0.05


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"click_model": "cascade"}, "unknown click model 'cascade'"),
        ({"k": 0}, "k must be in 1..100"),
        ({"concurrency": 0}, "concurrency must be in 1..64"),
    ],
)
def test_bad_simulation_settings_are_refused(options, message):
    with pytest.raises(UserError, match=message):
        SimulationConfig(**options)


def test_ingest_then_simulate_from_the_command_line(tmp_path, monkeypatch, capsys, tiny_model_dir):
    """The analyst's first commands: ingest up to a date, build the index, play the rest."""
    from recsys.settings import get_settings
    from tests.fixtures.cli import run_cli

    data = tiny_ml100k(tmp_path / "ml")
    monkeypatch.setenv("RECSYS_VAR_DIR", str(tmp_path / "var"))
    monkeypatch.setenv("RECSYS_MODEL", str(tiny_model_dir))
    monkeypatch.setenv("RECSYS_EMBEDDINGS", "hashing")
    get_settings.cache_clear()
    try:
        code, out, err = run_cli(
            monkeypatch,
            capsys,
            ["ingest", str(data), "--until", "1970-01-01T00:17:00", "--no-progress"],
        )
        assert code == 0, err
        assert "held out 50 interactions" in out
        code, _, err = run_cli(
            monkeypatch, capsys, ["batch", "--no-rerank", "--embeddings", "hashing"]
        )
        assert code == 0, err
        args = [
            "simulate",
            str(data),
            "--since",
            "1970-01-01T00:17:00",
            "--requests",
            "12",
            "--k",
            "5",
            "--no-progress",
            "--report",
            str(tmp_path / "sim.json"),
        ]
        code, out, err = run_cli(monkeypatch, capsys, args)
        assert code == 0, err
        assert "12 requests" in out and "12 answered" in out
        code, _, err = run_cli(
            monkeypatch, capsys, ["simulate", str(data), "--since", "2031-01-01", "--no-progress"]
        )
        assert code == 2 and "no interactions at or after 2031-01-01" in err
    finally:
        get_settings.cache_clear()
