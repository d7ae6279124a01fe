"""A learned-to-rank stage: LightGBM LambdaMART over `retrieval.features`.

LambdaMART (Burges, "From RankNet to LambdaRank to LambdaMART: An Overview", MSR-TR-2010-82)
fits gradient-boosted trees to the lambda gradients of NDCG over each query's candidate
group; LightGBM's `lambdarank` objective implements it. Here a query is one user's request
(history + candidates), the label is 1 for the item the user took next, 0 otherwise.

`LambdaMART.fit(groups)` takes training groups of (features, labels); `scores(features)`
gives one score per candidate (higher is better). Extra per-candidate columns (e.g. the LM's
step scores) can be appended by the caller: the model only needs the same columns at fit
and score time (`feature_names` records them).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from retrieval.errors import RetrievalError

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
    """A fitted LightGBM ranker and the names of the columns it reads."""

    booster: Any
    feature_names: tuple[str, ...]
    params: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def fit(
        cls,
        groups: Sequence[tuple[np.ndarray, np.ndarray]],
        feature_names: Sequence[str],
        *,
        seed: int = 7,
        threads: int = 1,
        **params: Any,
    ) -> LambdaMART:
        """`groups`: (features (n_i, d), labels (n_i,)) per query, each with >= 1 positive."""
        if not groups:
            raise RetrievalError("LambdaMART needs at least one training group")
        width = len(feature_names)
        for x, y in groups:
            if x.ndim != 2 or x.shape[1] != width or len(y) != len(x):
                raise RetrievalError(
                    f"every group needs features of shape (n, {width}) and n labels; got "
                    f"{x.shape} and {len(y)}"
                )
        lgb = _lightgbm()
        settings = {**DEFAULT_PARAMS, **params, "random_state": seed, "n_jobs": threads}
        model = lgb.LGBMRanker(**settings)
        model.fit(
            np.vstack([x for x, _ in groups]),
            np.concatenate([y for _, y in groups]),
            group=[len(y) for _, y in groups],
            feature_name=[n.replace(" ", "_") for n in feature_names],
        )
        return cls(model.booster_, tuple(feature_names), settings)

    def scores(self, features: np.ndarray) -> np.ndarray:
        if features.ndim != 2 or features.shape[1] != len(self.feature_names):
            raise RetrievalError(
                f"expected features of shape (n, {len(self.feature_names)}), got {features.shape}"
            )
        return np.asarray(self.booster.predict(features, num_threads=1), dtype=np.float64)

    def importance(self) -> dict[str, float]:
        """Total split gain per feature, as shares summing to 1."""
        gain = self.booster.feature_importance(importance_type="gain").astype(float)
        total = gain.sum() or 1.0
        return {
            n: round(float(g / total), 4) for n, g in zip(self.feature_names, gain, strict=True)
        }

    def save(self, path: str | Path) -> Path:
        """One JSON file: the booster's text model plus the column names."""
        path = Path(path)
        doc = {"feature_names": list(self.feature_names), "params": self.params,
               "model": self.booster.model_to_string()}  # fmt: skip
        tmp = path.with_suffix(path.suffix + ".tmp")
        tmp.write_text(json.dumps(doc), encoding="utf-8")
        tmp.replace(path)  # a crash mid-write leaves the previous file
        return path

    @classmethod
    def load(cls, path: str | Path) -> LambdaMART:
        try:
            doc = json.loads(Path(path).read_text("utf-8"))
            booster = _lightgbm().Booster(model_str=doc["model"])
        except (OSError, ValueError, KeyError) as exc:
            raise RetrievalError(f"{path}: not a saved LambdaMART model ({exc})") from None
        return cls(booster, tuple(doc["feature_names"]), doc.get("params", {}))
