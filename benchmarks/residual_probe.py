"""Probes behind docs/training.md "Honest item vectors" (seed 7; rec-movie unless
`--task T` comes first).

python benchmarks/residual_probe.py honest-copy MODEL OUT
    copy a hybrid model folder with its vectors replaced by the honest table
    (`train-ranker --honest-vectors`: LightFM on the log without each training user's
    last 10 items, rotated into the served coordinates)
python benchmarks/residual_probe.py val MODEL [MODEL...]
    the served ranking's MRR (fused at alpha 10, and the LM alone) on the residual
    validation episodes (validation users' last 10 items), through the engine
"""

import shutil
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np

from ranking.engine import load_ranker
from ranking.metrics import reciprocal_rank
from recsys.hybrid_residual import build_residual_episodes
from recsys.hybrid_training import HybridTrainOptions

DATA = Path("../shared/data")
TASK = "rec-movie"
POSITIONS = 10  # the run's --residual-positions


def episodes(honest: bool):
    opts = HybridTrainOptions(task=TASK, residual_alpha=10, honest_vectors=honest,
                              residual_positions=POSITIONS)  # fmt: skip
    return build_residual_episodes(TASK, DATA, opts)


def honest_copy(model: str, out: str) -> None:
    table = episodes(honest=True).train_vectors
    shutil.rmtree(out, ignore_errors=True)
    shutil.copytree(model, out)
    assert np.load(Path(out) / "vectors.npy").shape == table.shape
    np.save(Path(out) / "vectors.npy", table)
    print(f"wrote {out}")


def served_on_val(
    models: list[str], first: int | None = None, alphas: tuple[float, ...] = (10.0, 0.0)
) -> None:
    val = episodes(honest=False).val[:first]
    for model in models:
        ranker = load_ranker(model, device="cpu")
        for alpha in alphas:
            out = ranker.rank_batch([replace(e.request, fusion_alpha=alpha) for e in val])
            rr = [reciprocal_rank(r.order, e.ground_truth) for r, e in zip(out, val, strict=True)]
            print(f"{model}  alpha {alpha:g}: MRR {100 * np.mean(rr):.2f} on {len(val)} episodes")


if __name__ == "__main__":
    while sys.argv[1].startswith("--"):  # --task T, --positions N (the run's)
        if sys.argv[1] == "--task":
            TASK = sys.argv[2]
        else:
            POSITIONS = int(sys.argv[2])
        del sys.argv[1:3]
    if sys.argv[1] == "honest-copy":
        honest_copy(sys.argv[2], sys.argv[3])
    else:
        args, first, alphas = sys.argv[2:], None, (10.0, 0.0)
        while args[0].startswith("--"):
            if args[0] == "--first":
                first = int(args[1])
            else:
                alphas = tuple(float(a) for a in args[1].split(","))
            args = args[2:]
        served_on_val(args, first, alphas)
