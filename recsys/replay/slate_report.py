"""Per-position off-policy estimates of a ranker on logged traffic (recsys.replay.slate):
the marginals of the logging and the target elimination policies at each logged request,
then IIPS and RIPS of the logged click, with the effective sample size of each beside that
of whole-ranking IPS on the same rounds.

Marginals of an elimination policy over 20 candidates cannot be enumerated (20! rankings),
so each policy's are estimated from `draws` rankings sampled from it at temperature 1 (one
batched `rank_batch` call per policy). For the logging policy the logged ranking is one
more genuine draw and is counted, so a logged item's marginal is never estimated as 0.
The Monte-Carlo standard error of the marginals at the clicked positions is reported.
With at most `EXACT_MAX_CANDIDATES` candidates and a policy whose ranking probability is
known (`prob_of`), marginals are exact instead (every permutation enumerated).
"""

from __future__ import annotations

import dataclasses
import itertools
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from ranking.engine import Ranker
from ranking.rl.episodes import Episode
from ranking.types import RankRequest
from recsys.replay.slate import IIPS, RIPS, SlateData, slate_ess

EXACT_MAX_CANDIDATES = 5  # 120 permutations

# (request, rankings) -> the probability of each whole ranking under a policy
RankingProb = Callable[[RankRequest, Sequence[Sequence[str]]], Sequence[float]]


@dataclass(frozen=True)
class PolicyRankings:
    """What a policy's marginals are read from at one request: sampled rankings, or every
    ranking with its exact probability."""

    rankings: list[tuple[str, ...]]
    weights: np.ndarray  # sums to 1
    exact: bool = False

    def position(self, k: int, item: str) -> float:
        return self._probability(lambda r: r[k] == item)

    def prefix(self, prefix: tuple[str, ...]) -> float:
        return self._probability(lambda r: r[: len(prefix)] == prefix)

    def _probability(self, holds: Callable[[tuple[str, ...]], bool]) -> float:
        """The weight of the rankings for which `holds`: a probability, so at most 1 (a sum
        of weights can pass 1 by a rounding: nine draws of 1/9 each add up to
        1.0000000000000002, which a standard error's sqrt(p (1 - p)) cannot take)."""
        total = sum(w for r, w in zip(self.rankings, self.weights, strict=True) if holds(r))
        return min(1.0, float(total))


# called with the number of rankings just sampled or enumerated (a progress display's update)
OnRanked = Callable[[int], None]


def draw_rankings(
    ranker: Ranker,
    requests: Sequence[RankRequest],
    draws: int,
    seed: int = 7,
    on_ranked: OnRanked | None = None,
) -> list[list[tuple[str, ...]]]:
    """`draws` rankings per request sampled from `ranker` at temperature 1, in one batch."""
    batch = [dataclasses.replace(r, temperature=1.0, seed=seed + d, deadline_ms=None)
             for r in requests for d in range(draws)]  # fmt: skip
    orders = [tuple(res.order) for res in ranker.rank_batch(batch, on_ranked=on_ranked)]
    return [orders[i * draws : (i + 1) * draws] for i in range(len(requests))]


def sampled(rankings: Sequence[tuple[str, ...]]) -> PolicyRankings:
    return PolicyRankings(list(rankings), np.full(len(rankings), 1.0 / len(rankings)))


def enumerated(request: RankRequest, prob_of: RankingProb) -> PolicyRankings:
    orders = list(itertools.permutations(request.ids))
    p = np.asarray(prob_of(request, orders), dtype=np.float64)
    return PolicyRankings(orders, p / p.sum(), exact=True)


def _exact(episodes: Sequence[Episode], prob_of_known: bool) -> bool:
    small = all(len(e.request.candidates) <= EXACT_MAX_CANDIDATES for e in episodes)
    return prob_of_known and small


def planned_rankings(episodes: Sequence[Episode], draws: int, prob_of_known: bool) -> int:
    """How many rankings `policy_rankings` will sample, or enumerate with their
    probability when exact: the total of its `on_ranked` counts."""
    if _exact(episodes, prob_of_known):
        return sum(math.factorial(len(e.request.candidates)) for e in episodes)
    return len(episodes) * draws


