"""Effective sample size of whole-ranking IPS vs per-position IIPS on simulated traffic at
20 candidates: Plackett-Luce logging and target policies (the target a sharpened, shifted
version of the logging one, as a fine-tuned ranker is of its predecessor), position-based
clicks. Marginals of both policies by sampling (recsys.replay.slate.sampled_marginals).

    python benchmarks/slate_ess.py
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from one_row import write_one_row  # benchmarks/ is on sys.path when a script runs

from recsys.replay.slate import PlackettLuce, SlateData, sampled_marginals, slate_ess

N = K = 20
ROUNDS, DRAWS = 5_000, 20_000


def main() -> None:
    rng = np.random.default_rng(7)
    base = rng.normal(size=N)
    logging, target = PlackettLuce(base), PlackettLuce(2.0 * base + rng.normal(0, 0.5, N))
    m0, _ = sampled_marginals(logging.sample, N, K, DRAWS, seed=1)
    m1, _ = sampled_marginals(target.sample, N, K, DRAWS, seed=2)
    exam, rel = 1 / np.log2(np.arange(K) + 2), 1 / (1 + np.exp(-base))
    orders = [logging.sample(rng) for _ in range(ROUNDS)]
    rewards = np.array([[rng.random() < exam[k] * rel[j] for k, j in enumerate(o)]
                        for o in orders], dtype=float)  # fmt: skip
    pos = np.arange(K)
    iips = SlateData(rewards, np.maximum(np.array([m0[pos, o] for o in orders]), 1 / DRAWS),
                     np.array([m1[pos, o] for o in orders]))  # fmt: skip
    w = np.array([target.prob(o) / logging.prob(o) for o in orders])
    whole_ess = float(w.sum() ** 2 / (w**2).sum())
    result = {"rounds": ROUNDS, "candidates": N, "whole_ranking_ips_ess": whole_ess,
              "iips_ess_mean_over_positions": slate_ess(iips)}  # fmt: skip
    write_one_row(Path("benchmarks/results/slate_ess"), result,
                  ["rounds", "candidates", "ESS whole-ranking IPS", "ESS per-position IIPS"],
                  [str(ROUNDS), str(N), f"{whole_ess:.1f}", f"{slate_ess(iips):.0f}"])  # fmt: skip


if __name__ == "__main__":
    main()
