"""Retention (recsys.retention, `recsys prune`): what goes, what always stays, and that a
dry run deletes nothing. On SQLite and PostgreSQL (the `engine` fixture)."""

from __future__ import annotations

import os
import time
from datetime import timedelta
from pathlib import Path

import pytest
import sqlalchemy as sa

from recsys.db.events import ImpressionRecord, delete_impressions_before, log_impressions
from recsys.db.models import Impression, Recommendation, utcnow
from recsys.db.registry import list_models, model_history, promote_model, register_model
from recsys.db.runs import recommendation_runs, recommendations_for, write_recommendations
from recsys.errors import UserError
from recsys.retention import PRUNED, Folders, RetentionPolicy, apply_prune, plan_prune
from retrieval.artifacts import ArtifactStore
from tests.fixtures.cli import run_cli

LATER = timedelta(days=40)  # "now" for the plans below: everything written is 40 days old


def _index_versions(engine, root: Path, n: int) -> list[str]:
    """n index versions saved in an ArtifactStore under `root` and registered, oldest first."""
    store = ArtifactStore(root)
    versions = [f"v{i}" for i in range(1, n + 1)]
    for v in versions:
        art = store.save("index", v, lambda d: (d / "ids.json").write_text("[1, 2, 3]"))
        register_model("index", v, str(art.path.resolve()), engine=engine)
        time.sleep(0.002)  # distinct registration times on every database
    return versions


def test_old_versions_go_and_the_ones_in_use_stay(engine, tmp_path):
    folders = Folders(tmp_path / "var", tmp_path / "var" / "artifacts")
    versions = _index_versions(engine, folders.artifact_dir, 8)
    promote_model("index", "v2", engine=engine)
    promote_model("index", "v3", engine=engine)  # v3 promoted, v2 the rollback target
    outside = tmp_path / "checkout" / "models" / "ranker"
    outside.mkdir(parents=True)
    for n in range(3):  # the oldest is past keep_versions, but not in the deployment's folders
        register_model("ranker", f"from-checkout-{n}", str(outside), engine=engine)
        time.sleep(0.002)
    policy = RetentionPolicy(keep_versions=2, keep_days=7)

    assert plan_prune(policy, engine=engine, folders=folders).versions == []  # all too young
    plan = plan_prune(policy, engine=engine, folders=folders, now=utcnow() + LATER)
    assert sorted(v.version for v in plan.versions) == ["v1", "v4", "v5", "v6"]
    assert plan.version_bytes > 0

    done = apply_prune(plan, engine=engine, folders=folders)
    assert done["artifacts"] == 4
    store = ArtifactStore(folders.artifact_dir)
    assert store.versions("index") == ["v2", "v3", "v7", "v8"]
    assert store.load("index").version == "v8"  # LATEST still loads
    status = {m.version: m.status for m in list_models("index", engine=engine)}
    retired = {"v1", "v4", "v5", "v6"}
    assert {v for v, s in status.items() if s == "retired"} == retired
    assert (status["v2"], status["v3"], status["v7"]) == ("candidate", "promoted", "candidate")
    reasons = {e.version: e.reason for e in model_history("index", engine=engine)
               if e.action == "retired"}  # fmt: skip
    assert reasons == dict.fromkeys(["v1", "v4", "v5", "v6"], PRUNED)
    assert outside.is_dir()  # registered from outside the deployment's folders: never deleted
    again = plan_prune(policy, engine=engine, folders=folders, now=utcnow() + LATER)
    assert again.versions == [] and len(versions) == 8


def test_the_version_latest_names_stays_even_when_old(engine, tmp_path):
    folders = Folders(tmp_path / "var", tmp_path / "var" / "artifacts")
    _index_versions(engine, folders.artifact_dir, 3)
    (folders.artifact_dir / "index" / "LATEST").write_text("v1")  # e.g. pinned by hand
    plan = plan_prune(
        RetentionPolicy(keep_versions=1, keep_days=0), engine=engine, folders=folders,
        now=utcnow() + LATER,
    )  # fmt: skip
    assert [v.version for v in plan.versions] == ["v2"]


def _age_runs(engine, days: dict[str, int]) -> None:
    table = Recommendation.__table__
    with engine.begin() as conn:
        for run_id, d in days.items():
            conn.execute(sa.update(table).where(table.c.run_id == run_id)
                         .values(created_at=utcnow() - timedelta(days=d)))  # fmt: skip


