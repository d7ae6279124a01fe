"""A synthetic ranking task with a learnable rule, for tests and benchmarks of the trainer.

The chosen item is always the one listed first (label A); the other candidates' texts are
random word pairs; scores decrease down the list; the teacher order is a random order of
the negatives with the ground truth last. A tiny model learns the rule in a few steps, so
"training raises the validation reward" is checkable in seconds.
"""

from __future__ import annotations

import random

from ranking.rl.episodes import Episode
from ranking.types import Candidate, RankRequest

WORDS = ["red", "blue", "green", "cat", "dog", "tree", "lamp", "road", "fish", "moon"]


def rule_episodes(n: int, seed: int, k: int = 4) -> list[Episode]:
    """`n` episodes of `k` candidates each, seeded."""
    rng = random.Random(seed)
    out = []
    for u in range(n):
        cands = tuple(
            Candidate(str(i), f"{rng.choice(WORDS)} {rng.choice(WORDS)}", score=float(k - i))
            for i in range(k)
        )
        negatives = [str(i) for i in range(1, k)]
        rng.shuffle(negatives)
        out.append(
            Episode(
                RankRequest(task="rec-movie", history=("Heat (1995)",), candidates=cands),
                ground_truth="0",
                user=f"s{seed}-u{u}",
                teacher_order=(*negatives, "0"),
            )
        )
    return out
