"""LambdaMART stacked on the LM: the LM's elimination steps as features of a second
LambdaMART over the first one's score (`recsys eval --ranker lambdamart-lm --model M`).

Score fusion (`ranking.fusion`) adds the two signals with one global weight; a learned
stack can instead weigh the LM where it is informative (e.g. where LambdaMART is unsure).
Stacking needs training groups whose features look like the evaluated ones, and two
things would make them look better than they are:

* the LM trained on every prefix of its training users' sequences (`recsys train-ranker`),
  so on those users' groups its features are memorised answers. The stack trains only on
  the groups of users the LM never trained on: the held-out users (whose *evaluated*
  target x_T it never sees: their groups' target is x_{T-1}) and the LM's validation users
  (`STACK_FRACTION` of the seeded user hash).
* the first LambdaMART trained on every user's group, so its score on them is in-sample.
  The stack reads *out-of-fold* scores instead: the stacking users are split in
  `FOLDS` folds, and fold k is scored by a LambdaMART fitted on every group but fold k's
  (cross-fitting, Wolpert 1992 "Stacked generalization"). The evaluated instances are
  scored by the LambdaMART fitted on all groups, as the plain baseline is.

Features of the stack per candidate: the first LambdaMART's score z-scored within the
request (scale-free across the fold models), the LM's keep share 1 - position / (n - 1)
(1: the LM kept it to the end) and the log-probability the LM gave its elimination (0 for
the survivor). Every LM call ranks with fusion off: the LM alone.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from ranking.fusion import zscores
from ranking.types import RankResult
from recsys.eval.baselines import _RecBaseline
from recsys.eval.instances import HELDOUT_FRACTION, user_fold
from recsys.eval.ltr import LambdaMARTBaseline
from recsys.eval.tasks import Instance, TaskSet
from recsys.hybrid_training import VAL_FRACTION
from retrieval.features import FEATURE_NAMES
from retrieval.ltr import LambdaMART

STACK_FRACTION = HELDOUT_FRACTION + VAL_FRACTION
FOLDS = 2
STACK_FEATURES = ("lambdamart_z", "lm_keep", "lm_elim_logp")
# a small model (a few hundred groups, three columns), chosen by 5-fold cross-validation on
# rec-movie's stacking groups (their x_{T-1} targets; docs/RESULTS.md section 0)
STACK_PARAMS: dict[str, Any] = {
    "n_estimators": 60,
    "num_leaves": 4,
    "min_child_samples": 60,
    "learning_rate": 0.05,
}


def lm_columns(result: RankResult, ids: Sequence[str]) -> np.ndarray:
    """(n, 2) per candidate in `ids` order: keep share and log-prob of its elimination."""
    n = len(ids)
    position = {c: k for k, c in enumerate(result.order)}
    logp = {s.eliminated: math.log(max(s.prob, 1e-12)) for s in result.steps if s.prob}
    keep = [1.0 - position[c] / max(n - 1, 1) for c in ids]
    return np.column_stack([keep, [logp.get(c, 0.0) for c in ids]])


def lm_features(
    engine: Any, instances: Sequence[Instance], progress: bool = False
) -> list[np.ndarray]:
    """`lm_columns` of the LM ranking each instance alone (fusion off)."""
    requests = [i.to_request("incremental", fusion_alpha=0.0) for i in instances]
    results = engine.rank_batch(requests, progress=progress)
    return [lm_columns(r, i.ids) for r, i in zip(results, instances, strict=True)]


def stacking_indices(instances: Sequence[Instance], seed: int) -> list[int]:
    """Positions of the groups of users the LM never trained on (`STACK_FRACTION`)."""
    return [k for k, i in enumerate(instances) if user_fold(str(i.user_id), seed) < STACK_FRACTION]


def out_of_fold_z(
    labelled: Sequence[tuple[np.ndarray, np.ndarray]], stack: Sequence[int], seed: int
) -> list[np.ndarray]:
    """The first LambdaMART's z-scored scores on the groups `stack`, each from a model fitted
    on every group but its fold's (`FOLDS` folds of the stacking groups)."""
    fold = {k: n % FOLDS for n, k in enumerate(stack)}
    out: dict[int, np.ndarray] = {}
    for f in range(FOLDS):
        train = [g for k, g in enumerate(labelled) if fold.get(k) != f]
        model = LambdaMART.fit(train, FEATURE_NAMES, seed=seed)
        out.update({k: zscores(model.scores(labelled[k][0])) for k in stack if fold[k] == f})
    return [out[k] for k in stack]


class StackedLMRanker(_RecBaseline):
    """The stack of the module doc; `engine` is a `ranking.engine.Ranker` (the LM)."""

    name = "lambdamart-lm"

    def __init__(self, engine: Any, seed: int = 7, progress: bool = True) -> None:
        self.engine, self.seed, self.progress = engine, seed, progress
        self.model = f"lightgbm-lambdamart+{engine.model_id}"

    def fit(self, taskset: TaskSet) -> None:
        self.base = LambdaMARTBaseline(seed=self.seed)
        groups = self.base.fit_groups(taskset)
        stack = stacking_indices(groups.instances, self.seed)
        base_z = out_of_fold_z(groups.labelled, stack, self.seed)
        lm = lm_features(self.engine, [groups.instances[k] for k in stack], self.progress)
        rows = [
            (np.column_stack([z, f]), groups.labelled[k][1])
            for k, z, f in zip(stack, base_z, lm, strict=True)
        ]
        self.stack = LambdaMART.fit(rows, STACK_FEATURES, seed=self.seed, **STACK_PARAMS)
        self.stack_groups = len(rows)

    def scores(self, instance: Instance) -> np.ndarray:
        return self.scores_batch([instance])[0]

    def scores_batch(self, instances: Sequence[Instance]) -> list[np.ndarray]:
        lm = lm_features(self.engine, instances)
        return [
            self.stack.scores(np.column_stack([zscores(self.base.scores(inst)), f]))
            for inst, f in zip(instances, lm, strict=True)
        ]
