"""The schema (SQLAlchemy 2.0). Alembic migrations under migrations/ create exactly this."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Any, ClassVar

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    CheckConstraint,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    String,
    Text,
    TypeDecorator,
    Uuid,
    false,
    text,
)
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

RUN_STATUSES = ("pending", "running", "succeeded", "failed", "cancelled", "crashed")
INCIDENT_STATES = (
    "suggested",
    "dry_run_passed",
    "dry_run_failed",
    "awaiting_approval",
    "approved",
    "rejected",
    "expired",
    "executing",
    "succeeded",
    "failed",
)
# States an incident never leaves; any other is open (incidents.TERMINAL_STATES).
TERMINAL_INCIDENT_STATES = ("dry_run_failed", "rejected", "expired", "succeeded", "failed")
CLUSTER_STATUSES = ("pending", "healthy", "unreachable", "disabled")
SAFETY_MODES = ("manual", "auto")

# JSONB on PostgreSQL (indexable, compact), plain JSON text on SQLite.
JSONType = JSON().with_variant(JSONB(), "postgresql")
# SQLite only auto-increments an INTEGER PRIMARY KEY.
BigIntPK = BigInteger().with_variant(Integer(), "sqlite")


def utcnow() -> datetime:
    return datetime.now(UTC)


class UTCDateTime(TypeDecorator[datetime]):
    """Timezone-aware UTC in and out, on PostgreSQL (timestamptz) and SQLite (naive text)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime: NeuralOps stores timezone-aware UTC only")
        value = value.astimezone(UTC)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def _in(column: str, values: tuple[str, ...]) -> str:
    return f"{column} IN ({', '.join(repr(v) for v in values)})"


class Base(DeclarativeBase):
    type_annotation_map: ClassVar[dict[Any, Any]] = {
        datetime: UTCDateTime,
        dict[str, Any]: JSONType,
    }


class Timestamps:
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow, onupdate=utcnow)


class WorkflowRun(Timestamps, Base):
    __tablename__ = "workflow_runs"
    __table_args__ = (
        CheckConstraint(_in("status", RUN_STATUSES), name="ck_workflow_runs_status"),
        CheckConstraint("duration_ms >= 0", name="ck_workflow_runs_duration"),
        # Paging a workflow's runs newest first; the ETL watermark scans updated_at.
        Index("ix_workflow_runs_wpk_created", "wpk_id", "created_at", "id"),
        Index("ix_workflow_runs_updated_at_id", "updated_at", "id"),  # keyset (migration 0003)
    )

    id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True, default=uuid.uuid4)
    wpk_id: Mapped[str] = mapped_column(String(128))
    run_id: Mapped[str] = mapped_column(String(128), unique=True)
    inputs: Mapped[dict[str, Any]] = mapped_column(default=dict)
    outputs: Mapped[dict[str, Any]] = mapped_column(default=dict)
    status: Mapped[str] = mapped_column(String(16))
    duration_ms: Mapped[int] = mapped_column(BigInteger)
    node_logs: Mapped[list[dict[str, Any]]] = mapped_column(JSONType, default=list)
    cluster: Mapped[str | None] = mapped_column(String(128))
    flow_run_id: Mapped[uuid.UUID | None] = mapped_column(Uuid, index=True)
    # Migration 0007: where the run came from (prefect | neuralops | api:<subject> | seed |
    # local | unknown) and whether that was confirmed; only verified or trusted runs teach.
    provenance: Mapped[str] = mapped_column(String(200), default="local", server_default="unknown")
    verified: Mapped[bool] = mapped_column(Boolean, default=False, server_default=false())


