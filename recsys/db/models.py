"""The database schema: SQLAlchemy 2 typed mapped classes.

Everything the backend learns from or serves lives in these tables. Users and items carry an
`external_id` (the id the outside world uses, e.g. MovieLens "196"); every other table refers to
them by the internal integer key. Timestamps are timezone-aware UTC datetimes on both SQLite and
PostgreSQL. No schema name is hard-coded: PostgreSQL's search_path decides where tables live.
"""

from __future__ import annotations

import enum
from datetime import UTC, datetime
from typing import Any, ClassVar

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship
from sqlalchemy.types import TypeDecorator

# Stable constraint names, so that Alembic can drop what it created on every backend.
NAMING_CONVENTION = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}

# SQLite only auto-increments INTEGER PRIMARY KEY; PostgreSQL gets a 64-bit key.
BigId = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
JSONType = sa.JSON().with_variant(postgresql.JSONB(), "postgresql")


def utcnow() -> datetime:
    return datetime.now(UTC)


class UTCDateTime(TypeDecorator[datetime]):
    """Stores UTC, returns aware UTC datetimes (SQLite has no time zones; naive input is UTC)."""

    impl = sa.DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: sa.Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            return value if dialect.name == "sqlite" else value.replace(tzinfo=UTC)
        value = value.astimezone(UTC)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: datetime | None, dialect: sa.Dialect) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


class ModelKind(enum.StrEnum):
    RANKER = "ranker"
    CF = "cf"
    INDEX = "index"
    EMBEDDINGS = "embeddings"


class ModelStatus(enum.StrEnum):
    CANDIDATE = "candidate"
    PROMOTED = "promoted"
    RETIRED = "retired"


class JobStatus(enum.StrEnum):
    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"


def _enum_check(column: str, values: type[enum.StrEnum]) -> sa.CheckConstraint:
    allowed = ", ".join(f"'{v.value}'" for v in values)
    return sa.CheckConstraint(f"{column} IN ({allowed})", name=f"{column}_valid")


class Base(DeclarativeBase):
    metadata = sa.MetaData(naming_convention=NAMING_CONVENTION)
    type_annotation_map: ClassVar[dict[Any, Any]] = {
        datetime: UTCDateTime(),
        dict[str, Any]: JSONType,
    }


class User(Base):
    __tablename__ = "users"

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    external_id: Mapped[str] = mapped_column(sa.String(255), unique=True)
    attributes: Mapped[dict[str, Any]] = mapped_column(default=dict)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow, onupdate=utcnow)


class Item(Base):
    __tablename__ = "items"

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    external_id: Mapped[str] = mapped_column(sa.String(255), unique=True)
    title: Mapped[str | None] = mapped_column(sa.Text)
    text: Mapped[str | None] = mapped_column(sa.Text)
    attributes: Mapped[dict[str, Any]] = mapped_column(default=dict)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow, onupdate=utcnow)


class Interaction(Base):
    """One user event on one item. `event_id` is a hash of (source, user, item, timestamp,
    event), unique, so loading the same events twice stores them once."""

    __tablename__ = "interactions"
    __table_args__ = (
        # hot query: a user's last N interactions by time
        sa.Index("ix_interactions_user_id_timestamp", "user_id", "timestamp"),
        sa.Index("ix_interactions_item_id", "item_id"),
    )

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    event_id: Mapped[str] = mapped_column(sa.String(64), unique=True)
    user_id: Mapped[int] = mapped_column(sa.ForeignKey("users.id", ondelete="CASCADE"))
    item_id: Mapped[int] = mapped_column(sa.ForeignKey("items.id", ondelete="CASCADE"))
    event: Mapped[str] = mapped_column(sa.String(64))
    value: Mapped[float | None]
    timestamp: Mapped[datetime]
    source: Mapped[str] = mapped_column(sa.String(255), default="")

    item: Mapped[Item] = relationship(lazy="raise")


class Impression(Base):
    """One item shown to a user in one response, with what is needed for off-policy estimates."""

    __tablename__ = "impressions"
    __table_args__ = (
        sa.Index("ix_impressions_request_id", "request_id"),
        sa.Index("ix_impressions_user_id_timestamp", "user_id", "timestamp"),
    )

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    request_id: Mapped[str] = mapped_column(sa.String(64))
    user_id: Mapped[int] = mapped_column(sa.ForeignKey("users.id", ondelete="CASCADE"))
    item_id: Mapped[int] = mapped_column(sa.ForeignKey("items.id", ondelete="CASCADE"))
    position: Mapped[int]
    propensity: Mapped[float | None]
    policy: Mapped[str] = mapped_column(sa.String(64))
    model_version: Mapped[str | None] = mapped_column(sa.String(255))
    context: Mapped[dict[str, Any]] = mapped_column(default=dict)
    timestamp: Mapped[datetime] = mapped_column(default=utcnow)


