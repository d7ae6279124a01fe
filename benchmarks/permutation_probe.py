"""Does a trained LM depend on the order of its candidates, and does pooling over orders help?
The plan, fixed before any number existed: docs/results/permutation/README.md.

    RECSYS_TORCH_THREADS=2 python benchmarks/permutation_probe.py --task rec-movie \
        --model models/hybrid-rec-movie-dagger

writes benchmarks/results/permutation-TASK.{json,md}.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
from pathlib import Path

import numpy as np
from combiner_probe import FOLDS, GRID, reciprocal_rank  # benchmarks/ is on sys.path
from eval_files import cell, paired
from heldout import SEED, heldout_with_lambdamart
from one_row import write_rows

from ranking.fusion import zscores

ORDERS = 4


def shuffled(inst, k: int):
    """`inst` with its candidates in order k (0: as the eval lists them)."""
    if k == 0:
        return inst
    digest = hashlib.sha256(f"{inst.id}:{k}".encode()).digest()
    rng = np.random.default_rng(int.from_bytes(digest[:8], "little"))
    perm = rng.permutation(len(inst.candidates))
    return dataclasses.replace(inst, candidates=tuple(inst.candidates[i] for i in perm))


def collect(task: str, model: str) -> list[dict]:
    """Per held-out instance: LambdaMART scores and the LM's keep share under each order,
    all in the eval's candidate order."""
    from recsys import runtime
    from recsys.eval.stacked import lm_columns

    taskset, scorer = heldout_with_lambdamart(task)
    engine = runtime.load_ranker(model=model, fusion_alpha=0.0)
    keeps = []
    for k in range(ORDERS):
        requests = [shuffled(i, k).to_request("incremental", fusion_alpha=0.0)
                    for i in taskset.instances]  # fmt: skip
        results = engine.rank_batch(requests, progress=True)
        keeps.append([lm_columns(r, i.ids)[:, 0]
                      for r, i in zip(results, taskset.instances, strict=True)])  # fmt: skip
    return [
        {"user": str(inst.user_id), "ltr": np.asarray(scorer.scores(inst), dtype=float),
         "keep": np.stack([keeps[k][n] for k in range(ORDERS)]),
         "target": inst.ids.index(inst.target)}
        for n, inst in enumerate(taskset.instances)
    ]  # fmt: skip


def rr_of(rows: list[dict], keep_of) -> np.ndarray:
    return np.array([reciprocal_rank(keep_of(r), r["ltr"], r["target"]) for r in rows])


def c1_crossfit(rows: list[dict], keep_of) -> tuple[np.ndarray, list[float]]:
    """z(LambdaMART) + w z(keep), w chosen per fold of users on the other folds."""
    from recsys.eval.crossfit import user_folds

    folds = user_folds([r["user"] for r in rows], FOLDS, SEED)
    fold = np.array([folds[r["user"]] for r in rows])
    table = {w: rr_of(rows, lambda r, w=w: zscores(r["ltr"]) + w * zscores(keep_of(r)))
             for w in GRID}  # fmt: skip
    out, chosen = np.zeros(len(rows)), []
    for k in range(FOLDS):
        w = max(GRID, key=lambda w: (table[w][fold != k].mean(), -w))
        out[fold == k] = table[w][fold == k]
        chosen.append(w)
    return out, chosen


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--task", required=True)
    parser.add_argument("--model", required=True)
    args = parser.parse_args()

    rows = collect(args.task, args.model)
    per_order = [rr_of(rows, lambda r, k=k: r["keep"][k]) for k in range(ORDERS)]
    pooled = rr_of(rows, lambda r: r["keep"].mean(axis=0))
    corr = np.corrcoef(np.stack(per_order))[np.triu_indices(ORDERS, 1)]
    c1_single, w_single = c1_crossfit(rows, lambda r: r["keep"][0])
    c1_pooled, w_pooled = c1_crossfit(rows, lambda r: r["keep"].mean(axis=0))
    ltr = rr_of(rows, lambda r: r["ltr"])
    header = ["task", "ranking", "n", "MRR x 100", "- pi0 / its single-order twin [95% CI]"]
    table = [[args.task, f"LM alone, order {k}", str(len(rows)), f"{100 * rr.mean():.2f}",
              cell(paired(rr, per_order[0])) if k else ""]
             for k, rr in enumerate(per_order)]  # fmt: skip
    table += [
        [args.task, f"LM alone, pooled over {ORDERS} orders", str(len(rows)),
         f"{100 * pooled.mean():.2f}", cell(paired(pooled, per_order[0]))],
        [args.task, "LambdaMART (seed 7)", str(len(rows)), f"{100 * ltr.mean():.2f}", ""],
        [args.task, "C1 with order 0", str(len(rows)), f"{100 * c1_single.mean():.2f}",
         cell(paired(c1_single, ltr)) + " vs LambdaMART"],
        [args.task, "C1 pooled", str(len(rows)), f"{100 * c1_pooled.mean():.2f}",
         cell(paired(c1_pooled, c1_single))],
    ]  # fmt: skip
    result = {"task": args.task, "model": args.model, "n": len(rows), "orders": ORDERS,
              "rr_correlation_between_orders": [round(float(c), 4) for c in corr],
              "c1_chosen": {"order0": w_single, "pooled": w_pooled},
              "rows": [dict(zip(header, row, strict=True)) for row in table]}  # fmt: skip
    write_rows(Path(f"benchmarks/results/permutation-{args.task}"), result, header, table)
    print("RR correlation between orders:", np.round(corr, 3))


if __name__ == "__main__":
    main()
