"""One turn of the closed loop in process (recsys.loop): the rules that decide whether it
trains, and what a refused candidate leaves behind. The whole loop through Celery is
tests/test_loop_e2e.py."""

from __future__ import annotations

import dataclasses
import math

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


# ---------------------------------------------------------------- the weights a turn uses


@pytest.mark.parametrize(
    ("base", "registered", "trained", "served"),
    [
        ("default", None, 10.0, math.inf),  # zero-shot: tuned where the LM has a say
        ("v3", 3.0, 3.0, 3.0),  # a measured version: one weight for both
        ("v0", None, 0.0, 0.0),
    ],
)
def test_a_turn_tunes_at_the_training_weight_and_gates_against_the_base_as_served(
    monkeypatch, sqlite_url, sqlite_engine, tiny_model_dir, base, registered, trained, served
):
    """The zero-shot default is served at the retrieval order (no weight to learn at): the
    loop tunes it at UNVALIDATED_TRAINING_ALPHA, and its gate baseline is what is served."""
    import recsys.training
    from recsys.loop import _fine_tune
    from recsys.resolver import UNVALIDATED_TRAINING_ALPHA

    monkeypatch.setenv("RECSYS_DATABASE_URL", sqlite_url)
    get_settings.cache_clear()
    if base != "default":
        metrics = {"fusion_alpha": registered} if registered is not None else None
        register_model("ranker", base, str(tiny_model_dir), metrics=metrics, engine=sqlite_engine)
    seen = []
    monkeypatch.setattr(recsys.training, "run_training", lambda opts, **kw: seen.append(opts))
    try:
        _fine_tune(LoopConfig(steps=3), base, None, get_settings())
    finally:
        get_settings.cache_clear()
    (opts,) = seen
    assert (opts.fusion_alpha, opts.base_served_alpha) == (trained, served)
    assert opts.model == ("default" if base == "default" else str(tiny_model_dir))
    if base == "default":
        assert opts.fusion_alpha == UNVALIDATED_TRAINING_ALPHA


@pytest.fixture
def episodes_file(tmp_path, monkeypatch):
    from ranking.rl.episodes import write_episodes
    from ranking.rl.synthetic import rule_episodes

    monkeypatch.setenv("RECSYS_VAR_DIR", str(tmp_path / "var"))
    get_settings.cache_clear()
    path = tmp_path / "episodes.jsonl"
    write_episodes(path, rule_episodes(16, 3, k=4))
    yield path
    get_settings.cache_clear()


def test_the_gate_baseline_of_a_base_served_at_the_retrieval_order_is_that_order(
    episodes_file, tiny_model_dir
):
    """Trained and validated at 10, served at 10; compared with the base as it is served:
    the retrieval order (not the zero-shot model fused at 10, which is not what is served)."""
    from ranking.fusion import RETRIEVAL_ORDER
    from recsys.gate import ValidationResults
    from recsys.training import TrainingOptions, run_training

    common = dict(source=str(episodes_file), model=str(tiny_model_dir), device="cpu", steps=1,
                  batch_size=2, eval_every=0, val_fraction=0.4, register=False)  # fmt: skip
    opts = TrainingOptions(**common, fusion_alpha=10.0, base_served_alpha=RETRIEVAL_ORDER)
    served = run_training(dataclasses.replace(opts, run_name="ro"))
    results = ValidationResults.from_metrics(served)
    assert results is not None and results.baseline == results.retrieval
    assert served["val_baseline"].startswith("retrieval order")
    assert served["fusion_alpha"] == 10.0  # registered (and so served) at the training weight
    assert served["val_mrr_served"] == served["val_mrr_fused"]  # the tuned policy at 10
    # without a served weight of its own, a path base is compared fused like the candidate
    same = run_training(TrainingOptions(**common, fusion_alpha=10.0, run_name="same"))
    assert same["val_baseline"] == "base fused at alpha 10"
    assert 100 * sum(same["val_rr_baseline"].values()) / len(same["val_rr_baseline"]) == (
        pytest.approx(same["val_mrr_zero_shot_fused"])
    )


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"fusion_alpha": math.inf}, "fusion_alpha inf: training and validation need a finite"),
        ({"extra_alphas": (float("nan"),)}, "extra_alphas nan: training and validation need"),
        ({"base_served_alpha": -1.0}, "base_served_alpha -1.0: a finite weight >= 0"),
    ],
)
def test_training_refuses_weights_it_cannot_train_or_compare_at(episodes_file, change, message):
    from recsys.errors import UserError
    from recsys.training import TrainingOptions, run_training

    with pytest.raises(UserError, match=message):
        run_training(TrainingOptions(source=str(episodes_file), register=False, **change))


def test_a_zero_shot_packaged_base_is_compared_as_served_by_default():
    from ranking.fusion import RETRIEVAL_ORDER
    from recsys.training import TrainingOptions, _base_served_alpha

    assert _base_served_alpha(TrainingOptions(model="default", fusion_alpha=10)) == RETRIEVAL_ORDER
    assert _base_served_alpha(TrainingOptions(model="/m", fusion_alpha=10)) == 10.0
    assert _base_served_alpha(TrainingOptions(model="default", base_served_alpha=0.0)) == 0.0
