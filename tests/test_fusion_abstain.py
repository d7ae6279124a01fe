"""The abstention rule (ranking.fusion `abstain`, `RankRequest.fusion_abstain_below`): known
values, every candidate abstaining is the retrieval order, no candidate abstaining is plain
fusion, steps and propensities stay exact, bad input is refused at every layer."""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest

from ranking.engine import Ranker
from ranking.errors import RequestError
from ranking.fusion import ABSTAIN_SIGNAL, abstain, abstaining, fuse_step, fusion_bias
from ranking.types import MAX_ABSTAIN, RankRequest
from recsys.errors import UserError
from recsys.eval.harness import EngineRanker, make_ranker, with_interactions
from tests.test_api import REQUEST, make_client
from tests.test_fusion import by_score, is_permutation, same_result, scored_request
from tests.test_ltr import rec_world


def with_counts(req: RankRequest, counts: list[int | None], below: int) -> RankRequest:
    cands = tuple(
        c if n is None else dataclasses.replace(c, signals={**c.signals, ABSTAIN_SIGNAL: n})
        for c, n in zip(req.candidates, counts, strict=True)
    )
    return dataclasses.replace(req, candidates=cands, fusion_abstain_below=below)


@pytest.mark.parametrize(
    ("lp", "mask", "expected"),
    [
        ([-0.5, -4.0, -2.0], [False, True, False], [-0.5, -1.25, -2.0]),
        ([-1.0, -2.0, -3.0], [False, False, False], [-1.0, -2.0, -3.0]),
        ([-1.0, -2.0, -3.0], [True, True, True], [0.0, 0.0, 0.0]),
        ([-1.0, -9.0, -3.0, -7.0], [False, True, True, False], [-1.0, -4.0, -4.0, -7.0]),
    ],
)
def test_abstaining_candidates_take_the_others_mean(lp, mask, expected) -> None:
    np.testing.assert_allclose(abstain(np.array(lp), np.array(mask)), expected)


def test_the_mask_reads_the_interactions_signal() -> None:
    req = with_counts(scored_request(5), [0, 4, 5, None, 100], below=5)
    assert abstaining(req).tolist() == [True, True, False, False, False]
    assert abstaining(dataclasses.replace(req, fusion_abstain_below=0)) is None
    assert abstaining(dataclasses.replace(req, fusion_abstain_below=1)).tolist() == [
        True, False, False, False, False,
    ]  # fmt: skip


def test_every_candidate_abstaining_is_the_retrieval_order(tiny_backend) -> None:
    req = scored_request(7, shuffle=4, fusion_alpha=0.01)
    fused = Ranker(tiny_backend, speculate=0).rank(req)
    assert fused.order != by_score(req)  # at this weight the LM moves the order
    res = Ranker(tiny_backend, speculate=0).rank(with_counts(req, [0] * 7, below=5))
    assert res.order == by_score(req) and is_permutation(res.order, req)
    assert res.fusion_abstained == tuple(req.ids) and fused.fusion_abstained == ()
    # each step is the bias alone, renormalised: the LM has no opinion left
    bias = fusion_bias([c.score for c in req.candidates], 0.01)
    remaining = list(req.ids)
    for step in res.steps:
        idx = [req.ids.index(r) for r in remaining]
        p = np.exp(fuse_step(np.zeros(len(idx)), bias[idx]))
        assert step.prob == pytest.approx(float(p[remaining.index(step.eliminated)]), rel=1e-6)
        remaining.remove(step.eliminated)
    assert res.log_propensity == pytest.approx(sum(math.log(s.prob) for s in res.steps))


def test_no_candidate_abstaining_is_plain_fusion(tiny_backend) -> None:
    req = scored_request(6, shuffle=2, fusion_alpha=1.0, temperature=1.0, seed=3)
    plain = Ranker(tiny_backend, speculate=0).rank(req)
    counted = with_counts(req, [50, 60, None, 70, 80, 90], below=5)
    same_result(Ranker(tiny_backend, speculate=0).rank(counted), plain)


def test_a_partly_abstaining_ranking_is_exact_with_and_without_speculation(tiny_backend) -> None:
    req = scored_request(6, shuffle=2, fusion_alpha=0.3)
    ranker = Ranker(tiny_backend, speculate=0)
    some = with_counts(req, [100, 100, 0, 100, 100, 100], below=5)
    res = ranker.rank(some)
    assert is_permutation(res.order, req) and res.fusion_abstained == (req.ids[2],)
    assert res.log_propensity == pytest.approx(sum(math.log(s.prob) for s in res.steps))
    # speculation decodes the same fused, abstaining policy
    same_result(Ranker(tiny_backend, speculate=6).rank(some), res)


BASE = {"task": "rec-movie", "candidates": [{"id": "a", "text": "A", "score": 1.0}]}


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"fusion_abstain_below": -1}, "fusion_abstain_below must be a whole number from 0"),
        ({"fusion_abstain_below": 2.5}, "fusion_abstain_below must be a whole number"),
        ({"fusion_abstain_below": True}, "fusion_abstain_below must be a whole number"),
        ({"fusion_abstain_below": MAX_ABSTAIN + 1}, f"from 0 to {MAX_ABSTAIN}"),
        ({"fusion_abstain_below": 5, "candidates": [
            {"id": "a", "text": "A", "score": 1.0, "signals": {"interactions": "many"}}]},
         "signal 'interactions' must be a count >= 0"),
        ({"fusion_abstain_below": 5, "candidates": [
            {"id": "a", "text": "A", "score": 1.0, "signals": {"interactions": -2}}]},
         "signal 'interactions' must be a count >= 0"),
    ],
)  # fmt: skip
def test_bad_abstention_requests_are_clear_errors(change, message) -> None:
    with pytest.raises(RequestError, match=message):
        RankRequest.from_dict({**BASE, **change})


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"name": "lambdamart", "fusion_abstain_below": 5},
         "--fusion-abstain-below applies to engine modes"),
        ({"name": "incremental", "fusion_abstain_below": 5}, "it needs --fusion-alpha > 0"),
        ({"name": "incremental", "fusion_alpha": 5.0, "fusion_abstain_below": -1},
         "--fusion-abstain-below -1: give a whole number"),
    ],
)  # fmt: skip
def test_the_eval_layer_refuses_abstention_it_cannot_apply(kwargs, message) -> None:
    with pytest.raises(UserError, match=message):
        make_ranker(**kwargs)


