"""Episodes: validation, teacher orders, split by user, JSONL round trip, eval-task episodes,
and `recsys train` end to end on a tiny model (registers a candidate version)."""

from __future__ import annotations

import json

import pytest

from ranking.errors import RequestError
from ranking.rl.episodes import (
    Episode,
    read_episodes,
    retrieval_elimination_order,
    split_by_user,
    teacher_elimination_order,
    with_teacher,
    write_episodes,
)
from ranking.types import Candidate, RankRequest
from tests.fixtures.data import write_ml100k


def request(scores=(0.1, 0.9, 0.5)) -> RankRequest:
    cands = tuple(Candidate(str(i), f"Item {i}", score=s) for i, s in enumerate(scores))
    return RankRequest(task="rec-movie", history=("Heat (1995)",), candidates=cands)


def test_teacher_order_is_reverse_retrieval_with_ground_truth_last():
    req = request()
    assert retrieval_elimination_order(req) == ("0", "2", "1")
    ep = with_teacher(Episode(req, "2", user="u"), retrieval_elimination_order(req), True)
    assert ep.teacher_order == ("0", "1", "2")
    # ties keep the request order in the retrieval order, so they are reversed here
    assert retrieval_elimination_order(request(scores=(1.0, 1.0, 0.0))) == ("2", "1", "0")
    no_scores = request(scores=(None, 1.0, 2.0))
    assert teacher_elimination_order(no_scores, seed=0) is None
    # the teacher breaks ties at random (seeded), not by list position
    tied = RankRequest(task="rec-movie", history=("x",), request_id="r", candidates=tuple(
        Candidate(str(i), f"Item {i}", score=0.0 if i else 1.0) for i in range(12)))  # fmt: skip
    orders = {teacher_elimination_order(tied, seed=s) for s in range(5)}
    assert len(orders) > 1 and all(o[-1] == "0" for o in orders)
    assert teacher_elimination_order(tied, seed=3) == teacher_elimination_order(tied, seed=3)
    assert tuple(sorted(next(iter(orders))[:-1], key=int)) != next(iter(orders))[:-1]
    assert retrieval_elimination_order(no_scores) is None


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"ground_truth": "9"}, "not one of its candidates"),
        ({"ground_truth": "0", "teacher_order": ("0", "1")}, "teacher_order must be a permutation"),
        ({"ground_truth": "0", "logged_order": ("0", "1", "1")}, "logged_order must be"),
    ],
)
def test_bad_episodes(kwargs, match):
    with pytest.raises(RequestError, match=match):
        Episode(request(), **kwargs)


def test_split_by_user_is_disjoint_stable_and_near_the_fraction():
    eps = [Episode(request(), "0", user=f"u{i // 2}") for i in range(400)]  # 2 per user
    train, val = split_by_user(eps, 0.25, seed=1)
    train_users, val_users = {e.user for e in train}, {e.user for e in val}
    assert not train_users & val_users
    assert 30 <= len(val_users) <= 70
    _, again_val = split_by_user(eps[:200], 0.25, seed=1)
    assert {e.user for e in again_val} <= val_users  # adding users moves nobody
    with pytest.raises(ValueError, match="val_fraction"):
        split_by_user(eps, 1.0)


def test_jsonl_round_trip_and_errors_name_the_line(tmp_path):
    eps = [
        Episode(request(), "1", user="a", teacher_order=("0", "2", "1")),
        Episode(request(), "0", user="b", logged_order=("0", "1", "2"), logged_log_propensity=-1.5),
    ]
    path = tmp_path / "eps.jsonl"
    write_episodes(path, eps)
    assert read_episodes(path) == eps
    path.write_text(path.read_text() + '{"request": {"task": "rec-movie"}}\n')
    with pytest.raises(RequestError, match=r"eps\.jsonl:3"):
        read_episodes(path)


def write_fake_movielens(root, n_users=12, n_items=60, per_user=24):
    """A small MovieLens-100K-shaped folder (u.data, 24-field u.item)."""
    ratings = [
        (u, (u * 7 + k * 3) % n_items + 1, 4, 1000 + k)
        for u in range(1, n_users + 1)
        for k in range(per_user)
    ]
    titles = {i: f"Movie {i} (1995)" for i in range(1, n_items + 1)}
    write_ml100k(root / "movielens-100k", ratings, titles)