class Playbook(Timestamps, Base):
    __tablename__ = "playbooks"
    __table_args__ = (
        CheckConstraint(_in("safety_mode", SAFETY_MODES), name="ck_playbooks_safety_mode"),
    )

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    version: Mapped[str] = mapped_column(String(64))
    title: Mapped[str] = mapped_column(String(200))
    description: Mapped[str] = mapped_column(Text)
    manifest: Mapped[dict[str, Any]]
    manifest_sha256: Mapped[str] = mapped_column(String(64))
    safety_mode: Mapped[str] = mapped_column(String(8))
    allowed_roles: Mapped[list[str]] = mapped_column(JSONType)
    signature: Mapped[str | None] = mapped_column(Text)
    key_id: Mapped[str | None] = mapped_column(String(200))
    latest_run_id: Mapped[str | None] = mapped_column(String(128))


class InsightSignal(Base):
    __tablename__ = "insight_signals"
    __table_args__ = (Index("ix_insight_signals_rule_created", "rule", "created_at"),)

    id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True, default=uuid.uuid4)
    rule: Mapped[str] = mapped_column(String(128))
    query: Mapped[str] = mapped_column(Text)
    labels: Mapped[dict[str, Any]] = mapped_column(default=dict)
    value: Mapped[float] = mapped_column(Float)
    score: Mapped[float] = mapped_column(Float)
    z: Mapped[float | None] = mapped_column(Float)
    method: Mapped[str] = mapped_column(String(32))
    hint: Mapped[str] = mapped_column(Text)
    correlated: Mapped[list[dict[str, Any]]] = mapped_column(JSONType, default=list)
    window_start: Mapped[datetime]
    window_end: Mapped[datetime]
    fingerprint: Mapped[str] = mapped_column(String(64), index=True)
    # How often detection found this anomaly again while it was suppressed (dedup/cooldown),
    # and when it last did (migration 0002).
    occurrences: Mapped[int] = mapped_column(Integer, default=1, server_default="1")
    last_seen_at: Mapped[datetime]
    created_at: Mapped[datetime] = mapped_column(default=utcnow, index=True)
    # Migration 0008: when the alert behind it resolved (Alertmanager's POST /alerts); None
    # while it fires, and for detection's signals, which do not end.
    resolved_at: Mapped[datetime | None]


class Incident(Timestamps, Base):
    __tablename__ = "incidents"
    __table_args__ = (
        CheckConstraint(_in("state", INCIDENT_STATES), name="ck_incidents_state"),
        # One open incident per signal: a second remediate run for it (an event delivered
        # twice, an ad-hoc run) cannot start another remediation (migration 0006).
        Index(
            "uq_incidents_open_signal",
            "signal_id",
            unique=True,
            sqlite_where=text(f"NOT {_in('state', TERMINAL_INCIDENT_STATES)}"),
            postgresql_where=text(f"NOT {_in('state', TERMINAL_INCIDENT_STATES)}"),
        ),
    )

    id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True, default=uuid.uuid4)
    signal_id: Mapped[uuid.UUID | None] = mapped_column(
        ForeignKey("insight_signals.id", ondelete="SET NULL"), index=True
    )
    state: Mapped[str] = mapped_column(String(24), default="suggested")
    playbook_id: Mapped[str | None] = mapped_column(String(64))
    recommendations: Mapped[list[dict[str, Any]]] = mapped_column(JSONType, default=list)
    dry_run: Mapped[dict[str, Any] | None] = mapped_column(JSONType)
    approver: Mapped[str | None] = mapped_column(String(200))
    approved_at: Mapped[datetime | None]
    pre_state: Mapped[dict[str, Any] | None] = mapped_column(JSONType)
    post_state: Mapped[dict[str, Any] | None] = mapped_column(JSONType)
    flow_run_id: Mapped[uuid.UUID | None] = mapped_column(Uuid)
    # Migration 0004: what runs where, why approval is (not) needed, how it ended.
    parameters: Mapped[dict[str, Any] | None] = mapped_column(JSONType)
    cluster: Mapped[str | None] = mapped_column(String(63))
    mode: Mapped[str | None] = mapped_column(String(8))  # manual | auto, after the breakers
    mode_reason: Mapped[str | None] = mapped_column(Text)
    expires_at: Mapped[datetime | None]  # approval deadline
    outcome: Mapped[str | None] = mapped_column(String(16))  # resolved | not_resolved
    run_id: Mapped[str | None] = mapped_column(String(128))  # the execution in workflow_runs
    # Migration 0007: the digest of the plan the dry-run checked; approval and execution bind
    # to it.
    plan_digest: Mapped[str | None] = mapped_column(String(64))


