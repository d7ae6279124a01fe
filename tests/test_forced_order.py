"""Scoring a given ranking under the served policy (`RankRequest.forced_order`,
`Ranker.log_probabilities`), and replay's off-policy estimates built on it: the probabilities
of every ranking add up to 1, a sampled ranking scores its own log-propensity in every label
mode (fusion, abstention, speculation, hybrid prompts, committees), and logged traffic
replays as it was served."""

from __future__ import annotations

import dataclasses
import itertools
import math
from datetime import timedelta

import numpy as np
import pytest
import torch

from ranking.backends.committee import CommitteeBackend
from ranking.backends.fake import ScriptedBackend, WordTokenizer
from ranking.engine import Ranker
from ranking.errors import RequestError
from ranking.fusion import RETRIEVAL_ORDER
from ranking.rl.episodes import Episode
from ranking.types import RankRequest
from recsys.replay.replay import off_policy_estimates, served_log_propensity
from tests.fixtures.requests import make_request
from tests.test_fusion_abstain import with_counts
from tests.test_hybrid import fresh_hybrid, request

LABEL_MODES = ("incremental", "score", "direct")


def scored(ranker: Ranker, req: RankRequest, orders) -> np.ndarray:
    return np.exp(ranker.log_probabilities([req] * len(orders), orders))


@pytest.mark.parametrize("mode", LABEL_MODES)
@pytest.mark.parametrize("temperature", [0.0, 2.0])
def test_every_rankings_probability_adds_up_to_one(tiny_backend, mode, temperature) -> None:
    """Known answer: a policy is a distribution over the n! rankings, here with fusion and
    one abstaining candidate; T = 0 scores the model's own T = 1 distribution."""
    req = with_counts(make_request(4, mode, fusion_alpha=0.7, temperature=temperature),
                      [100, 0, 100, 100], below=5)  # fmt: skip
    ranker = Ranker(tiny_backend, speculate=0)
    p = scored(ranker, req, list(itertools.permutations(req.ids)))
    assert p.sum() == pytest.approx(1.0, abs=1e-6) and (p > 0).all()


@pytest.mark.parametrize("mode", LABEL_MODES)
@pytest.mark.parametrize(("speculate", "alpha", "below"), [(0, 0.0, 0), (4, 0.0, 0), (0, 1.5, 5),
                                                          (4, 1.5, 5)])  # fmt: skip
def test_a_sampled_ranking_scores_its_own_log_propensity(
    tiny_backend, mode, speculate, alpha, below
) -> None:
    ranker = Ranker(tiny_backend, batch_size=3, speculate=speculate, fusion_alpha=alpha,
                    fusion_abstain_below=below)  # fmt: skip
    reqs = [with_counts(make_request(7, mode, temperature=1.0, seed=s), [0, 9, 9, 2, 9, 9, 9],
                        below=below) for s in range(5)]  # fmt: skip
    drawn = ranker.rank_batch(reqs)
    forced = [
        dataclasses.replace(r, forced_order=tuple(d.order))
        for r, d in zip(reqs, drawn, strict=True)
    ]
    again = ranker.rank_batch(forced)
    for d, f in zip(drawn, again, strict=True):
        assert f.order == d.order and not f.fallback
        assert f.log_propensity == pytest.approx(d.log_propensity, abs=1e-5)
        assert f.fusion_abstained == d.fusion_abstained
    lps = ranker.log_probabilities(reqs, [d.order for d in drawn])
    assert lps == pytest.approx([d.log_propensity for d in drawn], abs=1e-5)


def test_a_hybrid_ranking_is_scored_with_its_soft_tokens(tiny_model_dir) -> None:
    """What a hybrid serves reads CF vectors: its scores move with them (a text-prompt
    teacher forcing, what replay did before, could not see them)."""
    backend, hybrid = fresh_hybrid(tiny_model_dir)
    with torch.no_grad():
        hybrid.projector.out.weight.normal_(std=0.5)
    ranker = Ranker(backend, speculate=0, fusion_alpha=0.5)
    plain = request(["1", "2", "3", "4", "5"], ["6", "7"], temperature=1.0, seed=2)
    cands = tuple(dataclasses.replace(c, score=float(i)) for i, c in enumerate(plain.candidates))
    req = dataclasses.replace(plain, candidates=cands)
    drawn = ranker.rank(req)
    (lp,) = ranker.log_probabilities([req], [drawn.order])
    assert lp == pytest.approx(drawn.log_propensity, abs=1e-5)
    hybrid.vectors[[0, 1, 2]] += 2.0  # candidates "1", "2", "3"
    (moved,) = ranker.log_probabilities([req], [drawn.order])
    assert abs(moved - lp) > 1e-3


