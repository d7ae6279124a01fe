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
from retrieval.ltr import MAX_BAG, valid_bag

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


def make_baseline(
    name: str, seed: int = 7, cache: FitCache | None = None, bag: int = 1
) -> ScoringBaseline:
    """The baseline `name`; `cache`: where the slow ones keep what they fitted; `bag`: the
    LightGBM fits a LambdaMART averages (retrieval.ltr)."""
    if name not in BASELINES:
        raise UserError(f"unknown baseline {name!r}; use one of {sorted(BASELINES)}")
    cls = BASELINES[name]
    check_bag(bag)
    if bag != 1 and cls not in CACHED:
        raise UserError(f"--lgb-bag averages LambdaMART fits: it applies to lambdamart and "
                        f"lambdamart-text (rankers or fusion signals), not {name!r}")  # fmt: skip
    if cls in CACHED:
        return cls(seed=seed, cache=cache, bag=bag)
    return cls(seed=seed) if cls in SEEDED else cls()


def check_bag(bag: int) -> None:
    if not valid_bag(bag):
        raise UserError(f"--lgb-bag {bag!r}: give a whole number of LightGBM fits from 1 to "
                        f"{MAX_BAG} (1: one fit)")  # fmt: skip
