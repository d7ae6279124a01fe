"""initial schema: every table of recsys.db.models

Revision ID: 0001
Revises:
Create Date: 2026-11-23 10:06:31.589794
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0001"
down_revision: str | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# Plain types here (not the app's TypeDecorators): a migration must not change when models do.
BIG_ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
JSON = sa.JSON().with_variant(postgresql.JSONB(), "postgresql")
TIMESTAMP = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "api_keys",
        sa.Column("id", BIG_ID, nullable=False),
        sa.Column("name", sa.String(length=255), nullable=False),
        sa.Column("key_hash", sa.String(length=128), nullable=False),
        sa.Column("scopes", JSON, nullable=False),
        sa.Column("created_at", TIMESTAMP, nullable=False),
        sa.Column("revoked_at", TIMESTAMP, nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_api_keys")),
        sa.UniqueConstraint("key_hash", name=op.f("uq_api_keys_key_hash")),
        sa.UniqueConstraint("name", name=op.f("uq_api_keys_name")),
    )
    op.create_table(
        "items",
        sa.Column("id", BIG_ID, nullable=False),
        sa.Column("external_id", sa.String(length=255), nullable=False),
        sa.Column("title", sa.Text(), nullable=True),
        sa.Column("text", sa.Text(), nullable=True),
        sa.Column("attributes", JSON, nullable=False),
        sa.Column("created_at", TIMESTAMP, nullable=False),
        sa.Column("updated_at", TIMESTAMP, nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_items")),
        sa.UniqueConstraint("external_id", name=op.f("uq_items_external_id")),
    )
    op.create_table(
        "job_runs",
        sa.Column("id", BIG_ID, nullable=False),
        sa.Column("kind", sa.String(length=64), nullable=False),
        sa.Column("parameters", JSON, nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("progress", sa.Double(), nullable=False),
        sa.Column("parent_id", BIG_ID, nullable=True),
        sa.Column("shard_index", sa.Integer(), nullable=True),
        sa.Column("shard_count", sa.Integer(), nullable=True),
        sa.Column("task_id", sa.String(length=255), nullable=True),
        sa.Column("result", JSON, nullable=False),
        sa.Column("error", sa.Text(), nullable=True),
        sa.Column("created_at", TIMESTAMP, nullable=False),
        sa.Column("started_at", TIMESTAMP, nullable=True),
        sa.Column("finished_at", TIMESTAMP, nullable=True),
        sa.CheckConstraint(
            "status IN ('queued', 'running', 'succeeded', 'failed', 'cancelled')",
            name=op.f("ck_job_runs_status_valid"),
        ),
        sa.ForeignKeyConstraint(
            ["parent_id"],
            ["job_runs.id"],
            name=op.f("fk_job_runs_parent_id_job_runs"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_job_runs")),
    )
    with op.batch_alter_table("job_runs", schema=None) as batch_op:
        batch_op.create_index("ix_job_runs_kind_created_at", ["kind", "created_at"], unique=False)
        batch_op.create_index("ix_job_runs_parent_id", ["parent_id"], unique=False)

    op.create_table(
        "model_versions",
        sa.Column("id", BIG_ID, nullable=False),
        sa.Column("kind", sa.String(length=32), nullable=False),
        sa.Column("version", sa.String(length=255), nullable=False),
        sa.Column("artifact_uri", sa.Text(), nullable=False),
        sa.Column("sha256", sa.String(length=64), nullable=True),
        sa.Column("metrics", JSON, nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("created_at", TIMESTAMP, nullable=False),
        sa.Column("promoted_at", TIMESTAMP, nullable=True),
        sa.Column("retired_at", TIMESTAMP, nullable=True),
        sa.CheckConstraint(
            "kind IN ('ranker', 'cf', 'index', 'embeddings')",
            name=op.f("ck_model_versions_kind_valid"),
        ),
        sa.CheckConstraint(
            "status IN ('candidate', 'promoted', 'retired')",
            name=op.f("ck_model_versions_status_valid"),
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_model_versions")),
        sa.UniqueConstraint("kind", "version", name=op.f("uq_model_versions_kind_version")),
    )
    with op.batch_alter_table("model_versions", schema=None) as batch_op:
        batch_op.create_index(
            "uq_model_versions_promoted_kind",
            ["kind"],
            unique=True,
            sqlite_where=sa.text("status = 'promoted'"),
            postgresql_where=sa.text("status = 'promoted'"),
        )

    op.create_table(
        "users",
        sa.Column("id", BIG_ID, nullable=False),
        sa.Column("external_id", sa.String(length=255), nullable=False),
        sa.Column("attributes", JSON, nullable=False),
        sa.Column("created_at", TIMESTAMP, nullable=False),
        sa.Column("updated_at", TIMESTAMP, nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_users")),
        sa.UniqueConstraint("external_id", name=op.f("uq_users_external_id")),
    )
    op.create_table(
        "impressions",
        sa.Column("id", BIG_ID, nullable=False),
        sa.Column("request_id", sa.String(length=64), nullable=False),
        sa.Column("user_id", BIG_ID, nullable=False),
        sa.Column("item_id", BIG_ID, nullable=False),
        sa.Column("position", sa.Integer(), nullable=False),
        sa.Column("propensity", sa.Double(), nullable=True),
        sa.Column("policy", sa.String(length=64), nullable=False),
        sa.Column("model_version", sa.String(length=255), nullable=True),
        sa.Column("context", JSON, nullable=False),
        sa.Column("timestamp", TIMESTAMP, nullable=False),
        sa.ForeignKeyConstraint(
            ["item_id"], ["items.id"], name=op.f("fk_impressions_item_id_items"), ondelete="CASCADE"
        ),
        sa.ForeignKeyConstraint(
            ["user_id"], ["users.id"], name=op.f("fk_impressions_user_id_users"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_impressions")),
    )
    with op.batch_alter_table("impressions", schema=None) as batch_op:
        batch_op.create_index("ix_impressions_request_id", ["request_id"], unique=False)
        batch_op.create_index(
            "ix_impressions_user_id_timestamp", ["user_id", "timestamp"], unique=False
        )

    op.create_table(
        "interactions",
        sa.Column("id", BIG_ID, nullable=False),
        sa.Column("event_id", sa.String(length=64), nullable=False),
        sa.Column("user_id", BIG_ID, nullable=False),
        sa.Column("item_id", BIG_ID, nullable=False),
        sa.Column("event", sa.String(length=64), nullable=False),
        sa.Column("value", sa.Double(), nullable=True),
        sa.Column("timestamp", TIMESTAMP, nullable=False),
        sa.Column("source", sa.String(length=255), nullable=False),
        sa.ForeignKeyConstraint(
            ["item_id"],
            ["items.id"],
            name=op.f("fk_interactions_item_id_items"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["user_id"],
            ["users.id"],
            name=op.f("fk_interactions_user_id_users"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_interactions")),
        sa.UniqueConstraint("event_id", name=op.f("uq_interactions_event_id")),
    )
    with op.batch_alter_table("interactions", schema=None) as batch_op:
        batch_op.create_index("ix_interactions_item_id", ["item_id"], unique=False)
        batch_op.create_index(
            "ix_interactions_user_id_timestamp", ["user_id", "timestamp"], unique=False
        )

    op.create_table(
        "recommendations",
        sa.Column("id", BIG_ID, nullable=False),
        sa.Column("run_id", sa.String(length=64), nullable=False),
        sa.Column("user_id", BIG_ID, nullable=False),
        sa.Column("rank", sa.Integer(), nullable=False),
        sa.Column("item_id", BIG_ID, nullable=False),
        sa.Column("score", sa.Double(), nullable=True),
        sa.Column("model_version", sa.String(length=255), nullable=True),
        sa.Column("created_at", TIMESTAMP, nullable=False),
        sa.ForeignKeyConstraint(
            ["item_id"],
            ["items.id"],
            name=op.f("fk_recommendations_item_id_items"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["user_id"],
            ["users.id"],
            name=op.f("fk_recommendations_user_id_users"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_recommendations")),
        sa.UniqueConstraint(
            "run_id", "user_id", "rank", name=op.f("uq_recommendations_run_id_user_id_rank")
        ),
    )
    with op.batch_alter_table("recommendations", schema=None) as batch_op:
        batch_op.create_index(
            "ix_recommendations_user_id_created_at", ["user_id", "created_at"], unique=False
        )


def downgrade() -> None:
    with op.batch_alter_table("recommendations", schema=None) as batch_op:
        batch_op.drop_index("ix_recommendations_user_id_created_at")

    op.drop_table("recommendations")
    with op.batch_alter_table("interactions", schema=None) as batch_op:
        batch_op.drop_index("ix_interactions_user_id_timestamp")
        batch_op.drop_index("ix_interactions_item_id")

    op.drop_table("interactions")
    with op.batch_alter_table("impressions", schema=None) as batch_op:
        batch_op.drop_index("ix_impressions_user_id_timestamp")
        batch_op.drop_index("ix_impressions_request_id")

    op.drop_table("impressions")
    op.drop_table("users")
    with op.batch_alter_table("model_versions", schema=None) as batch_op:
        batch_op.drop_index(
            "uq_model_versions_promoted_kind",
            sqlite_where=sa.text("status = 'promoted'"),
            postgresql_where=sa.text("status = 'promoted'"),
        )

    op.drop_table("model_versions")
    with op.batch_alter_table("job_runs", schema=None) as batch_op:
        batch_op.drop_index("ix_job_runs_parent_id")
        batch_op.drop_index("ix_job_runs_kind_created_at")

    op.drop_table("job_runs")
    op.drop_table("items")
    op.drop_table("api_keys")