class EtlWatermark(Base):
    """How far an incremental export has read workflow_runs: the (updated_at, id) of the last
    row it exported (migration 0003)."""

    __tablename__ = "etl_watermarks"

    name: Mapped[str] = mapped_column(String(64), primary_key=True)
    last_updated_at: Mapped[datetime]
    last_id: Mapped[uuid.UUID] = mapped_column(Uuid)
    rows_exported: Mapped[int] = mapped_column(BigInteger, default=0)
    exported_at: Mapped[datetime] = mapped_column(default=utcnow)


class AuditLog(Base):
    """Append-only and hash-chained; the database refuses UPDATE and DELETE (migration 0001)."""

    __tablename__ = "audit_logs"

    seq: Mapped[int] = mapped_column(BigIntPK, primary_key=True, autoincrement=True)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    actor: Mapped[str] = mapped_column(String(200))
    action: Mapped[str] = mapped_column(String(64))
    subject: Mapped[str] = mapped_column(String(200), index=True)
    payload: Mapped[dict[str, Any]] = mapped_column(default=dict)
    prev_hash: Mapped[str] = mapped_column(String(64))
    hash: Mapped[str] = mapped_column(String(64), unique=True)


class AuditShipment(Base):
    """A batch of audit entries (first_seq..last_seq) copied to the archive, with the SHA-256
    of the batch object (migration 0004). Entries after the last shipped seq are pending."""

    __tablename__ = "audit_shipments"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    first_seq: Mapped[int] = mapped_column(BigInteger)
    last_seq: Mapped[int] = mapped_column(BigInteger, unique=True)
    entries: Mapped[int] = mapped_column(Integer)
    sha256: Mapped[str] = mapped_column(String(64))
    object_key: Mapped[str] = mapped_column(String(512))
    sink: Mapped[str] = mapped_column(String(512))
    shipped_at: Mapped[datetime] = mapped_column(default=utcnow)


class Cluster(Base):
    __tablename__ = "clusters"
    __table_args__ = (CheckConstraint(_in("status", CLUSTER_STATUSES), name="ck_clusters_status"),)

    name: Mapped[str] = mapped_column(String(63), primary_key=True)
    labels: Mapped[dict[str, Any]] = mapped_column(default=dict)
    work_pool: Mapped[str] = mapped_column(String(128))
    registered_at: Mapped[datetime] = mapped_column(default=utcnow)
    last_heartbeat: Mapped[datetime | None]
    status: Mapped[str] = mapped_column(String(16), default="pending")
    # Migration 0005: where the cluster's own credentials live (never the token that
    # registered it), and its Prometheus for stream-metrics.
    credential_id: Mapped[str | None] = mapped_column(String(200))
    prometheus_url: Mapped[str | None] = mapped_column(String(500))
    # Migration 0007: SHA-256 of the connector's heartbeat key (PUT /healthz); never the key.
    heartbeat_key_sha256: Mapped[str | None] = mapped_column(String(64))


class TriggerNonce(Base):
    """A signed execution trigger's nonce, once used: a replayed trigger finds it here
    (migration 0005). Rows past ``expires_at`` can be pruned: the trigger itself expired."""

    __tablename__ = "trigger_nonces"

    nonce: Mapped[str] = mapped_column(String(64), primary_key=True)
    cluster: Mapped[str] = mapped_column(String(63))
    incident_id: Mapped[uuid.UUID | None] = mapped_column(Uuid)
    expires_at: Mapped[datetime] = mapped_column(index=True)
    used_at: Mapped[datetime] = mapped_column(default=utcnow)
