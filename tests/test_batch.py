"""The nightly batch job: every user gets K unseen items; resumable; shards split users."""

from __future__ import annotations

import random

import pytest
import sqlalchemy as sa

from recsys.batch import BatchConfig, in_shard, run_batch
from recsys.db.engine import make_engine
from recsys.db.migrate import ensure_schema
from recsys.db.models import Recommendation
from recsys.db.runs import recommendations_for
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


class WorkerKilled(Exception):
    pass


def rows_per_user(engine, run_id: str) -> dict[str, tuple[int, int, int]]:
    """user -> (rows, distinct ranks, distinct items) of `run_id`."""
    from recsys.db.models import User

    rec, users = Recommendation.__table__, User.__table__
    query = (
        sa.select(
            users.c.external_id,
            sa.func.count(),
            sa.func.count(sa.distinct(rec.c.rank)),
            sa.func.count(sa.distinct(rec.c.item_id)),
        )
        .join(users, users.c.id == rec.c.user_id)
        .where(rec.c.run_id == run_id)
        .group_by(users.c.external_id)
    )
    with engine.connect() as conn:
        return {u: (n, ranks, items) for u, n, ranks, items in conn.execute(query)}


def test_a_run_killed_mid_write_resumes_and_writes_every_user_exactly_once(
    engine, tmp_path, tiny_model_dir, monkeypatch
):
    """The worker dies inside the second chunk's write, after two of its users reached the
    database; the retried job (same run id) writes only the users still missing."""
    from recsys.db import runs

    real_write = runs.write_recommendations
    writes: list[list[str]] = []

    def killed_in_second_chunk(run_id, lists, **kw):
        writes.append(list(lists))
        if len(writes) == 2:
            real_write(run_id, dict(list(lists.items())[:2]), **kw)
            raise WorkerKilled
        return real_write(run_id, lists, **kw)

    monkeypatch.setattr(runs, "write_recommendations", killed_in_second_chunk)
    with pytest.raises(WorkerKilled):
        run_batch(config(tmp_path, tiny_model_dir), engine=engine)
    assert [len(w) for w in writes] == [5, 5]  # chunk_users=5: it died in the second chunk
    before_crash = set(writes[0]) | set(writes[1][:2])
    assert runs.users_in_run("nightly", engine=engine) == before_crash
    lists_before = {u: recommendations_for(u, "nightly", engine=engine) for u in before_crash}

    resumed: list[str] = []

    def recording(run_id, lists, **kw):
        resumed.extend(lists)
        return real_write(run_id, lists, **kw)

    monkeypatch.setattr(runs, "write_recommendations", recording)
    report = run_batch(config(tmp_path, tiny_model_dir), engine=engine)
    assert (report.users_in_shard, report.users_written, report.users_skipped) == (N_USERS, 5, 7)
    assert report.model_version != f"retrieval:{report.retrieval_version}"  # re-ranked
    # exactly once: the resume wrote each missing user once and no user written before it
    assert sorted(resumed) == sorted(set(engine.seen) - before_crash)
    assert {u: recommendations_for(u, "nightly", engine=engine) for u in before_crash} == (
        lists_before
    )
    assert rows_per_user(engine, "nightly") == {u: (5, 5, 5) for u in engine.seen}
    for user, seen in engine.seen.items():
        items = [r.item_id for r in recommendations_for(user, "nightly", engine=engine)]
        assert len(items) == 5 and not set(items) & seen
    # a finished run has nothing left to do
    again = run_batch(
        config(tmp_path, tiny_model_dir, index_version=report.retrieval_version), engine=engine
    )
    assert (again.users_written, again.users_skipped) == (0, N_USERS)
    with engine.connect() as conn:
        assert conn.scalar(sa.select(sa.func.count()).select_from(Recommendation)) == 5 * N_USERS