def test_the_harness_gives_candidates_their_training_interactions(tiny_ranker) -> None:
    ts = rec_world()
    counts = dict(ts.train.group_by("item_id").len().iter_rows())
    inst = with_interactions(ts.instances[0], counts)
    assert [c.signals[ABSTAIN_SIGNAL] for c in inst.candidates] == [
        counts.get(c.id, 0) for c in ts.instances[0].candidates
    ]
    evaluator = EngineRanker(tiny_ranker, "incremental", fusion_signal="transitions",
                             fusion_alpha=1.0, fusion_abstain_below=5)  # fmt: skip
    assert evaluator.name == "incremental+fusion@1+abstain<5"
    evaluator.prepare(ts)
    assert evaluator.interactions == counts


def test_the_api_takes_the_option_and_the_servers_default(tiny_ranker, tiny_backend) -> None:
    cold = [{**c, "signals": {"interactions": 0}} for c in REQUEST["candidates"]]
    body = {**REQUEST, "candidates": cold, "fusion_alpha": 0.5, "fusion_abstain_below": 3}
    by_score_ids = [c["id"] for c in sorted(REQUEST["candidates"], key=lambda c: -c["score"])]
    with make_client(tiny_ranker) as client:
        answer = client.post("/v1/rank", json=body).json()
        refused = client.post("/v1/rank", json={**body, "fusion_abstain_below": -1})
    assert answer["order"] == by_score_ids
    assert sorted(answer["fusion_abstained"]) == sorted(by_score_ids)
    assert refused.status_code == 422 and "fusion_abstain_below" in refused.json()["error"]
    unset = {k: v for k, v in body.items() if k != "fusion_abstain_below"}
    with make_client(Ranker(tiny_backend, fusion_abstain_below=3)) as client:
        assert client.post("/v1/rank", json=unset).json()["order"] == by_score_ids


def test_the_rankers_default_applies_to_requests_that_set_none(tiny_backend) -> None:
    req = with_counts(scored_request(7, shuffle=4, fusion_alpha=0.01), [0] * 7, below=0)
    unset = dataclasses.replace(req, fusion_abstain_below=None)
    ranker = Ranker(tiny_backend, speculate=0, fusion_abstain_below=5)
    assert ranker.rank(unset).order == by_score(req)  # the default abstains on all
    # a request's own 0 turns it off: plain fusion, as a ranker without the default
    same_result(ranker.rank(req), Ranker(tiny_backend, speculate=0).rank(req))
    with pytest.raises(RequestError, match="fusion_abstain_below must be a whole number"):
        Ranker(tiny_backend, fusion_abstain_below=-1)


def test_settings_reach_the_served_ranker_and_the_index_gives_the_signal() -> None:
    from recsys.pipeline import signals
    from recsys.runtime import RankerConfig
    from recsys.settings import Settings
    from retrieval.fusion import FusedCandidate
    from retrieval.generator import CandidateGenerator, GeneratorConfig

    config = RankerConfig.from_settings(Settings(fusion_abstain_below=5))
    assert config.fusion_abstain_below == 5
    users, items = ["u1", "u1", "u2", "u2", "u3"], ["a", "b", "a", "c", "a"]
    titles = {i: f"item {i}" for i in "abcd"}
    gen = CandidateGenerator.build(users, items, list(range(5)), titles,
                                   config=GeneratorConfig(cf_factors=2, cf_epochs=1))  # fmt: skip
    assert [gen.interactions(i) for i in ("a", "b", "c", "d", "unknown")] == [3, 1, 1, 0, 0]
    assert signals(gen, FusedCandidate("a", 0.5))[ABSTAIN_SIGNAL] == 3


def test_the_impression_log_says_where_the_lm_abstained(tiny_ranker, engine) -> None:
    import sqlalchemy as sa

    from recsys.db.models import Impression

    counts = {"50": 100, "181": 0, "1": 100, "7": 2}
    cands = [{**c, "signals": {"interactions": counts[c["id"]]}} for c in REQUEST["candidates"]]
    body = {**REQUEST, "candidates": cands, "fusion_alpha": 0.5, "fusion_abstain_below": 3,
            "user_id": "u1"}  # fmt: skip
    with make_client(tiny_ranker, engine) as client:
        answer = client.post("/v1/rank", json=body).json()
    assert sorted(answer["fusion_abstained"]) == ["181", "7"]
    with engine.connect() as conn:
        query = sa.select(Impression.position, Impression.context)
        rows = conn.execute(query.where(Impression.request_id == answer["request_id"])).all()
    shown = answer["order"]
    assert {shown[r.position]: r.context["abstained"] for r in rows} == {
        "50": False, "181": True, "1": False, "7": True,
    }  # fmt: skip
