"""The data layer on SQLite and PostgreSQL, by area: catalogue (items), events (history,
logging, logged traffic), runs (recommendation lists), concurrent writers, the model registry
and API keys."""

from __future__ import annotations

import hashlib
import threading
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import pytest
import sqlalchemy as sa
from sqlalchemy.engine import Engine

from recsys import registry
from recsys.db import apikeys, catalogue, events, runs
from recsys.db import registry as db_registry
from recsys.db.catalogue import ItemRecord
from recsys.db.engine import write_connection
from recsys.db.events import ImpressionRecord, InteractionRecord
from recsys.db.models import Impression, Interaction, ModelVersion, User
from recsys.db.registry import ModelVersionInfo
from recsys.db.testing import count_rows, migrated_engine
from recsys.errors import UserError
from recsys.registry import GateDecision

T0 = datetime(2024, 1, 1, tzinfo=UTC)


@pytest.fixture
def engine(database_url: str) -> Iterator[Engine]:
    with migrated_engine(database_url) as engine:
        yield engine


def _event(user: str, item: str, minute: int, event: str = "click") -> InteractionRecord:
    return InteractionRecord(user, item, event, T0 + timedelta(minutes=minute), value=1.0)


def test_user_history_is_last_n_oldest_first_with_titles(engine: Engine) -> None:
    with write_connection(engine) as conn:
        catalogue.ensure_items(conn, [ItemRecord(f"i{n}", title=f"Title {n}") for n in range(6)])
    # logged out of order, with another user's events mixed in
    logged = [_event("u1", f"i{n}", minute) for n, minute in [(3, 30), (0, 0), (5, 50), (1, 10)]]
    logged += [_event("u1", "i2", 20, "buy"), _event("u2", "i4", 99)]
    assert events.log_interactions(logged, engine=engine) == 6

    history = events.user_history("u1", 3, engine=engine)
    assert [h.item_id for h in history] == ["i2", "i3", "i5"]
    assert [h.title for h in history] == ["Title 2", "Title 3", "Title 5"]
    assert history[-1].timestamp == T0 + timedelta(minutes=50)
    assert history[-1].timestamp.tzinfo is not None

    before = events.user_history("u1", 10, before=T0 + timedelta(minutes=20), engine=engine)
    assert [h.item_id for h in before] == ["i0", "i1"]
    clicks = events.user_history("u1", 10, events=["buy"], engine=engine)
    assert [(h.item_id, h.event) for h in clicks] == [("i2", "buy")]
    assert events.user_history("nobody", engine=engine) == []


def test_history_limit_must_be_positive(engine: Engine) -> None:
    with pytest.raises(UserError, match="at least 1"):
        events.user_history("u1", 0, engine=engine)


def test_items_by_ids_returns_known_items_only(engine: Engine) -> None:
    with write_connection(engine) as conn:
        catalogue.ensure_items(
            conn, [ItemRecord("a", "Alpha", "first", {"genre": "x"}), ItemRecord("b")]
        )
    found = catalogue.items_by_ids(["a", "zz", "b", "a"], engine=engine)
    assert set(found) == {"a", "b"}
    assert found["a"] == ItemRecord("a", "Alpha", "first", {"genre": "x"})
    assert found["b"].title is None


def test_item_upsert_updates_text_and_keeps_what_is_not_given(engine: Engine) -> None:
    with write_connection(engine) as conn:
        catalogue.ensure_items(conn, [ItemRecord("a", "Old", "text")])
    with write_connection(engine) as conn:
        catalogue.ensure_items(conn, [ItemRecord("a", "New"), ItemRecord("b")])
    found = catalogue.items_by_ids(["a"], engine=engine)["a"]
    assert (found.title, found.text) == ("New", "text")


def test_log_interactions_is_idempotent(engine: Engine) -> None:
    logged = [_event("u1", "i1", 0), _event("u1", "i2", 1), _event("u2", "i1", 2)]
    assert events.log_interactions(logged, engine=engine) == 3
    assert events.log_interactions([*logged, _event("u3", "i3", 3)], engine=engine) == 1
    assert count_rows(Interaction, engine=engine) == 4
    assert count_rows(User, engine=engine) == 3


def test_event_id_depends_on_every_part_of_the_event() -> None:
    base = ("src", "u", "i", 1_000_000, "click")
    ids = {events.event_id(*base)}
    for position, other in enumerate(["src2", "u2", "i2", 1_000_001, "buy"]):
        changed = list(base)
        changed[position] = other
        ids.add(events.event_id(*changed))
    assert len(ids) == 6
    assert events.event_id(*base) == events.event_id(*base)


