"""Off-policy estimators for rankings (slates) whose variance stays usable at 20 candidates.

Whole-ranking IPS weights a logged ranking by π(ranking)/π0(ranking), a ratio of products
of 19 step probabilities: almost every weight is ~0 and a few are huge, so the effective
sample size collapses. The estimators here weight *positions* instead, under assumptions
about how the reward decomposes. Notation, for logged rounds i = 1..n, positions k = 1..K:
a_ik the item shown at position k, r_ik its reward (a click), π(a at k | x) the probability
that a policy puts item a at position k (a *marginal* of the ranking distribution), and
π(a_i,1:k | x) the probability of the logged top-k prefix.

* IIPS — independent IPS (Li, Kim, Kveton et al., "Offline evaluation of ranking policies
  with click models", KDD 2018):  V̂ = (1/n) Σ_i Σ_k r_ik · π(a_ik at k)/π0(a_ik at k).
  Unbiased when a click depends only on the item and its position (position-based model).
* RIPS — reward-interaction IPS (McInerney et al., "Counterfactual evaluation of slate
  recommendations with sequential reward interactions", KDD 2020; the cascade form of
  Kiyohara et al., WSDM 2022):  V̂ = (1/n) Σ_i Σ_k r_ik · π(a_i,1:k)/π0(a_i,1:k).
  Unbiased when a click depends on the items above it (cascade).
* PI — pseudo-inverse (Swaminathan, Krishnamurthy, Agarwal et al., "Off-policy evaluation
  for slate recommendation", NeurIPS 2017):  V̂ = (1/n) Σ_i r_i · q_πᵀ Γ_i⁺ 1_{a_i}, with
  1_a the slot-item indicator vector of a ranking, Γ = E_π0[1_a 1_aᵀ] and q_π = E_π[1_a];
  unbiased for rewards additive over (slot, item) pairs, r_i the ranking's total reward.

Marginals of an elimination (or any) ranking policy: exact by enumeration when there are
few candidates (`exact_marginals`), else by sampling rankings from it
(`sampled_marginals`, which reports the Monte-Carlo standard error of each marginal).
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from recsys.replay.estimators import Estimator

Ranking = Sequence[int]  # candidate indices, best first


@dataclass(frozen=True)
class SlateData:
    """Per logged round i and position k (K positions): the reward, and the logging and
    target probabilities the estimator weights by (position marginals for IIPS, top-k
    prefix probabilities for RIPS)."""

    rewards: np.ndarray  # [n, K]
    logging: np.ndarray  # [n, K]
    target: np.ndarray  # [n, K]

    def __post_init__(self) -> None:
        if not (self.rewards.shape == self.logging.shape == self.target.shape):
            raise ValueError("rewards, logging and target must all be [rounds, positions]")
        if self.rewards.ndim != 2 or len(self.rewards) == 0:
            raise ValueError("slate data needs at least one round of [positions] values")
        if np.any(self.logging <= 0):
            raise ValueError("logging probabilities must be > 0 wherever a ranking was logged")

    @property
    def weights(self) -> np.ndarray:
        return self.target / self.logging

    def subset(self, index: np.ndarray) -> SlateData:
        """The rounds `index` (what the shared bootstrap interval resamples)."""
        return SlateData(self.rewards[index], self.logging[index], self.target[index])


def position_ips(data: SlateData) -> float:
    """IIPS or RIPS, by what `data` holds (marginals or prefix probabilities)."""
    return float(np.mean(np.sum(data.weights * data.rewards, axis=1)))


class IIPS(Estimator):
    """Independent IPS (Li et al., KDD 2018): V̂ = (1/n) Σ_i Σ_k r_ik · π(a_ik at k)/π0(a_ik at k),
    `SlateData` holding the position marginals. Unbiased under the position-based model."""

    name = "iips"

    def estimate(self, data: SlateData) -> float:  # type: ignore[override]
        return position_ips(data)


class RIPS(Estimator):
    """Reward-interaction IPS (McInerney et al., KDD 2020): V̂ = (1/n) Σ_i Σ_k r_ik ·
    π(a_i,1:k)/π0(a_i,1:k), `SlateData` holding top-k prefix probabilities. Unbiased under
    the cascade model."""

    name = "rips"

    def estimate(self, data: SlateData) -> float:  # type: ignore[override]
        return position_ips(data)


def slate_ess(data: SlateData) -> float:
    """Kish's effective sample size of the per-position weights, averaged over positions."""
    w = data.weights
    return float(np.mean(np.sum(w, 0) ** 2 / np.maximum(np.sum(w**2, 0), 1e-300)))


