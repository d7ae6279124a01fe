"""A learned-to-rank stage: LightGBM LambdaMART over `retrieval.features`.

LambdaMART (Burges, "From RankNet to LambdaRank to LambdaMART: An Overview", MSR-TR-2010-82)
fits gradient-boosted trees to the lambda gradients of NDCG over each query's candidate
group; LightGBM's `lambdarank` objective implements it. Here a query is one user's request
(history + candidates), the label is 1 for the item the user took next, 0 otherwise.

`LambdaMART.fit(groups)` takes training groups of (features, labels); `scores(features)`
gives one score per candidate (higher is better). `bag=N` fits N boosters on the same
groups with seeds seed .. seed+N-1 and averages their scores (bagging, Breiman 1996): one
fit's row and column subsampling moves held-out MRR by up to 1.6 points (docs/RESULTS.md
0h); docs/RESULTS.md 0i measures what the average buys. Extra per-candidate columns (e.g.
the LM's step scores) can be appended by the caller: the model only needs the same columns
at fit and score time (`feature_names` records them).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from retrieval.errors import RetrievalError

MAX_BAG = 20  # boosters per model: fit time and scoring cost grow linearly with it


def valid_bag(bag: object) -> bool:
    """A bag size `LambdaMART.fit` accepts: a whole number from 1 to MAX_BAG."""
    return isinstance(bag, int) and not isinstance(bag, bool) and 1 <= bag <= MAX_BAG


DEFAULT_PARAMS: dict[str, Any] = {
    "objective": "lambdarank",
    "n_estimators": 300,
    "learning_rate": 0.05,
    "num_leaves": 31,
    "min_child_samples": 20,
    "subsample": 0.8,
    "subsample_freq": 1,
    "colsample_bytree": 0.8,
    "lambdarank_truncation_level": 20,
    "verbose": -1,
}


def _lightgbm():
    try:
        import lightgbm
    except ImportError as exc:  # pragma: no cover - a declared dependency
        raise RetrievalError(
            "the LambdaMART stage needs lightgbm: pip install 'lightgbm>=4'"
        ) from exc
    return lightgbm


@dataclass
class LambdaMART:
    """Fitted LightGBM rankers (one, or a bag whose scores are averaged) and the names of
    the columns they read."""

    boosters: tuple[Any, ...]
    feature_names: tuple[str, ...]
    params: dict[str, Any] = field(default_factory=dict)

    @property
    def bag(self) -> int:
        return len(self.boosters)

    @classmethod
    def fit(
        cls,
        groups: Sequence[tuple[np.ndarray, np.ndarray]],
        feature_names: Sequence[str],
        *,
        seed: int = 7,
        threads: int = 1,
        bag: int = 1,
        **params: Any,
    ) -> LambdaMART:
        """`groups`: (features (n_i, d), labels (n_i,)) per query, each with >= 1 positive;
        `bag`: how many boosters to fit (seeds seed .. seed+bag-1) and average."""
        if not groups:
            raise RetrievalError("LambdaMART needs at least one training group")
        if not valid_bag(bag):
            raise RetrievalError(f"bag must be a whole number of boosters from 1 to {MAX_BAG}, "
                                 f"got {bag!r}")  # fmt: skip
        width = len(feature_names)
        for x, y in groups:
            if x.ndim != 2 or x.shape[1] != width or len(y) != len(x):
                raise RetrievalError(
                    f"every group needs features of shape (n, {width}) and n labels; got "
                    f"{x.shape} and {len(y)}"
                )
        lgb = _lightgbm()
        x = np.vstack([x for x, _ in groups])
        y = np.concatenate([y for _, y in groups])
        sizes = [len(y) for _, y in groups]
        names = [n.replace(" ", "_") for n in feature_names]
        settings = {**DEFAULT_PARAMS, **params, "random_state": seed, "n_jobs": threads}
        boosters = []
        for k in range(bag):
            model = lgb.LGBMRanker(**{**settings, "random_state": seed + k})
            model.fit(x, y, group=sizes, feature_name=names)
            boosters.append(model.booster_)
        return cls(tuple(boosters), tuple(feature_names), {**settings, "bag": bag})

    def scores(self, features: np.ndarray) -> np.ndarray:
        if features.ndim != 2 or features.shape[1] != len(self.feature_names):
            raise RetrievalError(
                f"expected features of shape (n, {len(self.feature_names)}), got {features.shape}"
            )
        # summed in bag order, divided once: a bag of one scores exactly as its booster
        each = [b.predict(features, num_threads=1) for b in self.boosters]
        return np.mean(each, axis=0, dtype=np.float64)

    def importance(self) -> dict[str, float]:
        """Total split gain per feature over the bag, as shares summing to 1."""
        gain = sum(b.feature_importance(importance_type="gain").astype(float)
                   for b in self.boosters)  # fmt: skip
        total = gain.sum() or 1.0
        return {
            n: round(float(g / total), 4) for n, g in zip(self.feature_names, gain, strict=True)
        }

    def save(self, path: str | Path) -> Path:
        """One JSON file: the boosters' text models plus the column names."""
        path = Path(path)
        doc = {"feature_names": list(self.feature_names), "params": self.params,
               "models": [b.model_to_string() for b in self.boosters]}  # fmt: skip
        tmp = path.with_suffix(path.suffix + ".tmp")
        tmp.write_text(json.dumps(doc), encoding="utf-8")
        tmp.replace(path)  # a crash mid-write leaves the previous file
        return path

    @classmethod
    def load(cls, path: str | Path) -> LambdaMART:
        try:
            doc = json.loads(Path(path).read_text("utf-8"))
            # "model": one booster, as saved before bags existed
            texts = doc["models"] if "models" in doc else [doc["model"]]
            if not texts:
                raise ValueError("no boosters")
            boosters = tuple(_lightgbm().Booster(model_str=t) for t in texts)
            names = tuple(doc["feature_names"])
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise RetrievalError(f"{path}: not a saved LambdaMART model ({exc})") from None
        return cls(boosters, names, doc.get("params", {}))
