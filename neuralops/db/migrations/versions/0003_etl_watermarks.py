"""ETL watermarks, and a (updated_at, id) index for keyset reads of workflow_runs.

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-23
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

TS = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "etl_watermarks",
        sa.Column("name", sa.String(64), primary_key=True),
        sa.Column("last_updated_at", TS, nullable=False),
        sa.Column("last_id", sa.Uuid(), nullable=False),
        sa.Column("rows_exported", sa.BigInteger(), nullable=False),
        sa.Column("exported_at", TS, nullable=False),
    )
    op.drop_index("ix_workflow_runs_updated_at", table_name="workflow_runs")
    op.create_index("ix_workflow_runs_updated_at_id", "workflow_runs", ["updated_at", "id"])


def downgrade() -> None:
    op.drop_index("ix_workflow_runs_updated_at_id", table_name="workflow_runs")
    op.create_index("ix_workflow_runs_updated_at", "workflow_runs", ["updated_at"])
    op.drop_table("etl_watermarks")
