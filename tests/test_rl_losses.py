"""RL objectives on hand-worked tensors."""

import math

import pytest
import torch

from ranking.rl.losses import (
    clipped_importance_weights,
    distill_loss,
    expected_reward_loss,
    grpo_loss,
    logged_policy_loss,
    outcome_advantages,
    process_advantages,
    rr_weighted_loss,
)
from ranking.rl.policy import fusion_bias, mask_eliminated

LOG = math.log


def test_mask_eliminated_renormalises_over_candidates_in_play():
    logits = torch.zeros(3, 4)  # uniform logits; elimination order 2, 0, 3
    lp = mask_eliminated(logits, [2, 0, 3])
    assert torch.allclose(lp[0].exp(), torch.full((4,), 0.25))
    assert lp[1, 2] == -math.inf and torch.allclose(lp[1, [0, 1, 3]].exp(), torch.full((3,), 1 / 3))
    assert lp[2, 0] == lp[2, 2] == -math.inf
    assert torch.allclose(lp[2, [1, 3]].exp(), torch.full((2,), 0.5))


def test_expected_reward_loss_is_mean_ground_truth_probability():
    # two steps over 3 candidates, ground truth index 1
    lp = torch.tensor([[LOG(0.5), LOG(0.2), LOG(0.3)], [-math.inf, LOG(0.6), LOG(0.4)]])
    assert expected_reward_loss(lp, 1).item() == pytest.approx((0.2 + 0.6) / 2)
    # gradient lowers the ground truth's logit
    logits = torch.zeros(1, 3, requires_grad=True)
    expected_reward_loss(torch.log_softmax(logits, -1), 1).backward()
    assert logits.grad[0, 1] > 0 and logits.grad[0, 0] < 0


def test_rr_weighted_loss_weighs_each_step_by_its_reciprocal_rank_gain():
    # two steps: 3 then 2 candidates in play, ground truth index 1
    lp = torch.tensor([[LOG(0.5), LOG(0.2), LOG(0.3)], [-math.inf, LOG(0.6), LOG(0.4)]])
    assert rr_weighted_loss(lp, 1).item() == pytest.approx(0.2 / (3 * 2) + 0.6 / (2 * 1))
    # a truth certain to go at every step of 20 candidates: the weights telescope to 1 - 1/20
    n = 20
    rows = torch.full((n - 1, n), -30.0)
    for t in range(n - 1):
        rows[t, :t] = -math.inf
        rows[t, n - 1] = 0.0
    assert rr_weighted_loss(rows, n - 1).item() == pytest.approx(1 - 1 / n, rel=1e-5)
    # a truth already out contributes nothing
    assert rr_weighted_loss(lp[1:], 0).item() == 0.0


def test_distill_loss_is_cross_entropy_toward_teacher():
    lp = torch.tensor([[LOG(0.5), LOG(0.2), LOG(0.3)], [-math.inf, LOG(0.6), LOG(0.4)]])
    assert distill_loss(lp, [0, 2]).item() == pytest.approx(-(LOG(0.5) + LOG(0.4)) / 2)


def test_process_advantages_hand_worked():
    # group of 2 trajectories x 2 steps; rewards normalised over all 4, then reward-to-go
    r = torch.tensor([[1.0, 1.0], [1.0, 0.0]])
    mean, std = 0.75, torch.tensor([1.0, 1.0, 1.0, 0.0]).std().item()
    n = [(x - mean) / std for x in (1.0, 1.0, 1.0, 0.0)]
    adv = process_advantages(r, eps=0.0)
    expected = torch.tensor([[n[0] + n[1], n[1]], [n[2] + n[3], n[3]]])
    assert torch.allclose(adv, expected, atol=1e-6)
    assert torch.allclose(
        outcome_advantages(torch.tensor([2.0, 0.0]), eps=0.0),
        torch.tensor([1 / math.sqrt(2), -1 / math.sqrt(2)]),
    )


def test_grpo_loss_ratio_one_no_kl_is_minus_mean_advantage():
    lp = torch.tensor([[-1.0, -2.0]])
    adv = torch.tensor([[0.5, -1.0]])
    loss, kl = grpo_loss(lp, lp, lp, adv, clip_eps=0.2, kl_beta=0.1)
    assert loss.item() == pytest.approx(0.25) and kl.item() == pytest.approx(0.0)


def test_grpo_loss_clips_and_penalises_kl():
    old = torch.tensor([[LOG(0.5)]])
    new = torch.tensor([[LOG(1.0)]])  # ratio 2, clipped to 1.2 for a positive advantage
    ref = torch.tensor([[LOG(0.5)]])
    loss, kl = grpo_loss(new, old, ref, torch.tensor([[1.0]]), clip_eps=0.2, kl_beta=0.0)
    assert loss.item() == pytest.approx(-1.2)
    # k3 estimator: exp(ref-new) - (ref-new) - 1 = 0.5 + ln 2 - 1
    assert kl.item() == pytest.approx(0.5 + LOG(2) - 1)
    loss_kl, _ = grpo_loss(new, old, ref, torch.tensor([[1.0]]), clip_eps=0.2, kl_beta=1.0)
    assert loss_kl.item() == pytest.approx(-1.2 + 0.5 + LOG(2) - 1)


def test_clipped_importance_weights():
    w = clipped_importance_weights(
        torch.tensor([LOG(0.4), LOG(0.9)]), torch.tensor([LOG(0.2), LOG(0.01)]), clip=10.0
    )
    assert torch.allclose(w, torch.tensor([2.0, 10.0]))
    with pytest.raises(ValueError, match="clip must be positive"):
        clipped_importance_weights(torch.tensor([0.0]), torch.tensor([0.0]), clip=0)


def test_logged_policy_loss_weights_reward_to_go():
    taken = torch.tensor([LOG(0.5), LOG(0.5)], requires_grad=True)
    rewards = torch.tensor([1.0, 0.0])  # reward-to-go 1, 0
    # pi(ranking) = 0.25, logged propensity 0.5 -> weight 0.5
    loss = logged_policy_loss(taken, rewards, LOG(0.5), clip=10.0)
    assert loss.item() == pytest.approx(-0.5 * (1.0 * LOG(0.5)))
    loss.backward()
    assert taken.grad.tolist() == pytest.approx([-0.5, 0.0])


def test_fusion_bias_pushes_low_scores_out_first():
    bias = fusion_bias([3.0, 1.0, 2.0], alpha=2.0)
    assert bias.argmax().item() == 1 and bias.argmin().item() == 0
    assert fusion_bias([1.0, None], alpha=1.0) is None
    assert fusion_bias([1.0, 2.0], alpha=0.0) is None
