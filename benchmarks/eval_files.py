"""Reading committed `recsys eval --out` files and pairing per-instance rows, for the
analysis scripts beside it (served_vs_alone, combiner_probe, text_feature_probe)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np


def run_of(path: str | Path, task: str, ranker: str | None = None) -> dict:
    """The run of `task` (and `ranker`, for a file holding a sweep) in a results file."""
    runs = [r for r in json.loads(Path(path).read_text())["runs"] if r["task"] == task]
    if ranker is not None:
        runs = [r for r in runs if r["ranker"] == ranker]
    if len(runs) != 1:
        raise SystemExit(f"{path}: {len(runs)} runs of {task} {ranker or ''}; expected one")
    return runs[0]


def rr_by_instance(run: dict) -> dict[str, float]:
    """Instance id -> its reciprocal rank (the files keep 6 decimals)."""
    return {row["id"]: float(row["mrr"]) for row in run["instances"]}


def paired(a: np.ndarray, b: np.ndarray) -> dict[str, float]:
    """A - B in MRR points with the paired bootstrap 95% interval `recsys eval-diff` uses."""
    from recsys.eval.harness import BOOTSTRAP_SAMPLES
    from recsys.stats import paired_difference

    ci = paired_difference(a, b, n_boot=BOOTSTRAP_SAMPLES, seed=0)
    return {"diff": 100 * float((a - b).mean()), "low": 100 * ci.low, "high": 100 * ci.high}


def cell(d: dict[str, float]) -> str:
    """A `paired` difference as a table cell: +1.23 [-0.45, +2.34]."""
    return f"{d['diff']:+.2f} [{d['low']:+.2f}, {d['high']:+.2f}]"
