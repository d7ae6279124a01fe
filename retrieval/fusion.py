"""Fuse several ranked candidate lists (CF, text embeddings, popularity, ...) into one.

Default: weighted reciprocal rank fusion (Cormack, Clarke & Buettcher, SIGIR 2009),

    fused(i) = sum over sources s that returned i of  w_s / (rrf_k + rank_s(i)),   rank from 1,

which needs no score calibration between sources. `method="score"` instead sums the
weighted min-max normalised source scores. Either way each fused candidate keeps its rank and
raw score in every source, for fallback ordering and for the ranker's request signals.

Items in `exclude` (e.g. the user's seen items) never appear. Ties are broken by the best
single-source rank, then by id, so the output is deterministic.
"""

from __future__ import annotations

from collections.abc import Collection, Hashable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Literal

from retrieval.errors import RetrievalError

FusionMethod = Literal["rrf", "score"]
RRF_K = 60

# a source's output: (item, score) pairs, best first
Ranked = Sequence[tuple[Hashable, float]]


@dataclass
class FusedCandidate:
    item: Hashable
    score: float
    ranks: dict[str, int] = field(default_factory=dict)  # 1-based rank in each source
    scores: dict[str, float] = field(default_factory=dict)  # raw score in each source


def fuse(
    sources: Mapping[str, Ranked],
    k: int,
    *,
    weights: Mapping[str, float] | None = None,
    method: FusionMethod = "rrf",
    rrf_k: int = RRF_K,
    exclude: Collection[Hashable] = (),
) -> list[FusedCandidate]:
    """The top-k fused candidates, best first. Sources missing from `weights` get weight 1."""
    if k < 1:
        raise RetrievalError(f"k must be >= 1, got {k}")
    if method not in ("rrf", "score"):
        raise RetrievalError(f"unknown fusion method {method!r}; use 'rrf' or 'score'")
    weights = dict(weights or {})
    if any(w < 0 for w in weights.values()):
        raise RetrievalError(f"fusion weights must be >= 0, got {weights}")
    excluded = set(exclude)
    fused: dict[Hashable, FusedCandidate] = {}
    for name, ranked in sources.items():
        weight = weights.get(name, 1.0)
        contributions = _contributions(ranked, method, rrf_k)
        for rank, ((item, raw), part) in enumerate(zip(ranked, contributions, strict=True), 1):
            if item in excluded:
                continue
            cand = fused.setdefault(item, FusedCandidate(item, 0.0))
            if name in cand.ranks:  # a source listing an item twice: keep its best rank
                continue
            cand.ranks[name] = rank
            cand.scores[name] = float(raw)
            cand.score += weight * part
    ordered = sorted(fused.values(), key=lambda c: (-c.score, min(c.ranks.values()), str(c.item)))
    return ordered[:k]


def _contributions(ranked: Ranked, method: str, rrf_k: int) -> list[float]:
    if method == "rrf":
        return [1.0 / (rrf_k + rank) for rank in range(1, len(ranked) + 1)]
    raw = [float(s) for _, s in ranked]
    if not raw:
        return []
    lo, hi = min(raw), max(raw)
    return [1.0 if hi == lo else (s - lo) / (hi - lo) for s in raw]
