"""Baselines: a shared contract (valid permutations, deterministic) and each baseline's
answer on tiny data where the right order is known."""

from __future__ import annotations

import numpy as np
import polars as pl
import pytest

from ranking.metrics import expected_random_mrr, reciprocal_rank
from ranking.types import Candidate
from recsys.errors import UserError
from recsys.eval import baselines, rankers
from recsys.eval.tasks import Instance, TaskSet


def rec_instance(uid: str, history: list[str], cands: list[str], target: str) -> Instance:
    return Instance(
        id=f"rec-movie:{uid}",
        task="rec-movie",
        request_task="rec-movie",
        candidates=tuple(Candidate(id=c, text=f"title {c}") for c in cands),
        relevance={target: 1.0},
        history=tuple(f"title {h}" for h in history),
        history_ids=tuple(history),
        user_id=uid,
    )


def rec_taskset(instances: list[Instance], train_rows: list[tuple[str, str]]) -> TaskSet:
    train = pl.DataFrame(
        {"user_id": [u for u, _ in train_rows], "item_id": [i for _, i in train_rows]}
    )
    return TaskSet("rec-movie", instances, train=train)


def order_of(baseline: baselines.ScoringBaseline, taskset: TaskSet) -> list[list[str]]:
    baseline.prepare(taskset)
    return [r.order for r in baseline.rank_instances(taskset.instances)]


def test_popularity_orders_by_training_count() -> None:
    inst = rec_instance("u", ["x"], ["rare", "top", "mid"], "top")
    train = [("v", "top"), ("w", "top"), ("z", "top"), ("v", "mid"), ("w", "mid"), ("v", "rare")]
    assert order_of(baselines.PopularityBaseline(), rec_taskset([inst], train)) == [
        ["top", "mid", "rare"]
    ]


def test_transitions_count_followers_within_the_window() -> None:
    # v watched h then a (1 step), w watched h, x, x2, b (3 steps): with window 2, only a
    # follows h closely enough; with window 3 both count once and the tie keeps input order
    train = [("v", "h"), ("v", "a"), ("w", "h"), ("w", "x"), ("w", "x2"), ("w", "b")]
    inst = rec_instance("u", ["h"], ["b", "a", "c"], "a")
    ts = rec_taskset([inst], train)
    assert order_of(baselines.TransitionsBaseline(window=2), ts) == [["a", "b", "c"]]
    assert order_of(baselines.TransitionsBaseline(window=3), ts) == [["b", "a", "c"]]
    # direction matters: nothing follows "a" in the training sequences
    back = rec_instance("u2", ["a"], ["h", "c"], "h")
    assert order_of(baselines.TransitionsBaseline(), rec_taskset([back], train)) == [["h", "c"]]


def test_bm25_puts_the_matching_text_first() -> None:
    inst = Instance(
        id="passage-3:q:0",
        task="passage-3",
        request_task="passage",
        candidates=(
            Candidate("p1", "bananas are yellow fruit"),
            Candidate("p2", "the capital of france is paris"),
            Candidate("p3", "cats sleep a lot"),
        ),
        relevance={"p2": 2.0},
        query="What is the capital of France?",
    )
    assert order_of(baselines.BM25Baseline(), TaskSet("passage-3", [inst]))[0][0] == "p2"


def test_first_stage_uses_retrieval_scores() -> None:
    inst = Instance(
        id="p", task="passage-3", request_task="passage",
        candidates=(Candidate("a", "x", 1.0), Candidate("b", "y", 3.0), Candidate("c", "z", 2.0)),
        relevance={"a": 2.0}, query="q",
    )  # fmt: skip
    assert order_of(baselines.FirstStageBaseline(), TaskSet("passage-3", [inst])) == [
        ["b", "c", "a"]
    ]
    unscored = rec_instance("u", [], ["a", "b"], "a")
    with pytest.raises(UserError, match="'first-stage' needs candidates with retrieval scores"):
        baselines.FirstStageBaseline().prepare(TaskSet("rec-movie", [unscored]))


