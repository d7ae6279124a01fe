"""Modes on the tiny model: distributions vs a brute-force reference, propensities, batching,
deadlines, many candidates."""

import dataclasses
import math

import numpy as np
import pytest

from ranking.backends.fake import ScriptedBackend, WordTokenizer
from ranking.engine import Ranker
from ranking.errors import RequestError
from ranking.modes.incremental import build_sequence
from ranking.modes.score import step_prompt
from ranking.types import Candidate, RankRequest
from tests.fixtures.models import brute_force
from tests.fixtures.requests import make_request


class Recording:
    """Wraps a backend and records every constrained call (contexts, allowed, outputs)."""

    def __init__(self, backend):
        self.inner = backend
        self.calls = []

    def __getattr__(self, name):
        return getattr(self.inner, name)

    def chat_prompt(self, user, system=None):
        return self.inner.chat_prompt(user, system)

    def encode(self, text):
        return self.inner.encode(text)

    def next_token_logprobs(self, contexts, allowed):
        out = self.inner.next_token_logprobs(contexts, allowed)
        self.calls.append(([list(c) for c in contexts], [list(a) for a in allowed], out))
        return out


def is_permutation(result, request):
    return sorted(result.order) == sorted(request.ids) and len(result.order) == len(request.ids)


@pytest.mark.parametrize("mode", ["incremental", "score", "direct"])
def test_step_distributions_match_brute_force(tiny_ranker, mode):
    rec = Recording(tiny_ranker.backend)
    ranker = Ranker(rec, batch_size=4, speculate=0)  # one call per step, recorded
    req = make_request(6, mode=mode)
    res = ranker.rank(req)
    assert is_permutation(res, req)
    assert len(rec.calls) == 5  # n - 1 constrained steps
    chosen: list[int] = []
    remaining = list(range(6))
    seq = build_sequence(req, rec) if mode == "incremental" else None
    for t, (ctxs, allowed, out) in enumerate(rec.calls):
        (ctx,), (allow,), (lp,) = ctxs, allowed, out
        if mode == "incremental":  # the context is the prompt + labels emitted so far
            assert ctx == seq.context(chosen)
        if mode == "score":  # a fresh prompt listing the remaining candidates
            assert ctx == rec.encode(step_prompt(req, remaining, rec))
        ref = brute_force(rec.model, ctx, allow)
        np.testing.assert_allclose(lp, ref, atol=1e-4)
        pick = int(np.argmax(ref))  # greedy
        step = res.steps[t]
        assert step.prob == pytest.approx(math.exp(ref[pick]), rel=1e-4)
        assert step.remaining == len(remaining)
        idx = remaining.pop(pick)
        chosen.append(idx)
        assert step.eliminated == req.candidates[idx].id


@pytest.mark.parametrize("mode", ["incremental", "score", "direct"])
def test_log_propensity_is_sum_of_step_logprobs(tiny_ranker, mode):
    for temperature, seed in ((0.0, None), (1.3, 5)):
        req = make_request(7, mode=mode, temperature=temperature, seed=seed)
        res = tiny_ranker.rank(req)
        assert len(res.steps) == 6
        assert all(0 < s.prob <= 1 for s in res.steps)
        assert res.log_propensity == pytest.approx(sum(math.log(s.prob) for s in res.steps))
        assert res.log_propensity <= 0


def test_elimination_order_is_reverse_of_ranking(tiny_ranker):
    req = make_request(5)
    res = tiny_ranker.rank(req)
    eliminated = [s.eliminated for s in res.steps]
    assert res.order[1:] == eliminated[::-1]
    direct = tiny_ranker.rank(dataclasses.replace(req, mode="direct"))
    assert direct.order[:-1] == [s.eliminated for s in direct.steps]  # placements, best first


def test_sampling_is_seeded_and_explores(tiny_ranker):
    reqs = [make_request(8, temperature=5.0, seed=s) for s in range(6)]
    a = [r.order for r in tiny_ranker.rank_batch(reqs)]
    b = [r.order for r in tiny_ranker.rank_batch(reqs)]
    assert a == b
    assert len({tuple(o) for o in a}) > 1  # different seeds, different rankings


