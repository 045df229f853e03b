"""Trust boundary: where each run came from, a cluster's heartbeat key, the approved plan.

- workflow_runs.provenance: ``prefect`` (the run-logger hook), ``neuralops`` (an execution
  NeuralOps performed), ``api:<subject>`` (an authenticated writer), ``seed``, ``local`` (a
  library call); runs recorded before this migration are ``unknown``.
- workflow_runs.verified: the provenance was confirmed (the Prefect API knows the flow run,
  or NeuralOps executed it). Only verified runs, and runs of writers an operator trusts,
  count as evidence for recommendations.
- clusters.heartbeat_key_sha256: the SHA-256 of the key a connector presents on
  ``PUT /healthz``; the key itself is never stored.
- incidents.plan_digest: the digest of what the dry-run checked (manifest, version, rendered
  steps, parameters, cluster); approval binds to it and execution refuses another plan.

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-06
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0007"
down_revision: str | None = "0006"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("workflow_runs") as batch:
        batch.add_column(
            sa.Column("provenance", sa.String(200), nullable=False, server_default="unknown")
        )
        batch.add_column(
            sa.Column("verified", sa.Boolean(), nullable=False, server_default=sa.false())
        )
    with op.batch_alter_table("clusters") as batch:
        batch.add_column(sa.Column("heartbeat_key_sha256", sa.String(64), nullable=True))
    with op.batch_alter_table("incidents") as batch:
        batch.add_column(sa.Column("plan_digest", sa.String(64), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("incidents") as batch:
        batch.drop_column("plan_digest")
    with op.batch_alter_table("clusters") as batch:
        batch.drop_column("heartbeat_key_sha256")
    with op.batch_alter_table("workflow_runs") as batch:
        batch.drop_column("verified")
        batch.drop_column("provenance")