def test_random_baseline_matches_its_analytic_mrr() -> None:
    ids = [str(i) for i in range(5)]
    insts = [rec_instance(f"u{n}", [], ids, ids[n % 5]) for n in range(3000)]
    results = baselines.RandomBaseline(seed=1).rank_instances(insts)
    measured = np.mean(
        [reciprocal_rank(r.order, i.target) for r, i in zip(results, insts, strict=True)]
    )
    assert abs(measured - expected_random_mrr(5)) < 0.02  # H_5 / 5 = 0.4567
    assert expected_random_mrr(20) == pytest.approx(0.17989, abs=1e-4)  # the paper's 17.99


def test_lightfm_learns_planted_clusters() -> None:
    # two groups of users, each interacting only with its own half of the items
    group = {f"u{n}": ("a" if n % 2 else "b") for n in range(40)}
    items = {g: [f"{g}{k}" for k in range(10)] for g in "ab"}
    train = [(u, it) for u, g in group.items() for it in items[g][:8]]
    insts = [rec_instance(u, items[g][:3], [items[g][9], items["b" if g == "a" else "a"][9]],
                          items[g][9]) for u, g in list(group.items())[:10]]  # fmt: skip
    ranked = order_of(baselines.LightFMBaseline(factors=8, epochs=20), rec_taskset(insts, train))
    hits = sum(order[0] == inst.target for order, inst in zip(ranked, insts, strict=True))
    assert hits >= 9


def test_ensemble_is_the_sum_of_its_parts_zscores() -> None:
    """ensemble = z(LightFM) + z(transitions) per instance: checked against the two parts
    fitted on the same data, and a candidate strong on one signal only is lifted by it."""
    rng = np.random.default_rng(1)
    items = [str(i) for i in range(20)]
    train = [(f"u{u}", str(i)) for u in range(15) for i in rng.choice(20, 6, replace=False)]
    inst = rec_instance("u0", ["1", "2"], items[5:12], "5")
    ts = rec_taskset([inst], train)
    ens = rankers.make_baseline("ensemble", seed=3)
    ens.prepare(ts)
    parts = [baselines.LightFMBaseline(seed=3), baselines.TransitionsBaseline()]
    expected = np.zeros(len(inst.candidates))
    for part in parts:
        part.prepare(ts)
        x = part.scores(inst)
        expected += (x - x.mean()) / x.std()
    assert ens.scores(inst) == pytest.approx(expected)
    flat = baselines.zscores(np.ones(4), ddof=0)  # equal scores carry no signal, not NaN
    assert flat.tolist() == [0.0, 0.0, 0.0, 0.0]


ALL_NAMES = ["random", "bm25", "popularity", "lightfm", "transitions", "ensemble"]


@pytest.mark.parametrize("name", ALL_NAMES)
def test_contract_permutation_and_determinism(name: str) -> None:
    rng = np.random.default_rng(0)
    items = [str(i) for i in range(30)]
    train = [(f"u{u}", str(i)) for u in range(12) for i in rng.choice(30, 8, replace=False)]
    insts = [rec_instance(f"u{u}", items[:3], list(rng.permutation(items)[:10]), "x")
             for u in range(6)]  # fmt: skip
    insts = [Instance(**{**i.__dict__, "relevance": {i.candidates[0].id: 1.0}}) for i in insts]
    ts = rec_taskset(insts, train)
    first = order_of(rankers.make_baseline(name, seed=3), ts)
    again = order_of(rankers.make_baseline(name, seed=3), ts)
    assert first == again
    for order, inst in zip(first, insts, strict=True):
        assert sorted(order) == sorted(inst.ids)


def test_rec_baseline_refuses_other_tasks() -> None:
    ts = TaskSet("passage-5", [])
    with pytest.raises(UserError, match="'popularity' does not apply to 'passage-5'"):
        baselines.PopularityBaseline().prepare(ts)
    with pytest.raises(UserError, match="unknown baseline 'magic'"):
        rankers.make_baseline("magic")
