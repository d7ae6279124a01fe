"""Paired comparison of two evaluation results on the same instances.

For rankers A and B measured on the same task, d_i = m_i(A) - m_i(B) per instance i (MRR
or any metric in the results' `instances`), over the instances both results share. The
mean difference gets a percentile bootstrap 95% interval (resampling instances, so the
pairing is kept: Efron & Tibshirani 1993, ch. 13). An interval above 0 says A beats B on
these instances; a paired interval is much narrower than the two separate ones because
the instance difficulty cancels.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from recsys.errors import UserError
from recsys.eval.harness import BOOTSTRAP_SAMPLES
from recsys.stats import paired_difference


@dataclass(frozen=True)
class PairedDifference:
    task: str
    a: str
    b: str
    metric: str
    n: int
    mean_a: float
    mean_b: float
    diff: float
    low: float
    high: float
    wins: int  # instances where A is strictly better
    losses: int
    slice: str = "all"
    label: str = ""  # what a plot calls A (e.g. its results file); the ranker name if empty

    def row(self) -> str:
        return (
            f"| {self.task} | {self.slice} | {self.a} | {self.b} | {self.n} | "
            f"{100 * self.mean_a:.2f} | {100 * self.mean_b:.2f} | {100 * self.diff:+.2f} "
            f"[{100 * self.low:+.2f}, {100 * self.high:+.2f}] | {self.wins}/{self.losses} |"
        )


HEADER = (
    "| task | slice | A | B | n | A | B | A - B [95% CI] | A wins / B wins |\n"
    "| --- | --- | --- | --- | --- | --- | --- | --- | --- |"
)


def paired(
    run_a: dict[str, Any],
    run_b: dict[str, Any],
    metric: str = "mrr",
    *,
    seed: int = 0,
    cold_only: bool = False,
) -> PairedDifference:
    """A - B on the instances both runs of one task measured (see module doc)."""
    if run_a["task"] != run_b["task"]:
        raise UserError(f"cannot pair {run_a['task']!r} with {run_b['task']!r}: different tasks")
    rows_a = {r["id"]: r for r in run_a.get("instances", [])}
    rows_b = {r["id"]: r for r in run_b.get("instances", [])}
    if not rows_a or not rows_b:
        raise UserError("results without per-instance rows; re-run `recsys eval` to get them")
    shared = sorted(set(rows_a) & set(rows_b))
    if cold_only:
        shared = [i for i in shared if rows_a[i].get("cold")]
    if not shared:
        raise UserError(f"{run_a['task']}: the two results share no instances")
    if metric not in rows_a[shared[0]]:
        raise UserError(f"unknown metric {metric!r}; the rows have {sorted(rows_a[shared[0]])}")
    a = np.array([rows_a[i][metric] for i in shared], dtype=float)
    b = np.array([rows_b[i][metric] for i in shared], dtype=float)
    ci = paired_difference(a, b, n_boot=BOOTSTRAP_SAMPLES, seed=seed)
    low, high = ci.low, ci.high
    return PairedDifference(
        task=run_a["task"], a=run_a["ranker"], b=run_b["ranker"], metric=metric, n=len(shared),
        mean_a=float(a.mean()), mean_b=float(b.mean()), diff=float((a - b).mean()),
        low=low, high=high, wins=int((a > b).sum()), losses=int((a < b).sum()),
        slice="cold-start" if cold_only else "all",
    )  # fmt: skip


def paired_table(
    runs_a: Sequence[dict[str, Any]], runs_b: Sequence[dict[str, Any]], metric: str = "mrr"
) -> list[PairedDifference]:
    """Every task present in both result sets, all instances and the cold-start slice."""
    by_task = {r["task"]: r for r in runs_b}
    out = []
    for run in runs_a:
        other = by_task.get(run["task"])
        if other is None:
            continue
        out.append(paired(run, other, metric))
        if any(r.get("cold") for r in run.get("instances", [])):
            out.append(paired(run, other, metric, cold_only=True))
    if not out:
        raise UserError("the two results have no task in common")
    return out


def plot_differences(
    diffs: Sequence[PairedDifference], path: str | Path, goal: float | None = None
) -> None:
    """A forest plot: one row per A (and slice), A - B x 100 with its 95% interval, one
    panel per task; a solid line at 0 and, with `goal` (metric x 100), a dashed one there."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    tasks = list(dict.fromkeys(d.task for d in diffs))
    rows = {t: [d for d in diffs if d.task == t] for t in tasks}
    heights = [1.0 + 0.35 * len(r) for r in rows.values()]
    fig, axes = plt.subplots(len(tasks), 1, figsize=(8, sum(heights)), squeeze=False,
                             gridspec_kw={"height_ratios": heights})  # fmt: skip
    for ax, task in zip(axes[:, 0], tasks, strict=True):
        ds = rows[task]
        y = list(range(len(ds)))
        colors = ["tab:green" if d.low > 0 else "tab:red" if d.high < 0 else "tab:gray"
                  for d in ds]  # fmt: skip
        ax.hlines(y, [100 * d.low for d in ds], [100 * d.high for d in ds], colors=colors)
        ax.scatter([100 * d.diff for d in ds], y, c=colors, zorder=3)
        ax.set_yticks(y, [f"{d.label or d.a}{'' if d.slice == 'all' else f' ({d.slice})'} "
                          f"n={d.n}" for d in ds], fontsize=8)  # fmt: skip
        ax.axvline(0, color="black", linewidth=1)
        if goal is not None:
            ax.axvline(goal, color="tab:blue", linestyle="--", linewidth=1)
        ax.invert_yaxis()
        ax.set_title(f"{task}: {ds[0].metric} x 100, A - {ds[0].b}, paired 95% interval",
                     fontsize=9)  # fmt: skip
        ax.grid(axis="x", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