def policy_rankings(
    ranker: Ranker,
    episodes: Sequence[Episode],
    draws: int,
    *,
    prob_of: RankingProb | None = None,
    include_logged: bool = False,
    seed: int = 7,
    on_ranked: OnRanked | None = None,
) -> tuple[list[PolicyRankings], bool]:
    """Per episode, what the policy's marginals come from; True when they are exact.
    `on_ranked(n)` follows the work (`planned_rankings` in all)."""
    if _exact(episodes, prob_of is not None):
        out = []
        for e in episodes:
            out.append(enumerated(e.request, prob_of))  # type: ignore[arg-type]
            if on_ranked is not None:
                on_ranked(len(out[-1].rankings))
        return out, True
    drawn = draw_rankings(ranker, [e.request for e in episodes], draws, seed, on_ranked)
    if include_logged:  # the logged ranking is a draw of the logging policy too
        drawn = [[tuple(e.logged_order or ()), *d] for e, d in zip(episodes, drawn, strict=True)]
    return [sampled(d) for d in drawn], False


def slate_estimates(
    episodes: Sequence[Episode],
    logging: Sequence[PolicyRankings],
    target: Sequence[PolicyRankings],
    *,
    whole_ranking_weights: np.ndarray | None = None,
    n_boot: int = 500,
) -> dict[str, Any]:
    """IIPS and RIPS of the reciprocal rank (reward 1/(k+1) at the ground truth's logged
    0-based position k, 0 elsewhere: the per-position rewards add up to the ranking's RR,
    so each estimates B's MRR), with bootstrap intervals and effective sample sizes;
    whole-ranking IPS's ESS beside. RIPS needs the probability of whole top-k prefixes,
    which a few sampled rankings almost never match: it is reported for exact marginals
    only."""
    k = min(len(e.logged_order or ()) for e in episodes)
    rewards = np.array([[float(e.logged_order[j] == e.ground_truth) / (j + 1) for j in range(k)]
                        for e in episodes])  # fmt: skip
    exact = all(p.exact for p in [*logging, *target])

    def table(policies: Sequence[PolicyRankings], prefix: bool) -> np.ndarray:
        rows = []
        for e, p in zip(episodes, policies, strict=True):
            shown = tuple(e.logged_order)
            rows.append([p.prefix(shown[: j + 1]) if prefix else p.position(j, shown[j])
                         for j in range(k)])  # fmt: skip
        return np.array(rows)

    out: dict[str, Any] = {"rounds": len(episodes), "positions": k}
    for est, prefix in ((IIPS(), False), (RIPS(), True))[: 2 if exact else 1]:
        data = SlateData(rewards, np.maximum(table(logging, prefix), 1e-12), table(target, prefix))
        low, high = est.interval(data, n_boot=n_boot)
        out[est.name] = {"estimate": est.estimate(data), "low": low, "high": high,
                         "ess": slate_ess(data)}  # fmt: skip
    out["logging policy (on-policy mean)"] = float(rewards.sum(1).mean())
    out["marginal_standard_error"] = _standard_error(episodes, logging, k)
    if whole_ranking_weights is not None:
        w = np.asarray(whole_ranking_weights)
        out["whole_ranking_ips_ess"] = float(w.sum() ** 2 / max(float((w**2).sum()), 1e-300))
    return out


def _standard_error(
    episodes: Sequence[Episode], logging: Sequence[PolicyRankings], k: int
) -> float:
    """Mean Monte-Carlo standard error √(p(1−p)/m) of the logging marginals at the clicked
    positions (0 for exact marginals: there m is the whole distribution)."""
    errors = []
    for e, p in zip(episodes, logging, strict=True):
        shown = tuple(e.logged_order)
        if e.ground_truth in shown[:k] and p.exact:
            errors.append(0.0)
        elif e.ground_truth in shown[:k]:
            m = p.position(shown.index(e.ground_truth), e.ground_truth)
            errors.append(math.sqrt(m * (1 - m) / len(p.rankings)))
    return float(np.mean(errors)) if errors else 0.0