def test_task_episodes_are_the_eval_instances_with_signals(tmp_path):
    from recsys.eval.tasks import build_task
    from recsys.training import task_episodes

    write_fake_movielens(tmp_path)
    eps = task_episodes("rec-movie", tmp_path, seed=7, show_signals=True, history_len=10)
    instances = build_task("rec-movie", tmp_path / "movielens-100k", 7).instances
    assert len(eps) == len(instances) == 12
    for ep, inst in zip(eps, instances, strict=True):
        assert ep.request.ids == inst.ids and ep.ground_truth == inst.target
        assert ep.request.history == inst.history[-10:]
        assert ep.request.show_signals
    cands = eps[0].request.candidates
    for a in cands:  # ranks follow scores, and equal scores share a rank
        for b in cands:
            if a.score > b.score:
                assert a.signals["cf_rank"] < b.signals["cf_rank"]
            elif a.score == b.score:
                assert a.signals["cf_rank"] == b.signals["cf_rank"]
    assert min(c.signals["cf_rank"] for c in cands) == 1
    best = min(eps[0].request.candidates, key=lambda c: c.signals["cf_rank"])
    assert best.score == max(c.score for c in eps[0].request.candidates)
    from recsys.errors import UserError

    with pytest.raises(UserError, match="rec tasks"):
        task_episodes("passage-5", tmp_path)


def test_recsys_train_end_to_end_registers_candidate(tmp_path, tiny_model_dir, monkeypatch):
    from typer.testing import CliRunner

    from ranking.rl.synthetic import rule_episodes
    from recsys.cli import app
    from recsys.settings import get_settings

    path = tmp_path / "eps.jsonl"
    write_episodes(path, rule_episodes(40, 1))
    db = f"sqlite:///{tmp_path / 'r.db'}"
    monkeypatch.setenv("RECSYS_DATABASE_URL", db)
    monkeypatch.setenv("RECSYS_ARTIFACT_DIR", str(tmp_path / "art"))
    get_settings.cache_clear()
    runner = CliRunner()
    res = runner.invoke(
        app,
        [
            "train",
            "--source",
            str(path),
            "--model",
            str(tiny_model_dir),
            "--device",
            "cpu",
            "--algo",
            "expected",
            "--steps",
            "2",
            "--lr",
            "1e-3",
            "--users",
            "all:6",
            "--eval-every",
            "2",
            "--name",
            "tiny-v1",
            "--teacher",
            "none",
        ],
    )
    assert res.exit_code == 0, res.output
    summary = json.loads(res.stdout[res.stdout.index("{") :])
    assert summary["n_val"] == 6 and summary["steps"] == 2
    assert (tmp_path / "art" / "training" / "tiny-v1" / "model" / "config.json").exists()
    listed = runner.invoke(app, ["models", "list", "--kind", "ranker", "--json", "--url", db])
    versions = json.loads(listed.stdout)
    assert [v["version"] for v in versions] == ["tiny-v1"]
    assert len(versions[0]["metrics"]["val_rr"]) == 6
    get_settings.cache_clear()


