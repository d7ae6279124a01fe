"""Is the combiner the bottleneck? Per-request combinations of a trained LM's ranking and
LambdaMART's scores on the held-out users, each weight cross-fitted over folds of users.
The plan, fixed before any number existed: docs/results/combiner/README.md.

    RECSYS_TORCH_THREADS=2 python benchmarks/combiner_probe.py --task rec-movie \
        --model models/hybrid-rec-movie-dagger \
        --served docs/results/heldout/sweep-rldagrr-heldout-rec-movie.json \
        --served-ranker 'incremental+fusion@5'

writes benchmarks/results/combiner-TASK.{json,md} and, per combiner, a results file in the
`recsys eval --out` layout (docs/results/combiner/TASK-C*.json) for `recsys eval-diff`.

Combiners (per candidate score, ranked descending, ties by LambdaMART):
  C0  LambdaMART alone (a check: must equal the eval's LambdaMART on every user);
  C1  z(LambdaMART) + w z(keep), keep = 1 - position / (n - 1) in the LM's elimination order;
  C2  as C1 with w_hi where the LM is confident at the top (its last step's probability at
      or above the median of the other folds' requests) and w_lo elsewhere.
"""

from __future__ import annotations

import argparse
import itertools
import json
from pathlib import Path

import numpy as np
from eval_files import cell, paired, rr_by_instance, run_of  # benchmarks/ is on sys.path
from heldout import SEED, heldout_with_lambdamart
from one_row import write_rows

from ranking.fusion import zscores

GRID = (0.0, 0.1, 0.2, 0.3, 0.5, 0.75, 1.0, 1.5, 2.0)
FOLDS = 5


def reciprocal_rank(score: np.ndarray, ltr: np.ndarray, target: int) -> float:
    """1 / rank of `target` by descending score, ties broken by LambdaMART, then index."""
    order = np.lexsort((np.arange(len(score)), -ltr, -score))
    return 1.0 / (int(np.where(order == target)[0][0]) + 1)


def collect(task: str, model: str) -> list[dict]:
    """Per held-out instance: LambdaMART scores, the LM's keep shares, its last step's
    probability, the target's index, user and cold flag."""
    from recsys import runtime
    from recsys.eval.harness import COLD_START_MAX, target_counts
    from recsys.eval.stacked import lm_columns

    taskset, scorer = heldout_with_lambdamart(task)
    engine = runtime.load_ranker(model=model, fusion_alpha=0.0)
    requests = [i.to_request("incremental", fusion_alpha=0.0) for i in taskset.instances]
    results = engine.rank_batch(requests, progress=True)
    counts = target_counts(taskset) or {}
    out = []
    for inst, res in zip(taskset.instances, results, strict=True):
        ids = inst.ids
        out.append({
            "id": inst.id, "user": str(inst.user_id),
            "cold": counts.get(inst.target, 0) < COLD_START_MAX,
            "ltr": np.asarray(scorer.scores(inst), dtype=float),
            "keep": lm_columns(res, ids)[:, 0],
            "p_last": float(res.steps[-1].prob or 0.0),
            "target": ids.index(inst.target),
        })  # fmt: skip
    return out


def rr_c1(rows: list[dict], w: float) -> np.ndarray:
    return np.array([
        reciprocal_rank(zscores(r["ltr"]) + w * zscores(r["keep"]), r["ltr"], r["target"])
        for r in rows
    ])  # fmt: skip


def rr_c2(rows: list[dict], w_hi: float, w_lo: float, cut: float) -> np.ndarray:
    return np.array([
        reciprocal_rank(zscores(r["ltr"]) + (w_hi if r["p_last"] >= cut else w_lo)
                        * zscores(r["keep"]), r["ltr"], r["target"])
        for r in rows
    ])  # fmt: skip


