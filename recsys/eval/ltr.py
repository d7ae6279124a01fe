"""LambdaMART on a rec task, trained without leakage: the strongest classical baseline.

Protocol (every evaluated user u with interactions x_1 .. x_T, target x_T):

1. *inner log*: the task's training interactions (everything but the targets) minus each
   user's last remaining item x_{T-1} (all users of the log, evaluated or not);
2. feature models (`retrieval.features.FeatureModels`) fitted on the inner log;
3. one training group per user: target x_{T-1}, history the 20 items before it, 19
   negatives the user never interacted with — uniform (the paper's protocol) or, for tasks
   whose candidates come from retrieval, 10 from the inner CF top-50 plus 9 uniform;
4. LambdaMART (`retrieval.ltr`) fitted on those groups;
5. the feature models refitted on the full training log; the evaluated instances are
   scored with them. Neither x_T nor anything after x_{T-1} reaches steps 1-4.

Steps 1 and 3 are `retrieval.ltr_stage` (`split_last`, `training_queries`): the one
implementation, shared with the production stage (`LTRStage`) that the retrieval index
runs between fusion and the LM.

`recsys.eval.stacked` stacks a second LambdaMART on this one and the LM's steps; it reuses
the training groups through `LambdaMARTBaseline.fit_groups`.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import numpy as np
import polars as pl

import retrieval
from ranking.types import Candidate
from recsys.eval import fit_cache
from recsys.eval.baselines import _RecBaseline
from recsys.eval.fit_cache import FitCache
from recsys.eval.tasks import HISTORY_LEN, N_NEGATIVES, Instance, TaskSet, rng_for
from retrieval import ltr_stage
from retrieval.embeddings import Encoder, TextEmbedder
from retrieval.features import FeatureModels, ItemMeta
from retrieval.ltr import LambdaMART
from retrieval.ltr_stage import LTRStage, cf_ranked, mixed_negatives

__all__ = [
    "LambdaMARTBaseline", "LambdaMARTTextBaseline", "cf_ranked", "mixed_negatives",
    "split_last", "training_groups",
]  # fmt: skip


def item_meta(taskset: TaskSet) -> dict[str, ItemMeta]:
    genres = taskset.genres or {}
    return {i: ItemMeta.from_title(t, genres.get(i)) for i, t in (taskset.catalogue or {}).items()}


def fit_feature_models(
    train: pl.DataFrame,
    taskset: TaskSet,
    seed: int,
    text_vectors: Mapping[str, np.ndarray] | None = None,
) -> FeatureModels:
    return FeatureModels.fit(
        train["user_id"].to_list(),
        train["item_id"].to_list(),
        list(taskset.catalogue or {}),
        item_meta(taskset),
        seed=seed,
        text_vectors=text_vectors,
    )


def split_last(
    train: pl.DataFrame, users: set[str]
) -> tuple[pl.DataFrame, dict[str, tuple[list[str], str]]]:
    """The log without each listed user's last item, and user -> (items before, last)
    (`retrieval.ltr_stage.split_last` on the frame's columns)."""
    keep, seqs = ltr_stage.split_last(train["user_id"].to_list(), train["item_id"].to_list(), users)
    return train.filter(pl.Series(keep)), seqs


def labels_of(instance: Instance) -> np.ndarray:
    """1 for the instance's relevant candidates, 0 for the others, in candidate order."""
    return np.array([instance.relevance.get(c.id, 0.0) for c in instance.candidates])


@dataclass
class TrainingGroups:
    """The LambdaMART training queries as instances and the feature models fitted for them."""

    instances: list[Instance]
    models: FeatureModels

    @cached_property
    def labelled(self) -> list[tuple[np.ndarray, np.ndarray]]:
        """(features, labels) of each query, in `instances` order."""
        return [
            (self.models.features(i.user_id, i.history_ids, i.ids), labels_of(i))
            for i in self.instances
        ]


@dataclass(frozen=True)
class NegativesProtocol:
    """How a task's negatives are drawn, for every set of queries built beside its evaluated
    instances (LambdaMART's training groups, the residual LM episodes): half from the CF
    top-50 when the evaluated candidates come from retrieval (`hard`), else uniform; as many
    as the evaluated instances have (19 in the paper's protocol)."""

    hard: bool
    count: int

    @classmethod
    def of(cls, taskset: TaskSet) -> NegativesProtocol:
        hard = str(taskset.info.get("candidates", "")).startswith("retrieval")
        count = len(taskset.instances[0].candidates) - 1 if taskset.instances else N_NEGATIVES
        return cls(hard, count)


def training_groups(
    taskset: TaskSet,
    seed: int,
    *,
    hard_negatives: bool,
    text_vectors: Mapping[str, np.ndarray] | None = None,
) -> TrainingGroups:
    """Steps 1-3 of the module protocol (with the text features when given `text_vectors`)."""
    train = taskset.train
    assert train is not None and taskset.catalogue is not None
    # every user of the log (not only the evaluated subset): a --limit or --users run trains
    # the same model as a full one
    users = set(train["user_id"].unique().to_list())
    inner, seqs = split_last(train, users)
    models = fit_feature_models(inner, taskset, seed, text_vectors)
    seen = dict(train.group_by("user_id").agg("item_id").iter_rows())
    queries = ltr_stage.training_queries(
        models, seqs, seen, list(taskset.catalogue), lambda u: rng_for(seed, f"ltr:{u}"),
        hard_negatives=hard_negatives, negatives=NegativesProtocol.of(taskset).count,
        history=HISTORY_LEN,
    )  # fmt: skip
    out = [
        Instance(
            id=f"{taskset.name}:ltr:{q.user}",
            task=taskset.name,
            request_task=taskset.name,
            candidates=tuple(Candidate(id=c, text=taskset.catalogue[c]) for c in q.candidates),
            relevance={q.target: 1.0},
            history=tuple(taskset.catalogue.get(h, h) for h in q.history),
            history_ids=q.history,
            user_id=q.user,
        )
        for q in queries
    ]
    return TrainingGroups(out, models)


class LambdaMARTBaseline(_RecBaseline):
    """LightGBM LambdaMART over CF, sequence and content features (module protocol)."""

    name = "lambdamart"
    model = "lightgbm-lambdamart"

    def __init__(self, seed: int = 7, cache: FitCache | None = None, bag: int = 1) -> None:
        self.seed = seed
        self.cache = cache  # fitted signals reused across runs (recsys.eval.fit_cache)
        self.bag = bag  # LightGBM fits averaged, seeds seed .. seed+bag-1 (retrieval.ltr)
        if bag != 1:  # what the results files record as the run's model
            self.model = f"{type(self).model}-bag{bag}"

    def text_vectors(self, taskset: TaskSet) -> dict[str, np.ndarray] | None:
        """Item id -> title embedding for the text features; None without them."""
        return None

    def text_key(self) -> str:
        """What the fit's cache key adds for the text features ("" without them)."""
        return ""

    def fit(self, taskset: TaskSet) -> None:
        if self.cache is None:
            self.fit_groups(taskset)
            return
        stage = self.cache.load_or_fit(
            f"{self.name}-{taskset.name}",
            self.fit_key(taskset),
            lambda: self._fitted_stage(taskset),
            lambda stage, folder: stage.save(folder),
            LTRStage.load,
        )
        self.ranker, self.models = stage.ranker, stage.models

    def _fitted_stage(self, taskset: TaskSet) -> LTRStage:
        self.fit_groups(taskset)
        return LTRStage(self.ranker, self.models)

    def fit_key(self, taskset: TaskSet) -> str:
        """Everything `fit` reads: the log, catalogue, genres, negatives protocol, seed, the
        fitting code and its libraries' versions."""
        train = self.train_of(taskset)
        protocol = NegativesProtocol.of(taskset)
        return fit_cache.fit_key(
            fit_cache.frame_digest(train, ("user_id", "item_id")),
            json.dumps([taskset.catalogue, taskset.genres], sort_keys=True),
            f"hard={protocol.hard},count={protocol.count},seed={self.seed},h={HISTORY_LEN}"
            + self.text_key()
            + (f",bag={self.bag}" if self.bag != 1 else ""),
            fit_cache.source_digest(Path(retrieval.__file__).parent, Path(__file__)),
            fit_cache.library_versions(),
        )

    def fit_groups(self, taskset: TaskSet) -> TrainingGroups:
        """`fit`, returning the training groups it fitted on (for a stack on top)."""
        hard = NegativesProtocol.of(taskset).hard
        text = self.text_vectors(taskset)
        groups = training_groups(taskset, self.seed, hard_negatives=hard, text_vectors=text)
        names = groups.models.feature_names
        self.ranker = LambdaMART.fit(groups.labelled, names, seed=self.seed, bag=self.bag)
        self.models = fit_feature_models(self.train_of(taskset), taskset, self.seed, text)
        return groups

    def scores(self, instance: Instance) -> np.ndarray:
        x = self.models.features(instance.user_id, instance.history_ids, instance.ids)
        return self.ranker.scores(x)


class LambdaMARTTextBaseline(LambdaMARTBaseline):
    """LambdaMART with the text features too: title-embedding similarities of each candidate
    to the history (retrieval.features `TEXT_FEATURE_NAMES`; all-MiniLM-L6-v2, the
    retrieval stage's encoder). docs/RESULTS.md 0h: level overall, about +3 on rec-game's
    cold-start targets (five-seed mean)."""

    name = "lambdamart-text"
    model = "lightgbm-lambdamart+minilm"

    def __init__(
        self,
        seed: int = 7,
        cache: FitCache | None = None,
        bag: int = 1,
        encoder: Encoder | None = None,
    ) -> None:
        super().__init__(seed, cache, bag)
        self.encoder = encoder  # None: all-MiniLM-L6-v2 (tests pass a small one)

    def text_key(self) -> str:
        name = self.encoder.name if self.encoder is not None else "all-MiniLM-L6-v2"
        return f",text={name}"

    def text_vectors(self, taskset: TaskSet) -> dict[str, np.ndarray]:
        titles = taskset.catalogue or {}
        ids = sorted(titles)
        embedder = TextEmbedder(self.encoder)
        vectors = embedder.embed([titles[i] for i in ids], progress=len(ids) > 1000)
        return dict(zip(ids, vectors, strict=True))
