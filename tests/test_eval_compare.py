"""Paired comparisons of result files, held-out users, the cold-start slice."""

from __future__ import annotations

import json

import numpy as np
import polars as pl
import pytest

from ranking.types import Candidate
from recsys.errors import UserError
from recsys.eval import compare
from recsys.eval.baselines import PopularityBaseline
from recsys.eval.harness import evaluate
from recsys.eval.tasks import Instance, TaskSet, for_users, is_heldout


def run(task: str, ranker: str, mrrs: list[float], cold: list[bool] | None = None) -> dict:
    cold = cold or [False] * len(mrrs)
    rows = [{"id": f"{task}:{i}", "user": str(i), "cold": c, "mrr": m}
            for i, (m, c) in enumerate(zip(mrrs, cold, strict=True))]  # fmt: skip
    return {"task": task, "ranker": ranker, "instances": rows}


def test_paired_difference_known_answer() -> None:
    a = run("rec-movie", "A", [1.0, 0.5, 1.0, 0.25])
    b = run("rec-movie", "B", [0.5, 0.5, 0.5, 0.5])
    d = compare.paired(a, b)
    assert d.n == 4 and d.diff == pytest.approx((0.5 + 0 + 0.5 - 0.25) / 4)
    assert (d.wins, d.losses) == (2, 1)
    assert d.low <= d.diff <= d.high
    assert d.mean_a == pytest.approx(0.6875) and d.mean_b == pytest.approx(0.5)


def test_paired_interval_is_above_zero_for_a_consistent_gain() -> None:
    rng = np.random.default_rng(0)
    base = rng.uniform(0, 0.9, 300)
    d = compare.paired(run("t", "A", list(base + 0.05)), run("t", "B", list(base)))
    assert d.low > 0 and d.diff == pytest.approx(0.05)


def test_paired_uses_only_shared_instances_and_the_cold_slice() -> None:
    a = run("t", "A", [1.0, 1.0, 0.0], cold=[True, False, True])
    b = {"task": "t", "ranker": "B", "instances": run("t", "B", [0.0, 0.0, 0.0])["instances"][:2]}
    assert compare.paired(a, b).n == 2
    cold = compare.paired(a, b, cold_only=True)
    assert cold.n == 1 and cold.diff == 1.0 and cold.slice == "cold-start"
    table = compare.paired_table([a], [b])
    assert [d.slice for d in table] == ["all", "cold-start"]


OTHER = {"id": "other", "mrr": 1.0}


@pytest.mark.parametrize(
    ("a", "b", "metric", "message"),
    [
        (run("x", "A", [1.0]), run("y", "B", [1.0]), "mrr", "different tasks"),
        (run("x", "A", [1.0]), {"task": "x", "ranker": "B"}, "mrr", "re-run `recsys eval`"),
        (
            run("x", "A", [1.0]),
            {"task": "x", "ranker": "B", "instances": [{"id": "other", "mrr": 1.0}]},
            "mrr",
            "share no instances",
        ),
        (run("x", "A", [1.0]), run("x", "B", [1.0]), "ndcg@99", "unknown metric"),
    ],
)
def test_paired_bad_input(a: dict, b: dict, metric: str, message: str) -> None:
    with pytest.raises(UserError, match=message.replace("`", ".")):
        compare.paired(a, b, metric)


def test_eval_diff_command(tmp_path) -> None:
    from typer.testing import CliRunner

    from recsys.cli import app

    pa, pb = tmp_path / "a.json", tmp_path / "b.json"
    pa.write_text(json.dumps({"runs": [run("rec-movie", "A", [1.0, 1.0])]}))
    pb.write_text(json.dumps({"runs": [run("rec-movie", "B", [0.5, 0.5])]}))
    result = CliRunner().invoke(app, ["eval-diff", str(pa), str(pb), "--out", str(tmp_path / "d")])
    assert result.exit_code == 0, result.output
    assert "+50.00 [+50.00, +50.00]" in result.output
    assert json.loads((tmp_path / "d").read_text())[0]["diff"] == 0.5


