"""Contract suite: every off-policy estimator on synthetic bandit data with a known answer."""

from __future__ import annotations

import numpy as np
import pytest

from recsys.replay.estimators import (
    ESTIMATORS,
    IPS,
    SNIPS,
    ClippedIPS,
    DirectMethod,
    DoublyRobust,
    LoggedData,
    effective_sample_size,
)

N_ACTIONS = 5
TRUE_MEANS = np.array([0.1, 0.2, 0.3, 0.5, 0.8])


def simulate(n: int, seed: int, model_noise: float = 0.0) -> tuple[LoggedData, float]:
    """A uniform logging policy; the target prefers good actions. True value is exact."""
    rng = np.random.default_rng(seed)
    logging = np.full(N_ACTIONS, 1 / N_ACTIONS)
    target = np.array([0.05, 0.05, 0.1, 0.3, 0.5])
    actions = rng.integers(0, N_ACTIONS, n)
    rewards = (rng.random(n) < TRUE_MEANS[actions]).astype(float)
    q_hat = TRUE_MEANS + model_noise
    data = LoggedData(
        rewards=rewards,
        logging_propensity=logging[actions],
        target_propensity=target[actions],
        q_logged=q_hat[actions],
        q_target=np.full(n, float(target @ q_hat)),
    )
    return data, float(target @ TRUE_MEANS)


@pytest.mark.parametrize("name", sorted(ESTIMATORS))
def test_every_estimator_recovers_the_true_value(name):
    data, truth = simulate(20_000, seed=1)
    estimator = ESTIMATORS[name]() if name != "clipped-ips" else ClippedIPS(max_weight=100)
    assert estimator.estimate(data) == pytest.approx(truth, abs=0.02)
    low, high = estimator.interval(data, n_boot=200)
    assert low <= truth + 0.02 and high >= truth - 0.02


@pytest.mark.parametrize("name", sorted(ESTIMATORS))
def test_on_policy_data_gives_the_mean_reward(name):
    data, _ = simulate(1000, seed=2)
    on_policy = LoggedData(
        data.rewards,
        data.logging_propensity,
        data.logging_propensity,
        q_logged=data.rewards,
        q_target=data.rewards,
    )
    assert ESTIMATORS[name]().estimate(on_policy) == pytest.approx(float(np.mean(data.rewards)))


def test_doubly_robust_survives_a_wrong_reward_model():
    data, truth = simulate(20_000, seed=3, model_noise=0.3)
    assert abs(DirectMethod().estimate(data) - truth) > 0.25  # DM inherits the model's bias
    assert DoublyRobust().estimate(data) == pytest.approx(truth, abs=0.03)


def test_clipping_bounds_the_weights_and_snips_normalises():
    data = LoggedData(np.array([1.0, 0.0]), np.array([0.01, 0.5]), np.array([1.0, 0.5]))
    assert IPS().estimate(data) == pytest.approx(50.0)  # one huge weight dominates
    assert ClippedIPS(max_weight=10).estimate(data) == pytest.approx(5.0)
    assert SNIPS().estimate(data) == pytest.approx(100 / 101)
    assert effective_sample_size(data) == pytest.approx(101**2 / (100**2 + 1))


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        (
            dict(
                rewards=np.array([1.0]),
                logging_propensity=np.array([0.0]),
                target_propensity=np.array([1.0]),
            ),
            "must be > 0",
        ),
        (
            dict(
                rewards=np.array([1.0, 0.0]),
                logging_propensity=np.array([0.5]),
                target_propensity=np.array([1.0, 1.0]),
            ),
            "one value per logged round",
        ),
        (
            dict(
                rewards=np.array([]),
                logging_propensity=np.array([]),
                target_propensity=np.array([]),
            ),
            "at least one",
        ),
    ],
)
def test_bad_logged_data_is_refused(kwargs, message):
    with pytest.raises(ValueError, match=message):
        LoggedData(**kwargs)


def test_model_based_estimators_say_what_they_need():
    data = LoggedData(np.array([1.0]), np.array([0.5]), np.array([0.5]))
    with pytest.raises(ValueError, match="q_target"):
        DirectMethod().estimate(data)
    with pytest.raises(ValueError, match="q_logged"):
        DoublyRobust().estimate(data)
