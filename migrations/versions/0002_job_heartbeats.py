"""job_runs.heartbeat_at: a running job's worker writes it periodically, so a run whose
worker died (no heartbeat for a while) is seen as lost and its redelivered task runs again

Revision ID: 0002
Revises: 0001
Create Date: 2026-12-02 07:00:00
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column("job_runs", sa.Column("heartbeat_at", sa.DateTime(timezone=True)))
    op.create_index("ix_job_runs_task_id", "job_runs", ["task_id"])


def downgrade() -> None:
    with op.batch_alter_table("job_runs") as batch:
        batch.drop_index("ix_job_runs_task_id")
        batch.drop_column("heartbeat_at")