def test_incremental_costs_one_prefill_plus_one_token_per_step(tiny_backend):
    req = make_request(10)
    seq = build_sequence(req, tiny_backend)
    tiny_backend.clear_cache()
    before = tiny_backend.tokens_computed
    Ranker(tiny_backend, speculate=0).rank(req)
    # first step: the whole prompt; each of the other 8 steps: the one label token appended
    assert tiny_backend.tokens_computed - before == len(seq.prompt_ids) + 8


@pytest.mark.parametrize("mode", ["incremental", "direct"])
@pytest.mark.parametrize("temperature", [0.0, 2.0])
def test_speculation_is_exact_and_saves_calls(tiny_backend, mode, temperature):
    reqs = [make_request(n, mode=mode, temperature=temperature, seed=n) for n in (12, 9, 15)]
    plain = Ranker(tiny_backend, speculate=0).rank_batch(reqs)
    calls = tiny_backend.forward_calls
    fast = Ranker(tiny_backend, speculate=6).rank_batch(reqs)
    spec_calls = tiny_backend.forward_calls - calls
    for p, f in zip(plain, fast, strict=True):
        assert f.order == p.order
        assert [s.eliminated for s in f.steps] == [s.eliminated for s in p.steps]
        np.testing.assert_allclose([s.prob for s in f.steps], [s.prob for s in p.steps], rtol=1e-4)
        assert f.generated_tokens == p.generated_tokens == len(p.steps)
    if temperature == 0:  # greedy: the previous step's ranking predicts the next steps well
        assert spec_calls < 14  # one call per step would be 14 (the longest request)


def test_speculative_steps_match_brute_force(tiny_backend):
    """Each step's probability, whatever call computed it, is the full-forward one."""
    req = make_request(10)
    res = Ranker(tiny_backend, speculate=6).rank(req)
    seq = build_sequence(req, tiny_backend)
    chosen, remaining = [], list(range(10))
    for step in res.steps:
        ref = brute_force(
            tiny_backend.model, seq.context(chosen), [seq.label_ids[i] for i in remaining]
        )
        pick = int(np.argmax(ref))
        assert step.prob == pytest.approx(math.exp(ref[pick]), rel=1e-4)
        chosen.append(remaining.pop(pick))
        assert step.eliminated == req.candidates[chosen[-1]].id


def test_score_mode_computes_shared_prefix_once(tiny_ranker):
    backend = tiny_ranker.backend
    req = make_request(8, mode="score")
    backend.clear_cache()
    before = backend.tokens_computed
    tiny_ranker.rank(req)
    prompts = [backend.encode(step_prompt(req, list(range(m)), backend)) for m in range(8, 1, -1)]
    shared = next(i for i, toks in enumerate(zip(*prompts, strict=False)) if len(set(toks)) > 1)
    assert shared > 50  # system prompt, history and header
    full = sum(len(p) for p in prompts)
    # the 6 steps after the first reuse at least the shared prefix
    assert backend.tokens_computed - before <= full - 6 * (shared - 1)


@pytest.mark.parametrize("mode", ["incremental", "score", "direct", "reason"])
def test_batch_equals_one_by_one(tiny_ranker, mode):
    reqs = [make_request(n, mode=mode) for n in (3, 7, 5, 9, 4)]
    together = tiny_ranker.rank_batch(reqs)
    alone = [tiny_ranker.rank(r) for r in reqs]
    for t, a in zip(together, alone, strict=True):
        assert t.order == a.order
        for st, sa in zip(t.steps, a.steps, strict=True):
            assert (st.prob is None and sa.prob is None) or st.prob == pytest.approx(
                sa.prob, abs=1e-4
            )


def test_hundred_and_more_candidates_incremental(tiny_ranker):
    req = make_request(120)
    res = tiny_ranker.rank(req)
    assert is_permutation(res, req)
    assert len(res.steps) == 119
    labels = {s.response for s in res.steps}
    assert len(labels) == 119  # every step emitted a distinct single-token label


