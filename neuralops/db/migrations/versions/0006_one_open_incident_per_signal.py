"""One open incident per signal: a partial unique index on incidents(signal_id).

Revision ID: 0006
Revises: 0005
Create Date: 2026-11-23
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0006"
down_revision: str | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

OPEN = sa.text("NOT state IN ('dry_run_failed', 'rejected', 'expired', 'succeeded', 'failed')")


def upgrade() -> None:
    # Refuse, naming them, rather than end incidents without an audit entry.
    duplicates = (
        op.get_bind()
        .execute(
            sa.text(
                "SELECT signal_id, COUNT(*) FROM incidents WHERE signal_id IS NOT NULL AND "
                f"{OPEN.text} GROUP BY signal_id HAVING COUNT(*) > 1"
            )
        )
        .all()
    )
    if duplicates:
        listed = ", ".join(f"{signal} ({count} open)" for signal, count in duplicates)
        raise RuntimeError(
            f"migration 0006: these signals have more than one open incident: {listed}. "
            "End the extra ones (`neuralops approve ID --reject` for those awaiting approval; "
            "`neuralops incidents list` shows them), then run `neuralops db upgrade` again."
        )
    op.create_index(
        "uq_incidents_open_signal",
        "incidents",
        ["signal_id"],
        unique=True,
        sqlite_where=OPEN,
        postgresql_where=OPEN,
    )


def downgrade() -> None:
    op.drop_index("uq_incidents_open_signal", table_name="incidents")
