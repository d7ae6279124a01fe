"""The model registry's rows: at most one promoted version per kind; rollback returns to the
previous one. (recsys.registry decides whether a candidate may be promoted: the gates.)"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Engine
from sqlalchemy.orm import Session

from recsys.db.engine import session_scope
from recsys.db.models import ModelEvent, ModelKind, ModelStatus, ModelVersion, utcnow
from recsys.errors import UserError


@dataclass(frozen=True)
class ModelVersionInfo:
    kind: str
    version: str
    artifact_uri: str
    sha256: str | None
    metrics: dict[str, Any]
    status: str
    created_at: datetime
    promoted_at: datetime | None
    retired_at: datetime | None


@dataclass(frozen=True)
class ModelEventInfo:
    kind: str
    version: str
    action: str  # registered | promoted | retired (a rollback: one of each, reason says)
    reason: str | None
    at: datetime


def _info(mv: ModelVersion) -> ModelVersionInfo:
    return ModelVersionInfo(
        kind=mv.kind,
        version=mv.version,
        artifact_uri=mv.artifact_uri,
        sha256=mv.sha256,
        metrics=dict(mv.metrics or {}),
        status=mv.status,
        created_at=mv.created_at,
        promoted_at=mv.promoted_at,
        retired_at=mv.retired_at,
    )


def _check_kind(kind: str) -> str:
    allowed = [k.value for k in ModelKind]
    if kind not in allowed:
        raise UserError(f"unknown model kind {kind!r}; use one of: {', '.join(allowed)}")
    return kind


def _get_version(session: Session, kind: str, version: str) -> ModelVersion:
    mv = session.scalar(
        sa.select(ModelVersion).where(ModelVersion.kind == kind, ModelVersion.version == version)
    )
    if mv is None:
        raise UserError(
            f"no {kind} model version {version!r}; see `recsys models list --kind {kind}`"
        )
    return mv


def _promoted(session: Session, kind: str) -> ModelVersion | None:
    return session.scalar(
        sa.select(ModelVersion)
        .where(ModelVersion.kind == kind, ModelVersion.status == ModelStatus.PROMOTED.value)
        .with_for_update()
    )


def register_model(
    kind: str,
    version: str,
    artifact_uri: str,
    *,
    sha256: str | None = None,
    metrics: Mapping[str, Any] | None = None,
    engine: Engine,
) -> ModelVersionInfo:
    """Add a candidate version. Registering the same (kind, version) twice is refused."""
    _check_kind(kind)
    with session_scope(engine, write=True) as session:
        existing = session.scalar(
            sa.select(ModelVersion).where(
                ModelVersion.kind == kind, ModelVersion.version == version
            )
        )
        if existing is not None:
            raise UserError(f"{kind} model version {version!r} is already registered")
        mv = ModelVersion(
            kind=kind,
            version=version,
            artifact_uri=artifact_uri,
            sha256=sha256,
            metrics=dict(metrics or {}),
            status=ModelStatus.CANDIDATE.value,
            created_at=utcnow(),
        )
        session.add(mv)
        _record(session, mv, "registered", None)
        session.flush()
        return _info(mv)


def get_model(kind: str, version: str, *, engine: Engine) -> ModelVersionInfo:
    with session_scope(engine, write=True) as session:
        return _info(_get_version(session, _check_kind(kind), version))


def current_model(kind: str, *, engine: Engine) -> ModelVersionInfo | None:
    """The promoted version of `kind`, or None when none is promoted."""
    _check_kind(kind)
    query = sa.select(ModelVersion).where(
        ModelVersion.kind == kind, ModelVersion.status == ModelStatus.PROMOTED.value
    )
    with Session(engine) as session:
        mv = session.scalar(query)
        return _info(mv) if mv else None


def list_models(kind: str | None = None, *, engine: Engine) -> list[ModelVersionInfo]:
    """Every registered version (of one kind), newest first."""
    query = sa.select(ModelVersion).order_by(ModelVersion.created_at.desc(), ModelVersion.id.desc())
    if kind is not None:
        query = query.where(ModelVersion.kind == _check_kind(kind))
    with Session(engine) as session:
        return [_info(mv) for mv in session.scalars(query)]


def promote_model(
    kind: str, version: str, *, reason: str | None = None, engine: Engine
) -> ModelVersionInfo:
    """Make `version` the promoted one; the previously promoted version becomes a candidate
    (and stays the rollback target). Use recsys.registry.promote, which applies the gates."""
    _check_kind(kind)
    with session_scope(engine, write=True) as session:
        mv = _get_version(session, kind, version)
        if mv.status == ModelStatus.RETIRED.value:
            raise UserError(f"{kind} {version!r} is retired; register a new version instead")
        if mv.status == ModelStatus.PROMOTED.value:
            return _info(mv)
        current = _promoted(session, kind)
        if current is not None:
            current.status = ModelStatus.CANDIDATE.value
            session.flush()  # the one-promoted-per-kind index must never see two
        mv.status = ModelStatus.PROMOTED.value
        mv.promoted_at = utcnow()
        _record(session, mv, "promoted", reason)
        session.flush()
        return _info(mv)


def retire_model(
    kind: str, version: str, *, reason: str | None = None, engine: Engine
) -> ModelVersionInfo:
    """Take a version out of use for good. The promoted version cannot be retired: roll back
    (or promote another) first, so serving always has a model."""
    _check_kind(kind)
    with session_scope(engine, write=True) as session:
        mv = _get_version(session, kind, version)
        if mv.status == ModelStatus.PROMOTED.value:
            raise UserError(
                f"{kind} {version!r} is the promoted version; `recsys models rollback --kind "
                f"{kind}` or promote another version before retiring it"
            )
        if mv.status != ModelStatus.RETIRED.value:
            mv.status = ModelStatus.RETIRED.value
            mv.retired_at = utcnow()
            _record(session, mv, "retired", reason)
            session.flush()
        return _info(mv)


def rollback_model(kind: str, *, engine: Engine) -> ModelVersionInfo:
    """Retire the promoted version and promote the one promoted before it. Returns the newly
    promoted version."""
    _check_kind(kind)
    with session_scope(engine, write=True) as session:
        current = _promoted(session, kind)
        if current is None:
            raise UserError(f"no {kind} version is promoted; nothing to roll back")
        previous = _rollback_target(session, kind)
        if previous is None:
            raise UserError(
                f"no earlier promoted {kind} version (not retired) to roll back to from "
                f"{current.version!r}"
            )
        now = utcnow()
        current.status = ModelStatus.RETIRED.value
        current.retired_at = now
        session.flush()
        previous.status = ModelStatus.PROMOTED.value
        previous.promoted_at = now
        _record(session, current, "retired", f"rolled back to {previous.version}")
        _record(session, previous, "promoted", f"rollback from {current.version}")
        session.flush()
        return _info(previous)


def rollback_target(kind: str, *, engine: Engine) -> ModelVersionInfo | None:
    """The version a rollback of `kind` would promote again, if any."""
    with Session(engine) as session:
        mv = _rollback_target(session, _check_kind(kind))
        return _info(mv) if mv else None


def _rollback_target(session: Session, kind: str) -> ModelVersion | None:
    return session.scalar(
        sa.select(ModelVersion)
        .where(
            ModelVersion.kind == kind,
            ModelVersion.status == ModelStatus.CANDIDATE.value,
            ModelVersion.promoted_at.is_not(None),
        )
        .order_by(ModelVersion.promoted_at.desc(), ModelVersion.id.desc())
        .limit(1)
    )


def model_history(
    kind: str | None = None, *, limit: int = 50, engine: Engine
) -> list[ModelEventInfo]:
    """The registry's events (of one kind), newest first."""
    query = sa.select(ModelEvent).order_by(ModelEvent.at.desc(), ModelEvent.id.desc()).limit(limit)
    if kind is not None:
        query = query.where(ModelEvent.kind == _check_kind(kind))
    with Session(engine) as session:
        return [
            ModelEventInfo(kind=e.kind, version=e.version, action=e.action, reason=e.reason,
                           at=e.at)
            for e in session.scalars(query)
        ]  # fmt: skip


def _record(session: Session, mv: ModelVersion, action: str, reason: str | None) -> None:
    session.add(ModelEvent(kind=mv.kind, version=mv.version, action=action, reason=reason,
                           at=utcnow()))  # fmt: skip
