"""Probes behind docs/training.md "Honest item vectors" (seed 7).

python benchmarks/residual_probe.py [--task T] [--positions N] honest-copy MODEL OUT
    copy a hybrid model folder with its vectors replaced by the honest table
    (`train-ranker --honest-vectors`: LightFM on the log without each training user's
    last N items, rotated into the served coordinates)
python benchmarks/residual_probe.py [--task T] [--positions N] val [--first K]
        [--alphas A,B,...] MODEL [MODEL...]
    the served ranking's MRR (fused at each weight A; default 10 and 0, the LM alone) on
    the residual validation episodes (validation users' last N items; the first K: the
    ones a training run's `val_mrr_served` uses, K = 200), through the engine; every model
    after the first also paired against the first (bootstrap 95% interval)

T: rec-movie by default; N: the run's --residual-positions, 10 by default.
"""

import argparse
import shutil
from dataclasses import replace
from pathlib import Path

import numpy as np

from ranking.engine import load_ranker
from ranking.metrics import reciprocal_rank
from recsys.hybrid_residual import build_residual_episodes
from recsys.hybrid_training import HybridTrainOptions
from recsys.stats import paired_difference

DATA = Path("../shared/data")


def episodes(task: str, positions: int, honest: bool):
    opts = HybridTrainOptions(task=task, residual_alpha=10, honest_vectors=honest,
                              residual_positions=positions)  # fmt: skip
    return build_residual_episodes(task, DATA, opts)


def honest_copy(task: str, positions: int, model: str, out: str) -> None:
    table = episodes(task, positions, honest=True).train_vectors
    shutil.rmtree(out, ignore_errors=True)
    shutil.copytree(model, out)
    assert np.load(Path(out) / "vectors.npy").shape == table.shape
    np.save(Path(out) / "vectors.npy", table)
    print(f"wrote {out}")


def served_on_val(
    task: str, positions: int, models: list[str], first: int | None, alphas: list[float]
) -> None:
    """Each model's served MRR per weight; from the second model on, its paired difference
    (bootstrap 95% interval over the episodes) against the first, the control."""
    val = episodes(task, positions, honest=False).val[:first]
    control: dict[float, list[float]] = {}
    for model in models:
        ranker = load_ranker(model, device="cpu")
        for alpha in alphas:
            out = ranker.rank_batch([replace(e.request, fusion_alpha=alpha) for e in val])
            rr = [reciprocal_rank(r.order, e.ground_truth) for r, e in zip(out, val, strict=True)]
            line = f"{model}  alpha {alpha:g}: MRR {100 * np.mean(rr):.2f} on {len(val)} episodes"
            if alpha in control:
                d = paired_difference(np.multiply(rr, 100), np.multiply(control[alpha], 100))
                line += f", {d.mean:+.2f} [{d.low:+.2f}, {d.high:+.2f}] vs {models[0]}"
            control.setdefault(alpha, rr)
            print(line)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--task", default="rec-movie")
    parser.add_argument("--positions", type=int, default=10, help="the run's positions")
    sub = parser.add_subparsers(dest="command", required=True)
    copy = sub.add_parser("honest-copy")
    copy.add_argument("model")
    copy.add_argument("out")
    val = sub.add_parser("val")
    val.add_argument("--first", type=int, default=None)
    val.add_argument("--alphas", default="10,0", help="comma-separated fusion weights")
    val.add_argument("models", nargs="+")
    args = parser.parse_args()
    if args.command == "honest-copy":
        honest_copy(args.task, args.positions, args.model, args.out)
    else:
        alphas = [float(a) for a in args.alphas.split(",")]
        served_on_val(args.task, args.positions, args.models, args.first, alphas)


if __name__ == "__main__":
    main()