def pseudo_inverse(
    rankings: Sequence[Ranking],
    rewards: np.ndarray,
    gamma: np.ndarray,
    q_target: np.ndarray,
    n_items: int,
) -> float:
    """PI: `gamma` = E_π0[1_a 1_aᵀ] and `q_target` = E_π[1_a] over slot-item indicators
    (slot k, item j at index k * n_items + j), `rewards` the rankings' total rewards."""
    projected = np.linalg.pinv(gamma) @ q_target
    values = [r * projected[indicator(a, n_items)].sum() for a, r in zip(rankings, rewards,
                                                                          strict=True)]  # fmt: skip
    return float(np.mean(values))


def indicator(ranking: Ranking, n_items: int) -> np.ndarray:
    """The slot-item indices a ranking switches on."""
    return np.array([k * n_items + int(j) for k, j in enumerate(ranking)])


# ---------------------------------------------------------------- policy marginals


def exact_marginals(
    prob: Callable[[Ranking], float], n: int, k: int
) -> tuple[np.ndarray, np.ndarray, dict[tuple[int, ...], float]]:
    """By enumerating all n! rankings (small n): position marginals [k, n], the slot-item
    second moment Γ [k·n, k·n] and the top-k prefix probabilities."""
    marg, gamma = np.zeros((k, n)), np.zeros((k * n, k * n))
    prefix: dict[tuple[int, ...], float] = {}
    for order in itertools.permutations(range(n)):
        p = prob(order)
        for pos in range(k):
            marg[pos, order[pos]] += p
            key = tuple(order[: pos + 1])
            prefix[key] = prefix.get(key, 0.0) + p
        on = indicator(order[:k], n)
        gamma[np.ix_(on, on)] += p
    return marg, gamma, prefix


def sampled_marginals(
    sample: Callable[[np.random.Generator], Ranking], n: int, k: int, draws: int, seed: int = 7
) -> tuple[np.ndarray, np.ndarray]:
    """Position marginals [k, n] from `draws` sampled rankings, and the standard error of
    each (√(p(1−p)/draws)): for policies too large to enumerate (an LM elimination policy
    at 20 candidates)."""
    rng = np.random.default_rng(seed)
    counts = np.zeros((k, n))
    for _ in range(draws):
        order = sample(rng)
        counts[np.arange(k), np.asarray(order[:k])] += 1
    p = counts / draws
    return p, np.sqrt(p * (1 - p) / draws)


# ---------------------------------------------------------------- a policy to test with


@dataclass(frozen=True)
class PlackettLuce:
    """A ranking distribution with a closed-form probability: the next position takes item
    j with probability ∝ exp(score_j) among those left. (An elimination policy that removes
    items with probability ∝ exp(−score) is the same family read from the bottom.)"""

    scores: np.ndarray

    def prob(self, order: Ranking) -> float:
        left, p = list(range(len(self.scores))), 1.0
        for j in order:
            e = np.exp(self.scores[left])
            p *= float(np.exp(self.scores[j]) / e.sum())
            left.remove(j)
        return p

    def sample(self, rng: np.random.Generator) -> list[int]:
        g = self.scores + rng.gumbel(size=len(self.scores))  # Gumbel-max = PL sampling
        return [int(i) for i in np.argsort(-g)]