def test_shards_split_users_without_overlap(engine, tmp_path, tiny_model_dir):
    """Each shard writes its own run, so a user in two shards would show up in two runs
    (one run id would hide that: the second shard would skip the user)."""
    from recsys.db.runs import users_in_run

    reports = [
        run_batch(
            config(
                tmp_path, tiny_model_dir, run_id=f"nightly-s{s}", shard=s, shards=3, rerank=False
            ),
            engine=engine,
        )
        for s in range(3)
    ]
    written = [users_in_run(f"nightly-s{s}", engine=engine) for s in range(3)]
    assert [r.users_skipped for r in reports] == [0, 0, 0]
    assert [r.users_written for r in reports] == [len(w) for w in written]
    assert all(written)  # 12 users hash into all three shards
    assert sum(len(w) for w in written) == N_USERS
    assert set().union(*written) == set(engine.seen)  # so the shards are disjoint
    for s in range(3):
        assert written[s] == {u for u in engine.seen if in_shard(u, s, 3)}


def test_the_default_model_is_not_loaded_and_the_lists_are_the_retrieval_order(
    engine, tmp_path, monkeypatch
):
    """The zero-shot default is served at the retrieval order: loading it would cost the
    job the LM's load for lists equal to the retrieval order's."""
    import ranking.loading
    from retrieval.artifacts import ArtifactStore
    from retrieval.generator import CandidateGenerator

    def refuse(model, **kw):
        raise AssertionError(f"loaded {model!r}")

    monkeypatch.setattr(ranking.loading, "load_backend", refuse)
    report = run_batch(config(tmp_path, "default"), engine=engine)
    assert report.model_version == f"retrieval:{report.retrieval_version}"
    gen = CandidateGenerator.load(ArtifactStore(tmp_path / "artifacts"), report.retrieval_version)
    assert report.users_written == N_USERS
    for user in engine.seen:
        stored = [r.item_id for r in recommendations_for(user, "nightly", engine=engine)]
        assert stored == [str(c.item) for c in gen.candidates(user, 5)]


def test_bad_shard_is_refused(engine, tmp_path, tiny_model_dir):
    with pytest.raises(UserError, match=r"shard 3 is not in 0\.\.2"):
        run_batch(config(tmp_path, tiny_model_dir, shard=3, shards=3), engine=engine)


def test_batch_task_runs_eagerly_and_is_recorded(engine, tmp_path, monkeypatch):
    from jobs.tasks import batch_recommendations
    from recsys.db.runs import job_run
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
        assert job_run(result["job_id"], engine=engine).status == "succeeded"
    finally:
        get_settings.cache_clear()


def test_progress_rises_over_every_user_and_ends_at_1(
    engine, tmp_path, tiny_model_dir, monkeypatch, capsys
):
    """One progress over the users to re-rank: the fractions for job_runs (`on_progress`)
    rise as each model batch finishes and reach 1.0 only once every user is written; off
    a terminal, plain lines with rate and ETA."""
    from recsys import progress
    from recsys.db import runs

    class Ticking:  # every reading 10 s on: every update is due for a report
        now = 0.0

        def monotonic(self) -> float:
            self.now += 10.0
            return self.now

    monkeypatch.setattr(progress, "time", Ticking())
    real_write = runs.write_recommendations
    written: list[str] = []
    reports: list[tuple[float, int]] = []  # (fraction, users written by then)

    def write(run_id, lists, **kw):
        real_write(run_id, lists, **kw)
        written.extend(lists)

    monkeypatch.setattr(runs, "write_recommendations", write)
    batch = config(tmp_path, tiny_model_dir, progress=True, batch_size=2)
    report = run_batch(
        batch, engine=engine, on_progress=lambda f: reports.append((f, len(written)))
    )
    assert report.users_written == N_USERS
    fractions = [f for f, _ in reports]
    # 12 users in chunks of 5, ranked 2 at a time: a report per model batch (the last
    # one's 12/12 is left to the end), strictly increasing, and 1.0 after the last write
    assert fractions == pytest.approx([2 / 12, 4 / 12, 5 / 12, 7 / 12, 9 / 12, 10 / 12, 1.0])
    assert reports[-1] == (1.0, N_USERS)
    err = capsys.readouterr().err
    assert "batch re-rank: " in err and " users/s, ETA " in err
    assert "batch re-rank: 12/12 users (100%)" in err and "done in" in err
