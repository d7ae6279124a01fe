"""One turn of the closed loop in process (recsys.loop): the rules that decide whether it
trains, and what a refused candidate leaves behind. The whole loop through Celery is
tests/test_loop_e2e.py."""

from __future__ import annotations

import pytest

from recsys.db.registry import current_model, list_models, register_model
from recsys.loop import LoopConfig, improve
from recsys.registry import promote
from recsys.settings import get_settings


@pytest.fixture
def world(tmp_path, monkeypatch, tiny_model_dir, sqlite_url):
    """A promoted base model and 40 users' simulated traffic, in the settings' database."""
    from fastapi.testclient import TestClient

    from recsys.api import create_app
    from recsys.db.engine import get_engine
    from recsys.db.migrate import ensure_schema
    from recsys.simulate import SimulationConfig, simulate
    from tests.fixtures.loop_world import build_world

    for name, value in {
        "RECSYS_DATABASE_URL": sqlite_url,
        "RECSYS_VAR_DIR": str(tmp_path),
        "RECSYS_EMBEDDINGS": "hashing",
        "RECSYS_MODEL": "promoted",
    }.items():
        monkeypatch.setenv(name, value)
    get_settings.cache_clear()
    ensure_schema()
    engine = get_engine()
    traffic = build_world(engine, tmp_path / "artifacts", n_users=40)
    register_model("ranker", "v0", str(tiny_model_dir), engine=engine)
    promote("ranker", "v0", force=True, engine=engine)
    settings = get_settings().model_copy(update={"require_api_key": False, "reload_poll_s": 0})
    with TestClient(create_app(settings=settings)) as client:
        simulate(client, traffic, SimulationConfig(k=8, concurrency=2), progress=False)
    yield engine
    get_settings.cache_clear()


def test_a_turn_without_enough_traffic_trains_nothing(world):
    result = improve(LoopConfig(min_requests=10_000), settings=get_settings(), engine=world)
    assert result["status"] == "skipped" and "the loop needs 10000" in result["reason"]
    assert [v.version for v in list_models("ranker", engine=world)] == ["v0"]


def test_a_refused_candidate_never_serves_and_is_not_tuned_again(world, monkeypatch):
    monkeypatch.setenv("RECSYS_GATE_MARGIN", "1000")  # no candidate can gain 1000 points
    get_settings.cache_clear()
    config = LoopConfig(min_requests=5, steps=2, replay=False, val_fraction=0.5)
    reports: list[float] = []
    result = improve(config, settings=get_settings(), engine=world, report=reports.append)
    assert result["status"] == "refused" and not result["promoted"]
    # job_runs' progress never goes back; training reports inside its 0.05..0.6 of the turn
    assert reports == sorted(reports) and reports[0] == 0.05 and reports[-1] == 0.8
    assert any(0.05 < r < 0.6 for r in reports) and reports.count(0.6) == 2
    assert "below the margin of 1000.00" in result["gate"]["reason"]
    assert current_model("ranker", engine=world).version == "v0"
    assert result["candidate"] in {v.version for v in list_models("ranker", engine=world)}
    again = improve(config, settings=get_settings(), engine=world)
    assert again["status"] == "skipped" and "no new logged traffic" in again["reason"]


def test_a_turn_can_also_be_gated_on_the_offline_evaluation(world, shared_movielens_100k):
    """RECSYS_LOOP_OFFLINE_TASK: base and candidate on the same seeded rec-movie instances;
    the paired difference is in the turn's result and in the gate's reason."""
    from recsys.settings import Settings

    settings = get_settings().model_copy(update={"data_dir": shared_movielens_100k.parent})
    assert isinstance(settings, Settings)
    config = LoopConfig(
        min_requests=5,
        steps=2,
        replay=False,
        val_fraction=0.5,
        offline_task="rec-movie",
        offline_users=10,
    )
    result = improve(config, settings=settings, engine=world)
    offline = result["offline"]
    assert offline["task"] == "rec-movie" and offline["instances"] == 10
    assert "offline rec-movie: ΔMRR" in offline["reason"] and "vs v0" in offline["reason"]
    if not offline["allowed"]:  # a regression offline is refused whatever the logged gate says
        assert result["status"] == "refused" and not result["promoted"]
