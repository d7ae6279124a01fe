"""Where a ranker's gain over another comes from: the paired difference A - B (MRR x 100,
bootstrap 95% interval, recsys.stats) within quartiles of the target's training
popularity and of the user's training-log length, on the instances both results share.

python benchmarks/slice_gains.py TASK A.json B.json [RANKER_A]
    RANKER_A picks one run of a multi-run A (a --fusion-alpha sweep), e.g.
    incremental+fusion@7; B's run of TASK is the last in its file.
python benchmarks/slice_gains.py gate TASK SWEEP.json B.json
    a probe of a serving weight gated on the user's log length: one weight of the sweep for
    users at or below the median log length of the task's users (all of them, not only the
    evaluated), another above; every pair of the sweep's weights is a variant, the pair
    chosen per user fold on the other folds (recsys.eval.crossfit), paired with B.
"""

import itertools
import sys

import numpy as np

from recsys.eval import crossfit, report, tasks
from recsys.settings import get_settings
from recsys.stats import paired_difference

SEED = 7


def task_runs(path: str, task: str) -> list[dict]:
    return [r for r in report.read_results(path)["runs"] if r["task"] == task]


def rows(path: str, task: str, ranker: str | None) -> dict[str, float]:
    runs = task_runs(path, task)
    run = next(r for r in runs if r["ranker"] == ranker) if ranker else runs[-1]
    return {i["id"]: i["mrr"] for i in run["instances"]}


def task_and_activity(task: str) -> tuple[tasks.TaskSet, dict[str, int]]:
    """The task as `recsys eval` builds it (seed 7) and each user's training-log length."""
    ts = tasks.build_task(task, tasks.default_data(task, get_settings().data_dir), SEED)
    return ts, dict(ts.train.group_by("user_id").len().iter_rows())


def main(task: str, file_a: str, file_b: str, ranker: str | None = None) -> None:
    a, b = rows(file_a, task, ranker), rows(file_b, task, None)
    ts, activity = task_and_activity(task)
    popularity = dict(ts.train.group_by("item_id").len().iter_rows())
    inst = [i for i in ts.instances if i.id in a and i.id in b]
    keys = {
        "target popularity": np.array([popularity.get(i.target, 0) for i in inst], float),
        "user log length": np.array([activity.get(i.user_id, 0) for i in inst], float),
    }
    da = np.array([a[i.id] for i in inst])
    db = np.array([b[i.id] for i in inst])
    print(f"{task}: {len(inst)} shared instances; A - B, MRR x 100 [95% CI]")
    print("| slice | quartile (range) | n | A | B | A - B |")
    print("| --- | --- | --- | --- | --- | --- |")
    for name, key in keys.items():
        edges = np.quantile(key, [0, 0.25, 0.5, 0.75, 1.0])
        bins = np.clip(np.searchsorted(edges, key, side="right") - 1, 0, 3)
        for q in range(4):
            m = bins == q
            d = paired_difference(da[m], db[m], seed=SEED)
            lo, hi = key[m].min(), key[m].max()
            print(f"| {name} | Q{q + 1} ({lo:g}-{hi:g}) | {m.sum()} | {100 * da[m].mean():.2f} | "
                  f"{100 * db[m].mean():.2f} | {100 * d.mean:+.2f} [{100 * d.low:+.2f}, "
                  f"{100 * d.high:+.2f}] |")  # fmt: skip


def gate(task: str, sweep: str, file_b: str) -> None:
    runs = task_runs(sweep, task)
    b = rows(file_b, task, None)
    ts, activity = task_and_activity(task)
    threshold = float(np.median([activity.get(i.user_id, 0) for i in ts.instances]))
    tables = [{i["id"]: i for i in r["instances"]} for r in runs]
    ids = sorted(tables[0])
    long = {i: activity.get(tables[0][i]["user"], 0) > threshold for i in ids}
    variants = [
        {"task": task, "ranker": f"short {runs[s]['ranker']}, long {runs[g]['ranker']}",
         "instances": [tables[g if long[i] else s][i] for i in ids]}
        for s, g in itertools.product(range(len(runs)), repeat=2)
    ]  # fmt: skip
    fit = crossfit.cross_fit(variants, folds=5, seed=SEED)
    got = np.array([r["mrr"] for r in fit.run["instances"]])
    d = paired_difference(got, np.array([b[r["id"]] for r in fit.run["instances"]]), seed=SEED)
    best = max(fit.in_sample, key=fit.in_sample.__getitem__)
    print(f"{task}: median log length {threshold:g}, {sum(long.values())} of {len(ids)} above")
    print(f"chosen per fold: {fit.chosen}")
    print(f"cross-fitted gated - B: {100 * d.mean:+.2f} [{100 * d.low:+.2f}, {100 * d.high:+.2f}]")
    print(f"in-sample best: {best}, {100 * (fit.in_sample[best] - np.mean(list(b.values()))):+.2f}")


if __name__ == "__main__":
    if sys.argv[1] == "gate":
        gate(*sys.argv[2:])
    else:
        main(*sys.argv[1:])
