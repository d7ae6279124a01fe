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
from recsys.eval.ltr import LambdaMARTBaseline

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
}


SEEDED = (RandomBaseline, LightFMBaseline, EnsembleBaseline, LambdaMARTBaseline)


def make_baseline(name: str, seed: int = 7) -> ScoringBaseline:
    if name not in BASELINES:
        raise UserError(f"unknown baseline {name!r}; use one of {sorted(BASELINES)}")
    cls = BASELINES[name]
    return cls(seed=seed) if cls in SEEDED else cls()
