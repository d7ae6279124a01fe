"""Score fusion (ranking.fusion): one definition in the served engine and in training.

Known-answer biases; alpha 0 is the ranker alone and a large alpha the retrieval order in
every label mode; fused step probabilities and log-propensities equal a brute-force
recomputation on the tiny model; the trainer's greedy decoding agrees with the engine;
speculation and deadlines stay exact; scoreless candidates and reason mode say why nothing
was fused. The CLI, API, registry and eval harness: test_fusion_settings.py.
"""

from __future__ import annotations

import dataclasses
import json
import math

import numpy as np
import pytest
import torch

from ranking.backends.fake import ScriptedBackend
from ranking.engine import Ranker
from ranking.errors import RequestError
from ranking.fusion import (
    NOTE_NO_SCORE,
    NOTE_REASON_MODE,
    RETRIEVAL_ORDER,
    fuse_step,
    fusion_bias,
    zscores,
)
from ranking.modes.direct import build_ranking_sequence
from ranking.modes.incremental import build_sequence
from ranking.modes.score import step_prompt
from ranking.prompts import labels_for
from ranking.types import Candidate, RankRequest
from tests.fixtures.requests import make_request

LABEL_MODES = ["incremental", "score", "direct"]


def scored_request(n: int = 6, mode: str = "incremental", shuffle: int = 0, **kw) -> RankRequest:
    """Distinct retrieval scores in a seeded order, so the retrieval order is not the list's;
    `kw` are request fields (`seed` is the sampling seed)."""
    scores = np.random.default_rng(shuffle).permutation(n) * 0.37 + 0.1
    return make_request(n, mode, scores=[float(s) for s in scores], **kw)


def by_score(req: RankRequest) -> list[str]:
    return [c.id for c in sorted(req.candidates, key=lambda c: -(c.score or 0.0))]


def is_permutation(order: list[str], req: RankRequest) -> bool:
    return len(order) == len(req.ids) and sorted(order) == sorted(req.ids)


def same_result(a, b) -> None:
    assert a.order == b.order
    assert [s.eliminated for s in a.steps] == [s.eliminated for s in b.steps]
    assert [s.prob for s in a.steps] == pytest.approx([s.prob for s in b.steps], rel=1e-6)
    assert a.log_propensity == pytest.approx(b.log_propensity, rel=1e-6, abs=1e-9)


# ---------------------------------------------------------------- the definition


def test_bias_known_answer():
    # mean 2, sample standard deviation 1: z = (1, -1, 0)
    assert zscores([3.0, 1.0, 2.0]) == pytest.approx([1.0, -1.0, 0.0])
    assert fusion_bias([3.0, 1.0, 2.0], 2.0) == pytest.approx([-2.0, 2.0, 0.0])
    assert fusion_bias([3.0, 1.0, 2.0], 2.0, eliminates=False) == pytest.approx([2.0, -2.0, 0.0])
    assert fusion_bias([5.0, 5.0, 5.0], 3.0) == pytest.approx([0.0, 0.0, 0.0])  # std 0
    assert fusion_bias([5.0], 3.0) == pytest.approx([0.0])
    assert fusion_bias([1.0, None], 1.0) is None
    assert fusion_bias([1.0, 2.0], 0.0) is None


def test_fuse_step_adds_the_bias_and_renormalises():
    lp = np.log(np.array([0.5, 0.3, 0.2]))
    bias = np.array([-1.0, 0.5, 0.0])
    fused = fuse_step(lp, bias)
    assert np.exp(fused).sum() == pytest.approx(1.0)
    assert fused - fused[2] == pytest.approx(lp + bias - lp[2])  # same odds as lp + bias
    assert fuse_step(lp, None) is lp


# ---------------------------------------------------------------- the engine, tiny model


