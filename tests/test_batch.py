"""The nightly batch job: every user gets K unseen items; resumable; shards split users."""

from __future__ import annotations

import random

import pytest
import sqlalchemy as sa

from recsys.batch import BatchConfig, in_shard, run_batch
from recsys.db.engine import make_engine
from recsys.db.migrate import ensure_schema
from recsys.db.models import Recommendation
from recsys.db.repository import recommendations_for
from recsys.errors import UserError
from recsys.ingest import ColumnMap, ingest

N_USERS, N_ITEMS = 12, 40


@pytest.fixture
def engine(database_url, tmp_path):
    """Users who each watched 8 of 40 titled items, loaded through `recsys ingest`."""
    rng = random.Random(0)
    lines = ["user_id,item_id,timestamp,title"]
    seen: dict[str, set[str]] = {}
    for u in range(N_USERS):
        for t, i in enumerate(rng.sample(range(N_ITEMS), 8)):
            lines.append(f"u{u},i{i},{1000 * u + t},Movie number {i} ({1950 + i})")
            seen.setdefault(f"u{u}", set()).add(f"i{i}")
    path = tmp_path / "events.csv"
    path.write_text("\n".join(lines) + "\n")
    ensure_schema(database_url)
    eng = make_engine(database_url)
    ingest(path, "csv", columns=ColumnMap(title="title"), progress=False, engine=eng)
    eng.seen = seen  # type: ignore[attr-defined]
    yield eng
    eng.dispose()


def config(tmp_path, model_dir, **kw) -> BatchConfig:
    base = dict(
        run_id="nightly",
        k=5,
        model=str(model_dir),
        device="cpu",
        embeddings="hashing",
        cf_epochs=3,
        cf_factors=8,
        chunk_users=5,
        artifact_dir=tmp_path / "artifacts",
        progress=False,
    )
    return BatchConfig(**{**base, **kw})


def test_every_user_gets_k_unseen_items_and_a_rerun_resumes(engine, tmp_path, tiny_model_dir):
    report = run_batch(config(tmp_path, tiny_model_dir), engine=engine)
    assert report.users_written == N_USERS
    assert report.model_version != f"retrieval:{report.retrieval_version}"  # re-ranked
    for user, seen in engine.seen.items():
        items = [r.item_id for r in recommendations_for(user, "nightly", engine=engine)]
        assert len(items) == 5 and len(set(items)) == 5
        assert not set(items) & seen
    again = run_batch(
        config(tmp_path, tiny_model_dir, index_version=report.retrieval_version), engine=engine
    )
    assert (again.users_written, again.users_skipped) == (0, N_USERS)
    with engine.connect() as conn:
        assert conn.scalar(sa.select(sa.func.count()).select_from(Recommendation)) == 5 * N_USERS


def test_shards_split_users_without_overlap(engine, tmp_path, tiny_model_dir):
    written = [
        run_batch(
            config(tmp_path, tiny_model_dir, shard=s, shards=3, rerank=False), engine=engine
        ).users_written
        for s in range(3)
    ]
    assert sum(written) == N_USERS
    users = [f"u{u}" for u in range(N_USERS)]
    assert [sum(in_shard(u, s, 3) for u in users) for s in range(3)] == written


def test_bad_shard_is_refused(engine, tmp_path, tiny_model_dir):
    with pytest.raises(UserError, match=r"shard 3 is not in 0\.\.2"):
        run_batch(config(tmp_path, tiny_model_dir, shard=3, shards=3), engine=engine)


def test_batch_task_runs_eagerly_and_is_recorded(engine, tmp_path, monkeypatch):
    from jobs.tasks import batch_recommendations
    from recsys import job_runs
    from recsys.settings import get_settings

    monkeypatch.setenv("RECSYS_DATABASE_URL", engine.url.render_as_string(hide_password=False))
    get_settings.cache_clear()
    try:
        result = batch_recommendations.apply(
            kwargs=dict(
                run_id="eager",
                k=3,
                rerank=False,
                embeddings="hashing",
                cf_epochs=2,
                artifact_dir=str(tmp_path / "a"),
                progress=False,
            )
        ).get()
        assert result["users_written"] == N_USERS
        assert job_runs.get_job(result["job_id"])["status"] == "succeeded"
    finally:
        get_settings.cache_clear()