def test_episodes_from_logged_impressions_train_off_policy(database_url, tiny_model_dir, tmp_path):
    """Logged impressions + the click that followed become episodes with the logged order
    and propensity, and the importance-weighted `logged` algorithm trains on them."""
    import dataclasses
    import math
    from datetime import UTC, datetime, timedelta

    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from ranking.rl.trainer import TrainConfig, Trainer
    from recsys.db.catalogue import ItemRecord, ensure_items
    from recsys.db.engine import write_connection
    from recsys.db.events import (
        ImpressionRecord,
        InteractionRecord,
        log_impressions,
        log_interactions,
    )
    from recsys.db.testing import migrated_engine
    from recsys.training import episodes_from_database

    t0 = datetime(2024, 1, 1, tzinfo=UTC)
    with migrated_engine(database_url) as engine:
        with write_connection(engine) as conn:
            ensure_items(conn, [ItemRecord(i, title=f"Film {i}") for i in "abcdh"])
        shown = [
            ImpressionRecord(f"r-{user}", user, item, pos, "iranker-incremental", None,
                             "v1", {"log_propensity": -2.0, "score": 1.0 - 0.1 * pos},
                             t0 + timedelta(hours=1))
            for user in ("u1", "u2") for pos, item in enumerate("abcd")
        ]  # fmt: skip
        log_impressions(shown, engine=engine)
        log_interactions([
            InteractionRecord("u1", "h", "click", t0),
            InteractionRecord("u1", "c", "click", t0 + timedelta(hours=2)),
            InteractionRecord("u2", "a", "click", t0 + timedelta(hours=2)),
        ], engine=engine)  # fmt: skip
        eps = episodes_from_database(engine)
    assert [(e.user, e.ground_truth) for e in eps] == [("u1", "c"), ("u2", "a")]
    assert eps[0].logged_order == ("a", "b", "c", "d")
    assert eps[0].logged_log_propensity == -2.0
    assert eps[0].request.history == ("Film h",)
    assert eps[0].request.ids == ["a", "b", "c", "d"]
    tok = AutoTokenizer.from_pretrained(tiny_model_dir)

    # The loss is w * R, w = min(pi(logged ranking) / mu(logged ranking), clip), no gradient
    # through w. With the final norm zeroed every step is uniform: pi = 1/4 * 1/3 * 1/2 = 1/24.
    # u1's logged order a b c d (clicked c) eliminates d, c, b: rewards 1, 0, 1, baseline 2/3,
    # reward-to-go 2, 1, 1, so R = -(4/3 log 1/4 + 1/3 log 1/3 + 1/3 log 1/2) = log(1536) / 3.
    uniform = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32)
    with torch.no_grad():
        uniform.model.norm.weight.zero_()

    def first_step(log_propensity: float):
        ep = dataclasses.replace(eps[0], logged_log_propensity=log_propensity)
        cfg = TrainConfig(algo="logged", steps=1, batch_size=1, lr=0.0, grad_clip=1e9)
        rec = Trainer(uniform, tok, [ep], [], cfg, tmp_path / str(log_propensity)).train_step(0)
        return rec, uniform.model.norm.weight.grad.clone()

    big_r = math.log(1536) / 3
    logged, grad = first_step(-2.0)  # mu = e^-2: w = 24^-1 e^2
    assert logged["loss"] == pytest.approx(math.exp(2) / 24 * big_r, rel=1e-5)
    assert logged["reward"] == 2.0
    assert grad.abs().sum() > 0
    less_likely, grad_less_likely = first_step(-3.0)  # mu / e: w * e, loss and gradient too
    assert less_likely["loss"] == pytest.approx(math.exp(3) / 24 * big_r, rel=1e-5)
    assert torch.allclose(grad_less_likely, math.e * grad, rtol=1e-4, atol=1e-9)
    assert less_likely["grad_norm"] == pytest.approx(math.e * logged["grad_norm"], rel=1e-4)
    clipped, grad_clipped = first_step(-10.0)  # w = e^10 / 24 > is_clip: w = 10
    assert clipped["loss"] == pytest.approx(10 * big_r, rel=1e-5)
    assert torch.allclose(grad_clipped, 10 / (math.exp(2) / 24) * grad, rtol=1e-4, atol=1e-9)

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32)
    before = model.lm_head.weight.detach().clone()
    cfg = TrainConfig(algo="logged", steps=2, batch_size=2, lr=1e-2)
    trainer = Trainer(model, tok, eps, [], cfg, tmp_path / "trained")
    trainer.run()
    assert all(torch.isfinite(torch.tensor(r["loss"])) for r in trainer.state.history)
    assert not torch.equal(before, trainer.model.lm_head.weight.detach())


def write_popularity_movielens(root):
    """A MovieLens-100K-shaped folder where popularity ranks each user's target at a known
    place. Users 1-4 watched items 1-20, then their target (40, 30, 25, 21): each has exactly
    items 21-40 as candidates (the 19 unseen ones are all the negatives). Users 101-120 (fewer
    than 21 interactions: no instance, training data only) make item i have i - 20 training
    interactions, so the target of count c ranks 21 - c among counts 1..20."""
    ratings = []
    for user, target in ((1, 40), (2, 30), (3, 25), (4, 21)):
        ratings += [(user, item, 4, item) for item in [*range(1, 21), target]]
    for b in range(1, 21):  # booster b watched items 41-b .. 40
        ratings += [(100 + b, item, 4, item) for item in range(41 - b, 41)]
    titles = {i: f"Movie {i} (1995)" for i in range(1, 41)}
    write_ml100k(root / "movielens-100k", ratings, titles)


