"""Probe behind docs/training.md "Ensembles at serving time" (seed 7, training users only).

python benchmarks/panel_probe.py rank TASK MODEL N K OUT.pkl [USERS]
    rank the first N training users' instances (N = 0: all; USERS = heldout: the held-out
    users', for a weight chosen on training users) with MODEL alone and fused
    with LambdaMART at alpha 10, once per candidate order: the task's order, then K - 1
    seeded shuffles; pickles LambdaMART's scores and every ranking
python benchmarks/panel_probe.py compare OUT.pkl [OTHER.pkl ...]
    MRR x 100 and paired bootstrap intervals against LambdaMART: each order, the Borda
    count of the orders, and z(LambdaMART) + b z(mean Borda of each file's LM) for a grid
    of weights (the files must rank the same instances)
python benchmarks/panel_probe.py weights W1,W2,... OUT.pkl [OTHER.pkl ...]
    the same static panel at the given weights only (one per file), against LambdaMART
"""

import dataclasses
import itertools
import pickle
import sys
from pathlib import Path

import numpy as np

from ranking.engine import load_ranker
from ranking.fusion import zscores
from ranking.metrics import reciprocal_rank
from recsys.eval import tasks
from recsys.eval.baselines import scored_candidates
from recsys.eval.rankers import make_baseline
from recsys.stats import paired_difference

SEED, ALPHA = 7, 10.0


def rank(task: str, model: str, n: int, k: int, out: str, users: str = "train") -> None:
    ts = tasks.for_users(
        tasks.build_task(task, tasks.default_data(task, Path("../shared/data")), SEED),
        users,
        SEED,
    ).limited(n or None, SEED)
    signal = make_baseline("lambdamart", seed=SEED)
    signal.prepare(ts)
    insts = [
        dataclasses.replace(i, candidates=scored_candidates(i, signal.scores(i)))
        for i in ts.instances
    ]
    ranker = load_ranker(model, device="cpu")
    rows = [
        {
            "id": i.id,
            "target": i.target,
            "ids": i.ids,
            "score": [c.score for c in i.candidates],
            "alone": [],
            "served": [],
        }
        for i in insts
    ]
    for shuffle in range(k):
        rng = np.random.default_rng(1000 + shuffle)
        orders = [
            np.arange(len(i.candidates)) if shuffle == 0 else rng.permutation(len(i.candidates))
            for i in insts
        ]
        reqs = [
            dataclasses.replace(i, candidates=tuple(i.candidates[j] for j in o)).to_request()
            for i, o in zip(insts, orders, strict=True)
        ]
        for key, alpha in (("alone", 0.0), ("served", ALPHA)):
            res = ranker.rank_batch([dataclasses.replace(r, fusion_alpha=alpha) for r in reqs])
            for row, r in zip(rows, res, strict=True):
                row[key].append(r.order)
        print(f"order {shuffle + 1}/{k} done", flush=True)
    Path(out).write_bytes(pickle.dumps(rows))


def borda(orders: list[list[str]], ids: list[str]) -> np.ndarray:
    """Mean of (n - position) over the orders, per candidate in `ids` order."""
    pos = [{c: j for j, c in enumerate(o)} for o in orders]
    return np.array([np.mean([len(ids) - p[c] for p in pos]) for c in ids])


def compare(files: list[str], fixed: tuple[float, ...] | None = None) -> None:
    runs = [pickle.loads(Path(f).read_bytes()) for f in files]
    base_rows = runs[0]
    assert all([r["id"] for r in run] == [r["id"] for r in base_rows] for run in runs)

    def by(ids, s):
        return [ids[j] for j in np.argsort(-np.asarray(s), kind="stable")]

    def rr(rankings):
        return np.array(
            [reciprocal_rank(o, r["target"]) for o, r in zip(rankings, base_rows, strict=True)]
        )

    base = rr([by(r["ids"], r["score"]) for r in base_rows])

    def show(label, v):
        d = paired_difference(v, base, n_boot=2000, seed=0)
        print(
            f"{label:34s} {100 * v.mean():6.2f}  vs LambdaMART {100 * d.mean:+5.2f} "
            f"[{100 * d.low:+5.2f}, {100 * d.high:+5.2f}]"
        )

    show("LambdaMART", base)
    for f, run in [] if fixed else zip(files, runs, strict=True):
        for key in ("alone", "served"):
            for j in range(len(run[0][key])):
                show(f"{Path(f).stem} {key} order {j}", rr([r[key][j] for r in run]))
            tie = [1e-6 * zscores(r["score"]) for r in base_rows]
            show(
                f"{Path(f).stem} {key} Borda",
                rr(
                    [
                        by(r["ids"], borda(r[key], r["ids"]) + t)
                        for r, t in zip(run, tie, strict=True)
                    ]
                ),
            )
    grid = (0.0, 0.25, 0.5, 0.75, 1.0)
    for weights in [fixed] if fixed else itertools.product(grid, repeat=len(runs)):
        s = [
            zscores(r["score"])
            + sum(
                w * zscores(borda(run[j]["alone"], r["ids"]))
                for w, run in zip(weights, runs, strict=True)
            )
            for j, r in enumerate(base_rows)
        ]
        show(
            f"static weights {weights}",
            rr([by(r["ids"], x) for r, x in zip(base_rows, s, strict=True)]),
        )


if __name__ == "__main__":
    if sys.argv[1] == "rank":
        rank(sys.argv[2], sys.argv[3], int(sys.argv[4]), int(sys.argv[5]), *sys.argv[6:8])
    elif sys.argv[1] == "weights":
        compare(sys.argv[3:], tuple(float(w) for w in sys.argv[2].split(",")))
    else:
        compare(sys.argv[2:])