def test_a_committee_scores_with_its_pooled_steps() -> None:
    """A backend without continuation (each forced step one call) pooling two members."""
    tok = WordTokenizer()

    def member(seed: int) -> ScriptedBackend:
        table: dict[int, np.ndarray] = {}
        r = np.random.default_rng(seed)
        backend = ScriptedBackend(
            logprob_fn=lambda ctx, allowed: table.setdefault(
                len(allowed), r.normal(size=len(allowed))
            )
        )
        backend.tokenizer = tok
        return backend

    ranker = Ranker(CommitteeBackend([member(1), member(2)], [0.3, 0.7]), fusion_alpha=0.4)
    req = make_request(4, temperature=1.0, seed=5)
    drawn = ranker.rank(req)
    (lp,) = ranker.log_probabilities([req], [drawn.order])
    assert lp == pytest.approx(drawn.log_propensity, abs=1e-9)
    p = scored(ranker, req, list(itertools.permutations(req.ids)))
    assert p.sum() == pytest.approx(1.0, abs=1e-9)


def test_the_retrieval_order_policy_gives_probability_one_to_its_order_only(tiny_backend):
    ranker = Ranker(tiny_backend, fusion_alpha=RETRIEVAL_ORDER)
    req = make_request(5)  # scores 5, 4, ...: the list order is the retrieval order
    other = [req.ids[1], req.ids[0], *req.ids[2:]]
    assert ranker.log_probabilities([req, req], [req.ids, other]) == [0.0, -math.inf]
    assert ranker.rank(dataclasses.replace(req, forced_order=tuple(other))).order == other


BASE = {"task": "rec-movie", "candidates": [{"id": "a", "text": "A"}, {"id": "b", "text": "B"}]}


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"forced_order": ["a"]}, "forced_order must be a permutation of the 2 candidate ids"),
        ({"forced_order": ["a", "a"]}, "must be a permutation"),
        ({"forced_order": ["a", "c"]}, "must be a permutation"),
        ({"forced_order": ["a", "b", "c"]}, "must be a permutation"),
        ({"forced_order": "ab"}, "'forced_order' must be a list of candidate ids"),
        ({"forced_order": [1, 2]}, "'forced_order' must be a list of candidate ids"),
        ({"forced_order": ["b", "a"], "mode": "reason"},
         "forced_order needs a mode with step probabilities"),
    ],
)  # fmt: skip
def test_bad_forced_orders_are_clear_errors(change, message) -> None:
    with pytest.raises(RequestError, match=message):
        RankRequest.from_dict({**BASE, **change})


def test_off_policy_weights_are_one_when_the_fused_logging_policy_is_the_target(tiny_backend):
    """Known answer: traffic logged by a fused, abstaining ranker, evaluated as the target:
    every importance weight is 1, so IPS is the logged mean and the ESS the round count. The
    language model alone (what replay scored before) is a different policy."""
    served = Ranker(tiny_backend, fusion_alpha=1.0, fusion_abstain_below=5)
    logged = []
    for s in range(6):
        req = with_counts(make_request(5, temperature=1.0, seed=s), [0, 9, 9, 1, 9], below=5)
        req = dataclasses.replace(req, fusion_abstain_below=None)  # the ranker's default
        r = served.rank(req)
        logged.append(Episode(request=dataclasses.replace(req, temperature=0.0),
                              ground_truth=r.order[s % 5], logged_order=list(r.order),
                              logged_log_propensity=r.log_propensity))  # fmt: skip
    ope = off_policy_estimates(logged, served_log_propensity(served))
    assert ope["ess"] == pytest.approx(6.0, abs=1e-3)
    assert ope["ips"].startswith(ope["logging policy (on-policy mean)"])
    alone = off_policy_estimates(logged, served_log_propensity(Ranker(tiny_backend)))
    assert alone["ess"] < 5.9


