"""The baselines by name: `recsys eval --ranker NAME` and fusion signals build them here."""

from __future__ import annotations

from recsys.errors import UserError
from recsys.eval.baselines import (
    BM25Baseline,
    EnsembleBaseline,
    FirstStageBaseline,
    KNNRouterBaseline,
    LightFMBaseline,
    PopularityBaseline,
    RandomBaseline,
    ScoringBaseline,
    TransitionsBaseline,
)
from recsys.eval.fit_cache import FitCache
from recsys.eval.ltr import LambdaMARTBaseline, LambdaMARTTextBaseline

BASELINES = {
    "random": RandomBaseline,
    "bm25": BM25Baseline,
    "first-stage": FirstStageBaseline,
    "popularity": PopularityBaseline,
    "lightfm": LightFMBaseline,
    "cf": LightFMBaseline,  # the name for it
    "transitions": TransitionsBaseline,
    "ensemble": EnsembleBaseline,
    "knn-router": KNNRouterBaseline,
    "lambdamart": LambdaMARTBaseline,
    "lambdamart-text": LambdaMARTTextBaseline,
}


SEEDED = (RandomBaseline, LightFMBaseline, EnsembleBaseline, LambdaMARTBaseline,
          LambdaMARTTextBaseline)  # fmt: skip
# the slow fits (minutes) worth keeping between runs
CACHED = (LambdaMARTBaseline, LambdaMARTTextBaseline)


def make_baseline(name: str, seed: int = 7, cache: FitCache | None = None) -> ScoringBaseline:
    """The baseline `name`; `cache`: where the slow ones keep what they fitted."""
    if name not in BASELINES:
        raise UserError(f"unknown baseline {name!r}; use one of {sorted(BASELINES)}")
    cls = BASELINES[name]
    if cls in CACHED:
        return cls(seed=seed, cache=cache)
    return cls(seed=seed) if cls in SEEDED else cls()