def test_old_batch_runs_go_and_the_newest_stays_whatever_its_age(engine, tmp_path):
    folders = Folders(tmp_path / "var", tmp_path / "var" / "artifacts")
    for run_id in ("batch-1", "batch-2", "batch-3"):
        write_recommendations(run_id, {"u1": [("a", 1.0), ("b", 0.5)], "u2": [("c", None)]},
                              engine=engine)  # fmt: skip
    _age_runs(engine, {"batch-1": 90, "batch-2": 60, "batch-3": 45})
    plan = plan_prune(RetentionPolicy(recommendations_days=30), engine=engine, folders=folders)
    assert [r.run_id for r in plan.runs] == ["batch-2", "batch-1"]
    assert sum(r.rows for r in plan.runs) == 6
    done = apply_prune(plan, engine=engine, folders=folders)
    assert done["recommendation_rows"] == 6
    assert [r.run_id for r in recommendation_runs(engine=engine)] == ["batch-3"]
    assert [r.item_id for r in recommendations_for("u1", engine=engine)] == ["a", "b"]
    kept = plan_prune(RetentionPolicy(recommendations_days=None), engine=engine, folders=folders)
    assert kept.runs == []


def test_impressions_are_kept_unless_a_retention_is_set(engine, tmp_path):
    folders = Folders(tmp_path / "var", tmp_path / "var" / "artifacts")
    now = utcnow()
    records = [
        ImpressionRecord(f"r{i}", "u1", f"i{i}", 0, "retrieval", timestamp=now - timedelta(days=d))
        for i, d in enumerate([100, 50, 20, 1, 0])
    ]
    log_impressions(records, engine=engine)
    default = plan_prune(RetentionPolicy(), engine=engine, folders=folders)
    assert default.impressions_before is None and default.impressions == 0
    plan = plan_prune(RetentionPolicy(impressions_days=30), engine=engine, folders=folders)
    assert plan.impressions == 2
    assert apply_prune(plan, engine=engine, folders=folders)["impressions"] == 2
    with engine.connect() as conn:
        left = sorted(conn.scalars(sa.select(Impression.__table__.c.request_id)))
    assert left == ["r2", "r3", "r4"]
    # in small chunks, as on a big table: every old row goes, the young ones stay
    assert delete_impressions_before(now - timedelta(hours=12), engine=engine, chunk=1) == 2


def test_leftover_temporary_folders_go_after_a_day(engine, tmp_path):
    folders = Folders(tmp_path / "var", tmp_path / "var" / "artifacts")
    old = folders.artifact_dir / "index" / ".tmp-v9-abc"
    fresh = folders.artifact_dir / "index" / ".tmp-v10-def"
    for folder in (old, fresh):
        folder.mkdir(parents=True)
        (folder / "ids.json").write_text("[]")
    two_days_ago = time.time() - 2 * 86400
    os.utime(old, (two_days_ago, two_days_ago))
    plan = plan_prune(RetentionPolicy(), engine=engine, folders=folders)
    assert plan.temporary == [old]
    apply_prune(plan, engine=engine, folders=folders)
    assert not old.exists() and fresh.exists()


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"keep_versions": 0}, "keep_versions must be at least 1"),
        ({"keep_days": -1}, "keep_days must be at least 0"),
        ({"recommendations_days": 0.5}, "recommendations_days must be at least 1"),
        ({"impressions_days": float("nan")}, "impressions_days must be at least 1"),
    ],
)
def test_a_bad_policy_is_a_user_error(options, message):
    with pytest.raises(UserError, match=message):
        RetentionPolicy(**options)


def test_prune_command_lists_first_and_deletes_only_with_apply(
    sqlite_engine, tmp_path, fresh_settings, monkeypatch, capsys
):
    engine = sqlite_engine
    sqlite_url = engine.url.render_as_string(hide_password=False)
    fresh_settings.setenv("RECSYS_VAR_DIR", str(tmp_path / "var"))
    write_recommendations("batch-old", {"u1": [("a", 1.0)]}, engine=engine)
    write_recommendations("batch-new", {"u1": [("b", 1.0)]}, engine=engine)
    _age_runs(engine, {"batch-old": 60, "batch-new": 1})

    code, out, _ = run_cli(monkeypatch, capsys, ["prune", "--url", sqlite_url])
    assert code == 0, out
    assert "1 batch run(s), 1 recommendation rows" in out and "dry run" in out
    assert len(recommendation_runs(engine=engine)) == 2
    code, out, _ = run_cli(monkeypatch, capsys, ["prune", "--apply", "--url", sqlite_url])
    assert code == 0 and "deleted:" in out
    assert [r.run_id for r in recommendation_runs(engine=engine)] == ["batch-new"]
    code, _, err = run_cli(monkeypatch, capsys, ["prune", "--keep-versions", "0"])
    assert code != 0 and "keep_versions must be at least 1" in err and "Traceback" not in err
