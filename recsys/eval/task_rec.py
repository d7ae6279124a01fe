"""rec-* tasks: next-item prediction from a user's sequence (docs/eval.md)."""

from __future__ import annotations

import dataclasses

import numpy as np
import polars as pl

from ranking.types import Candidate
from recsys import datasets
from recsys.errors import UserError
from recsys.eval.instances import (
    HISTORY_LEN,
    N_NEGATIVES,
    TIE_BREAKS,
    Instance,
    TaskSet,
    rng_for,
)

# ---------------------------------------------------------------- recommendation


def build_rec_tasks(
    data: datasets.Dataset,
    task: str,
    seed: int,
    *,
    history_len: int = HISTORY_LEN,
    n_negatives: int = N_NEGATIVES,
    tie_break: str = "file",
) -> TaskSet:
    """The paper's Rec protocol on one data set (see the module docstring).

    `tie_break` orders interactions with the same timestamp: "file" (file order; MovieLens
    u.data is randomly ordered, so this is an unbiased choice) or "item-id" (ascending
    numeric item id, which makes the highest id the target: it favours rarely rated
    items and lowers popularity-style baselines by ~6 MRR points on ml-100k)."""
    if tie_break not in TIE_BREAKS:
        raise UserError(f"unknown tie break {tie_break!r}; use one of {list(TIE_BREAKS)}")
    titles = data.titles()
    ordered = data.interactions.with_row_index("_order").filter(
        pl.col("item_id").is_in(list(titles))
    )
    if tie_break == "item-id":
        numeric = pl.col("item_id").cast(pl.Int64, strict=False)
        ordered = ordered.sort([numeric, "item_id"]).with_row_index("_rank")
        ordered = ordered.drop("_order").rename({"_rank": "_order"})
    ordered = ordered.sort(["user_id", "timestamp", "_order"])
    unknown = data.interactions.height - ordered.height
    per_user = ordered.group_by("user_id", maintain_order=True).agg("item_id")
    catalogue = np.array(sorted(titles))
    instances, skipped, targets = [], {"fewer than 21 interactions": 0}, []
    for user, items in per_user.iter_rows():
        if len(items) < history_len + 1:
            skipped["fewer than 21 interactions"] += 1
            continue
        target, history = items[-1], items[-history_len - 1 : -1]
        seen = np.isin(catalogue, items)
        pool = catalogue[~seen]
        if len(pool) < n_negatives:
            skipped["too few unseen items for negatives"] = (
                skipped.get("too few unseen items for negatives", 0) + 1
            )
            continue
        rng = rng_for(seed, user)
        negatives = rng.choice(pool, size=n_negatives, replace=False).tolist()
        ids = [target, *negatives]
        order = rng.permutation(len(ids))
        candidates = tuple(Candidate(id=ids[i], text=titles[ids[i]]) for i in order)
        instances.append(
            Instance(
                id=f"{task}:{user}",
                task=task,
                request_task=task,
                candidates=candidates,
                relevance={target: 1.0},
                history=tuple(titles[h] for h in history),
                history_ids=tuple(history),
                user_id=user,
            )
        )
        targets.append((user, target))
    train = _without_targets(ordered, targets)
    info = {
        "data": data.name,
        "seed": seed,
        "users": per_user.height,
        "interactions_unknown_item": unknown,
        "history_len": history_len,
        "negatives": n_negatives,
        "tie_break": tie_break,
    }
    genres = (
        dict(zip(data.items["item_id"], data.items["genres"].fill_null(""), strict=True))
        if "genres" in data.items.columns
        else None
    )
    return TaskSet(task, instances, skipped, info, train, catalogue=titles, genres=genres)


def with_retrieval_candidates(taskset: TaskSet, k: int = 20) -> TaskSet:
    """Replace each rec instance's random negatives by what production shows the ranker:
    the retrieval stage's top-k for the user (retrieval.generator.CandidateGenerator: CF +
    popularity, fused; items seen in training removed), in retrieval order with scores,
    trained on the same data as the baselines (every interaction except the targets).

    The target may be missing from the top-k; the instance then counts as a miss for
    every ranker, and `info["target_in_candidates"]` says how often it was there."""
    if taskset.train is None or taskset.catalogue is None:
        raise UserError(f"--candidates retrieval applies to rec tasks, not {taskset.name!r}")
    from retrieval.generator import CandidateGenerator, GeneratorConfig

    train = taskset.train
    generator = CandidateGenerator.build(
        train["user_id"].to_list(),
        train["item_id"].to_list(),
        train["timestamp"].cast(pl.Float64).to_list(),
        taskset.catalogue,
        config=GeneratorConfig(seed=int(taskset.info.get("seed", 7))),
    )
    instances, found = [], 0
    for inst in taskset.instances:
        retrieved = generator.candidates(inst.user_id or "", k)
        candidates = tuple(
            Candidate(id=str(c.item), text=taskset.catalogue.get(str(c.item), str(c.item)),
                      score=float(c.score))
            for c in retrieved
        )  # fmt: skip
        found += inst.target in {c.id for c in candidates}
        instances.append(dataclasses.replace(inst, candidates=candidates))
    info = {**taskset.info, "candidates": f"retrieval top-{k} (cf + popularity, rrf)",
            "target_in_candidates": found / max(1, len(instances))}  # fmt: skip
    return dataclasses.replace(taskset, instances=instances, info=info)


def _without_targets(ordered: pl.DataFrame, targets: list[tuple[str, str]]) -> pl.DataFrame:
    """Drop each evaluated user's last interaction (the target row itself, not other
    interactions with the same item)."""
    last = ordered.group_by("user_id", maintain_order=True).agg(pl.col("_order").last())
    evaluated = pl.DataFrame(
        {"user_id": [u for u, _ in targets]}, schema={"user_id": pl.String}
    ).join(last, on="user_id")
    return ordered.join(evaluated, on=["user_id", "_order"], how="anti").drop("_order")
