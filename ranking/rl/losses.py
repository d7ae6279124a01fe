"""Training objectives over teacher-forced step log-probabilities.

Shapes: `step_lp` is [T, n] (log pi_t over the n candidates, -inf when out of play),
per-trajectory tensors are [G, T] for a group of G trajectories.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch


def expected_reward_loss(step_lp: torch.Tensor, gt_index: int) -> torch.Tensor:
    """Exact expected IRanker step reward, negated and shifted: mean_t pi_t(gt).

    At step t the step reward is +1 for any non-ground-truth elimination and 0 for the
    ground truth (constrained decoding never yields an invalid answer), so
    E[r_t] = 1 - pi_t(gt); minimising mean_t pi_t(gt) maximises the expected return
    without sampling noise. Steps where the ground truth is out of play contribute 0."""
    p_gt = step_lp[:, gt_index].exp()
    return p_gt.mean()


def rr_weighted_loss(step_lp: torch.Tensor, gt_index: int) -> torch.Tensor:
    """The step reward weighted by what each step is worth to the reciprocal rank:
    sum_t pi_t(gt) / (n_t (n_t - 1)), n_t the candidates in play at step t.

    Eliminated at step t the truth ranks n_t; surviving it, at best n_t - 1, a gain of
    1/(n_t - 1) - 1/n_t = 1/(n_t (n_t - 1)) in reciprocal rank. `expected_reward_loss` weighs
    every step alike, so with 20 candidates the first step (worth 1/380 of RR) counts as much
    as the last (worth 1/2): it trains the long tail MRR barely sees. The weights sum to
    1 - 1/n_0 (telescoping). Steps where the ground truth is out of play contribute 0."""
    in_play = torch.isfinite(step_lp).sum(1).clamp(min=2).to(step_lp.dtype)
    return (step_lp[:, gt_index].exp() / (in_play * (in_play - 1))).sum()


def distill_loss(step_lp: torch.Tensor, target: Sequence[int]) -> torch.Tensor:
    """Dense supervision: cross-entropy of each step toward the teacher's elimination
    (the trajectory must be teacher-forced along `target` itself): -mean_t log pi_t(target_t)."""
    idx = torch.tensor(list(target)[: step_lp.shape[0]], device=step_lp.device)
    return -step_lp.gather(1, idx[:, None]).mean()


def process_advantages(step_rewards: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """GRPO with process (step) rewards, as DeepSeekMath (arXiv 2402.03300, sec. 4.1.3):
    normalise all step rewards of the group by their mean and std, then the advantage of
    step t is the sum of the normalised rewards from t to the end. [G, T] -> [G, T]."""
    norm = (step_rewards - step_rewards.mean()) / (step_rewards.std() + eps)
    return norm.flip(-1).cumsum(-1).flip(-1)


def outcome_advantages(returns: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """Plain GRPO: each trajectory's return normalised within its group. [G] -> [G]."""
    return (returns - returns.mean()) / (returns.std() + eps)


def grpo_loss(
    new_lp: torch.Tensor,
    old_lp: torch.Tensor,
    ref_lp: torch.Tensor,
    advantages: torch.Tensor,
    clip_eps: float = 0.2,
    kl_beta: float = 0.04,
) -> tuple[torch.Tensor, torch.Tensor]:
    """GRPO (Shao et al. 2024): -mean[min(rho A, clip(rho, 1-eps, 1+eps) A) - beta KL],
    rho = pi/pi_old per step, KL the unbiased k3 estimator exp(ref - new) - (ref - new) - 1
    against the frozen reference. Returns (loss, mean KL)."""
    ratio = (new_lp - old_lp).exp()
    surr = torch.minimum(ratio * advantages, ratio.clamp(1 - clip_eps, 1 + clip_eps) * advantages)
    log_r = ref_lp - new_lp
    kl = log_r.exp() - log_r - 1
    return -(surr - kl_beta * kl).mean(), kl.mean().detach()


def clipped_importance_weights(
    target_logp: torch.Tensor, logging_logp: torch.Tensor, clip: float = 10.0
) -> torch.Tensor:
    """Clipped importance weights min(pi(a) / mu(a), clip) of logged actions (Ionides
    2008, truncated IS); inputs are log-probabilities of the whole logged ranking."""
    if clip <= 0:
        raise ValueError("clip must be positive")
    return (target_logp - logging_logp).exp().clamp(max=clip)


def logged_policy_loss(
    taken_lp: torch.Tensor,
    step_rewards: torch.Tensor,
    logging_log_propensity: float,
    clip: float = 10.0,
    baseline: float = 0.0,
) -> torch.Tensor:
    """Off-policy REINFORCE on one logged ranking: -w sum_t (G_t - b) log pi_t(a_t), with
    w the clipped importance weight pi(ranking)/mu(ranking) (no gradient through w) and
    G_t the reward-to-go of the logged elimination steps."""
    w = clipped_importance_weights(
        taken_lp.sum().detach(), torch.tensor(logging_log_propensity), clip
    )
    to_go = step_rewards.flip(-1).cumsum(-1).flip(-1)
    return -(w * ((to_go - baseline) * taken_lp).sum())
