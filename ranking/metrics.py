"""Ranking metrics for one ranked list and one (or graded) ground truth.

All functions take `order` (ids, best first) and return floats in [0, 1].
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence


def reciprocal_rank(order: Sequence[str], target: str) -> float:
    """1 / (1-based position of target); 0 when absent."""
    try:
        return 1.0 / (list(order).index(target) + 1)
    except ValueError:
        return 0.0


def hit_at_k(order: Sequence[str], target: str, k: int) -> float:
    return 1.0 if target in list(order)[:k] else 0.0


def ndcg_at_k(
    order: Sequence[str],
    relevance: Mapping[str, float] | str,
    k: int,
    *,
    linear_gain: bool = False,
) -> float:
    """NDCG@k with gains (2^rel - 1) / log2(rank + 1) (Järvelin & Kekäläinen 2002).

    `relevance` is a map id -> graded relevance, or a single relevant id (binary).
    `linear_gain` uses rel / log2(rank + 1) instead, as trec_eval's ndcg_cut does (the
    TREC DL convention); both agree on binary relevance."""
    rel = {relevance: 1.0} if isinstance(relevance, str) else dict(relevance)

    def gain(r: float) -> float:
        return r if linear_gain else 2**r - 1

    dcg = sum(gain(rel.get(doc, 0.0)) / math.log2(i + 2) for i, doc in enumerate(list(order)[:k]))
    ideal = sorted(rel.values(), reverse=True)[:k]
    idcg = sum(gain(r) / math.log2(i + 2) for i, r in enumerate(ideal))
    return dcg / idcg if idcg > 0 else 0.0


def expected_random_mrr(n: int) -> float:
    """MRR of a uniformly random order of n candidates with one relevant: H_n / n."""
    return sum(1.0 / i for i in range(1, n + 1)) / n
