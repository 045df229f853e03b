"""Signal dedup bookkeeping: how often a suppressed anomaly recurred, and when it was last seen.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-23
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    # batch mode: SQLite cannot add a NOT NULL column without a default in place.
    with op.batch_alter_table("insight_signals") as batch:
        batch.add_column(sa.Column("occurrences", sa.Integer(), nullable=False, server_default="1"))
        batch.add_column(sa.Column("last_seen_at", sa.DateTime(timezone=True)))
    op.execute("UPDATE insight_signals SET last_seen_at = window_end")
    with op.batch_alter_table("insight_signals") as batch:
        batch.alter_column("last_seen_at", existing_type=sa.DateTime(timezone=True), nullable=False)


def downgrade() -> None:
    with op.batch_alter_table("insight_signals") as batch:
        batch.drop_column("last_seen_at")
        batch.drop_column("occurrences")