def test_impressions_are_stored_with_their_position_propensity_and_version(engine) -> None:
    rows = [
        ImpressionRecord("req-1", "u1", f"i{p}", p, "iranker", 0.5 / (p + 1), "ranker:v1")
        for p in (2, 0, 1)
    ]
    assert events.log_impressions(rows, engine=engine) == 3
    imp, items = Impression.__table__, sa.table("items", sa.column("id"), sa.column("external_id"))
    query = (
        sa.select(imp.c.position, items.c.external_id, imp.c.propensity, imp.c.model_version)
        .join(items, items.c.id == imp.c.item_id)
        .where(imp.c.request_id == "req-1")
        .order_by(imp.c.position)
    )
    with engine.connect() as conn:
        stored = conn.execute(query).all()
    assert [(r.position, r.external_id) for r in stored] == [(0, "i0"), (1, "i1"), (2, "i2")]
    assert [r.propensity for r in stored] == pytest.approx([0.5, 0.25, 0.5 / 3])
    assert {r.model_version for r in stored} == {"ranker:v1"}


def test_concurrent_impression_writers_lose_no_rows(engine: Engine) -> None:
    """Many threads log impressions (sharing users and items) at once: every row is stored."""
    threads, batches, per_batch = 6, 15, 8
    errors: list[BaseException] = []

    def writer(worker: int) -> None:
        try:
            for batch in range(batches):
                events.log_impressions(
                    [
                        ImpressionRecord(f"w{worker}-b{batch}", f"u{batch % 5}", f"i{p}", p, "test")
                        for p in range(per_batch)
                    ],
                    engine=engine,
                )
        except BaseException as exc:  # surfaced below; a thread's exception is otherwise lost
            errors.append(exc)

    pool = [threading.Thread(target=writer, args=(w,)) for w in range(threads)]
    for thread in pool:
        thread.start()
    for thread in pool:
        thread.join()
    assert errors == []
    assert count_rows(Impression, engine=engine) == threads * batches * per_batch
    assert count_rows(User, engine=engine) == 5
    with engine.connect() as conn:
        requests = conn.execute(sa.select(sa.func.count(sa.distinct(Impression.request_id))))
        assert requests.scalar_one() == threads * batches


def test_write_recommendations_replaces_a_users_list_within_a_run(engine: Engine) -> None:
    lists = {"u1": [("a", 0.9), ("b", 0.5)], "u2": [("c", 0.7)]}
    assert runs.write_recommendations("run-1", lists, model_version="v1", engine=engine) == 3
    # a retried shard rewrites u1's list: no duplicates, new order
    runs.write_recommendations("run-1", {"u1": [("b", 0.8), ("d", 0.1)]}, engine=engine)
    rows = runs.recommendations_for("u1", "run-1", engine=engine)
    assert [(r.rank, r.item_id) for r in rows] == [(1, "b"), (2, "d")]
    assert [r.item_id for r in runs.recommendations_for("u2", "run-1", engine=engine)] == ["c"]

    runs.write_recommendations("run-2", {"u1": [("e", 1.0)]}, model_version="v2", engine=engine)
    latest = runs.recommendations_for("u1", engine=engine)
    assert [(r.run_id, r.item_id, r.model_version) for r in latest] == [("run-2", "e", "v2")]
    assert runs.recommendations_for("unknown", engine=engine) == []


# ---------------------------------------------------------------------------------------------
# model registry


@pytest.fixture
def artifact(tmp_path):
    path = tmp_path / "model.bin"
    path.write_bytes(b"weights")
    return path


def _register(engine: Engine, version: str, artifact, **kwargs) -> ModelVersionInfo:
    return db_registry.register_model("ranker", version, str(artifact), engine=engine, **kwargs)


def test_promote_keeps_one_promoted_version_and_rollback_goes_back(engine, artifact) -> None:
    for version in ("v1", "v2", "v3"):
        _register(engine, version, artifact)
    assert db_registry.current_model("ranker", engine=engine) is None
    for version in ("v1", "v2", "v3"):
        db_registry.promote_model("ranker", version, engine=engine)
        assert db_registry.current_model("ranker", engine=engine).version == version

    statuses = {m.version: m.status for m in db_registry.list_models("ranker", engine=engine)}
    assert statuses == {"v1": "candidate", "v2": "candidate", "v3": "promoted"}

    assert db_registry.rollback_model("ranker", engine=engine).version == "v2"
    assert db_registry.get_model("ranker", "v3", engine=engine).status == "retired"
    assert db_registry.rollback_model("ranker", engine=engine).version == "v1"
    with pytest.raises(UserError, match="no earlier promoted ranker version"):
        db_registry.rollback_model("ranker", engine=engine)
    assert db_registry.current_model("ranker", engine=engine).version == "v1"


