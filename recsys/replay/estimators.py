"""Off-policy estimators: the value of a target policy from data logged by another policy.

All estimators share one interface (as in Open Bandit Pipeline): `estimate(data) -> float`
over a `LoggedData` batch, and a bootstrap `interval`. Notation, for logged rounds
i = 1..n with context x_i, logged action a_i (for a ranker: the whole ranking it showed),
reward r_i, logging propensity p0_i = π0(a_i | x_i) and target propensity
p_i = π(a_i | x_i); importance weight w_i = p_i / p0_i; q̂ a reward model.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class LoggedData:
    """Per logged round: reward, logging and target propensities of the logged action, and
    optionally a reward model's prediction for the logged action (`q_logged`) and its
    expectation under the target policy (`q_target` = Σ_a π(a|x) q̂(x, a))."""

    rewards: np.ndarray
    logging_propensity: np.ndarray
    target_propensity: np.ndarray
    q_logged: np.ndarray | None = None
    q_target: np.ndarray | None = None

    def __post_init__(self) -> None:
        n = len(self.rewards)
        arrays = [self.logging_propensity, self.target_propensity, self.q_logged, self.q_target]
        if any(a is not None and len(a) != n for a in arrays):
            raise ValueError("every array of LoggedData must have one value per logged round")
        if n == 0:
            raise ValueError("LoggedData needs at least one logged round")
        if np.any(self.logging_propensity <= 0):
            raise ValueError("logging propensities must be > 0 (log the policy's probabilities)")

    @property
    def weights(self) -> np.ndarray:
        return self.target_propensity / self.logging_propensity

    def subset(self, index: np.ndarray) -> LoggedData:
        def pick(a: np.ndarray | None) -> np.ndarray | None:
            return None if a is None else a[index]

        return LoggedData(
            self.rewards[index],
            self.logging_propensity[index],
            self.target_propensity[index],
            pick(self.q_logged),
            pick(self.q_target),
        )


def effective_sample_size(data: LoggedData) -> float:
    """(Σ w)^2 / Σ w^2 (Kish): how many on-policy rounds the weighted sample is worth."""
    w = data.weights
    total = float(np.sum(w**2))
    return float(np.sum(w) ** 2 / total) if total > 0 else 0.0


class Estimator(ABC):
    name: str

    @abstractmethod
    def estimate(self, data: LoggedData) -> float:
        """The estimated value of the target policy."""

    def interval(
        self, data: LoggedData, *, alpha: float = 0.05, n_boot: int = 1000, seed: int = 7
    ) -> tuple[float, float]:
        """Percentile bootstrap (1 - alpha) interval, resampling logged rounds."""
        from recsys.stats import bootstrap_statistic

        return bootstrap_statistic(len(data.rewards), lambda idx: self.estimate(data.subset(idx)),
                                   n_boot=n_boot, confidence=1 - alpha, seed=seed)  # fmt: skip


class IPS(Estimator):
    """Inverse propensity scoring (Horvitz & Thompson, 1952):
    V̂ = (1/n) Σ_i w_i r_i. Unbiased when p0 > 0 wherever p > 0; variance grows with w."""

    name = "ips"

    def estimate(self, data: LoggedData) -> float:
        return float(np.mean(data.weights * data.rewards))


class ClippedIPS(Estimator):
    """IPS with weights clipped at `max_weight` (Ionides, 2008; Bottou et al., 2013):
    V̂ = (1/n) Σ_i min(w_i, M) r_i. Biased downwards, much lower variance."""

    name = "clipped-ips"

    def __init__(self, max_weight: float = 10.0) -> None:
        self.max_weight = max_weight

    def estimate(self, data: LoggedData) -> float:
        return float(np.mean(np.minimum(data.weights, self.max_weight) * data.rewards))


class SNIPS(Estimator):
    """Self-normalised IPS (Swaminathan & Joachims, NeurIPS 2015):
    V̂ = Σ_i w_i r_i / Σ_i w_i. Slightly biased, consistent, far less variance than IPS."""

    name = "snips"

    def estimate(self, data: LoggedData) -> float:
        w = data.weights
        total = float(np.sum(w))
        return float(np.sum(w * data.rewards) / total) if total > 0 else 0.0


class DirectMethod(Estimator):
    """Direct method: V̂ = (1/n) Σ_i q̂_π(x_i), with q̂_π(x) = Σ_a π(a|x) q̂(x, a).
    No propensities needed; biased as much as the reward model is."""

    name = "dm"

    def estimate(self, data: LoggedData) -> float:
        if data.q_target is None:
            raise ValueError("the direct method needs q_target (a reward model's prediction)")
        return float(np.mean(data.q_target))


class DoublyRobust(Estimator):
    """Doubly robust (Dudík, Langford & Li, ICML 2011):
    V̂ = (1/n) Σ_i [ q̂_π(x_i) + w_i (r_i − q̂(x_i, a_i)) ].
    Unbiased if either the propensities or the reward model are right."""

    name = "dr"

    def estimate(self, data: LoggedData) -> float:
        if data.q_target is None or data.q_logged is None:
            raise ValueError("doubly robust needs q_logged and q_target from a reward model")
        return float(np.mean(data.q_target + data.weights * (data.rewards - data.q_logged)))


ESTIMATORS: dict[str, type[Estimator]] = {
    cls.name: cls for cls in (IPS, ClippedIPS, SNIPS, DirectMethod, DoublyRobust)
}
