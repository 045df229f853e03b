"""Initial schema: run history, registry, signals, incidents, append-only audit log, clusters.

Revision ID: 0001
Revises:
Create Date: 2026-11-23
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0001"
down_revision: str | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# Frozen copies of the model types: a migration must not change when models.py does.
JSON = sa.JSON().with_variant(postgresql.JSONB(), "postgresql")
TS = sa.DateTime(timezone=True)


def _stamps() -> list[sa.Column]:
    return [
        sa.Column("created_at", TS, nullable=False),
        sa.Column("updated_at", TS, nullable=False),
    ]


def upgrade() -> None:
    op.create_table(
        "workflow_runs",
        sa.Column("id", sa.Uuid(), primary_key=True),
        sa.Column("wpk_id", sa.String(128), nullable=False),
        sa.Column("run_id", sa.String(128), nullable=False, unique=True),
        sa.Column("inputs", JSON, nullable=False),
        sa.Column("outputs", JSON, nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("duration_ms", sa.BigInteger(), nullable=False),
        sa.Column("node_logs", JSON, nullable=False),
        sa.Column("cluster", sa.String(128)),
        sa.Column("flow_run_id", sa.Uuid()),
        *_stamps(),
        sa.CheckConstraint(
            "status IN ('pending', 'running', 'succeeded', 'failed', 'cancelled', 'crashed')",
            name="ck_workflow_runs_status",
        ),
        sa.CheckConstraint("duration_ms >= 0", name="ck_workflow_runs_duration"),
    )
    op.create_index("ix_workflow_runs_flow_run_id", "workflow_runs", ["flow_run_id"])
    op.create_index("ix_workflow_runs_updated_at", "workflow_runs", ["updated_at"])
    op.create_index("ix_workflow_runs_wpk_created", "workflow_runs", ["wpk_id", "created_at", "id"])

    op.create_table(
        "playbooks",
        sa.Column("id", sa.String(64), primary_key=True),
        sa.Column("version", sa.String(64), nullable=False),
        sa.Column("title", sa.String(200), nullable=False),
        sa.Column("description", sa.Text(), nullable=False),
        sa.Column("manifest", JSON, nullable=False),
        sa.Column("manifest_sha256", sa.String(64), nullable=False),
        sa.Column("safety_mode", sa.String(8), nullable=False),
        sa.Column("allowed_roles", JSON, nullable=False),
        sa.Column("signature", sa.Text()),
        sa.Column("key_id", sa.String(200)),
        sa.Column("latest_run_id", sa.String(128)),
        *_stamps(),
        sa.CheckConstraint("safety_mode IN ('manual', 'auto')", name="ck_playbooks_safety_mode"),
    )

    op.create_table(
        "insight_signals",
        sa.Column("id", sa.Uuid(), primary_key=True),
        sa.Column("rule", sa.String(128), nullable=False),
        sa.Column("query", sa.Text(), nullable=False),
        sa.Column("labels", JSON, nullable=False),
        sa.Column("value", sa.Float(), nullable=False),
        sa.Column("score", sa.Float(), nullable=False),
        sa.Column("z", sa.Float()),
        sa.Column("method", sa.String(32), nullable=False),
        sa.Column("hint", sa.Text(), nullable=False),
        sa.Column("correlated", JSON, nullable=False),
        sa.Column("window_start", TS, nullable=False),
        sa.Column("window_end", TS, nullable=False),
        sa.Column("fingerprint", sa.String(64), nullable=False),
        sa.Column("created_at", TS, nullable=False),
    )
    op.create_index("ix_insight_signals_created_at", "insight_signals", ["created_at"])
    op.create_index("ix_insight_signals_fingerprint", "insight_signals", ["fingerprint"])
    op.create_index("ix_insight_signals_rule_created", "insight_signals", ["rule", "created_at"])

    op.create_table(
        "incidents",
        sa.Column("id", sa.Uuid(), primary_key=True),
        sa.Column("signal_id", sa.Uuid(), sa.ForeignKey("insight_signals.id", ondelete="SET NULL")),
        sa.Column("state", sa.String(24), nullable=False),
        sa.Column("playbook_id", sa.String(64)),
        sa.Column("recommendations", JSON, nullable=False),
        sa.Column("dry_run", JSON),
        sa.Column("approver", sa.String(200)),
        sa.Column("approved_at", TS),
        sa.Column("pre_state", JSON),
        sa.Column("post_state", JSON),
        sa.Column("flow_run_id", sa.Uuid()),
        *_stamps(),
        sa.CheckConstraint(
            "state IN ('suggested', 'dry_run_passed', 'dry_run_failed', 'awaiting_approval', "
            "'approved', 'rejected', 'expired', 'executing', 'succeeded', 'failed')",
            name="ck_incidents_state",
        ),
    )
    op.create_index("ix_incidents_signal_id", "incidents", ["signal_id"])

    op.create_table(
        "audit_logs",
        sa.Column(
            "seq",
            sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
            primary_key=True,
            autoincrement=True,
        ),
        sa.Column("created_at", TS, nullable=False),
        sa.Column("actor", sa.String(200), nullable=False),
        sa.Column("action", sa.String(64), nullable=False),
        sa.Column("subject", sa.String(200), nullable=False),
        sa.Column("payload", JSON, nullable=False),
        sa.Column("prev_hash", sa.String(64), nullable=False),
        sa.Column("hash", sa.String(64), nullable=False, unique=True),
    )
    op.create_index("ix_audit_logs_subject", "audit_logs", ["subject"])
    _make_audit_append_only()

    op.create_table(
        "clusters",
        sa.Column("name", sa.String(63), primary_key=True),
        sa.Column("labels", JSON, nullable=False),
        sa.Column("work_pool", sa.String(128), nullable=False),
        sa.Column("registered_at", TS, nullable=False),
        sa.Column("last_heartbeat", TS),
        sa.Column("status", sa.String(16), nullable=False),
        sa.CheckConstraint(
            "status IN ('pending', 'healthy', 'unreachable', 'disabled')", name="ck_clusters_status"
        ),
    )


def _make_audit_append_only() -> None:
    """The database itself refuses UPDATE, DELETE (and on PostgreSQL TRUNCATE) of audit rows."""
    if op.get_bind().dialect.name == "postgresql":
        op.execute(
            """
            CREATE FUNCTION audit_logs_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
            BEGIN
                RAISE EXCEPTION 'audit_logs is append-only: % is not allowed', TG_OP
                    USING ERRCODE = 'insufficient_privilege';
            END $$;
            """
        )
        op.execute(
            "CREATE TRIGGER audit_logs_no_update_delete BEFORE UPDATE OR DELETE ON audit_logs "
            "FOR EACH ROW EXECUTE FUNCTION audit_logs_append_only()"
        )
        op.execute(
            "CREATE TRIGGER audit_logs_no_truncate BEFORE TRUNCATE ON audit_logs "
            "FOR EACH STATEMENT EXECUTE FUNCTION audit_logs_append_only()"
        )
    else:
        for verb in ("UPDATE", "DELETE"):
            op.execute(
                f"CREATE TRIGGER audit_logs_no_{verb.lower()} BEFORE {verb} ON audit_logs "
                f"BEGIN SELECT RAISE(ABORT, 'audit_logs is append-only: {verb} is not allowed'); "
                "END"
            )


def downgrade() -> None:
    for table in (
        "clusters",
        "audit_logs",
        "incidents",
        "insight_signals",
        "playbooks",
        "workflow_runs",
    ):
        op.drop_table(table)
    if op.get_bind().dialect.name == "postgresql":
        op.execute("DROP FUNCTION IF EXISTS audit_logs_append_only()")