def test_the_database_refuses_two_promoted_versions_of_a_kind(engine, artifact) -> None:
    _register(engine, "v1", artifact)
    _register(engine, "v2", artifact)
    db_registry.promote_model("ranker", "v1", engine=engine)
    with pytest.raises(sa.exc.IntegrityError), engine.begin() as conn:
        conn.execute(
            sa.update(ModelVersion).where(ModelVersion.version == "v2").values(status="promoted")
        )


@pytest.mark.parametrize(
    ("action", "message"),
    [
        (lambda e: db_registry.register_model("ranker", "v1", "x", engine=e), "already registered"),
        (lambda e: db_registry.register_model("bogus", "v9", "x", engine=e), "unknown model kind"),
        (
            lambda e: db_registry.promote_model("ranker", "v404", engine=e),
            "no ranker model version",
        ),
        (lambda e: db_registry.retire_model("ranker", "v1", engine=e), "is the promoted version"),
        (lambda e: db_registry.rollback_model("cf", engine=e), "no cf version is promoted"),
        (lambda e: db_registry.promote_model("ranker", "old", engine=e), "is retired"),
    ],
)
def test_registry_refuses_bad_operations(engine, artifact, action, message) -> None:
    _register(engine, "v1", artifact)
    _register(engine, "old", artifact)
    db_registry.promote_model("ranker", "v1", engine=engine)
    db_registry.retire_model("ranker", "old", engine=engine)
    with pytest.raises(UserError, match=message):
        action(engine)


def test_promotion_gate_checks_the_artifact_checksum(engine, artifact) -> None:
    digest = hashlib.sha256(artifact.read_bytes()).hexdigest()
    assert registry.sha256_of(artifact) == digest
    _register(engine, "v1", artifact, sha256=digest)
    info, decision = registry.promote("ranker", "v1", engine=engine)
    assert info.status == "promoted" and "sha256 matches" in decision.reason

    artifact.write_bytes(b"tampered")
    _register(engine, "v2", artifact, sha256=digest)
    with pytest.raises(UserError, match="does not match its registered sha256"):
        registry.promote("ranker", "v2", engine=engine)
    assert db_registry.current_model("ranker", engine=engine).version == "v1"
    forced, decision = registry.promote("ranker", "v2", force=True, engine=engine)
    assert forced.status == "promoted" and decision.reason.startswith("forced")


def test_added_gates_can_refuse_a_promotion(engine, artifact) -> None:
    def needs_better_mrr(candidate, current) -> GateDecision:
        if current and candidate.metrics.get("mrr", 0) <= current.metrics.get("mrr", 0):
            return GateDecision(False, "MRR does not beat the promoted version")
        return GateDecision(True, "MRR improves")

    _register(engine, "v1", artifact, metrics={"mrr": 0.30})
    _register(engine, "v2", artifact, metrics={"mrr": 0.25})
    registry.add_gate(needs_better_mrr)
    try:
        registry.promote("ranker", "v1", engine=engine)
        with pytest.raises(UserError, match="MRR does not beat"):
            registry.promote("ranker", "v2", engine=engine)
    finally:
        registry.remove_gate(needs_better_mrr)
    assert db_registry.current_model("ranker", engine=engine).version == "v1"


def test_missing_artifact_is_refused(engine, tmp_path) -> None:
    db_registry.register_model("cf", "v1", str(tmp_path / "gone.npz"), engine=engine)
    with pytest.raises(UserError, match="does not exist"):
        registry.promote("cf", "v1", engine=engine)
    db_registry.register_model("cf", "v2", "s3://bucket/model.npz", engine=engine)
    assert registry.promote("cf", "v2", engine=engine)[0].status == "promoted"


