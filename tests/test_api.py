"""The real-time API: valid permutations, clear 422s, micro-batching, impression logging, keys."""

from __future__ import annotations

import math
from concurrent.futures import ThreadPoolExecutor

import pytest
import sqlalchemy as sa
from fastapi.testclient import TestClient

from recsys.api import create_app
from recsys.db.models import Impression
from recsys.settings import Settings

REQUEST = {
    "task": "rec-movie",
    "history": ["Toy Story (1995)", "Heat (1995)", "Fargo (1996)"],
    "candidates": [
        {"id": "50", "text": "Star Wars (1977)", "score": 0.9},
        {"id": "181", "text": "Return of the Jedi (1983)", "score": 0.7},
        {"id": "1", "text": "GoldenEye (1995)", "score": 0.2},
        {"id": "7", "text": "Twelve Monkeys (1995)", "score": 0.5},
    ],
}


def make_client(ranker, engine=None, **overrides) -> TestClient:
    settings = Settings(batch_wait_ms=50.0, batch_size=8, **overrides)
    return TestClient(create_app(ranker=ranker, settings=settings, engine=engine))


def test_rank_returns_a_permutation_with_propensity(tiny_ranker):
    with make_client(tiny_ranker) as client:
        answer = client.post("/v1/rank", json=REQUEST).json()
    assert sorted(answer["order"]) == sorted(c["id"] for c in REQUEST["candidates"])
    assert answer["mode"] == "incremental"
    assert answer["log_propensity"] == pytest.approx(
        sum(math.log(s["prob"]) for s in answer["steps"]), abs=1e-6
    )
    assert answer["prompt"] is None  # prompts only with "audit": true
    assert len(answer["request_id"]) == 32


@pytest.mark.parametrize(
    ("change", "status", "message"),
    [
        ({"candidates": []}, 422, "candidates: List should have at least 1 item"),
        ({"task": "rec-books"}, 422, "task: Input should be 'rec-movie'"),
        ({"mode": "fastest"}, 422, "mode: Input should be 'incremental'"),
        ({"candidates": [{"id": "1", "text": "a"}, {"id": "1", "text": "b"}]}, 409, "duplicate"),
        ({"candidates": [{"id": "1", "text": " "}]}, 422, "candidates.0.text: String should match"),
        ({"colour": "red"}, 422, "colour: Extra inputs are not permitted"),
        ({"candidates": [{"id": "404", "score": 1.0}]}, 404, "unknown catalogue item(s) ['404']"),
        ({"deadline_ms": 10**9}, 422, "deadline_ms: Input should be less than or equal to 60000"),
        ({"candidates": [{"id": str(i), "text": "x"} for i in range(101)]}, 422, "at most 100"),
        ({"candidates": [{"id": "1", "text": "x" * 1001}]}, 422, "at most 1000 characters"),
        ({"history": ["h"] * 101}, 422, "history: List should have at most 100 items"),
        ({"task": "passage"}, 409, "task 'passage' needs a non-empty 'query'"),
        ({"mode": "reason", "fusion_alpha": 1.0}, 409, "reason mode generates free text"),
    ],
)
def test_bad_requests_are_refused_with_the_reason(tiny_ranker, engine, change, status, message):
    with make_client(tiny_ranker, engine) as client:
        response = client.post("/v1/rank", json={**REQUEST, **change})
    assert response.status_code == status
    assert message in response.json()["error"]


def test_oversized_bodies_and_prompts_get_413(tiny_ranker, engine):
    big = {**REQUEST, "history": ["word " * 190] * 50}
    with make_client(tiny_ranker, engine, limit_body_bytes=20_000) as client:
        response = client.post("/v1/rank", json=big)
    assert response.status_code == 413 and "RECSYS_LIMIT_BODY_BYTES" in response.json()["error"]
    with make_client(tiny_ranker, engine, limit_prompt_tokens=50) as client:
        response = client.post("/v1/rank", json=big)
    assert response.status_code == 413 and "LIMIT_PROMPT_TOKENS" in response.json()["error"]


def test_deadline_zero_answers_with_the_retrieval_order(tiny_ranker):
    with make_client(tiny_ranker) as client:
        answer = client.post("/v1/rank", json={**REQUEST, "deadline_ms": 0}).json()
    assert answer["fallback"] is True
    assert answer["order"] == ["50", "181", "7", "1"]


def test_concurrent_requests_share_batches(tiny_ranker):
    with make_client(tiny_ranker) as client, ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(lambda _: client.post("/v1/rank", json=REQUEST).json(), range(8)))
        stats = client.get("/v1/model").json()
    assert all(sorted(a["order"]) == ["1", "181", "50", "7"] for a in answers)
    assert stats["requests"] == 8
    assert stats["largest_batch"] > 1  # 50 ms collection window: several arrive together


def test_user_id_logs_one_impression_per_position(tiny_ranker, engine):
    with make_client(tiny_ranker, engine) as client:
        answer = client.post("/v1/rank", json={**REQUEST, "user_id": "u1"}).json()
    with engine.connect() as conn:
        rows = conn.execute(
            sa.select(Impression.position, Impression.propensity, Impression.policy)
            .where(Impression.request_id == answer["request_id"])
            .order_by(Impression.position)
        ).all()
    assert [r.position for r in rows] == [0, 1, 2, 3]
    assert rows[0].propensity == pytest.approx(math.exp(answer["log_propensity"]))
    assert {r.policy for r in rows} == {"iranker-incremental"}
    # what RL training reads back: the logged order, its propensity, the retrieval scores
    from datetime import timedelta

    from recsys.db.events import InteractionRecord, log_interactions, logged_requests
    from recsys.db.models import utcnow

    clicked = answer["order"][2]
    log_interactions(
        [InteractionRecord("u1", clicked, "click", utcnow() + timedelta(seconds=1))], engine=engine
    )
    (logged,) = logged_requests(engine=engine)
    assert list(logged.shown) == answer["order"]
    assert logged.ground_truth == clicked
    assert logged.log_propensity == pytest.approx(answer["log_propensity"])
    assert {c.item_id: c.score for c in logged.candidates}["50"] == 0.9


def test_api_keys_guard_rank_when_required(tiny_ranker, engine):
    from recsys.auth import create_api_key
    from recsys.db.apikeys import revoke_api_key

    key = create_api_key("feed", engine=engine)
    with make_client(tiny_ranker, engine, require_api_key=True) as client:
        assert client.post("/v1/rank", json=REQUEST).status_code == 401
        headers = {"Authorization": f"Bearer {key}"}
        assert client.post("/v1/rank", json=REQUEST, headers=headers).status_code == 200
        revoke_api_key("feed", engine=engine)
        assert client.post("/v1/rank", json=REQUEST, headers=headers).status_code == 401
        assert client.get("/healthz").json() == {"status": "ok"}
