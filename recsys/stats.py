"""The one bootstrap: percentile intervals for means, paired differences and estimators.

Every interval the product reports (evaluation metrics, `recsys eval-diff`, the promotion
gate, replay, off-policy estimates) is a percentile bootstrap (Efron & Tibshirani 1993,
ch. 13): resample the n units (instances, users, logged rounds) with replacement
`n_boot` times, recompute the statistic, take the (1 - confidence)/2 and (1 + confidence)/2
quantiles. Paired comparisons resample the pairs, so the interval is that of the mean
difference on the same units.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

BOOTSTRAP_SAMPLES = 2000


@dataclass(frozen=True)
class Interval:
    mean: float
    low: float
    high: float

    def excludes_zero(self) -> bool:
        return self.low > 0 or self.high < 0


def resample_indices(n: int, n_boot: int, seed: int) -> np.ndarray:
    """[n_boot, n] indices drawn with replacement (one row per bootstrap replicate)."""
    return np.random.default_rng(seed).integers(0, n, size=(n_boot, n))


def _quantiles(values: np.ndarray, confidence: float) -> tuple[float, float]:
    tail = (1 - confidence) / 2
    low, high = np.quantile(values, [tail, 1 - tail])
    return float(low), float(high)


def bootstrap_mean(
    values: Sequence[float] | np.ndarray,
    *,
    n_boot: int = BOOTSTRAP_SAMPLES,
    confidence: float = 0.95,
    seed: int = 7,
) -> Interval:
    """The mean and its percentile interval; NaNs when there are no values."""
    x = np.asarray(values, dtype=np.float64)
    if x.size == 0:
        return Interval(float("nan"), float("nan"), float("nan"))
    means = x[resample_indices(len(x), n_boot, seed)].mean(axis=1)
    return Interval(float(x.mean()), *_quantiles(means, confidence))


def paired_difference(
    a: Sequence[float] | np.ndarray,
    b: Sequence[float] | np.ndarray,
    *,
    n_boot: int = BOOTSTRAP_SAMPLES,
    confidence: float = 0.95,
    seed: int = 7,
) -> Interval:
    """Mean of a - b over the same units, with its interval (resampling the pairs)."""
    if len(a) != len(b) or not len(a):
        raise ValueError("a paired difference needs two non-empty sequences of the same length")
    d = np.asarray(a, dtype=np.float64) - np.asarray(b, dtype=np.float64)
    return bootstrap_mean(d, n_boot=n_boot, confidence=confidence, seed=seed)


def bootstrap_statistic(
    n: int,
    statistic: Callable[[np.ndarray], float],
    *,
    n_boot: int = BOOTSTRAP_SAMPLES,
    confidence: float = 0.95,
    seed: int = 7,
) -> tuple[float, float]:
    """The interval of any statistic of n units: `statistic(indices)` on each replicate
    (e.g. an off-policy estimator on the resampled logged rounds)."""
    values = np.array([statistic(idx) for idx in resample_indices(n, n_boot, seed)])
    return _quantiles(values, confidence)