def test_baseline_rr_ranks_the_eval_instances_with_the_classical_recommender(tmp_path, monkeypatch):
    """`train-report --baselines`' per-user reciprocal ranks, computed for real (not mocked)
    on data where the popularity order puts each target at a known rank."""
    from recsys import training_report as training
    from recsys.settings import get_settings

    write_popularity_movielens(tmp_path)
    monkeypatch.setenv("RECSYS_DATA_DIR", str(tmp_path))
    get_settings.cache_clear()
    training._baseline_episode_rr.cache_clear()  # cached per (task, name), not per data dir
    try:
        expected = {"1": 1.0, "2": 1 / 11, "3": 1 / 16, "4": 1 / 20}
        assert training._baseline_episode_rr("rec-movie", "popularity") == pytest.approx(expected)
        users = {"2", "4", "101", "not-a-user"}  # only evaluated users come back
        assert training.baseline_rr("rec-movie", "popularity", users) == pytest.approx(
            {"2": 1 / 11, "4": 1 / 20}
        )
    finally:
        get_settings.cache_clear()
        training._baseline_episode_rr.cache_clear()


def test_train_report_table_and_curves(tmp_path):
    from recsys.training_report import plot_runs, runs_table

    run = tmp_path / "run-a"
    run.mkdir()
    log = [{"step": 0, "val_mrr": 20.0}] + [
        {"step": s, "loss": 1.0 / s, "reward": 0.8 + 0.01 * s} for s in range(1, 11)
    ]
    (run / "log.jsonl").write_text("".join(json.dumps(r) + "\n" for r in log))
    metrics = {"algo": "distill", "show_signals": True, "n_train": 700, "steps": 10,
               "val_mrr": 25.5, "val_mrr_zero_shot": 20.0, "val_mrr_retrieval": 60.0,
               "train_seconds": 12.5}  # fmt: skip
    (run / "metrics.json").write_text(json.dumps(metrics))
    table = runs_table([run])
    assert "| run-a | distill | yes | 10 x ? | 60.00 | 20.00 | 25.50 | — | — | 12.5 |" in table
    png = plot_runs([run], tmp_path / "curves.png")
    assert png.stat().st_size > 1000
    from recsys.errors import UserError

    with pytest.raises(UserError, match="not a training run folder"):
        runs_table([tmp_path])


def test_train_report_deltas_use_fused_and_ranker_alone_results(tmp_path, monkeypatch):
    """Paired deltas: the ranker alone from val_rr_ranker_alone, the fused ranking from
    tuned_fused.json, and a classical baseline on the same users only."""
    from recsys import training_report as training

    users = [f"u{i}" for i in range(40)]
    alone = {u: 0.2 for u in users}
    fused = {u: 0.7 for u in users}
    run = tmp_path / "run-f"
    run.mkdir()
    (run / "log.jsonl").write_text(json.dumps({"step": 1, "loss": 1.0, "reward": 0.5}) + "\n")
    metrics = {"task": "rec-movie", "algo": "expected", "show_signals": True, "steps": 1,
               "train_seconds": 1.0, "fusion_alpha": 4.0, "val_rr": fused,
               "val_rr_ranker_alone": alone,
               "val_rr_retrieval": {u: 0.6 for u in users}}  # fmt: skip
    (run / "metrics.json").write_text(json.dumps(metrics))
    (run / "zero_shot.json").write_text(
        json.dumps({"rr": {u: 0.1 for u in users}, "rr_fused@4.0": {u: 0.5 for u in users}})
    )
    (run / "tuned_fused.json").write_text(json.dumps({"rr": alone, "rr_fused@4.0": fused}))
    seen = {}

    def fake(task, name):
        seen[(task, name)] = True
        return {**{u: 0.4 for u in users}, "not-a-val-user": 0.0}

    monkeypatch.setattr(training, "_baseline_episode_rr", fake)
    table = training.runs_deltas([run], ["lightfm"])
    row = next(line for line in table.splitlines() if line.startswith("| run-f"))
    cells = [c.strip() for c in row.strip("|").split("|")]
    assert cells[1] == "40"
    assert cells[2].startswith("+10.00")  # alone: 20 - 10
    assert cells[3].startswith("+20.00")  # fused: 70 - 50
    assert cells[4].startswith("+10.00")  # fused - retrieval: 70 - 60
    assert cells[5].startswith("+30.00")  # fused - lightfm on the 40 users: 70 - 40
    assert seen == {("rec-movie", "lightfm"): True}
