"""Choosing among measured variants (fusion weights, checkpoints) without tuning on the
users a number is reported for: K-fold cross-fitting over users.

Given runs r = 1..R of one task on the same instances (e.g. `recsys eval --fusion-alpha 3
--fusion-alpha 5 ...`), the users are split into K folds by a seeded permutation. For fold
k the run with the best mean metric on the *other* folds' instances is chosen,

    r*(k) = argmax_r  mean_{i not in fold k} m_i(r),

and fold k's instances are reported from r*(k). Every reported instance thus comes from a
choice made without it, so the combined run is an honest estimate of "choose the weight on
users like these, serve it on new ones" (cross-fitting; Chernozhukov et al. 2018,
"Double/debiased machine learning", section 3; Hastie, Tibshirani & Friedman, ESL 7.10 on
why a choice must not see the instances it is judged on). Every run's mean on all
instances (`CrossFit.in_sample`) is reported beside it for diagnosis only: the best of
them tuned on the instances it is measured on, and is optimistic.

The combined run has the layout of a `recsys eval --out` run, so `recsys eval-diff` pairs
it with any other result on the same instances.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from recsys.errors import UserError
from recsys.eval.harness import METRICS, summarise

MAX_FOLDS = 20


@dataclass(frozen=True)
class CrossFit:
    run: dict[str, Any]  # the combined run (eval JSON layout)
    chosen: list[str]  # per fold, the variant (`variant_names`) chosen on the other folds
    in_sample: dict[str, float]  # variant -> mean metric on every instance (diagnosis only)


def user_folds(users: Sequence[str], k: int, seed: int) -> dict[str, int]:
    """Each distinct user's fold: a seeded permutation of the sorted users, dealt out in
    turn, so folds differ in size by at most one and do not depend on input order."""
    distinct = sorted(set(users))
    order = np.random.default_rng(seed).permutation(len(distinct))
    return {distinct[j]: n % k for n, j in enumerate(order)}


def _rows(run: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {r["id"]: r for r in run.get("instances", [])}


def variant_names(runs: Sequence[dict[str, Any]]) -> list[str]:
    """Each run's ranker name, with its model when the runs' models differ (a choice among
    checkpoints as well as weights), and with its results file (`source`, set by
    `recsys eval-crossfit`: the path without .json) where that still leaves two alike: the
    same ranker and model fused with different signals, say."""
    if len({r.get("model", "") for r in runs}) > 1:
        names = [f"{r['ranker']} ({r.get('model', '')})" for r in runs]
    else:
        names = [r["ranker"] for r in runs]
    counts = Counter(names)
    return [f"{n} [{r['source']}]" if counts[n] > 1 and r.get("source") else n
            for n, r in zip(names, runs, strict=True)]  # fmt: skip


def check_runs(runs: Sequence[dict[str, Any]], metric: str) -> list[str]:
    """The runs' shared instance ids (sorted), after checking they can be chosen among."""
    if len(runs) < 2:
        raise UserError(f"cross-fitting chooses among runs: got {len(runs)}, need at least two "
                        "(e.g. `recsys eval --fusion-alpha 3 --fusion-alpha 5 ...`)")  # fmt: skip
    tasks = sorted({r["task"] for r in runs})
    if len(tasks) > 1:
        raise UserError(f"runs of different tasks {tasks}: cross-fit one task at a time")
    repeated = [n for n, c in Counter(variant_names(runs)).items() if c > 1]
    if repeated:
        raise UserError(f"two runs are both called {repeated[0]!r}: pass each variant once")
    ids = [set(_rows(r)) for r in runs]
    if not ids[0]:
        raise UserError("results without per-instance rows; re-run `recsys eval` to get them")
    if any(s != ids[0] for s in ids[1:]):
        raise UserError("the runs measured different instances; cross-fitting needs the same "
                        "instances in every run (same --users, --limit, --seed)")  # fmt: skip
    if metric not in METRICS:
        raise UserError(f"unknown metric {metric!r}; use one of {', '.join(METRICS)}")
    return sorted(ids[0])


def cross_fit(
    runs: Sequence[dict[str, Any]], *, folds: int = 5, metric: str = "mrr", seed: int = 7
) -> CrossFit:
    """The combined run of the module doc."""
    ids = check_runs(runs, metric)
    tables = [_rows(r) for r in runs]
    users = {i: str(tables[0][i].get("user") or i) for i in ids}
    if not 2 <= folds <= min(MAX_FOLDS, len(set(users.values()))):
        raise UserError(f"--folds must be between 2 and min({MAX_FOLDS}, the number of users = "
                        f"{len(set(users.values()))}), got {folds}")  # fmt: skip
    fold_of = user_folds(list(users.values()), folds, seed)
    fold = np.array([fold_of[users[i]] for i in ids])
    values = np.array([[t[i][metric] for i in ids] for t in tables], dtype=float)  # [R, n]
    chosen = [int(values[:, fold != k].mean(axis=1).argmax()) for k in range(folds)]
    rows = [dict(tables[chosen[fold[n]]][i]) for n, i in enumerate(ids)]
    variants = variant_names(runs)
    names = [variants[c] for c in chosen]
    metrics = summarise(rows, seed)
    combined = {
        "task": runs[0]["task"],
        "ranker": f"crossfit({folds} folds, {metric})",
        "model": ", ".join(dict.fromkeys(str(runs[c].get("model", "")) for c in chosen)),
        "n": len(rows),
        "metrics": metrics,
        "info": {**runs[0].get("info", {}), "crossfit": {
            "folds": folds, "metric": metric, "seed": seed, "chosen_per_fold": names,
            "candidates": variants}},
        "instances": rows,
    }  # fmt: skip
    in_sample = {n: float(v.mean()) for n, v in zip(variants, values, strict=True)}
    return CrossFit(combined, names, in_sample)