class ShortLabelTokenizer(WordTokenizer):
    """Only one-letter labels are single tokens: " AB" is split into " A" + "B"."""

    def encode(self, text, add_special_tokens=False):
        out = []
        for piece in super().encode(text):
            word = self.inverse[piece]
            if word.startswith(" ") and len(word) == 3 and word[1:].isalpha():
                out += [self._id(word[:2]), self._id(word[2])]
            else:
                out.append(piece)
        return out


@pytest.mark.parametrize("mode", ["incremental", "score", "direct"])
def test_more_candidates_than_single_token_labels_is_a_request_error(mode):
    backend = ScriptedBackend()
    backend.tokenizer = ShortLabelTokenizer()
    ranker = Ranker(backend)
    assert ranker.rank(make_request(52, mode=mode)).order  # A-Z and a-z
    calls = len(backend.calls)
    with pytest.raises(RequestError, match="52 single-token labels"):
        ranker.rank(make_request(53, mode=mode))
    assert len(backend.calls) == calls  # refused before any model work


@pytest.mark.parametrize("mode", ["incremental", "score", "direct", "reason"])
def test_deadline_zero_returns_retrieval_order_at_once(mode):
    backend = ScriptedBackend()
    ranker = Ranker(backend)
    cands = (
        Candidate("a", "A thing", score=0.2),
        Candidate("b", "B thing", score=0.9),
        Candidate("c", "C thing"),
        Candidate("d", "D thing", score=0.5),
    )
    req = RankRequest(task="rec-game", candidates=cands, mode=mode, deadline_ms=0)
    res = ranker.rank(req)
    assert res.order == ["b", "d", "a", "c"]  # by score, unscored last
    assert res.fallback is True
    assert res.steps == []
    assert backend.calls == []  # the model was never called


def test_deadline_mid_ranking_orders_rest_by_last_step(fake_clock):
    def slow_logprobs(context, allowed):
        fake_clock.sleep(0.1)  # each model call takes exactly 100 ms of (fake) time
        return np.arange(len(allowed), dtype=float)  # later labels: more likely eliminated

    backend = ScriptedBackend(logprob_fn=slow_logprobs)
    ranker = Ranker(backend)
    cands = tuple(Candidate(c, f"item {c}", score=1.0) for c in "pqrst")
    req = RankRequest(task="rec-movie", candidates=cands, deadline_ms=250)
    res = ranker.rank(req)
    assert res.fallback is True
    # call 1 at 0 ms, call 2 at 100 ms (no step estimate yet), then 200 + 100 > 250: stop
    assert [s.eliminated for s in res.steps] == ["t", "s"]
    assert res.elapsed_ms == 200.0 and len(backend.calls) == 2
    # survivors by last step's elimination probability, lowest first; then the eliminated
    assert res.order == ["p", "q", "r", "s", "t"]
    assert res.log_propensity == pytest.approx(sum(math.log(s.prob) for s in res.steps))


def test_concurrent_callers_share_a_backend_safely(tiny_backend):
    from concurrent.futures import ThreadPoolExecutor

    reqs = [make_request(n) for n in (6, 9, 7, 8)]
    expected = [Ranker(tiny_backend).rank(r).order for r in reqs]
    rankers = [Ranker(tiny_backend), Ranker(tiny_backend)]  # two rankers, one backend
    with ThreadPoolExecutor(4) as pool:
        got = list(pool.map(lambda k: rankers[k % 2].rank(reqs[k]).order, range(len(reqs))))
    assert got == expected


def test_build_sequence_from_a_bare_tokenizer_equals_the_backend_one(tiny_backend):
    req = make_request(7)
    via_backend = build_sequence(req, tiny_backend)
    via_tokenizer = build_sequence(req, tiny_backend.tokenizer)
    assert via_tokenizer == via_backend
    assert len(via_backend.label_ids) == 7 and via_backend.sep_ids == ()


# ---------------------------------------------------------------- the mode contract
#
# Every mode of the registry (ranking.modes.MODES) against one scripted model whose answer
# is known: it always prefers the LAST candidate still in play (label modes: raw log-probs
# 0, 1, ..., n-1 over the options; reason: an answer naming that candidate). Eliminating
# modes therefore eliminate from the end and return the input order; `direct` places from
# the end and returns it reversed.

