"""Remediation: what an incident runs and how it ended; shipped audit batches.

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-23
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

TS = sa.DateTime(timezone=True)
JSON = sa.JSON().with_variant(sa.dialects.postgresql.JSONB(), "postgresql")
_INCIDENT_COLUMNS = (
    ("parameters", JSON),
    ("cluster", sa.String(63)),
    ("mode", sa.String(8)),
    ("mode_reason", sa.Text()),
    ("expires_at", TS),
    ("outcome", sa.String(16)),
    ("run_id", sa.String(128)),
)


def upgrade() -> None:
    with op.batch_alter_table("incidents") as batch:
        for name, type_ in _INCIDENT_COLUMNS:
            batch.add_column(sa.Column(name, type_, nullable=True))
    op.create_table(
        "audit_shipments",
        sa.Column("id", sa.Integer(), primary_key=True, autoincrement=True),
        sa.Column("first_seq", sa.BigInteger(), nullable=False),
        sa.Column("last_seq", sa.BigInteger(), nullable=False, unique=True),
        sa.Column("entries", sa.Integer(), nullable=False),
        sa.Column("sha256", sa.String(64), nullable=False),
        sa.Column("object_key", sa.String(512), nullable=False),
        sa.Column("sink", sa.String(512), nullable=False),
        sa.Column("shipped_at", TS, nullable=False),
    )


def downgrade() -> None:
    op.drop_table("audit_shipments")
    with op.batch_alter_table("incidents") as batch:
        for name, _ in reversed(_INCIDENT_COLUMNS):
            batch.drop_column(name)