def crossfit(rows: list[dict]) -> dict[str, object]:
    """C1 and C2 per fold, each chosen on the other folds (module doc)."""
    from recsys.eval.crossfit import user_folds

    folds = user_folds([r["user"] for r in rows], FOLDS, SEED)
    fold = np.array([folds[r["user"]] for r in rows])
    c1 = {w: rr_c1(rows, w) for w in GRID}
    out_c1, out_c2 = np.zeros(len(rows)), np.zeros(len(rows))
    chosen: dict[str, list] = {"C1": [], "C2": []}
    for k in range(FOLDS):
        train, test = fold != k, fold == k
        w1 = max(GRID, key=lambda w: (c1[w][train].mean(), -w))
        out_c1[test], _ = c1[w1][test], chosen["C1"].append(w1)
        cut = float(np.median([r["p_last"] for r, t in zip(rows, train, strict=True) if t]))
        table = {(a, b): rr_c2(rows, a, b, cut) for a, b in itertools.product(GRID, GRID)}
        best = max(table, key=lambda ab: (table[ab][train].mean(), -ab[0] - ab[1]))
        out_c2[test] = table[best][test]
        chosen["C2"].append([*best, round(cut, 4)])
    return {"C1": out_c1, "C2": out_c2, "chosen": chosen,
            "in_sample_C1": {str(w): float(v.mean()) for w, v in c1.items()}}  # fmt: skip


def as_run(task: str, name: str, model: str, rows: list[dict], rr: np.ndarray) -> dict:
    """A run in the `recsys eval --out` layout (the MRR column only)."""
    inst = [{"id": r["id"], "user": r["user"], "cold": r["cold"], "mrr": float(v)}
            for r, v in zip(rows, rr, strict=True)]  # fmt: skip
    return {"task": task, "ranker": name, "model": model, "n": len(inst),
            "metrics": {"mrr": {"mean": float(rr.mean())}}, "instances": inst}  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--task", required=True)
    parser.add_argument("--model", required=True)
    parser.add_argument("--served", type=Path, required=True, help="the model served, eval JSON")
    parser.add_argument("--served-ranker", default=None, help="its run's name (in a sweep)")
    parser.add_argument("--ltr", type=Path, default=Path("docs/results/portable/lambdamart.json"))
    parser.add_argument("--out-dir", type=Path, default=Path("docs/results/combiner"))
    args = parser.parse_args()

    rows = collect(args.task, args.model)
    c0 = np.array([reciprocal_rank(r["ltr"], r["ltr"], r["target"]) for r in rows])
    ids = [r["id"] for r in rows]

    def file_rr(path: Path, ranker: str | None) -> np.ndarray:
        by_id = rr_by_instance(run_of(path, args.task, ranker))
        return np.array([by_id[i] for i in ids])

    ltr_file = file_rr(args.ltr, "lambdamart")
    # results files keep 6 decimals
    mismatch = int((np.abs(ltr_file - c0) > 1e-5).sum())
    served = file_rr(args.served, args.served_ranker)
    lm = np.array([reciprocal_rank(r["keep"], r["ltr"], r["target"]) for r in rows])
    fit = crossfit(rows)
    args.out_dir.mkdir(parents=True, exist_ok=True)
    for name in ("C1", "C2"):
        run = as_run(args.task, f"combiner-{name}", args.model, rows, fit[name])
        (args.out_dir / f"{args.task}-{name}.json").write_text(json.dumps({"runs": [run]}) + "\n")
    header = ["task", "ranker", "n", "MRR x 100", "- LambdaMART [95% CI]", "- served [95% CI]"]
    table = [
        [args.task, name, str(len(rows)), f"{100 * rr.mean():.2f}", cell(paired(rr, c0)),
         cell(paired(rr, served))]
        for name, rr in (("C0 LambdaMART (probe)", c0), ("LM alone", lm),
                         ("served (step fusion, card weight)", served),
                         ("C1 cross-fitted", fit["C1"]), ("C2 cross-fitted", fit["C2"]))
    ]  # fmt: skip
    result = {"task": args.task, "model": args.model, "n": len(rows),
              "c0_mismatches_vs_eval": mismatch, "chosen": fit["chosen"],
              "in_sample_C1": fit["in_sample_C1"], "served_file": str(args.served),
              "rows": [dict(zip(header, row, strict=True)) for row in table]}  # fmt: skip
    write_rows(Path(f"benchmarks/results/combiner-{args.task}"), result, header, table)
    print("C0 mismatches against the eval's LambdaMART:", mismatch, "chosen:", fit["chosen"])


if __name__ == "__main__":
    main()
