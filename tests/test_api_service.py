"""The real-time service on a real database and a registered retrieval index: a user's
feed in one call, events that the next call sees, cold start, fallbacks, hot reload under
load, metrics, API keys by bind address, impressions that survive a database outage."""

from __future__ import annotations

import math
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
import sqlalchemy as sa
from fastapi.testclient import TestClient

from ranking.backends.fake import ScriptedBackend
from ranking.engine import Ranker
from recsys.api import create_app
from recsys.db.models import Impression
from recsys.settings import Settings
from tests.fixtures.catalogue import seed_catalogue
from tests.fixtures.waiting import wait_for


@pytest.fixture
def service(engine, tmp_path, tiny_ranker):
    histories = seed_catalogue(engine, tmp_path)
    settings = Settings(embeddings="hashing", batch_wait_ms=5.0, require_api_key=False,
                        reload_poll_s=0)  # fmt: skip
    with TestClient(create_app(ranker=tiny_ranker, settings=settings, engine=engine)) as client:
        yield client, histories


@pytest.fixture
def engine(database_url):
    from recsys.db.engine import make_engine
    from recsys.db.migrate import ensure_schema

    ensure_schema(database_url)
    eng = make_engine(database_url)
    yield eng
    eng.dispose()


def impressions_of(engine, request_id: str, wait_s: float = 10.0) -> list:
    """The logged rows of one answer (written in the background: wait for them)."""
    until = time.monotonic() + wait_s
    while True:
        with engine.connect() as conn:
            rows = conn.execute(
                sa.select(Impression.position, Impression.propensity)
                .where(Impression.request_id == request_id)
                .order_by(Impression.position)
            ).all()
        if rows or time.monotonic() > until:
            return rows
        time.sleep(0.05)


def test_recommend_a_known_user_in_one_call(service, engine):
    client, histories = service
    answer = client.post("/v1/recommend", json={"user_id": "u3", "k": 6}).json()
    ids = [i["id"] for i in answer["items"]]
    assert len(ids) == 6 == len(set(ids))
    assert not set(ids) & set(histories["u3"])  # seen items removed
    assert all(i["title"].startswith("Film number") for i in answer["items"])
    assert answer["cold_start"] is False and answer["fallback"] is False
    assert answer["index_version"] == "idx-1" and answer["model"]
    rows = impressions_of(engine, answer["request_id"])
    assert [r.position for r in rows] == list(range(6))
    assert rows[0].propensity == pytest.approx(math.exp(answer["log_propensity"]))


def test_events_are_idempotent_and_the_next_recommend_excludes_them(service):
    client, _ = service
    first = client.post("/v1/recommend", json={"user_id": "u5", "k": 5}).json()
    clicked = [i["id"] for i in first["items"][:2]]
    events = [{"event_id": f"e-{i}", "user_id": "u5", "item_id": item, "kind": "click",
               "timestamp": 2_000_000 + i} for i, item in enumerate(clicked)]  # fmt: skip
    stored = client.post("/v1/events", json={"events": events}).json()
    assert stored == {"received": 2, "stored": 2, "duplicates": 0}
    again = client.post("/v1/events", json={"events": events}).json()
    assert again == {"received": 2, "stored": 0, "duplicates": 2}  # a retried batch
    after = client.post("/v1/recommend", json={"user_id": "u5", "k": 5}).json()
    assert not set(clicked) & {i["id"] for i in after["items"]}


def test_an_unknown_user_gets_the_cold_start_path(service):
    client, _ = service
    answer = client.post("/v1/recommend", json={"user_id": "nobody", "k": 4}).json()
    assert answer["cold_start"] is True and len(answer["items"]) == 4


def test_deadline_zero_answers_in_the_retrieval_order_flagged(service):
    client, _ = service
    answer = client.post("/v1/recommend", json={"user_id": "u1", "k": 5, "deadline_ms": 0}).json()
    scores = [i["score"] for i in answer["items"]]
    assert answer["fallback"] is True and scores == sorted(scores, reverse=True)


def test_rank_by_catalogue_ids_takes_texts_from_the_database(service):
    client, _ = service
    body = {"task": "rec-movie", "history_ids": ["i1", "i2"],
            "candidates": [{"id": "i7"}, {"id": "i8"}, {"id": "i9"}]}  # fmt: skip
    answer = client.post("/v1/rank", json={**body, "audit": True}).json()
    assert sorted(answer["order"]) == ["i7", "i8", "i9"]
    assert "Film number 7 (1987)" in answer["prompt"] and "Film number 1" in answer["prompt"]


@pytest.mark.parametrize(
    ("events", "message"),
    [
        ([{"event_id": "a", "user_id": "u", "item_id": "i"}], "events.0.timestamp: Field required"),
        ([{"event_id": "", "user_id": "u", "item_id": "i", "timestamp": 1}], "events.0.event_id"),
        ([{"event_id": "a", "user_id": "u", "item_id": "i", "timestamp": -1}], "greater than"),
        ([{"event_id": "a", "user_id": "u", "item_id": "i", "timestamp": 1, "value": "x"}],
         "events.0.value: Input should be a valid number"),
        ([], "events: List should have at least 1 item"),
        ([{"event_id": str(i), "user_id": "u", "item_id": "i", "timestamp": 1}
          for i in range(1001)], "at most 1000 items"),
    ],
)  # fmt: skip
def test_bad_events_are_refused_per_row(service, events, message):
    client, _ = service
    response = client.post("/v1/events", json={"events": events})
    assert response.status_code == 422 and message in response.json()["error"]


