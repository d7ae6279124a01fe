"""Harness: metrics against hand-worked values, bootstrap, counting of invalid answers,
fallbacks and broken permutations, the engine adapter (tiny model), and `recsys eval`."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from ranking.types import Candidate, RankResult
from recsys.eval import harness, report
from recsys.eval.tasks import Instance, TaskSet
from tests.fixtures.cli import run_cli
from tests.fixtures.data import tiny_ml100k


def instance(n: int = 5, target: str = "c2", uid: str = "u") -> Instance:
    return Instance(
        id=f"rec-movie:{uid}",
        task="rec-movie",
        request_task="rec-movie",
        candidates=tuple(Candidate(f"c{i}", f"Movie number {i}") for i in range(n)),
        relevance={target: 1.0},
        history=("Movie number 7", "Movie number 8"),
        history_ids=("c7", "c8"),
        user_id=uid,
    )


def test_metrics_hand_worked_single_target() -> None:
    m = harness.instance_metrics(instance(), ["c0", "c1", "c2", "c3", "c4"], 1e-9)
    assert m["mrr"] == pytest.approx(1 / 3)
    assert m["ndcg@1"] == 0.0
    assert m["ndcg@5"] == pytest.approx(1 / math.log2(4))  # 0.5
    assert m["ndcg@10"] == pytest.approx(0.5)
    assert (m["hit@1"], m["hit@5"]) == (0.0, 1.0)


def test_metrics_graded_rerank() -> None:
    inst = Instance(
        id="r", task="passage-rerank", request_task="passage",
        candidates=(Candidate("a", "x"), Candidate("b", "y"), Candidate("c", "z")),
        relevance={"a": 1.0, "b": 3.0, "c": 0.0, "unretrieved:d": 2.0}, query="q",
    )  # fmt: skip
    m = harness.instance_metrics(inst, ["a", "c", "b"], 2.0)
    assert m["mrr"] == pytest.approx(1 / 3)  # first grade>=2 passage is at rank 3
    dcg = 1 / math.log2(2) + 7 / math.log2(4)
    idcg = 7 / math.log2(2) + 3 / math.log2(3) + 1 / math.log2(4)  # includes unretrieved d
    assert m["ndcg@10"] == pytest.approx(dcg / idcg)
    linear = harness.instance_metrics(inst, ["a", "c", "b"], 2.0, linear_gain=True)
    dcg, idcg = 1 + 3 / math.log2(4), 3 + 2 / math.log2(3) + 1 / math.log2(4)  # trec_eval gains
    assert linear["ndcg@10"] == pytest.approx(dcg / idcg)


class Scripted:
    """A ranker that returns fixed orders and flags (to test the bookkeeping)."""

    name = model = "scripted"

    def __init__(self, orders, invalid=0, fallback=False):
        self.orders, self.invalid, self.fallback = orders, invalid, fallback

    def prepare(self, taskset):
        self.prepared = taskset.name

    def run_info(self):
        return {"scripted": True}

    def rank_instances(self, instances):
        return [RankResult(order=self.orders(i), steps=[], mode="x", model="x", elapsed_ms=1.0,
                           invalid_answers=self.invalid, fallback=self.fallback)
                for i in instances]  # fmt: skip


def test_evaluate_counts_invalid_fallback_and_broken_permutations() -> None:
    insts = [instance(uid=str(n)) for n in range(10)]
    ts = TaskSet("rec-movie", insts)
    best_first = Scripted(lambda i: ["c2", "c0", "c1", "c3", "c4"], invalid=2, fallback=True)
    run = harness.evaluate(best_first, ts, chunk=3, progress=False)
    assert best_first.prepared == "rec-movie" and run.info["scripted"] is True
    assert run.n == 10 and run.metrics["mrr"]["mean"] == 1.0
    assert run.metrics["mrr"]["low"] == 1.0
    assert (run.invalid_answers, run.fallbacks, run.bad_permutations) == (20, 10, 0)
    assert run.random_mrr == pytest.approx((1 + 1 / 2 + 1 / 3 + 1 / 4 + 1 / 5) / 5)
    broken = Scripted(lambda i: ["c2", "c2", "c0", "c1", "c3"])  # duplicate, c4 missing
    run = harness.evaluate(broken, ts, progress=False)
    assert run.bad_permutations == 10 and run.metrics["mrr"]["mean"] == 0.0


def test_engine_ranker_with_tiny_model(tiny_ranker) -> None:
    insts = [instance(n=6, uid=str(n)) for n in range(5)]
    engine = harness.EngineRanker(tiny_ranker, "incremental")
    run = harness.evaluate(engine, TaskSet("rec-movie", insts), chunk=2, progress=False)
    assert run.n == 5 and run.bad_permutations == 0
    assert run.ranker == "incremental" and run.model == tiny_ranker.model_id
    assert 0 < run.metrics["mrr"]["mean"] <= 1
    assert run.requests_per_s > 0


def test_cli_eval_writes_json_and_table(monkeypatch, capsys, tmp_path: Path) -> None:
    data = tiny_ml100k(tmp_path / "ml")
    out = tmp_path / "results.json"
    args = [
        "eval",
        "--task",
        "rec-movie",
        "--ranker",
        "popularity",
        "--data",
        str(data),
        "--out",
        str(out),
        "--seed",
        "3",
        "--no-progress",
        "--write-tasks",
        str(tmp_path),
    ]
    code, stdout, _ = run_cli(monkeypatch, capsys, args)  # fmt: skip
    assert code == 0
    result = json.loads(out.read_text())
    assert result["config"]["ranker"] == "popularity" and result["config"]["seed"] == 3
    run = result["runs"][0]
    assert run["task"] == "rec-movie" and run["n"] == 25
    assert set(run["metrics"]) == set(harness.METRICS)
    assert "| rec-movie | popularity | 25 |" in stdout
    assert (tmp_path / "rec-movie.jsonl").is_file()
    table = report.summary_table(report.load_runs([out]))
    assert table.splitlines()[0] == "| ranker | rec-movie |"
    assert table.splitlines()[2].startswith("| popularity | ")
    report.plot_runs(report.load_runs([out]), tmp_path / "plot.png")
    assert (tmp_path / "plot.png").read_bytes()[:4] == b"\x89PNG"


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--task", "rec-music", "--ranker", "random"], "rec-music: no data is shipped"),
        (["--task", "rec-books", "--ranker", "random"], "unknown task 'rec-books'"),
        (["--task", "rec-movie", "--ranker", "magic"], "unknown ranker 'magic'"),
        (["--task", "passage-5", "--ranker", "random", "--candidates", "retrieval"],
         "--candidates retrieval applies to rec tasks"),
        (["--task", "rec-movie", "--ranker", "random", "--candidates", "top"],
         "--candidates must be random or retrieval"),
        (["--task", "passage-5", "--ranker", "popularity", "--data", "/nonexistent/x"],
         "does not exist"),
        (["--task", "passage-5", "--ranker", "popularity"], "'popularity' does not apply"),
        (["--task", "rec-movie", "--ranker", "random", "--limit", "0"], "--limit must be >= 1"),
    ],
)  # fmt: skip
def test_cli_eval_bad_input_exits_2(monkeypatch, capsys, args, message) -> None:
    code, _, err = run_cli(monkeypatch, capsys, ["eval", *args, "--no-progress"])
    assert code == 2
    assert message in err
    assert "Traceback" not in err


def test_cli_eval_registry_model_without_database(monkeypatch, capsys, tmp_path: Path) -> None:
    from recsys.settings import get_settings

    monkeypatch.setenv("RECSYS_DATABASE_URL", f"sqlite:///{tmp_path}")  # a folder: unusable
    get_settings.cache_clear()
    try:
        args = ["eval", "--task", "passage-5", "--ranker", "incremental", "--model", "promoted"]
        code, _, err = run_cli(monkeypatch, capsys, [*args, "--no-progress"])
    finally:
        get_settings.cache_clear()
    assert code == 2
    assert "needs the model registry" in err and "recsys db upgrade" in err
