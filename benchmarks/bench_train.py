"""Training throughput of the hybrid ranker (episodes/s of `SupervisedTrainer.train_step`)
on the default model, with 20-candidate, 20-history episodes on random CF vectors (the
cost does not depend on the data). Writes JSON + a markdown table.

    python benchmarks/bench_train.py --steps 6 --threads 2
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
from one_row import write_one_row  # benchmarks/ is on sys.path when a script runs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/train"))
    args = parser.parse_args()

    import torch

    torch.set_num_threads(args.threads)
    from ranking.hybrid import Hybrid, HybridConfig
    from ranking.loading import _load_transformers, resolve_model
    from ranking.rl.episodes import Episode
    from ranking.rl.supervised import SupervisedConfig, SupervisedTrainer
    from ranking.types import Candidate, RankRequest

    base = _load_transformers(resolve_model("default"), args.device)
    items = [str(i) for i in range(1000)]
    rng = np.random.default_rng(0)
    vectors = rng.normal(size=(len(items), 65)).astype(np.float32)
    hybrid = Hybrid(base.model, base.tokenizer, items, vectors,
                    HybridConfig(base="default", inject_layer=22, vector_dim=65))  # fmt: skip
    episodes = []
    for _ in range(64):
        ids = [items[i] for i in rng.choice(len(items), 40, replace=False)]
        req = RankRequest(task="rec-movie", candidates=tuple(Candidate(i, i) for i in ids[:20]),
                          history=tuple(ids[20:]), history_ids=tuple(ids[20:]))  # fmt: skip
        episodes.append(Episode(request=req, ground_truth=ids[0], user="u"))
    cfg = SupervisedConfig(supervised_steps=args.steps + 1, rl_steps=0, batch_size=args.batch_size)
    with tempfile.TemporaryDirectory() as tmp:
        trainer = SupervisedTrainer(base.model, hybrid, episodes, episodes[:8], cfg, Path(tmp))
        trainer.train_step(0)  # warm-up
        rates, walls = [], []
        for step in range(1, args.steps + 1):
            t0 = time.perf_counter()
            rates.append(trainer.train_step(step)["episodes_per_s"])
            walls.append(time.perf_counter() - t0)
    result = {"device": args.device, "threads": args.threads, "batch_size": args.batch_size,
              "steps": args.steps, "episodes_per_s_median": float(np.median(rates)),
              "episodes_per_s_min": float(min(rates)), "episodes_per_s_max": float(max(rates)),
              "step_wall_s_median": float(np.median(walls))}  # fmt: skip
    write_one_row(
        args.out,
        result,
        ["device", "threads", "batch", "episodes/s (median, min-max)", "step wall s"],
        [args.device, str(args.threads), str(args.batch_size),
         f"{result['episodes_per_s_median']:.2f} ({result['episodes_per_s_min']:.2f}-"
         f"{result['episodes_per_s_max']:.2f})", f"{result['step_wall_s_median']:.2f}"],
    )  # fmt: skip


if __name__ == "__main__":
    main()