def test_metrics_count_requests_batches_and_the_served_model(service):
    client, _ = service
    client.post("/v1/recommend", json={"user_id": "u2", "k": 3})
    client.post("/v1/recommend", json={"user_id": "u2", "k": 3, "deadline_ms": 0})
    text = client.get("/metrics").text
    assert 'recsys_http_requests_total{endpoint="/v1/recommend",status="200"} 2.0' in text
    assert "recsys_microbatch_size_count" in text
    assert 'recsys_fallbacks_total{endpoint="/v1/recommend",reason="deadline"} 1.0' in text
    assert "recsys_served_model{" in text and "recsys_ranking_seconds_bucket" in text


def test_hot_reload_under_load_fails_no_request(engine, tiny_ranker):
    """Promote (the probe answers a new version) while 6 clients keep asking: every
    answer is 200 and the served model changes."""
    state = {"version": "v1"}
    new = Ranker(ScriptedBackend(model_id="ranker-v2"))
    settings = Settings(batch_wait_ms=2.0, require_api_key=False, reload_poll_s=0.05)
    app = create_app(ranker=tiny_ranker, settings=settings, engine=engine, version="v1",
                     probe=lambda: state["version"], loader=lambda: new)  # fmt: skip
    body = {"task": "rec-movie", "history": ["a"],
            "candidates": [{"id": str(i), "text": f"item {i}"} for i in range(4)]}  # fmt: skip
    with TestClient(app) as client:
        stop, statuses, models = threading.Event(), [], set()

        def hammer() -> None:
            while not stop.is_set():
                r = client.post("/v1/rank", json=body)
                statuses.append(r.status_code)
                models.add(r.json().get("model"))

        with ThreadPoolExecutor(6) as pool:
            for _ in range(6):
                pool.submit(hammer)
            # Wait on what the clients saw, not on a fixed sleep: a slow CI machine may
            # not answer within any given time, and the test must see both models.
            try:
                wait_for(
                    lambda: tiny_ranker.model_id in models,
                    60,
                    "the old model never answered",
                    every_s=0.02,
                )
                state["version"] = "v2"
                wait_for(
                    lambda: "ranker-v2" in models, 60, "the new model never answered", every_s=0.02
                )
            finally:
                stop.set()
        served = client.get("/v1/model").json()
    assert served == {**served, "model": "ranker-v2", "version": "v2"}
    assert statuses and set(statuses) == {200}
    assert {"ranker-v2", tiny_ranker.model_id} <= models


@pytest.mark.parametrize(
    ("host", "setting", "required"),
    [("127.0.0.1", None, False), ("localhost", None, False), ("::1", None, False),
     ("0.0.0.0", None, True), ("10.1.2.3", None, True), ("api.example.com", None, True),
     ("0.0.0.0", False, False), ("127.0.0.1", True, True)],
)  # fmt: skip
def test_api_keys_are_required_off_loopback_unless_turned_off(host, setting, required):
    assert Settings(host=host, require_api_key=setting).api_keys_required() is required


def test_a_public_bind_refuses_requests_without_a_key(engine, tiny_ranker):
    from recsys.auth import create_api_key

    settings = Settings(host="0.0.0.0", reload_poll_s=0)
    key = create_api_key("feed", engine=engine)
    body = {"task": "rec-movie", "candidates": [{"id": "a", "text": "a"}, {"id": "b", "text": "b"}]}
    with TestClient(create_app(ranker=tiny_ranker, settings=settings, engine=engine)) as client:
        assert client.post("/v1/rank", json=body).status_code == 401
        ok = client.post("/v1/rank", json=body, headers={"Authorization": f"Bearer {key}"})
        assert ok.status_code == 200
        admin = client.post("/v1/admin/reload", headers={"Authorization": f"Bearer {key}"})
        assert admin.status_code == 401 and "scope 'admin'" in admin.json()["error"]


def test_impressions_wait_out_a_database_outage_and_lose_nothing():
    from recsys.api.impressions import ImpressionLogger
    from recsys.db.events import ImpressionRecord

    written, failures = [], iter([True, True, True])

    def write(batch):
        if next(failures, False):
            raise sa.exc.OperationalError("insert", {}, Exception("database is away"))
        written.extend(batch)

    logger = ImpressionLogger(write, capacity=100, max_backoff_s=0.05)
    records = [ImpressionRecord(f"r{i}", "u", f"i{i}", 0, "p") for i in range(30)]
    for r in records:
        logger.log([r])
    logger.close()
    assert [r.request_id for r in written] == [r.request_id for r in records]
    assert logger.dropped == 0


def test_a_full_impression_buffer_drops_and_counts():
    from recsys.api.impressions import ImpressionLogger
    from recsys.db.events import ImpressionRecord

    gate = threading.Event()
    dropped = []
    logger = ImpressionLogger(lambda batch: gate.wait(5), capacity=5, on_drop=dropped.append)
    logger.log([ImpressionRecord(f"r{i}", "u", "i", 0, "p") for i in range(8)])
    assert logger.dropped == 3 and dropped == [3]
    gate.set()
    logger.close()