def brute_force(backend, req: RankRequest, alpha: float) -> tuple[list[str], list[float]]:
    """The fused ranking recomputed from full forward passes: (chosen ids, step probs)."""
    mode = req.mode
    bias = fusion_bias([c.score for c in req.candidates], alpha, eliminates=mode != "direct")
    seq = build_ranking_sequence(req, backend) if mode == "direct" else build_sequence(req, backend)
    rng = np.random.default_rng(req.seed)
    remaining, chosen, ids, probs = list(range(len(req.candidates))), [], [], []
    while len(remaining) > 1:
        if mode == "score":
            ctx = backend.encode(step_prompt(req, remaining, backend))
            allowed = [t for _, t in labels_for(backend.tokenizer, len(remaining))]
        else:
            ctx, allowed = seq.context(chosen), [seq.label_ids[i] for i in remaining]
        with torch.inference_mode():
            logits = backend.model(torch.tensor([ctx])).logits[0, -1, allowed].double()
        x = torch.log_softmax(logits, -1).numpy() + bias[remaining]
        if req.temperature > 0:
            p = np.exp((x - x.max()) / req.temperature)
            p /= p.sum()
            pick = int(rng.choice(len(p), p=p))
        else:
            p = np.exp(x - x.max())
            p /= p.sum()
            pick = int(np.argmax(p))
        probs.append(float(p[pick]))
        chosen.append(remaining.pop(pick))
        ids.append(req.candidates[chosen[-1]].id)
    return ids, probs


@pytest.mark.parametrize("mode", LABEL_MODES)
@pytest.mark.parametrize("temperature", [0.0, 1.5])
def test_alpha_zero_is_exactly_the_ranker_alone(tiny_backend, mode, temperature):
    req = scored_request(6, mode=mode, temperature=temperature, shuffle=4, seed=11)
    plain = Ranker(tiny_backend).rank(req)
    zero = Ranker(tiny_backend).rank(dataclasses.replace(req, fusion_alpha=0.0))
    # a request's 0 overrides a ranker default
    overridden = Ranker(tiny_backend, fusion_alpha=5.0).rank(
        dataclasses.replace(req, fusion_alpha=0.0)
    )
    for res in (zero, overridden):
        same_result(res, plain)
        assert res.fusion_alpha == 0.0 and res.fusion_note is None


@pytest.mark.parametrize("mode", LABEL_MODES)
@pytest.mark.parametrize("temperature", [0.0, 1.0])
def test_large_alpha_is_the_retrieval_order(tiny_backend, mode, temperature):
    req = scored_request(8, mode=mode, temperature=temperature, shuffle=2, seed=11)
    assert by_score(req) != list(req.ids)  # the test would prove nothing otherwise
    res = Ranker(tiny_backend).rank(dataclasses.replace(req, fusion_alpha=1e4))
    assert is_permutation(res.order, req)
    assert res.order == by_score(req)
    assert res.fusion_alpha == 1e4
    # the ranker's own default does the same when the request sets nothing
    assert Ranker(tiny_backend, fusion_alpha=1e4).rank(req).order == by_score(req)


@pytest.mark.parametrize(
    ("mode", "temperature"),
    [("incremental", 0.0), ("score", 0.0), ("direct", 0.0), ("incremental", 1.3)],
)
def test_fused_steps_and_propensity_match_brute_force(tiny_backend, mode, temperature):
    req = scored_request(5, mode=mode, temperature=temperature, shuffle=3, seed=3, fusion_alpha=1.5)
    res = Ranker(tiny_backend, speculate=0).rank(req)
    ids, probs = brute_force(tiny_backend, req, 1.5)
    assert [s.eliminated for s in res.steps] == ids
    assert [s.prob for s in res.steps] == pytest.approx(probs, rel=1e-4)
    assert res.log_propensity == pytest.approx(sum(math.log(s.prob) for s in res.steps))
    assert res.log_propensity == pytest.approx(sum(math.log(p) for p in probs), abs=1e-4)
    assert is_permutation(res.order, req)


def test_fusion_changes_the_ranking_between_the_limits(tiny_backend):
    req = scored_request(8, shuffle=5)
    orders = {tuple(Ranker(tiny_backend, fusion_alpha=a).rank(req).order) for a in (0, 1, 1e4)}
    assert len(orders) > 1


def test_trainer_greedy_decoding_agrees_with_the_engine(tiny_backend):
    """ranking.rl.policy (training validation) and the served engine fuse identically."""
    from ranking.rl.policy import greedy_order, greedy_orders
    from ranking.rl.sequence import build_sequence as rl_sequence

    req = scored_request(7, shuffle=6)
    seq = rl_sequence(req, tiny_backend.tokenizer)
    scores = [c.score for c in req.candidates]
    alphas = (0.0, 0.7, 2.0, 1e4)
    ranker = Ranker(tiny_backend, speculate=0)
    served = [ranker.rank(dataclasses.replace(req, fusion_alpha=a)).order for a in alphas]
    with torch.no_grad():
        trained = [greedy_order(tiny_backend.model, seq, scores, a) for a in alphas]
        shared = greedy_orders(tiny_backend.model, seq, scores, alphas)
    assert trained == served
    assert shared == served
    assert len({tuple(o) for o in served}) > 1