class Recommendation(Base):
    """One ranked item in one user's list of one batch run."""

    __tablename__ = "recommendations"
    __table_args__ = (
        # hot queries: a run's lists by user (this unique index), a user's latest lists
        sa.UniqueConstraint("run_id", "user_id", "rank"),
        sa.Index("ix_recommendations_user_id_created_at", "user_id", "created_at"),
    )

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    run_id: Mapped[str] = mapped_column(sa.String(64))
    user_id: Mapped[int] = mapped_column(sa.ForeignKey("users.id", ondelete="CASCADE"))
    rank: Mapped[int]
    item_id: Mapped[int] = mapped_column(sa.ForeignKey("items.id", ondelete="CASCADE"))
    score: Mapped[float | None]
    model_version: Mapped[str | None] = mapped_column(sa.String(255))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class ModelVersion(Base):
    """The model registry: at most one promoted version per kind (a partial unique index)."""

    __tablename__ = "model_versions"
    __table_args__ = (
        sa.UniqueConstraint("kind", "version"),
        _enum_check("kind", ModelKind),
        _enum_check("status", ModelStatus),
        sa.Index(
            "uq_model_versions_promoted_kind",
            "kind",
            unique=True,
            sqlite_where=sa.text("status = 'promoted'"),
            postgresql_where=sa.text("status = 'promoted'"),
        ),
    )

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    kind: Mapped[str] = mapped_column(sa.String(32))
    version: Mapped[str] = mapped_column(sa.String(255))
    artifact_uri: Mapped[str] = mapped_column(sa.Text)
    sha256: Mapped[str | None] = mapped_column(sa.String(64))
    metrics: Mapped[dict[str, Any]] = mapped_column(default=dict)
    status: Mapped[str] = mapped_column(sa.String(16), default=ModelStatus.CANDIDATE.value)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    # when it last became the promoted version; rollback goes to the latest earlier one
    promoted_at: Mapped[datetime | None]
    retired_at: Mapped[datetime | None]


class JobRun(Base):
    """A batch / training / ingest job; a sharded job has one row per shard under a parent."""

    __tablename__ = "job_runs"
    __table_args__ = (
        _enum_check("status", JobStatus),
        sa.Index("ix_job_runs_kind_created_at", "kind", "created_at"),
        sa.Index("ix_job_runs_parent_id", "parent_id"),
        sa.Index("ix_job_runs_task_id", "task_id"),
    )

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    kind: Mapped[str] = mapped_column(sa.String(64))
    parameters: Mapped[dict[str, Any]] = mapped_column(default=dict)
    status: Mapped[str] = mapped_column(sa.String(16), default=JobStatus.QUEUED.value)
    progress: Mapped[float] = mapped_column(default=0.0)
    parent_id: Mapped[int | None] = mapped_column(sa.ForeignKey("job_runs.id", ondelete="CASCADE"))
    shard_index: Mapped[int | None]
    shard_count: Mapped[int | None]
    task_id: Mapped[str | None] = mapped_column(sa.String(255))
    result: Mapped[dict[str, Any]] = mapped_column(default=dict)
    error: Mapped[str | None] = mapped_column(sa.Text)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    started_at: Mapped[datetime | None]
    finished_at: Mapped[datetime | None]
    heartbeat_at: Mapped[datetime | None]  # written while running (recsys.job_runs)


class ApiKey(Base):
    """An API credential; only a hash of the key is stored."""

    __tablename__ = "api_keys"

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    name: Mapped[str] = mapped_column(sa.String(255), unique=True)
    key_hash: Mapped[str] = mapped_column(sa.String(128), unique=True)
    scopes: Mapped[list[str]] = mapped_column(JSONType, default=list)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    revoked_at: Mapped[datetime | None]


class ModelEvent(Base):
    """The registry's history: every registration, promotion and retirement (a rollback is
    one of each), so an operator sees who was served when (`model_versions` keeps only each
    version's state)."""

    __tablename__ = "model_events"
    __table_args__ = (sa.Index("ix_model_events_kind_at", "kind", "at"),)

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    kind: Mapped[str] = mapped_column(sa.String(32))
    version: Mapped[str] = mapped_column(sa.String(255))
    action: Mapped[str] = mapped_column(sa.String(16))  # registered | promoted | retired
    reason: Mapped[str | None] = mapped_column(sa.Text)
    at: Mapped[datetime] = mapped_column(default=utcnow)
