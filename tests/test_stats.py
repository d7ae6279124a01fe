"""The one bootstrap (recsys.stats): known answers, the paired case, any statistic."""

from __future__ import annotations

import numpy as np
import pytest

from recsys import stats


def test_a_constant_has_a_zero_width_interval():
    assert stats.bootstrap_mean(np.full(50, 0.25)) == stats.Interval(0.25, 0.25, 0.25)


def test_the_interval_width_is_about_four_standard_errors():
    values = np.random.default_rng(0).random(400)  # sd 0.29, se 0.0144
    ci = stats.bootstrap_mean(values)
    assert ci.low < values.mean() < ci.high
    assert 0.04 < ci.high - ci.low < 0.08
    wider = stats.bootstrap_mean(values, confidence=0.99)
    assert wider.low < ci.low and wider.high > ci.high


def test_paired_difference_hand_worked():
    assert stats.paired_difference([1.0, 1.0, 1.0], [0.0, 0.0, 0.0]) == stats.Interval(1, 1, 1)
    ci = stats.paired_difference([1.0, 0.0], [0.0, 1.0], n_boot=500)
    assert ci.mean == 0.0 and ci.low < 0 < ci.high and not ci.excludes_zero()
    with pytest.raises(ValueError, match="same length"):
        stats.paired_difference([1.0], [])


def test_pairing_removes_the_shared_variation():
    """B = A + 0.01 on every unit: unpaired intervals overlap, the paired one is [0.01]."""
    a = np.random.default_rng(1).random(300)
    b = a + 0.01
    ci = stats.paired_difference(b, a)
    assert ci.low == pytest.approx(0.01) and ci.high == pytest.approx(0.01) and ci.excludes_zero()
    assert stats.bootstrap_mean(a).high > stats.bootstrap_mean(b).low


def test_any_statistic_matches_the_mean_path():
    values = np.random.default_rng(2).random(100)
    low, high = stats.bootstrap_statistic(len(values), lambda idx: float(values[idx].mean()))
    ci = stats.bootstrap_mean(values)
    assert (low, high) == pytest.approx((ci.low, ci.high))


def test_empty_values_give_nan():
    assert np.isnan(stats.bootstrap_mean([]).mean)
