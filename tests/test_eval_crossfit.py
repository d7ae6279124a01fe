"""Cross-fitted choice among measured variants (`recsys eval-crossfit`) and the
`--fusion-alpha` sweep that feeds it."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from recsys.errors import UserError
from recsys.eval import compare, crossfit
from recsys.eval.harness import METRICS
from tests.fixtures.cli import run_cli


def run(ranker: str, mrrs: list[float], task: str = "rec-movie", model: str = "m") -> dict:
    rows = [{"id": f"{task}:{u}", "user": str(u), "cold": u == 0, **dict.fromkeys(METRICS, m)}
            for u, m in enumerate(mrrs)]  # fmt: skip
    return {"task": task, "ranker": ranker, "model": model, "instances": rows}


def test_one_variant_better_everywhere_is_chosen_in_every_fold() -> None:
    a, b = run("A", [1.0, 0.5, 1.0, 0.5, 1.0, 0.5]), run("B", [0.5, 0.25, 0.5, 0.25, 0.5, 0.25])
    fit = crossfit.cross_fit([b, a], folds=3)
    assert fit.chosen == ["A", "A", "A"]
    assert [r["mrr"] for r in fit.run["instances"]] == [r["mrr"] for r in a["instances"]]
    assert fit.run["metrics"]["mrr"]["mean"] == pytest.approx(0.75)
    assert fit.in_sample == {"B": pytest.approx(0.375), "A": pytest.approx(0.75)}
    # the combined run pairs with anything measured on the same instances
    assert compare.paired(fit.run, a).diff == 0.0


def test_each_fold_is_reported_from_the_choice_made_without_it() -> None:
    """Two users; A is best on user 0, B on user 1: each user gets the other's choice, so the
    cross-fitted number is the worse one, where the in-sample best would look perfect."""
    a, b = run("A", [1.0, 0.0]), run("B", [0.0, 1.0])
    fit = crossfit.cross_fit([a, b], folds=2, seed=1)
    assert sorted(fit.chosen) == ["A", "B"]
    assert [r["mrr"] for r in fit.run["instances"]] == [0.0, 0.0]
    assert max(fit.in_sample.values()) == 0.5


def test_folds_are_balanced_and_seeded() -> None:
    users = [str(u) for u in range(103)]
    folds = crossfit.user_folds(users, 5, seed=7)
    assert sorted(np.bincount(list(folds.values()))) == [20, 20, 21, 21, 21]
    assert folds == crossfit.user_folds(list(reversed(users)), 5, seed=7)
    assert folds != crossfit.user_folds(users, 5, seed=8)


def test_variants_of_different_models_carry_their_model() -> None:
    fit = crossfit.cross_fit([run("A", [1.0, 1.0], model="m1"), run("A", [0.0, 0.0], model="m2")],
                             folds=2)  # fmt: skip
    assert fit.chosen == ["A (m1)", "A (m1)"] and fit.run["model"] == "m1"


BAD = [
    ([run("A", [1.0, 1.0])], {}, "need at least two"),
    ([run("A", [1.0, 1.0]), run("B", [1.0, 1.0], task="rec-game")], {}, "different tasks"),
    ([run("A", [1.0, 1.0]), run("A", [0.0, 0.0])], {}, "both called 'A'"),
    ([run("A", [1.0, 1.0]), run("B", [1.0, 1.0, 1.0])], {}, "measured different instances"),
    ([run("A", [1.0, 1.0]), {"task": "rec-movie", "ranker": "B", "instances": []}], {},
     "measured different instances"),
    ([{"task": "t", "ranker": "A"}, {"task": "t", "ranker": "B"}], {}, "per-instance rows"),
    ([run("A", [1.0, 1.0]), run("B", [1.0, 1.0])], {"metric": "auc"}, "unknown metric 'auc'"),
    ([run("A", [1.0, 1.0]), run("B", [1.0, 1.0])], {"metric": "cold"}, "use one of mrr, "),
    ([run("A", [1.0, 1.0]), run("B", [1.0, 1.0])], {"folds": 3}, "--folds must be between 2"),
    ([run("A", [1.0] * 30), run("B", [1.0] * 30)], {"folds": 1}, "--folds must be between 2"),
]  # fmt: skip


@pytest.mark.parametrize(("runs", "options", "message"), BAD)
def test_bad_input(runs, options, message) -> None:
    with pytest.raises(UserError, match=message.replace("(", r"\(")):
        crossfit.cross_fit(runs, **options)


def test_cli_crossfit_writes_a_results_file_eval_diff_reads(monkeypatch, capsys, tmp_path) -> None:
    sweep = tmp_path / "sweep.json"
    runs = [run("incremental+fusion@3", [1.0, 0.5, 0.2, 1.0]),
            run("incremental+fusion@5", [0.5, 0.5, 0.2, 0.5])]  # fmt: skip
    sweep.write_text(json.dumps({"config": {}, "runs": runs}))
    out = tmp_path / "cf.json"
    args = ["eval-crossfit", str(sweep), "--folds", "2", "--out", str(out)]
    code, stdout, _ = run_cli(monkeypatch, capsys, args)
    assert code == 0
    assert "chosen per fold: incremental+fusion@3, incremental+fusion@3" in stdout
    assert "| incremental+fusion@5 | 42.50 |" in stdout
    combined = json.loads(out.read_text())["runs"][0]
    assert combined["info"]["crossfit"]["folds"] == 2 and combined["n"] == 4
    code, stdout, _ = run_cli(monkeypatch, capsys, ["eval-diff", str(out), str(sweep)])
    assert code == 0 and "crossfit(2 folds, mrr)" in stdout
    # a sweep file as A: each of its runs paired and labelled on its own
    rows = tmp_path / "diffs.json"
    args = ["eval-diff", str(sweep), str(out), "--slices", "all", "--out", str(rows)]
    assert run_cli(monkeypatch, capsys, args)[0] == 0
    assert [d["label"] for d in json.loads(rows.read_text())] == [
        "sweep incremental+fusion@3", "sweep incremental+fusion@5"]  # fmt: skip


def test_cli_crossfit_bad_file_exits_2(monkeypatch, capsys, tmp_path) -> None:
    bad = tmp_path / "bad.json"
    bad.write_text("{}")
    code, _, err = run_cli(monkeypatch, capsys, ["eval-crossfit", str(bad), "-o", "x.json"])
    assert code == 2 and "not a `recsys eval --out` results file" in err
    assert "Traceback" not in err


def test_cli_eval_sweep_runs_each_weight_on_the_same_instances(
    fresh_settings, capsys, tmp_path: Path, tiny_model_dir
) -> None:
    from recsys.eval.baselines import TransitionsBaseline
    from tests.fixtures.data import tiny_ml100k

    fitted = []
    original = TransitionsBaseline.fit

    def fit(self, taskset) -> None:
        fitted.append(taskset.name)
        original(self, taskset)

    fresh_settings.setattr(TransitionsBaseline, "fit", fit)
    data = tiny_ml100k(tmp_path / "ml", users=4)
    out = tmp_path / "sweep.json"
    args = ["eval", "--task", "rec-movie", "--data", str(data), "--model", str(tiny_model_dir),
            "--fusion-alpha", "0", "--fusion-alpha", "2", "--fusion-alpha", "50",
            "--limit", "3", "--out", str(out), "--no-progress"]  # fmt: skip
    code, _, _ = run_cli(fresh_settings, capsys, args)
    assert code == 0
    result = json.loads(out.read_text())
    assert result["config"]["fusion_alphas"] == [0.0, 2.0, 50.0]
    runs = result["runs"]
    assert [r["ranker"] for r in runs] == ["incremental", "incremental+fusion@2",
                                           "incremental+fusion@50"]  # fmt: skip
    assert len({tuple(i["id"] for i in r["instances"]) for r in runs}) == 1
    assert all(r["bad_permutations"] == 0 for r in runs)
    assert fitted == ["rec-movie"]  # the fusion signal was fitted once for the whole sweep


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--fusion-alpha", "2", "--fusion-alpha", "2"], "--fusion-alpha values repeat"),
        (["--ranker", "popularity", "--fusion-alpha", "0", "--fusion-alpha", "2"],
         "--fusion-alpha applies to engine modes"),
        (["--fusion-alpha", "1", "--fusion-alpha", "-1"], "finite number >= 0"),
        ([a for k in range(13) for a in ("--fusion-alpha", str(k))], "at most 12"),
    ],
)  # fmt: skip
def test_cli_eval_bad_sweep_exits_2(fresh_settings, capsys, args, message) -> None:
    base = ["eval", "--task", "rec-movie", "--data", "/nonexistent", "--no-progress"]
    code, _, err = run_cli(fresh_settings, capsys, [*base, *args])
    assert code == 2 and message in err and "Traceback" not in err


def test_cli_crossfit_tells_alike_runs_apart_by_file_and_keeps_one_task(
    monkeypatch, capsys, tmp_path
) -> None:
    """The same ranker and model fused with two signals sit in two files under one name:
    each is named by its file; a file holding two tasks gives only --task's run."""
    over_bag = tmp_path / "over-bag.json"
    over_text = tmp_path / "over-text.json"
    over_bag.write_text(json.dumps({"config": {}, "runs": [
        run("incremental+fusion@5", [1.0, 0.5, 1.0, 0.5]),
        run("incremental+fusion@5", [0.1, 0.1], task="rec-game")]}))  # fmt: skip
    over_text.write_text(json.dumps({"config": {}, "runs": [
        run("incremental+fusion@5", [0.5, 0.5, 0.5, 0.5])]}))  # fmt: skip
    out = tmp_path / "cf.json"
    args = ["eval-crossfit", str(over_text), str(over_bag), "--folds", "2", "--out", str(out)]
    code, _, err = run_cli(monkeypatch, capsys, args)
    assert code == 2 and "runs of different tasks" in err  # rec-game came along
    code, stdout, _ = run_cli(monkeypatch, capsys, [*args, "--task", "rec-movie"])
    assert code == 0
    assert f"| incremental+fusion@5 [{tmp_path / 'over-text'}] | 50.00 |" in stdout
    assert f"| incremental+fusion@5 [{tmp_path / 'over-bag'}] | 75.00 |" in stdout
    chosen = f"incremental+fusion@5 [{tmp_path / 'over-bag'}]"
    assert f"chosen per fold: {chosen}, {chosen}" in stdout
    combined = json.loads(out.read_text())["runs"][0]
    assert combined["metrics"]["mrr"]["mean"] == pytest.approx(0.75)
    code, _, err = run_cli(monkeypatch, capsys, [*args, "--task", "passage-rerank"])
    assert code == 2 and "no run of task 'passage-rerank'" in err