def serve_log_and_read_back(engine, served: Ranker, **overrides):
    """One request ranked through the API by `served` (with the request's own `overrides`),
    logged, clicked (the item shown second) and read back as logged traffic:
    (the answer, its LoggedRequest)."""
    from recsys.db.catalogue import ItemRecord, ensure_items
    from recsys.db.engine import write_connection
    from recsys.db.events import InteractionRecord, log_interactions, logged_requests
    from recsys.db.models import utcnow
    from tests.test_api import REQUEST, make_client

    titles = {c["id"]: c["text"] for c in REQUEST["candidates"]}
    with write_connection(engine) as conn:
        ensure_items(conn, [ItemRecord(i, title=t) for i, t in {**titles, **HISTORY}.items()])
    before = utcnow() - timedelta(days=1)
    log_interactions([InteractionRecord("u1", h, "click", before + timedelta(minutes=k))
                      for k, h in enumerate(HISTORY)], engine=engine)  # fmt: skip
    cands = [{**c, "signals": {"interactions": COUNTS[c["id"]]}} for c in REQUEST["candidates"]]
    body = {**REQUEST, "candidates": cands, "history": list(HISTORY.values()), "user_id": "u1",
            "temperature": 1.0, "seed": 4, **overrides}  # fmt: skip
    with make_client(served, engine) as client:
        answer = client.post("/v1/rank", json=body).json()
    later = utcnow() + timedelta(minutes=1)
    log_interactions([InteractionRecord("u1", answer["order"][1], "click", later)], engine=engine)
    (record,) = logged_requests(engine=engine)
    return answer, record


HISTORY = {"h1": "Toy Story (1995)", "h2": "Heat (1995)"}
COUNTS = {"50": 100, "181": 0, "1": 100, "7": 2}


def test_logged_traffic_replays_as_it_was_served(tiny_backend, engine) -> None:
    """A request served through the API with fusion and abstention (signals on the
    candidates), logged, read back: the request replay rebuilds carries the signals and
    the history's ids, and scoring the shown ranking gives back the logged propensity."""
    from recsys.training import episode_from_logged

    served = Ranker(tiny_backend, fusion_alpha=0.5, fusion_abstain_below=3)
    answer, record = serve_log_and_read_back(engine, served)
    assert answer["fusion_abstained"]  # abstention took part in what was logged
    assert (record.fusion_alpha, record.fusion_abstain_below) == (0.5, 3)
    episode = episode_from_logged(record)
    req = episode.request
    assert req.history == tuple(HISTORY.values()) and req.history_ids == tuple(HISTORY)
    assert {c.id: c.signals for c in req.candidates} == {
        i: {"interactions": n} for i, n in COUNTS.items()
    }
    (lp,) = served_log_propensity(served)([episode])
    assert lp == pytest.approx(answer["log_propensity"], abs=1e-5)


def test_a_requests_own_fusion_is_replayed_for_the_logging_policy_only(tiny_backend, engine):
    """A request that set its own fusion weight and abstention threshold is logged with
    them. The logging policy is scored (and its per-position marginals computed) on the
    request as served (`Episode.as_logged`); a target policy ranks with its own defaults.
    Known answer: a target equal to the logging policy as served gets per-position weights
    of 1, so IIPS and RIPS equal the logged reward exactly; with the logging ranker's
    defaults instead (as before the settings were logged) they do not."""
    from recsys.replay.run import slate_section
    from recsys.training import episode_from_logged

    served = Ranker(tiny_backend, fusion_alpha=0.5, fusion_abstain_below=3)
    answer, record = serve_log_and_read_back(engine, served, fusion_alpha=2.0,
                                             fusion_abstain_below=1)  # fmt: skip
    assert (answer["fusion_alpha"], answer["fusion_abstain_below"]) == (2.0, 1)
    assert answer["fusion_abstained"] == ["181"]  # the default threshold, 3, would add "7"
    assert (record.fusion_alpha, record.fusion_abstain_below) == (2.0, 1)
    episode = episode_from_logged(record)
    assert episode.request.fusion_alpha is None  # a target ranks with its own defaults
    as_served, as_default = served_log_propensity(served)([episode.as_logged(), episode])
    assert as_served == pytest.approx(answer["log_propensity"], abs=1e-5)
    assert abs(as_default - answer["log_propensity"]) > 1e-3

    same = Ranker(tiny_backend, fusion_alpha=2.0, fusion_abstain_below=1)
    slate = slate_section([episode], served, same, draws=4, target_lp=None)
    assert slate["exact"]  # 4 candidates: every ranking enumerated
    reward = slate["logging policy (on-policy mean)"]
    assert reward == pytest.approx(0.5)  # the item shown second was clicked
    for est in ("iips", "rips"):
        assert slate[est]["estimate"] == pytest.approx(reward, abs=1e-6)
    unlogged = dataclasses.replace(episode, logged_fusion_alpha=None, logged_abstain_below=None)
    before = slate_section([unlogged], served, same, draws=4, target_lp=None)
    assert before["rips"]["estimate"] != pytest.approx(reward, abs=1e-3)
