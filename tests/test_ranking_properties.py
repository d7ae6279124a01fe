"""Property tests: every mode returns a valid permutation whatever the model emits."""

import math

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ranking.backends.fake import GarbageBackend, ScriptedBackend
from ranking.engine import Ranker
from ranking.types import MODES, Candidate, RankRequest

TEXT = st.text(
    alphabet=st.characters(blacklist_categories=("Cs", "Cc")), min_size=1, max_size=30
).filter(lambda s: s.strip())


@st.composite
def requests(draw, max_n=10):
    n = draw(st.integers(1, max_n))
    ids = draw(
        st.lists(
            st.text("abcdefghij0123456789", min_size=1, max_size=4),
            min_size=n,
            max_size=n,
            unique=True,
        )
    )
    texts = draw(st.lists(TEXT, min_size=n, max_size=n))  # duplicates allowed
    scores = draw(st.lists(st.one_of(st.none(), st.floats(-5, 5)), min_size=n, max_size=n))
    task = draw(st.sampled_from(["rec-movie", "rec-music", "rec-game", "passage", "router-cost"]))
    return RankRequest(
        task=task,
        candidates=tuple(
            Candidate(i, t, score=s) for i, t, s in zip(ids, texts, scores, strict=True)
        ),
        history=tuple(draw(st.lists(TEXT, max_size=4))),
        query=draw(TEXT) if task in ("passage", "router-cost") else None,
        mode=draw(st.sampled_from(MODES)),
        temperature=draw(st.sampled_from([0.0, 0.7, 3.0])),
        seed=draw(st.integers(0, 100)),
        show_signals=draw(st.booleans()),
    )


def check_valid(result, request):
    assert sorted(result.order) == sorted(request.ids)
    assert len(result.order) == len(request.ids)
    assert result.mode == request.mode
    if not result.fallback:
        assert len(result.steps) == len(request.candidates) - 1
    if request.mode != "reason":
        assert result.log_propensity is not None
        assert result.log_propensity == pytest.approx(
            sum(math.log(s.prob) for s in result.steps), abs=1e-9
        )
    assert 0 <= result.invalid_answers <= len(result.steps)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(req=requests(), seed=st.integers(0, 10_000))
def test_garbage_backend_still_gives_permutations(req, seed):
    backend = GarbageBackend(seed, candidate_texts=[c.text for c in req.candidates])
    result = Ranker(backend).rank(req)
    check_valid(result, req)


@settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    req=requests(max_n=6),
    answers=st.lists(
        st.one_of(
            TEXT,
            st.just(""),
            TEXT.map(lambda t: f"<think>{t}</think><answer>{t}</answer>"),
            st.just("<answer></answer><answer>"),
        ),
        min_size=1,
        max_size=4,
    ),
)
def test_scripted_nonsense_answers_give_permutations(req, answers):
    result = Ranker(ScriptedBackend(answers)).rank(req)
    check_valid(result, req)
    if req.mode == "reason":
        # an answer naming a candidate that is already eliminated cannot be re-picked
        assert len({s.eliminated for s in result.steps}) == len(result.steps)


@pytest.mark.parametrize("mode", MODES)
def test_duplicate_and_eliminated_names_are_never_repicked(mode):
    # the model keeps answering the first candidate's title, even after it is gone
    cands = tuple(Candidate(str(i), f"Title {i}") for i in range(5))
    backend = ScriptedBackend(["<answer>Title 0</answer>"])
    req = RankRequest(task="rec-movie", candidates=cands, mode=mode)
    result = Ranker(backend).rank(req)
    assert sorted(result.order) == sorted(req.ids)
    if mode == "reason":
        assert result.steps[0].eliminated == "0"
        assert result.steps[0].matched == "exact"
        assert [s.matched for s in result.steps[1:]] != ["exact"] * 3


@settings(
    max_examples=15,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
@given(reqs=st.lists(requests(max_n=7), min_size=1, max_size=3))
def test_tiny_model_gives_permutations_in_batches(tiny_ranker, reqs):
    results = tiny_ranker.rank_batch(reqs)
    assert len(results) == len(reqs)
    for res, req in zip(results, reqs, strict=True):
        check_valid(res, req)
        assert not res.fallback
