"""Rewards for training rankers by reinforcement learning (R1-Ranker, arXiv 2506.21638).

* `iranker_step_reward`: one elimination step of IRanker. +1 when the eliminated answer is a
  candidate still in play and not the ground truth, 0 when it is the ground truth, -0.5 when
  the answer is not a candidate still in play (unparsable, unknown, already eliminated).
* `expected_step_reward`: the same reward in expectation under the step's distribution over
  the remaining candidates, 1 - pi(ground truth): what the exact (sampling-free) loss maximises.
* `dranker_reward`: DRanker's one-shot ranking reward, NDCG@k of the valid part of the answer
  minus a coverage penalty for candidates the answer leaves out, repeats or invents.
* `format_reward` / `tag_count_reward`: the `reason` mode's output-format shaping rewards.

Every function is pure and cheap; `ranking.rl` sums them per step or per trajectory.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence

from ranking.metrics import ndcg_at_k

REWARD_KEEP = 1.0  # eliminated a non-ground-truth candidate
REWARD_GROUND_TRUTH = 0.0  # eliminated the ground truth
REWARD_INVALID = -0.5  # the answer is not a candidate in play


def iranker_step_reward(
    eliminated: str | None, remaining: Sequence[str], ground_truth: str
) -> float:
    """Reward of one elimination step.

    `eliminated` is the candidate id the model named (None when nothing could be parsed),
    `remaining` the ids still in play before this step, `ground_truth` the relevant id.
    """
    if eliminated is None or eliminated not in set(remaining):
        return REWARD_INVALID
    return REWARD_GROUND_TRUTH if eliminated == ground_truth else REWARD_KEEP


def iranker_trajectory_rewards(
    eliminated: Sequence[str | None], candidates: Sequence[str], ground_truth: str
) -> list[float]:
    """Step rewards of a whole elimination trajectory, updating the set in play as it goes.

    Once the ground truth has been eliminated, every later valid step still earns +1 (it
    eliminates a non-ground-truth item), as in the paper's per-step definition."""
    remaining = list(candidates)
    rewards = []
    for answer in eliminated:
        rewards.append(iranker_step_reward(answer, remaining, ground_truth))
        if answer in remaining:
            remaining.remove(answer)
    return rewards


def expected_step_reward(probs: Mapping[str, float], ground_truth: str) -> float:
    """E[step reward] when the step samples from `probs` over the candidates in play
    (all valid): sum_c p(c) * r(c) = 1 - p(ground truth) when the ground truth is in
    play, else 1."""
    total = sum(probs.values())
    if total <= 0:
        raise ValueError("step probabilities must sum to a positive number")
    return 1.0 - probs.get(ground_truth, 0.0) / total


def dranker_reward(
    answer: Sequence[str],
    candidates: Sequence[str],
    relevance: Mapping[str, float] | str,
    k: int = 10,
    coverage_weight: float = 0.5,
) -> float:
    """DRanker reward: NDCG@k of the answer's valid, de-duplicated order minus
    `coverage_weight` x (fraction of candidates missing from it) and the same weight x
    (fraction of answer entries that are invalid or repeated, relative to the candidates).

    A perfect permutation scores NDCG@k in [0, 1]; an empty answer scores -coverage_weight.
    """
    pool = set(candidates)
    if not pool:
        raise ValueError("dranker_reward needs at least one candidate")
    seen: set[str] = set()
    valid: list[str] = []
    bad = 0
    for item in answer:
        if item in pool and item not in seen:
            seen.add(item)
            valid.append(item)
        else:
            bad += 1
    missing = len(pool) - len(valid)
    penalty = coverage_weight * (missing + bad) / len(pool)
    return ndcg_at_k(valid, relevance, k) - penalty


_FORMAT_RE = re.compile(r"^\s*<think>.*?</think>\s*<answer>.*?</answer>\s*$", re.DOTALL)
_TAGS = ("<think>", "</think>", "<answer>", "</answer>")


def format_reward(text: str) -> float:
    """1.0 when the text is exactly one `<think>...</think>` block followed by one
    `<answer>...</answer>` block (whitespace allowed around them), else 0.0."""
    once = all(text.count(tag) == 1 for tag in _TAGS)
    return 1.0 if once and _FORMAT_RE.match(text) else 0.0


def tag_count_reward(text: str) -> float:
    """0.25 for each of the four tags that occurs exactly once (partial credit that
    shapes the format before it is fully right), so 0.0 to 1.0."""
    return sum(0.25 for tag in _TAGS if text.count(tag) == 1)
