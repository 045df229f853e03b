"""Housekeeping every few minutes: expire overdue approvals, re-create lost Resume forms, end
executions whose run died, ship the audit trail."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import NO_CACHE

from neuralops import audit, incidents, remediation
from neuralops.hooks import run_logger_hooks
from neuralops.settings import get_settings
from tasks import IO_RETRIES
from tasks.remediate import EXECUTING_DEADLINE_S, flow_run_ended


@task(name="expire-overdue", cache_policy=NO_CACHE, **IO_RETRIES)
def expire_overdue() -> list[str]:
    return [str(i) for i in remediation.expire_overdue()]


@task(name="end-interrupted", cache_policy=NO_CACHE, **IO_RETRIES)
def end_interrupted(deadline_s: float = EXECUTING_DEADLINE_S) -> list[dict[str, str]]:
    """Fail incidents left `executing` by a remediate run that crashed or vanished."""
    ended = remediation.end_interrupted(flow_run_ended, deadline=timedelta(seconds=deadline_s))
    return [{"incident_id": str(i), "reason": reason} for i, reason in ended]


@task(name="repair-approval-forms", cache_policy=NO_CACHE, **IO_RETRIES)
def repair_approval_forms() -> list[str]:
    """Re-create the Resume form of each run waiting for approval whose form Prefect lost (a
    server restart between the pause and the save of its form): without it the run cannot be
    resumed from the UI ("Run input schema not found")."""
    from flows.remediate import repair_approval_form

    repaired = []
    logger = get_run_logger()
    for waiting in incidents.list_incidents(state="awaiting_approval", limit=1000):
        try:
            written = repair_approval_form(waiting)
        except Exception as exc:  # one unreadable run does not keep the others unrepaired
            logger.warning("could not check the Resume form of incident %s: %s", waiting.id, exc)
            continue
        if written:
            logger.warning(
                "the Resume form of flow run %s (incident %s) was missing: re-created",
                waiting.flow_run_id,
                waiting.id,
            )
            repaired.append(str(waiting.id))
    return repaired


@task(name="ship-audit", cache_policy=NO_CACHE, **IO_RETRIES)
def ship_audit(audit_block: str | None = None) -> audit.ShipResult:
    """Copy pending audit entries to the archive; a failed upload leaves them pending."""
    if audit_block:
        from blocks.audit import AuditSinkBlock

        return audit.ship(AuditSinkBlock.load(audit_block).sink())
    return audit.ship(audit.sink_from_settings(get_settings()))


@flow(name="housekeeping", log_prints=False, **run_logger_hooks())
def housekeeping(
    audit_block: str | None = None, executing_deadline_s: float = EXECUTING_DEADLINE_S
) -> dict[str, Any]:
    """``audit_block`` names a NeuralOps Audit Sink block; without it the settings choose
    (S3_BUCKET, else the local audit directory). An incident still ``executing`` whose
    remediate run ended (crashed) or that has been executing longer than
    ``executing_deadline_s`` ends ``failed`` (its process died mid-execution)."""
    expired = expire_overdue()
    repaired = repair_approval_forms()
    interrupted = end_interrupted(executing_deadline_s)
    shipped = ship_audit(audit_block)
    create_markdown_artifact(
        key="housekeeping",
        markdown=f"- approvals expired: {len(expired)}\n"
        f"- lost Resume forms re-created: {len(repaired)}\n"
        f"- interrupted executions ended failed: {len(interrupted)}\n"
        f"- audit entries shipped: {shipped.entries} in {shipped.batches} batches "
        f"to {shipped.sink or 'the archive'}; pending: {shipped.pending_left}",
        description="What the last housekeeping run did",
    )
    return {
        "expired": expired,
        "repaired": repaired,
        "interrupted": interrupted,
        "shipped": shipped.entries,
        "pending": shipped.pending_left,
    }
