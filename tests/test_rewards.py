"""Rewards on hand-worked cases."""

import math

import pytest

from ranking.rewards import (
    dranker_reward,
    expected_step_reward,
    format_reward,
    iranker_step_reward,
    iranker_trajectory_rewards,
    tag_count_reward,
)


@pytest.mark.parametrize(
    ("eliminated", "remaining", "gt", "reward"),
    [
        ("b", ["a", "b", "c"], "a", 1.0),  # a non-ground-truth candidate
        ("a", ["a", "b", "c"], "a", 0.0),  # the ground truth
        ("z", ["a", "b", "c"], "a", -0.5),  # not a candidate
        (None, ["a", "b", "c"], "a", -0.5),  # nothing parsed
        ("b", ["a", "c"], "a", -0.5),  # already eliminated
        ("c", ["c"], "a", 1.0),  # gt gone earlier: still a valid non-gt elimination
    ],
)
def test_iranker_step_reward(eliminated, remaining, gt, reward):
    assert iranker_step_reward(eliminated, remaining, gt) == reward


def test_trajectory_rewards_track_the_set_in_play():
    # c (+1), c again (-0.5: already gone), a = gt (0), junk (-0.5), b (+1)
    got = iranker_trajectory_rewards(["c", "c", "a", None, "b"], ["a", "b", "c"], "a")
    assert got == [1.0, -0.5, 0.0, -0.5, 1.0]


def test_expected_step_reward_is_one_minus_gt_probability():
    assert expected_step_reward({"a": 0.2, "b": 0.5, "c": 0.3}, "a") == pytest.approx(0.8)
    # unnormalised weights are renormalised: p(a) = 1/4
    assert expected_step_reward({"a": 1.0, "b": 3.0}, "a") == pytest.approx(0.75)
    # ground truth already out of play: every elimination earns 1
    assert expected_step_reward({"b": 0.5, "c": 0.5}, "a") == 1.0
    with pytest.raises(ValueError, match="positive"):
        expected_step_reward({"a": 0.0}, "a")


def test_dranker_reward_hand_worked():
    cands = ["a", "b", "c", "d"]
    # perfect permutation, relevant first: NDCG 1, no penalty
    assert dranker_reward(["a", "b", "c", "d"], cands, "a") == pytest.approx(1.0)
    # relevant second: 1/log2(3)
    assert dranker_reward(["b", "a", "c", "d"], cands, "a") == pytest.approx(1 / math.log2(3))
    # two missing (c, d), one invented (z), one repeat (b): penalty 0.5 * 4/4
    got = dranker_reward(["a", "b", "z", "b"], cands, "a")
    assert got == pytest.approx(1.0 - 0.5)
    # empty answer: NDCG 0, all four missing
    assert dranker_reward([], cands, "a") == pytest.approx(-0.5)
    # relevant beyond k: NDCG 0
    assert dranker_reward(["b", "c", "a", "d"], cands, "a", k=2) == pytest.approx(0.0)
    # graded relevance: ideal order a(2) b(1); answer b, a -> dcg = 1 + 3/log2(3)
    graded = dranker_reward(["b", "a", "c", "d"], cands, {"a": 2, "b": 1}, k=4)
    assert graded == pytest.approx((1 + 3 / math.log2(3)) / (3 + 1 / math.log2(3)))
    with pytest.raises(ValueError, match="at least one candidate"):
        dranker_reward(["a"], [], "a")


@pytest.mark.parametrize(
    ("text", "fmt", "tags"),
    [
        ("<think>x is older</think><answer>Heat (1995)</answer>", 1.0, 1.0),
        ("  <think>\nmulti\nline</think>\n<answer>B</answer>\n", 1.0, 1.0),
        ("<answer>B</answer>", 0.0, 0.5),  # no think block
        ("<think>a</think><answer>B</answer> trailing", 0.0, 1.0),  # text after the answer
        ("<think>a</think><think>b</think><answer>B</answer>", 0.0, 0.5),  # think twice
        ("just the title", 0.0, 0.0),
    ],
)
def test_format_and_tag_count_rewards(text, fmt, tags):
    assert format_reward(text) == fmt
    assert tag_count_reward(text) == tags
