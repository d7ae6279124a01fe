"""Per-position estimates of a ranker on logged traffic: the marginals of the LM's
elimination policy (exact by enumeration, or sampled) and IIPS/RIPS on top of them."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from ranking.rl.episodes import Episode
from ranking.types import Candidate, RankRequest
from recsys.replay.replay import served_log_propensity
from recsys.replay.run import _prob_of, slate_section
from recsys.replay.slate_report import (
    draw_rankings,
    enumerated,
    policy_rankings,
    sampled,
    slate_estimates,
)


def logged_episodes(ranker, n: int = 12, k: int = 4) -> list[Episode]:
    """Traffic the ranker itself logged: a draw at T=1 and its exact log propensity."""
    out = []
    for u in range(n):
        request = RankRequest(
            task="rec-movie",
            candidates=tuple(
                Candidate(f"{u}-{j}", f"Movie {j} ({1980 + j})", score=float(-j)) for j in range(k)
            ),
            history=("Heat (1995)",),
            temperature=1.0,
            seed=u,
        )
        result = ranker.rank(request)
        out.append(Episode(request=dataclasses.replace(request, temperature=0.0),
                           ground_truth=result.order[u % k], user=f"u{u}",
                           logged_order=list(result.order),
                           logged_log_propensity=result.log_propensity))  # fmt: skip
    return out


def test_exact_marginals_of_the_elimination_policy_are_a_distribution(tiny_ranker):
    episode = logged_episodes(tiny_ranker, n=1)[0]
    policy = enumerated(episode.request, _prob_of(tiny_ranker))
    assert len(policy.rankings) == 24 and policy.weights.sum() == pytest.approx(1.0)
    for k in range(4):
        assert sum(policy.position(k, i) for i in episode.request.ids) == pytest.approx(1.0)
    # the logged ranking's exact probability is the one the ranker logged
    logged = policy.weights[policy.rankings.index(tuple(episode.logged_order))]
    assert np.log(logged) == pytest.approx(episode.logged_log_propensity, abs=1e-4)


def test_sampled_marginals_agree_with_the_exact_ones_within_their_error(tiny_ranker):
    episode = logged_episodes(tiny_ranker, n=1)[0]
    exact = enumerated(episode.request, _prob_of(tiny_ranker))
    draws = 400
    drawn = sampled(draw_rankings(tiny_ranker, [episode.request], draws)[0])
    for k in range(4):
        for item in episode.request.ids:
            p = exact.position(k, item)
            assert abs(drawn.position(k, item) - p) <= 4 * np.sqrt(p * (1 - p) / draws) + 0.01


def test_the_logging_policy_evaluated_on_itself_has_unit_weights(tiny_ranker):
    """Known answer: target = logging policy, exact marginals -> every weight is 1, IIPS is
    the logged click rate and the effective sample size is the number of rounds."""
    episodes = logged_episodes(tiny_ranker)
    target_lp = served_log_propensity(tiny_ranker)
    out = slate_section(episodes, tiny_ranker, tiny_ranker, 8, target_lp)
    assert out["exact"] and out["rounds"] == 12 and out["marginal_standard_error"] == 0
    for name in ("iips", "rips"):
        assert out[name]["estimate"] == pytest.approx(out["logging policy (on-policy mean)"])
        assert out[name]["low"] <= out[name]["estimate"] <= out[name]["high"]
    assert out["iips"]["ess"] == pytest.approx(12)
    assert out["whole_ranking_ips_ess"] == pytest.approx(12, rel=1e-3)


def test_sampled_logging_marginals_count_the_logged_ranking(tiny_ranker):
    episodes = logged_episodes(tiny_ranker, n=3, k=6)  # 720 rankings: sampled, not enumerated
    policies, exact = policy_rankings(tiny_ranker, episodes, 5, include_logged=True)
    assert not exact and all(len(p.rankings) == 6 for p in policies)
    for e, p in zip(episodes, policies, strict=True):
        assert p.rankings[0] == tuple(e.logged_order)
        assert all(p.position(k, e.logged_order[k]) >= 1 / 6 for k in range(6))


def test_a_policy_that_always_shows_the_click_in_one_place_has_no_sampling_error():
    """Nine draws of 1/9 add up to 1.0000000000000002: a marginal stays a probability, and
    a logging policy that put the clicked item at the same position in all of them has a
    standard error of 0 (before, the loop's replay at 8 draws failed: math domain error)."""
    request = RankRequest(task="rec-movie", candidates=tuple(
        Candidate(c, f"Movie {c}", score=1.0) for c in "abcd"))  # fmt: skip
    episode = Episode(request=request, ground_truth="a", user="u",
                      logged_order=["a", "b", "c", "d"], logged_log_propensity=-0.1)  # fmt: skip
    always = sampled([("a", "b", "c", "d")] * 9)
    assert sum(always.weights) > 1.0 and always.position(0, "a") == 1.0
    out = slate_estimates([episode], [always], [always], n_boot=10)
    assert out["marginal_standard_error"] == 0.0
    assert out["iips"]["estimate"] == pytest.approx(1.0)
