"""Training throughput of the hybrid ranker (episodes/s of `SupervisedTrainer.train_step`)
on the default model, with 20-candidate, 20-history episodes on random CF vectors (the
cost does not depend on the data): the trainer's forward over layers 22-29 on the memoised
lower stream (ranking.hybrid_split, the default) against all 30 layers, alternating steps
in one run. Writes JSON + a markdown table.

    python benchmarks/bench_train.py --steps 6 --threads 2
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
from one_row import write_rows  # benchmarks/ is on sys.path when a script runs


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
        split = trainer.split  # the frozen lower layers memoised (ranking.hybrid_split)
        trainer.train_step(0)  # warm-up (and the memo's one lower pass)
        rates: dict[str, list[float]] = {"split": [], "whole": []}
        walls: dict[str, list[float]] = {"split": [], "whole": []}
        for step in range(1, args.steps + 1):
            for path in ("split", "whole"):  # alternating, so load bursts hit both
                trainer.split = split if path == "split" else None
                t0 = time.perf_counter()
                rates[path].append(trainer.train_step(step)["episodes_per_s"])
                walls[path].append(time.perf_counter() - t0)
    result = {"device": args.device, "threads": args.threads, "batch_size": args.batch_size,
              "steps": args.steps}  # fmt: skip
    table = []
    for path, label in (("split", "layers 22-29 on the memoised stream"),
                        ("whole", "all 30 layers")):  # fmt: skip
        r = rates[path]
        result[path] = {"episodes_per_s_median": float(np.median(r)),
                        "episodes_per_s_min": float(min(r)), "episodes_per_s_max": float(max(r)),
                        "step_wall_s_median": float(np.median(walls[path]))}  # fmt: skip
        table.append([args.device, str(args.threads), str(args.batch_size), label,
                      f"{np.median(r):.2f} ({min(r):.2f}-{max(r):.2f})",
                      f"{np.median(walls[path]):.2f}"])  # fmt: skip
    result["speedup"] = (
        result["split"]["episodes_per_s_median"] / result["whole"]["episodes_per_s_median"]
    )
    write_rows(
        args.out,
        result,
        ["device", "threads", "batch", "forward", "episodes/s (median, min-max)", "step wall s"],
        table,
    )


if __name__ == "__main__":
    main()
