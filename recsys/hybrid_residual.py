"""Episodes for training the LM for what is served: its steps fused with LambdaMART.

Served, the LM's step distributions get -alpha x z(LambdaMART score) added (ranking.fusion,
alpha 10), so LambdaMART decides every clear call and the LM only its close ones. A model
trained alone (`recsys.hybrid_training`) learns to rank everything, mostly what LambdaMART
already knows. `recsys train-ranker --residual-alpha A` trains the *fused* policy instead —
the same losses on log_softmax(LM logits - A x z(LambdaMART)) — so the gradient lands where
LambdaMART is wrong and close, as in boosting.

That needs LambdaMART scores on training episodes that are as honest as on the evaluated
ones: feature models fitted on a log that contains the target would score it from its own
interaction. So, for task T and seed S (the ones `recsys eval` uses):

* LambdaMART is fitted exactly as the served signal (`recsys.eval.ltr`, its own protocol);
* the *truncated log*: the training log without each non-held-out user's last
  `positions` items; its feature models score the episodes;
* episodes: those last `positions` items of each training user (at least `min_history`
  items before each), the 20 items before as history, negatives drawn as the evaluated
  instances' (uniform, or half from the CF top-50 for retrieval-candidate tasks) from the
  items the user never interacted with, shuffled; each candidate carries its LambdaMART
  score; the teacher eliminates in LambdaMART's reverse order, the truth last;
* validation users (the same share as `hybrid_training`'s): the same positions, never
  trained on.

No target of an episode reaches the feature models that score it; the evaluated targets and
the held-out users reach nothing here.

The LM's own item vectors are LightFM factors too. Fitted on the whole training log (what
the model serves with: a served request's target is never in it) they *have* seen every
episode's target, so in training the target's vector sits closer to the user's history than
it ever does when served — the LM learns to overrule LambdaMART on evidence that vanishes
at serving time. `--honest-vectors` ranks the episodes with the truncated log's LightFM
vectors instead, rotated into the served vectors' coordinates (`aligned`: the projector was
trained on those, and two fits' factors agree only up to a rotation). A rotation keeps every
inner product between the honest vectors, so the similarities the LM reads are the truncated
fit's, whatever the served ones are; an affine least-squares map would not (with as many
parameters as items it reproduces the served table, leak included). The exported model keeps
the served vectors.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import polars as pl

from recsys.errors import UserError
from recsys.hybrid_training import (
    VAL_FRACTION,
    EpisodeSet,
    HybridTrainOptions,
    cf_vectors,
    scored_episode,
    task_and_vectors,
)

if TYPE_CHECKING:
    from retrieval.features import FeatureModels


def build_residual_episodes(task: str, data_dir: Path, opts: HybridTrainOptions) -> EpisodeSet:
    """The module doc's episodes, with the LM's item vectors (as `build_episodes`)."""
    from recsys.eval.fit_cache import FitCache
    from recsys.eval.ltr import LambdaMARTBaseline, NegativesProtocol, fit_feature_models
    from recsys.eval.tasks import HELDOUT_FRACTION, HISTORY_LEN, rng_for, user_fold
    from retrieval.ltr_stage import draw_negatives

    taskset, _, item_ids, vectors = task_and_vectors(task, data_dir, opts)
    train, titles = taskset.train, taskset.catalogue
    assert train is not None and titles is not None
    cache = FitCache(opts.fit_cache_dir) if opts.fit_cache_dir is not None else None
    signal = LambdaMARTBaseline(seed=opts.seed, cache=cache)  # what `recsys eval` fuses with
    signal.fit(taskset)
    negatives = NegativesProtocol.of(taskset)
    users = dict(train.group_by("user_id", maintain_order=True).agg("item_id").iter_rows())
    folds = {u: user_fold(str(u), opts.seed) for u in users}
    scored = {u for u, f in folds.items() if f >= HELDOUT_FRACTION}
    models = fit_feature_models(truncated(train, scored, opts.residual_positions), taskset,
                                opts.seed)  # fmt: skip
    catalogue = np.array(sorted(titles))
    out_train, out_val = [], []
    for user in sorted(scored, key=str):
        items, is_val = users[user], folds[user] < HELDOUT_FRACTION + VAL_FRACTION
        first = len(items) - opts.residual_positions
        rng = rng_for(opts.seed, f"residual:{user}")
        pool = catalogue[~np.isin(catalogue, items)]
        if len(pool) < negatives.count:
            continue
        for t in range(max(first, opts.min_history), len(items)):
            history = items[max(0, t - HISTORY_LEN) : t]
            negs = draw_negatives(models, str(user), pool, rng, negatives.hard, negatives.count)
            ids = [items[t], *negs]
            ids = [ids[i] for i in rng.permutation(len(ids))]
            scores = signal.ranker.scores(models.features(str(user), history, ids))
            ep = scored_episode(task, str(user), t, items[t], history, ids, titles,
                                teacher_scores=scores, candidate_scores=scores)  # fmt: skip
            (out_val if is_val else out_train).append(ep)
    if not out_train:
        raise UserError(f"{task}: no residual episodes (users with > {opts.min_history} items?)")
    info = {"task": task, "train_episodes": len(out_train), "val_episodes": len(out_val),
            "episodes": f"residual: each training user's last {opts.residual_positions} items, "
            "LambdaMART scores from feature models fitted without them",
            "residual_alpha": opts.residual_alpha, "item_vectors": opts.vectors,
            "heldout_fraction": HELDOUT_FRACTION, "seed": opts.seed}  # fmt: skip
    honest = None
    if opts.honest_vectors:
        honest, info["honest_vectors"] = honest_vectors(models, item_ids, vectors)
    return EpisodeSet(out_train, out_val, item_ids, vectors, info, train_vectors=honest)


def honest_vectors(
    models: FeatureModels, item_ids: list[str], served: np.ndarray
) -> tuple[np.ndarray, dict[str, float]]:
    """The truncated log's CF vectors in the served vectors' coordinates (module doc), the
    served table's other columns (title components) as they are, and how alike the two fits
    are after the rotation (R^2 over the catalogue)."""
    if models.item_order != item_ids:
        raise ValueError("the truncated fit's catalogue differs from the served vectors'")
    own = cf_vectors(models)
    cf = own.shape[1]
    mapped = aligned(own, served[:, :cf])
    resid = ((mapped - served[:, :cf]) ** 2).sum()
    total = ((served[:, :cf] - served[:, :cf].mean(0)) ** 2).sum()
    out = np.column_stack([mapped, served[:, cf:]]).astype(np.float32)
    return out, {"r2": round(float(1 - resid / total), 4)}


def aligned(source: np.ndarray, target: np.ndarray) -> np.ndarray:
    """`source` under the rotation (orthogonal map) that brings it closest to `target` in
    least squares: orthogonal Procrustes, R = U V^T for U S V^T = SVD(source^T target)
    (Schoenemann 1966)."""
    u, _, vt = np.linalg.svd(source.astype(np.float64).T @ target.astype(np.float64))
    return (source.astype(np.float64) @ (u @ vt)).astype(np.float32)


def truncated(train: pl.DataFrame, users: set, positions: int) -> pl.DataFrame:
    """The log without the last `positions` rows of each user in `users` (time order within
    a user, as the task's log is)."""
    from_end = pl.int_range(pl.len()).reverse().over("user_id")
    drop = pl.col("user_id").is_in(list(users)) & (from_end < positions)
    return train.filter(~drop)