@pytest.mark.parametrize("mode", ["incremental", "direct"])
@pytest.mark.parametrize("temperature", [0.0, 2.0])
def test_speculation_with_fusion_is_exact(tiny_backend, mode, temperature):
    reqs = [
        scored_request(n, mode=mode, temperature=temperature, shuffle=n, seed=n, fusion_alpha=1.0)
        for n in (12, 9)
    ]
    plain = Ranker(tiny_backend, speculate=0).rank_batch(reqs)
    fast = Ranker(tiny_backend, speculate=6).rank_batch(reqs)
    for p, f in zip(plain, fast, strict=True):
        same_result(f, p)
        assert f.fusion_alpha == 1.0


def test_scoreless_candidate_turns_fusion_off_visibly(tiny_backend):
    req = scored_request(6, shuffle=1)
    cands = (*req.candidates[:-1], dataclasses.replace(req.candidates[-1], score=None))
    req = dataclasses.replace(req, candidates=cands)
    plain = Ranker(tiny_backend).rank(req)
    asked = Ranker(tiny_backend).rank(dataclasses.replace(req, fusion_alpha=3.0))
    same_result(asked, plain)
    assert (asked.fusion_alpha, asked.fusion_note) == (0.0, NOTE_NO_SCORE)
    assert (plain.fusion_alpha, plain.fusion_note) == (0.0, None)


# ---------------------------------------------------------------- deadlines, reason mode


def test_deadline_fallback_orders_the_rest_by_the_fused_step(fake_clock):
    def slow_logprobs(context, allowed):
        fake_clock.sleep(0.1)  # each model call takes exactly 100 ms of (fake) time
        return np.arange(len(allowed), dtype=float)  # the model: later labels go first

    cands = tuple(Candidate(c, f"item {c}", score=1.0 + k) for k, c in enumerate("pqrst"))
    req = RankRequest(task="rec-movie", candidates=cands, deadline_ms=250, fusion_alpha=50.0)
    backend = ScriptedBackend(logprob_fn=slow_logprobs)
    res = Ranker(backend).rank(req)
    assert res.fallback is True
    # two model steps (see test_ranking_modes' deadline test); fusion eliminates low scores
    assert [s.eliminated for s in res.steps] == ["p", "q"]
    assert res.elapsed_ms == 200.0 and len(backend.calls) == 2
    # survivors by the last fused step's elimination probability, lowest first
    assert res.order == ["t", "s", "r", "q", "p"]
    assert res.log_propensity == pytest.approx(sum(math.log(s.prob) for s in res.steps))


def test_reason_mode_reports_a_default_weight_as_not_applied():
    cands = tuple(Candidate(c, f"item {c}", score=1.0 + i) for i, c in enumerate("abc"))
    req = RankRequest(task="rec-movie", candidates=cands, mode="reason")
    res = Ranker(ScriptedBackend(), fusion_alpha=2.0).rank(req)
    assert sorted(res.order) == ["a", "b", "c"]
    assert (res.fusion_alpha, res.fusion_note) == (0.0, NOTE_REASON_MODE)
    assert Ranker(ScriptedBackend()).rank(req).fusion_note is None


BASE = {"task": "rec-movie", "candidates": [{"id": "a", "text": "A", "score": 1.0}]}


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"fusion_alpha": -1}, "fusion_alpha must be a finite number >= 0 or null, got -1"),
        ({"fusion_alpha": float("nan")}, "fusion_alpha must be a finite number >= 0"),
        ({"fusion_alpha": float("inf")}, "fusion_alpha must be a finite number >= 0"),
        ({"fusion_alpha": "2"}, "fusion_alpha must be a finite number >= 0 or null, got '2'"),
        ({"fusion_alpha": True}, "fusion_alpha must be a finite number >= 0"),
        ({"fusion_alpha": 1.0, "mode": "reason"}, "reason mode generates free text"),
    ],
)
def test_bad_fusion_requests_are_clear_errors(change, message):
    with pytest.raises(RequestError, match=message):
        RankRequest.from_dict({**BASE, **change})


def test_reason_request_with_alpha_zero_is_fine():
    assert RankRequest.from_dict({**BASE, "mode": "reason", "fusion_alpha": 0}).fusion_alpha == 0


