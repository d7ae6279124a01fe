"""The micro-batcher: each request succeeds or fails on its own, a closed batcher refuses
new work at once and finishes what was queued."""

from __future__ import annotations

import dataclasses
import threading

import pytest

from ranking.backends.fake import ScriptedBackend
from ranking.engine import Ranker
from ranking.errors import RequestError
from ranking.types import Candidate, RankRequest
from recsys.batcher import MicroBatcher


def request(n: int, rid: str) -> RankRequest:
    cands = tuple(Candidate(id=f"c{i}", text=f"item {i}") for i in range(n))
    return RankRequest(task="rec-movie", candidates=cands, history=("a",), request_id=rid)


@pytest.fixture
def ranker():
    return Ranker(ScriptedBackend(), batch_size=8)


def refuse(ranker: Ranker, request_id: str) -> None:
    """The incremental mode refuses this request id, as it refuses a request it cannot
    label (ranking.prompts.labels_for), before any model work."""
    mode = ranker.modes["incremental"]
    real = mode.check

    def check(r, backend):
        if r.request_id == request_id:
            raise RequestError(f"too many candidates for this model ({r.request_id})")
        real(r, backend)

    mode.check = check


def test_a_refused_request_fails_alone_among_good_batch_mates(ranker):
    batcher = MicroBatcher(ranker, max_batch=8, max_wait_ms=200)
    try:
        gate = threading.Event()
        real = ranker.rank_each

        def held(requests):  # wait until all three are queued, so they share a batch
            gate.wait(5)
            return real(requests)

        ranker.rank_each = held
        refuse(ranker, "bad")
        futures = [batcher.submit(request(5, "good-1")),
                   batcher.submit(request(6, "bad")),
                   batcher.submit(request(4, "good-2"))]  # fmt: skip
        gate.set()
        good1, good2 = futures[0].result(10), futures[2].result(10)
        with pytest.raises(RequestError, match="too many candidates"):
            futures[1].result(10)
    finally:
        batcher.close()
    assert sorted(good1.order) == [f"c{i}" for i in range(5)]
    assert sorted(good2.order) == [f"c{i}" for i in range(4)]
    assert batcher.stats.largest_batch == 3  # they were one micro-batch


def test_a_request_whose_ranking_raises_fails_alone(ranker):
    real = ranker.rank

    def rank_one(r):
        if r.request_id == "boom":
            raise RuntimeError("model exploded")
        return real(r)

    ranker.rank = rank_one
    original = ranker.rank_batch

    def batch(requests, progress=False):
        if any(r.request_id == "boom" for r in requests):
            raise RuntimeError("model exploded")
        return original(requests, progress)

    ranker.rank_batch = batch
    out = ranker.rank_each([request(3, "ok"), request(3, "boom"), request(2, "ok2")])
    assert isinstance(out[1], RuntimeError)
    assert sorted(out[0].order) == ["c0", "c1", "c2"] and sorted(out[2].order) == ["c0", "c1"]


def test_submit_after_close_fails_at_once_and_close_drains_the_queue(ranker):
    batcher = MicroBatcher(ranker, max_batch=2, max_wait_ms=1)
    queued = [batcher.submit(request(3, f"q{i}")) for i in range(5)]
    batcher.close()
    assert all(sorted(f.result(0).order) == ["c0", "c1", "c2"] for f in queued)
    late = batcher.submit(request(3, "late"))
    with pytest.raises(RuntimeError, match="shut down"):
        late.result(1)
    batcher.close()  # twice is harmless


def test_a_one_off_slow_call_does_not_keep_every_later_request_on_the_fallback(ranker):
    """A cold start recorded a huge cost: requests fall back while the estimate is over
    their deadline, each skip shrinks it, and the model is soon measured (and used) again."""
    ranker.costs.values["incremental:first"] = 1e4  # ms per prompt token: a stuck estimate
    results = [ranker.rank(dataclasses.replace(request(4, f"r{i}"), deadline_ms=2000))
               for i in range(40)]  # fmt: skip
    assert results[0].fallback is True
    assert not results[-1].fallback
    assert ranker.costs.values["incremental:first"] < 10  # measured again, not just decayed