def test_logged_requests_join_what_was_shown_with_what_followed(engine: Engine) -> None:
    with write_connection(engine) as conn:
        catalogue.ensure_items(conn, [ItemRecord(i, title=f"Film {i}") for i in "abcdh"])
    shown_at = T0 + timedelta(hours=1)
    context = {"log_propensity": -1.5, "task": "rec-game"}
    events.log_impressions(
        [
            ImpressionRecord(
                request,
                "u1",
                item,
                pos,
                "iranker",
                None,
                "v1",
                context | {"score": 0.1 * pos, "signals": {"interactions": pos}},
                shown_at,
            )
            for request in ("r1", "r2", "r3")
            for pos, item in enumerate("cab")  # stored out of position order below
        ][::-1],
        engine=engine,
    )
    events.log_interactions(
        [
            _event("u1", "h", 0),  # history, before the impressions
            InteractionRecord("u1", "a", "click", shown_at + timedelta(minutes=5)),
            InteractionRecord("u1", "b", "click", shown_at + timedelta(minutes=9)),
        ],
        engine=engine,
    )
    # r3 was shown later than every interaction: no ground truth, so no record
    with engine.begin() as conn:
        conn.execute(
            sa.update(Impression)
            .where(Impression.request_id == "r3")
            .values(timestamp=shown_at + timedelta(days=1))
        )
    logged = events.logged_requests(engine=engine)
    assert [r.request_id for r in logged] == ["r1", "r2"]
    first = logged[0]
    assert first == events.LoggedRequest(
        request_id="r1",
        user_id="u1",
        task="rec-game",
        candidates=(
            events.LoggedCandidate("c", "Film c", 0.0, {"interactions": 0}),
            events.LoggedCandidate("a", "Film a", pytest.approx(0.1), {"interactions": 1}),
            events.LoggedCandidate("b", "Film b", pytest.approx(0.2), {"interactions": 2}),
        ),
        shown=("c", "a", "b"),  # position order
        ground_truth="a",  # the first interaction with a shown item
        history=("Film h",),
        history_ids=("h",),  # hybrid prompts read them
        log_propensity=-1.5,
        policy="iranker",
        model_version="v1",
        timestamp=shown_at,
    )
    assert events.logged_requests(window=timedelta(minutes=1), engine=engine) == []
    assert len(events.logged_requests(limit=1, engine=engine)) == 1


def test_interaction_log_and_catalogue_reads(engine: Engine) -> None:
    with write_connection(engine) as conn:
        catalogue.ensure_items(conn, [ItemRecord("a", "Alpha", "text", {"genres": "x"})])
    events.log_interactions(
        [
            _event("u2", "b", 5),
            _event("u1", "a", 1),
            InteractionRecord("u1", "b", "buy", T0, source="s"),
        ],
        engine=engine,
    )
    log = events.interaction_log(engine=engine)
    assert (log.users, log.items) == (["u1", "u1", "u2"], ["b", "a", "b"])  # time order
    assert log.seconds == [T0.timestamp(), T0.timestamp() + 60, T0.timestamp() + 300]
    only = events.interaction_log(engine=engine, source="s")
    assert (only.users, only.items) == (["u1"], ["b"])
    items = {i.item_id: i for i in catalogue.all_items(engine=engine)}
    assert items == {"a": ItemRecord("a", "Alpha", "text", {"genres": "x"}), "b": ItemRecord("b")}


def test_api_keys_store_hashes_by_name(engine: Engine) -> None:
    apikeys.add_api_key("feed", "hash-1", ["rank"], engine=engine)
    apikeys.add_api_key("admin", "hash-2", ["rank", "admin"], engine=engine)
    with pytest.raises(UserError, match="an API key named 'feed' exists"):
        apikeys.add_api_key("feed", "hash-3", ["rank"], engine=engine)
    assert apikeys.active_key_scopes("hash-2", engine=engine) == ["rank", "admin"]
    apikeys.revoke_api_key("admin", engine=engine)
    assert apikeys.active_key_scopes("hash-2", engine=engine) is None
    assert apikeys.active_key_scopes("unknown", engine=engine) is None
    assert apikeys.api_keys(engine=engine) == [
        apikeys.ApiKeyRecord("admin", ["rank", "admin"], True),
        apikeys.ApiKeyRecord("feed", ["rank"], False),
    ]
    with pytest.raises(UserError, match="no API key named 'gone'"):
        apikeys.revoke_api_key("gone", engine=engine)


def test_apikey_command_creates_lists_and_revokes(database_url: str, monkeypatch) -> None:
    from typer.testing import CliRunner

    from recsys.auth import key_has_scope
    from recsys.cli import app
    from recsys.db.engine import dispose_engines, get_engine
    from recsys.settings import get_settings

    monkeypatch.setenv("RECSYS_DATABASE_URL", database_url)
    get_settings.cache_clear()
    runner = CliRunner()
    try:
        created = runner.invoke(app, ["apikey", "create", "feed"])
        assert created.exit_code == 0, created.output
        key = created.output.strip()
        assert key.startswith("rk_") and key_has_scope(key, "rank", engine=get_engine())
        assert runner.invoke(app, ["apikey", "list"]).output.split() == ["feed", "rank", "active"]
        assert runner.invoke(app, ["apikey", "revoke", "feed"]).exit_code == 0
        listed = runner.invoke(app, ["apikey", "list"]).output.split()
        assert listed == ["feed", "rank", "revoked"]
        assert not key_has_scope(key, "rank", engine=get_engine())
    finally:
        get_settings.cache_clear()
        dispose_engines()
