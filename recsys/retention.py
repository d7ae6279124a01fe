"""Retention: what a deployment that runs for years deletes so that its disk and database
stop growing — `recsys prune` (a dry run unless `--apply`) and the weekly `jobs.tasks.prune`.

Every night `recsys batch` builds and registers a retrieval index (tens of MB on a large
log) and writes every user's list; the loop registers a ranker now and then; the service
logs every impression. What goes, under a :class:`RetentionPolicy`:

* **registered artifacts** (indexes, rankers, CF models, embeddings) of versions outside the
  newest `keep_versions` of their kind and older than `keep_days`. Kept whatever their age:
  the promoted version, the one a rollback would promote, and a version its artifact
  folder's `LATEST` names. Only artifacts inside the var folder or the artifact folder are
  deleted (a ranker registered from `models/` in a checkout is never touched). The version
  is retired in the registry first (reason "pruned: artifact deleted"), then its folder
  deleted, manifest first, so a crash leaves neither a usable version without files nor a
  half-deleted folder that looks complete;
* **batch runs' lists** whose last row is older than `recommendations_days`, one run per
  transaction; the newest run is kept whatever its age;
* **impressions** older than `impressions_days`, only when it is set: the closed loop and
  `recsys replay` learn from them, so by default they are kept;
* **leftovers of interrupted artifact saves** (`.tmp-*` folders) older than a day.

`plan_prune` only reads; `apply_prune` deletes what a plan lists. Both are safe to re-run.
"""

from __future__ import annotations

import shutil
import time
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING

from sqlalchemy.engine import Engine

from recsys.db.events import count_impressions_before, delete_impressions_before
from recsys.db.models import ModelKind, ModelStatus, utcnow
from recsys.db.registry import (
    ModelVersionInfo,
    current_model,
    list_models,
    retire_model,
    rollback_target,
)
from recsys.db.runs import RunSummary, delete_recommendation_run, recommendation_runs
from recsys.errors import UserError
from recsys.registry import local_artifact_path
from retrieval.artifacts import LATEST, MANIFEST

if TYPE_CHECKING:
    from recsys.settings import Settings

PRUNED = "pruned: artifact deleted"
TEMPORARY_AGE_S = 24 * 3600


@dataclass(frozen=True)
class RetentionPolicy:
    """How much history to keep (defaults: `RECSYS_RETENTION_*`, recsys.settings)."""

    keep_versions: int = 5
    keep_days: float = 7.0
    recommendations_days: float | None = 30.0
    impressions_days: float | None = None

    @classmethod
    def from_settings(cls, settings: Settings) -> RetentionPolicy:
        return cls(
            keep_versions=settings.retention_keep_versions,
            keep_days=settings.retention_keep_days,
            recommendations_days=settings.retention_recommendations_days,
            impressions_days=settings.retention_impressions_days,
        )

    def __post_init__(self) -> None:
        checks = (
            ("keep_versions", self.keep_versions, 1),
            ("keep_days", self.keep_days, 0),
            ("recommendations_days", self.recommendations_days, 1),
            ("impressions_days", self.impressions_days, 1),
        )
        for name, value, least in checks:
            if value is not None and not value >= least:
                raise UserError(f"retention {name} must be at least {least}; got {value}")


@dataclass
class PrunePlan:
    versions: list[ModelVersionInfo] = field(default_factory=list)
    version_bytes: int = 0
    runs: list[RunSummary] = field(default_factory=list)
    impressions_before: datetime | None = None
    impressions: int = 0
    temporary: list[Path] = field(default_factory=list)

    def lines(self) -> list[str]:
        """What the plan deletes, for a person."""
        mb = self.version_bytes / 1e6
        out = [f"{len(self.versions)} artifact(s) of old versions, {mb:.1f} MB"]
        out += [f"  {v.kind} {v.version} ({v.status}) {v.artifact_uri}" for v in self.versions]
        rows = sum(r.rows for r in self.runs)
        out.append(f"{len(self.runs)} batch run(s), {rows} recommendation rows")
        out += [f"  {r.run_id} (last written {r.last_written:%Y-%m-%d})" for r in self.runs]
        if self.impressions_before is None:
            out.append("impressions: kept (no retention set)")
        else:
            day = f"{self.impressions_before:%Y-%m-%d}"
            out.append(f"{self.impressions} impression(s) before {day}")
        out.append(f"{len(self.temporary)} leftover temporary folder(s)")
        return out


