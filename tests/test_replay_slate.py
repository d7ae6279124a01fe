"""Contract suite of the ranking (slate) estimators: simulated slates from Plackett-Luce
policies whose marginals are exact, click models whose true value is exact."""

from __future__ import annotations

import numpy as np
import pytest

from recsys.replay.slate import (
    PlackettLuce,
    SlateData,
    exact_marginals,
    indicator,
    position_ips,
    pseudo_inverse,
    sampled_marginals,
    slate_ess,
)

N, K = 5, 3
REL = np.array([0.9, 0.6, 0.4, 0.2, 0.1])  # how attractive each item is
EXAM = np.array([1.0, 0.6, 0.3])  # position-based model: examination by position
LOGGING = PlackettLuce(np.array([0.2, 0.0, 0.1, -0.1, 0.0]))
TARGET = PlackettLuce(np.array([2.0, 1.0, 0.5, -0.5, -1.0]))


def clicks(order, model: str, rng) -> np.ndarray:
    r = np.zeros(K)
    for k, j in enumerate(order[:K]):
        if model == "pbm":
            r[k] = rng.random() < EXAM[k] * REL[j]
        elif rng.random() < REL[j]:  # cascade: the first attractive item, then stop
            r[k] = 1
            break
    return r


def true_value(policy: PlackettLuce, model: str) -> float:
    """Exact expected clicks per ranking under the click model."""
    marg, _, prefix = exact_marginals(policy.prob, N, K)
    if model == "pbm":
        return float(sum(marg[k] @ (EXAM[k] * REL) for k in range(K)))
    value = 0.0
    for pre, p in prefix.items():  # P(click at k) = rel(a_k) * prod_{l<k} (1 - rel(a_l))
        value += p * REL[pre[-1]] * np.prod(1 - REL[list(pre[:-1])])
    return value


def simulate(model: str, n: int, seed: int):
    rng = np.random.default_rng(seed)
    m0, gamma0, pre0 = exact_marginals(LOGGING.prob, N, K)
    m1, _, pre1 = exact_marginals(TARGET.prob, N, K)
    orders = [LOGGING.sample(rng) for _ in range(n)]
    rewards = np.array([clicks(o, model, rng) for o in orders])
    pos = np.arange(K)
    iips = SlateData(rewards, np.array([m0[pos, o[:K]] for o in orders]),
                     np.array([m1[pos, o[:K]] for o in orders]))  # fmt: skip

    def prefixes(table, o):
        return [table[tuple(o[: k + 1])] for k in range(K)]

    rips = SlateData(rewards, np.array([prefixes(pre0, o) for o in orders]),
                     np.array([prefixes(pre1, o) for o in orders]))  # fmt: skip
    whole = SlateData(rewards, np.repeat(rips.logging[:, -1:], K, 1),
                      np.repeat(rips.target[:, -1:], K, 1))  # fmt: skip
    pi = pseudo_inverse([o[:K] for o in orders], rewards.sum(1), gamma0, m1.reshape(-1), N)
    return iips, rips, whole, pi


@pytest.mark.parametrize("model", ["pbm", "cascade"])
def test_rips_recovers_the_true_value_and_iips_does_under_its_model(model):
    truth, logged = true_value(TARGET, model), true_value(LOGGING, model)
    iips, rips, whole, pi = simulate(model, 20_000, seed=1)
    assert abs(truth - logged) > 0.08  # the target policy is really different
    assert position_ips(rips) == pytest.approx(truth, abs=0.025)
    assert position_ips(whole) == pytest.approx(truth, abs=0.06)  # unbiased, noisier
    if model == "pbm":  # IIPS and PI assume a reward that adds up over (slot, item)
        assert position_ips(iips) == pytest.approx(truth, abs=0.03)
        assert pi == pytest.approx(truth, abs=0.04)


def test_per_position_weights_keep_a_larger_effective_sample():
    iips, rips, whole, _ = simulate("pbm", 5_000, seed=2)
    assert slate_ess(iips) > slate_ess(rips) > slate_ess(whole)
    assert slate_ess(whole) < 0.6 * len(whole.rewards)


def test_exact_marginals_are_distributions_and_sampling_agrees_within_its_error():
    marg, gamma, _ = exact_marginals(TARGET.prob, N, K)
    assert np.allclose(marg.sum(1), 1) and np.all(marg.sum(0) <= 1 + 1e-12)
    assert np.allclose(np.diag(gamma), marg.reshape(-1))  # E[1_a 1_a'] on the diagonal
    sampled, se = sampled_marginals(TARGET.sample, N, K, draws=20_000)
    assert np.all(np.abs(sampled - marg) <= 4 * se + 1e-3)


def test_a_plackett_luce_probability_is_a_distribution():
    total = sum(LOGGING.prob(o) for o in __import__("itertools").permutations(range(N)))
    assert total == pytest.approx(1.0)
    assert list(indicator([2, 0], N)) == [2, 5]


@pytest.mark.parametrize(
    ("arrays", "message"),
    [
        ((np.ones((2, 3)), np.ones((2, 2)), np.ones((2, 3))), "must all be"),
        ((np.ones((2, 3)), np.zeros((2, 3)), np.ones((2, 3))), "must be > 0"),
        ((np.ones((0, 3)), np.ones((0, 3)), np.ones((0, 3))), "at least one round"),
    ],
)
def test_bad_slate_data_is_refused(arrays, message):
    with pytest.raises(ValueError, match=message):
        SlateData(*arrays)