def test_eval_diff_several_against_one_with_a_plot(tmp_path) -> None:
    """`eval-diff A1 A2 B`: each A against the last file, labelled by its file in the
    JSON and the plot; --slices keeps only the rows asked for."""
    from typer.testing import CliRunner

    from recsys.cli import app

    files = []
    for name, mrrs in (("better", [1.0, 1.0, 0.5]), ("worse", [0.0, 0.5, 0.5]),
                       ("base", [0.5, 0.5, 0.5])):  # fmt: skip
        files.append(tmp_path / f"{name}.json")
        runs = [run("rec-game", name, mrrs, [True, False, False])]
        files[-1].write_text(json.dumps({"runs": runs}))
    d, png = tmp_path / "d.json", tmp_path / "forest.png"
    args = ["eval-diff", *map(str, files), "--out", str(d), "--plot", str(png), "--goal", "2"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    rows = json.loads(d.read_text())
    assert [(r["label"], r["slice"]) for r in rows] == [
        ("better", "all"),
        ("better", "cold-start"),
        ("worse", "all"),
        ("worse", "cold-start"),
    ]
    assert [round(r["diff"], 4) for r in rows] == [0.3333, 0.5, -0.1667, -0.5]
    assert png.stat().st_size > 5_000 and png.read_bytes()[:4] == b"\x89PNG"
    result = CliRunner().invoke(app, [*args[:4], "--slices", "all", "--out", str(d)])
    assert result.exit_code == 0, result.output
    assert [r["slice"] for r in json.loads(d.read_text())] == ["all", "all"]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["only.json"], "at least two results files"),
        (["a.json", "b.json", "--slices", "cold"], "--slices 'cold': use all, cold-start or both"),
        ([f"{i}.json" for i in range(51)], "at most 49 against one"),
    ],
)
def test_eval_diff_bad_command_lines(tmp_path, args, message) -> None:
    from typer.testing import CliRunner

    from recsys.cli import app

    result = CliRunner().invoke(app, ["eval-diff", *args])  # `recsys` prints "error: ..."
    assert isinstance(result.exception, UserError) and message in str(result.exception)


def world() -> TaskSet:
    users = [f"u{i}" for i in range(200)]
    instances = [
        Instance(id=f"rec-movie:{u}", task="rec-movie", request_task="rec-movie",
                 candidates=(Candidate("hot", "Hot"), Candidate("rare", "Rare")),
                 relevance={"rare" if k % 4 == 0 else "hot": 1.0}, user_id=u)
        for k, u in enumerate(users)
    ]  # fmt: skip
    # "hot" has 10 training interactions, "rare" 2: targets "rare" are the cold slice
    train = pl.DataFrame({"user_id": users[:12], "item_id": ["hot"] * 10 + ["rare"] * 2})
    return TaskSet("rec-movie", instances, train=train, catalogue={"hot": "Hot", "rare": "Rare"})


def test_heldout_and_train_users_partition_the_task() -> None:
    ts = world()
    held, rest = for_users(ts, "heldout", 7), for_users(ts, "train", 7)
    ids_h = {i.user_id for i in held.instances}
    ids_t = {i.user_id for i in rest.instances}
    assert not ids_h & ids_t and len(ids_h | ids_t) == 200
    assert 0.25 < len(ids_h) / 200 < 0.45  # HELDOUT_FRACTION = 0.35
    assert all(is_heldout(u, 7) for u in ids_h)
    assert for_users(ts, "all", 7) is ts
    with pytest.raises(UserError, match="--users must be one of"):
        for_users(ts, "some", 7)


def test_cold_start_slice_in_the_run() -> None:
    out = evaluate(PopularityBaseline(), world(), progress=False)
    cold = out.slices["cold-start"]
    assert cold["n"] == 50  # every fourth user's target is "rare"
    assert cold["metrics"]["mrr"]["mean"] == 0.5  # popularity puts "rare" second
    assert out.metrics["mrr"]["mean"] == pytest.approx((150 * 1.0 + 50 * 0.5) / 200)
    assert sum(r["cold"] for r in out.instances) == 50