@pytest.mark.parametrize("alpha", [-0.5, float("nan"), -math.inf, "2", True])
def test_bad_ranker_default_is_a_clear_error(alpha):
    with pytest.raises(RequestError, match="fusion_alpha must be a finite number >= 0"):
        Ranker(ScriptedBackend(), fusion_alpha=alpha)


# ---------------------------------------------------------------- the retrieval order


def test_retrieval_order_has_no_bias_to_fuse_or_train_with():
    """+inf is not a weight the trainer's fusion can use (it would be NaN at z = 0)."""
    with pytest.raises(ValueError, match="RETRIEVAL_ORDER is the retrieval order itself"):
        fusion_bias([3.0, 1.0, 2.0], RETRIEVAL_ORDER)
    assert math.isinf(RETRIEVAL_ORDER) and RETRIEVAL_ORDER > 0


def tied_request(mode: str, **kw) -> RankRequest:
    """Scores out of list order, two exact ties and an unscored candidate."""
    scores = [0.2, 0.9, 0.5, 0.9, None, 0.5, 0.1]
    cands = tuple(Candidate(f"c{i}", f"item {i}", score=s) for i, s in enumerate(scores))
    return RankRequest(task="rec-movie", candidates=cands, history=("a film",), mode=mode, **kw)


@pytest.mark.parametrize("mode", LABEL_MODES)
@pytest.mark.parametrize("temperature", [0.0, 1.5])
def test_retrieval_order_default_is_exactly_the_retrieval_order(tiny_backend, mode, temperature):
    """The serving default of an unvalidated model: by score, ties and unscored candidates in
    the request's order (as `retrieval_order` and the gate's retrieval baseline), every step
    with probability 1, no model call."""
    req = tied_request(mode, temperature=temperature, seed=5)
    expected = ["c1", "c3", "c2", "c5", "c0", "c6", "c4"]
    for backend in (tiny_backend, ScriptedBackend(logprob_fn=lambda c, a: np.arange(len(a)))):
        res = Ranker(backend, fusion_alpha=RETRIEVAL_ORDER).rank(req)
        assert res.order == expected and is_permutation(res.order, req)
        assert [s.prob for s in res.steps] == [1.0] * 6
        assert {s.matched for s in res.steps} == {"retrieval"}
        assert res.log_propensity == 0.0 and not res.fallback
        assert res.fusion_alpha == RETRIEVAL_ORDER and res.fusion_note is None
        assert res.generated_tokens == 0 and res.invalid_answers == 0
        assert res.to_dict()["fusion_alpha"] is None  # JSON has no infinity
        json.dumps(res.to_dict(), allow_nan=False)
    assert backend.calls == []  # the model is not asked


def test_retrieval_order_keeps_a_sorted_list_and_follows_scores(tiny_backend):
    req = scored_request(8, shuffle=2)
    assert by_score(req) != list(req.ids)
    ranker = Ranker(tiny_backend, fusion_alpha=RETRIEVAL_ORDER)
    assert ranker.rank(req).order == by_score(req)
    batch = [scored_request(n, shuffle=n) for n in (3, 9, 5)]
    assert [r.order for r in ranker.rank_batch(batch)] == [by_score(r) for r in batch]


def test_a_request_s_weight_overrides_the_retrieval_order_default(tiny_backend):
    req = scored_request(6, shuffle=4, temperature=1.0, seed=2)
    ranker = Ranker(tiny_backend, fusion_alpha=RETRIEVAL_ORDER, speculate=0)
    alone = ranker.rank(dataclasses.replace(req, fusion_alpha=0.0))
    same_result(alone, Ranker(tiny_backend, speculate=0).rank(req))
    fused = ranker.rank(dataclasses.replace(req, fusion_alpha=1.5))
    same_result(fused, Ranker(tiny_backend, speculate=0, fusion_alpha=1.5).rank(req))
    assert (alone.fusion_alpha, fused.fusion_alpha) == (0.0, 1.5)
    # reason mode cannot follow a weight: its default is reported as not applied, as before
    reason = dataclasses.replace(req, mode="reason")
    res = Ranker(ScriptedBackend(), fusion_alpha=RETRIEVAL_ORDER).rank(reason)
    assert (res.fusion_alpha, res.fusion_note) == (0.0, NOTE_REASON_MODE)