N_CONTRACT = 6
KNOWN_ORDER = {
    "incremental": [f"m{i}" for i in range(N_CONTRACT)],
    "score": [f"m{i}" for i in range(N_CONTRACT)],
    "reason": [f"m{i}" for i in range(N_CONTRACT)],
    "direct": [f"m{i}" for i in reversed(range(N_CONTRACT))],
}


def prefers_last(context, allowed):
    return np.arange(len(allowed), dtype=float)


def last_named_texts(n: int) -> list[str]:
    """Reason mode's answers, step by step: the last candidate still in play."""
    return [f"<answer>Movie number {i} ({1980 + i})</answer>" for i in range(n - 1, 0, -1)]


def contract_backend() -> ScriptedBackend:
    return ScriptedBackend(last_named_texts(N_CONTRACT), logprob_fn=prefers_last)


def softmax_at(n: int, temperature: float, index: int) -> float:
    z = np.arange(n, dtype=float) / temperature
    return float(np.exp(z[index] - z.max()) / np.exp(z - z.max()).sum())


def test_the_registry_holds_every_mode_a_request_may_name():
    from ranking.modes import MODES as REGISTRY
    from ranking.types import MODES as REQUEST_MODES

    assert sorted(REGISTRY) == sorted(REQUEST_MODES) == sorted(KNOWN_ORDER)
    assert all(cls.name == name for name, cls in REGISTRY.items())


@pytest.mark.parametrize("mode", sorted(KNOWN_ORDER))
def test_every_mode_gives_the_known_ranking_with_its_steps(mode):
    backend = contract_backend()
    req = make_request(N_CONTRACT, mode=mode)
    res = Ranker(backend).rank(req)
    assert res.order == KNOWN_ORDER[mode]
    assert (res.mode, res.model, res.fallback, res.invalid_answers) == (mode, "scripted", False, 0)
    assert [s.remaining for s in res.steps] == list(range(N_CONTRACT, 1, -1))  # n - 1 steps
    chosen = [s.eliminated for s in res.steps]
    assert chosen == [f"m{i}" for i in range(N_CONTRACT - 1, 0, -1)]  # the last in play
    if mode == "reason":  # free text: no step probability, no propensity
        assert all(s.prob is None and s.matched == "exact" for s in res.steps)
        assert res.log_propensity is None
        return
    want = [softmax_at(s.remaining, 1.0, s.remaining - 1) for s in res.steps]
    np.testing.assert_allclose([s.prob for s in res.steps], want, rtol=1e-12)
    assert res.log_propensity == pytest.approx(sum(math.log(p) for p in want))
    assert all(s.matched == "constrained" for s in res.steps)


@pytest.mark.parametrize("mode", sorted(KNOWN_ORDER))
def test_every_mode_samples_reproducibly_with_the_reported_probability(mode):
    reqs = [make_request(N_CONTRACT, mode=mode, temperature=2.0, seed=s) for s in range(4)]
    first = Ranker(contract_backend()).rank_batch(reqs)
    again = Ranker(contract_backend()).rank_batch(reqs)
    assert [r.order for r in first] == [r.order for r in again]
    for req, res in zip(reqs, first, strict=True):
        assert is_permutation(res, req) and res.mode == mode
        if mode == "reason":  # free text: sampled or not, no propensity
            assert res.log_propensity is None and all(s.prob is None for s in res.steps)
            continue
        remaining = list(req.ids)
        for step in res.steps:  # the probability under the distribution drawn from (T = 2)
            pos = remaining.index(step.eliminated)
            assert step.prob == pytest.approx(softmax_at(len(remaining), 2.0, pos), rel=1e-12)
            remaining.pop(pos)
        assert res.log_propensity == pytest.approx(sum(math.log(s.prob) for s in res.steps))
    if mode != "reason":  # T = 2 over 6 options explores: not every seed gives one order
        assert len({tuple(r.order) for r in first}) > 1