@dataclass(frozen=True)
class Folders:
    """Where a deployment keeps its files (recsys.settings: `var_dir`, the resolved
    `artifact_dir`): the only places pruning deletes from."""

    var_dir: Path
    artifact_dir: Path

    @classmethod
    def of(cls, settings: Settings) -> Folders:
        return cls(settings.var_dir, settings.resolved_artifact_dir)

    def owns(self, path: Path) -> bool:
        path = path.resolve()
        return any(root.resolve() in path.parents for root in (self.var_dir, self.artifact_dir))


def plan_prune(
    policy: RetentionPolicy, *, engine: Engine, folders: Folders, now: datetime | None = None
) -> PrunePlan:
    """What `apply_prune` would delete now (reads only)."""
    now = now or utcnow()
    plan = PrunePlan()
    for kind in ModelKind:
        for info in _old_versions(kind.value, policy, engine, now):
            path = _deletable(info, folders)
            if path is not None:
                plan.versions.append(info)
                plan.version_bytes += _size(path)
    if policy.recommendations_days is not None:
        cutoff = now - timedelta(days=policy.recommendations_days)
        runs = recommendation_runs(engine=engine)
        plan.runs = [r for r in runs[1:] if r.last_written < cutoff]
    if policy.impressions_days is not None:
        plan.impressions_before = now - timedelta(days=policy.impressions_days)
        plan.impressions = count_impressions_before(plan.impressions_before, engine=engine)
    plan.temporary = _temporary_folders(folders.artifact_dir)
    return plan


def apply_prune(plan: PrunePlan, *, engine: Engine, folders: Folders) -> dict[str, int]:
    """Delete what `plan` lists; returns counts of what went."""
    artifacts = 0
    for info in plan.versions:
        path = _deletable(info, folders)  # looked up again: the plan may be minutes old
        if path is None:
            continue
        if info.status != ModelStatus.RETIRED.value:
            retire_model(info.kind, info.version, reason=PRUNED, engine=engine)
        _remove_folder(path)
        artifacts += 1
    rows = sum(delete_recommendation_run(r.run_id, engine=engine) for r in plan.runs)
    impressions = 0
    if plan.impressions_before is not None:
        impressions = delete_impressions_before(plan.impressions_before, engine=engine)
    for folder in plan.temporary:
        shutil.rmtree(folder, ignore_errors=True)
    return {
        "artifacts": artifacts,
        "recommendation_runs": len(plan.runs),
        "recommendation_rows": rows,
        "impressions": impressions,
        "temporary_folders": len(plan.temporary),
    }


def _old_versions(
    kind: str, policy: RetentionPolicy, engine: Engine, now: datetime
) -> list[ModelVersionInfo]:
    """Versions of `kind` the policy lets go (the module doc's rule), newest first."""
    versions = list_models(kind, engine=engine)  # newest first
    keep = {v.version for v in versions[: policy.keep_versions]}
    for info in (current_model(kind, engine=engine), rollback_target(kind, engine=engine)):
        if info is not None:
            keep.add(info.version)
    young = now - timedelta(days=policy.keep_days)
    return [v for v in versions if v.version not in keep and v.created_at < young]


def _deletable(info: ModelVersionInfo, folders: Folders) -> Path | None:
    """The version's artifact folder when it exists, lies in one of `folders` and is not
    the version its artifact store's LATEST names; else None."""
    path = local_artifact_path(info.artifact_uri)
    if path is None or not path.is_dir() or not folders.owns(path):
        return None
    path = path.resolve()
    latest = path.parent / LATEST
    if latest.is_file() and latest.read_text().strip() == path.name:
        return None
    return path


def _remove_folder(path: Path) -> None:
    """Manifest first: a version folder without one is incomplete to every reader."""
    (path / MANIFEST).unlink(missing_ok=True)
    shutil.rmtree(path)


def _size(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def _temporary_folders(root: Path) -> list[Path]:
    """`.tmp-*` folders an interrupted artifact save left, a day old or more."""
    if not root.is_dir():
        return []
    old = time.time() - TEMPORARY_AGE_S
    return sorted(p for p in root.glob("*/.tmp-*") if p.is_dir() and p.stat().st_mtime < old)
