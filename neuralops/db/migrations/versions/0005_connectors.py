"""Connectors: a cluster's credential reference and Prometheus; execution trigger nonces.

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-23
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0005"
down_revision: str | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

TS = sa.DateTime(timezone=True)


def upgrade() -> None:
    with op.batch_alter_table("clusters") as batch:
        batch.add_column(sa.Column("credential_id", sa.String(200), nullable=True))
        batch.add_column(sa.Column("prometheus_url", sa.String(500), nullable=True))
    op.create_table(
        "trigger_nonces",
        sa.Column("nonce", sa.String(64), primary_key=True),
        sa.Column("cluster", sa.String(63), nullable=False),
        sa.Column("incident_id", sa.Uuid(), nullable=True),
        sa.Column("expires_at", TS, nullable=False),
        sa.Column("used_at", TS, nullable=False),
    )
    op.create_index("ix_trigger_nonces_expires_at", "trigger_nonces", ["expires_at"])


def downgrade() -> None:
    op.drop_index("ix_trigger_nonces_expires_at", table_name="trigger_nonces")
    op.drop_table("trigger_nonces")
    with op.batch_alter_table("clusters") as batch:
        batch.drop_column("prometheus_url")
        batch.drop_column("credential_id")
