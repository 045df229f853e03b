"""The incident state machine: every remediation is one row in ``incidents``.

suggested -> dry_run_passed | dry_run_failed
dry_run_passed -> awaiting_approval, or approved directly when policy allows auto mode
awaiting_approval -> approved | rejected | expired
approved -> executing -> succeeded | failed (a crash while executing ends in failed)

dry_run_failed, rejected, expired, succeeded and failed are terminal. Each transition locks
the row, checks the table, and writes the state and its audit entry in one transaction, so a
state no audit entry explains cannot exist, and two racing callers cannot both move the same
incident (the second sees the new state and gets IllegalTransition).
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict
from sqlalchemy import func, select, text
from sqlalchemy.engine import URL
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from neuralops import audit
from neuralops.db import session_scope
from neuralops.db.models import (
    INCIDENT_STATES,
    SAFETY_MODES,
    TERMINAL_INCIDENT_STATES,
    AuditLog,
    Incident,
    InsightSignal,
)
from neuralops.errors import Conflict, InvalidInput, NotFound

TERMINAL_STATES = frozenset(TERMINAL_INCIDENT_STATES)
TRANSITIONS: dict[str, frozenset[str]] = {
    "suggested": frozenset({"dry_run_passed", "dry_run_failed"}),
    "dry_run_passed": frozenset({"awaiting_approval", "approved"}),  # approved: auto mode
    "awaiting_approval": frozenset({"approved", "rejected", "expired"}),
    "approved": frozenset({"executing"}),
    "executing": frozenset({"succeeded", "failed"}),
    **{state: frozenset() for state in TERMINAL_STATES},
}
assert set(TRANSITIONS) == set(INCIDENT_STATES)

# Columns a transition may set besides the state.
TRANSITION_FIELDS = frozenset(
    {
        "dry_run",
        "approver",
        "approved_at",
        "pre_state",
        "post_state",
        "mode",
        "mode_reason",
        "expires_at",
        "outcome",
        "run_id",
        "flow_run_id",
        "playbook_id",
        "parameters",
        "plan_digest",
    }
)
OUTCOMES = ("resolved", "not_resolved", "unverified")
# What the dry-run checked: set only when leaving `suggested`. After the dry-run the incident
# keeps them, so approval and execution bind to the plan that was checked (a new playbook
# version, or new parameters, never change an incident already past its dry-run).
PLAN_FIELDS = frozenset({"playbook_id", "parameters", "plan_digest"})


class IllegalTransition(Conflict):
    """A transition the state machine does not allow from the incident's current state."""

    def __init__(self, incident_id: uuid.UUID | str, from_state: str, to_state: str) -> None:
        allowed = ", ".join(sorted(TRANSITIONS.get(from_state, ()))) or "nothing (it is final)"
        super().__init__(
            f"incident {incident_id}: cannot go from '{from_state}' to '{to_state}'; "
            f"from '{from_state}' it can go to {allowed}"
        )
        self.incident_id = str(incident_id)
        self.from_state = from_state
        self.to_state = to_state


class IncidentOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: uuid.UUID
    signal_id: uuid.UUID | None
    state: str
    playbook_id: str | None
    recommendations: list[dict[str, Any]]
    dry_run: dict[str, Any] | None
    approver: str | None
    approved_at: datetime | None
    pre_state: dict[str, Any] | None
    post_state: dict[str, Any] | None
    flow_run_id: uuid.UUID | None
    parameters: dict[str, Any] | None
    cluster: str | None
    mode: str | None
    mode_reason: str | None
    expires_at: datetime | None
    outcome: str | None
    run_id: str | None
    plan_digest: str | None = None  # what the dry-run checked; approval and execution bind to it
    created_at: datetime
    updated_at: datetime


def subject(incident_id: uuid.UUID | str) -> str:
    """The audit subject of an incident's entries."""
    return f"incident:{incident_id}"


def _uuid(value: uuid.UUID | str, what: str) -> uuid.UUID:
    if isinstance(value, uuid.UUID):
        return value
    try:
        return uuid.UUID(str(value))
    except ValueError:
        raise InvalidInput(f"{what} {value!r} is not a UUID") from None


def _incident_id(value: uuid.UUID | str) -> uuid.UUID:
    # An id that cannot exist is simply not found (an API path, a typo on the command line).
    try:
        return _uuid(value, "incident id")
    except InvalidInput:
        raise NotFound(f"incident {value!r} not found") from None


def _load(session: Session, incident_id: uuid.UUID, *, lock: bool = False) -> Incident:
    query = select(Incident).where(Incident.id == incident_id)
    if lock:
        if session.get_bind().dialect.name == "sqlite":
            # SQLite has no row locks: take the database write lock before reading, so a
            # racing transition waits (busy_timeout) and then reads the state this one wrote.
            session.execute(text("UPDATE incidents SET state = state WHERE 0"))
        else:
            query = query.with_for_update()
    incident = session.scalars(query).one_or_none()
    if incident is None:
        raise NotFound(f"incident {incident_id} not found: `neuralops incidents list` shows them")
    return incident


def _recommendation_ids(recommendations: list[dict[str, Any]]) -> list[Any]:
    return [r.get("playbook_id") for r in recommendations if isinstance(r, Mapping)]


def create(
    *,
    signal_id: uuid.UUID | str | None,
    playbook_id: str | None,
    recommendations: list[dict[str, Any]],
    parameters: dict[str, Any] | None,
    cluster: str | None = None,
    actor: str,
    url: URL | None = None,
) -> IncidentOut:
    """A new incident in state ``suggested``, with its ``incident.suggested`` audit entry."""
    signal = _uuid(signal_id, "signal id") if signal_id is not None else None
    recommendations = [
        r.model_dump(mode="json") if isinstance(r, BaseModel) else dict(r) for r in recommendations
    ]
    try:
        return _insert(signal, playbook_id, recommendations, parameters, cluster, actor, url)
    except IntegrityError:
        # Another run opened one for this signal between our check and our insert.
        if signal is not None and (existing := open_for_signal(signal, url=url)) is not None:
            raise AlreadyOpen(existing) from None
        raise


def _insert(
    signal: uuid.UUID | None,
    playbook_id: str | None,
    recommendations: list[dict[str, Any]],
    parameters: dict[str, Any] | None,
    cluster: str | None,
    actor: str,
    url: URL | None,
) -> IncidentOut:
    with session_scope(url) as session:
        if signal is not None and session.get(InsightSignal, signal) is None:
            raise NotFound(f"signal {signal} not found: `neuralops signals list` shows them")
        if signal is not None and (existing := _open_for_signal(session, signal)) is not None:
            raise AlreadyOpen(IncidentOut.model_validate(existing))
        incident = Incident(
            id=uuid.uuid4(),
            signal_id=signal,
            state="suggested",
            playbook_id=playbook_id,
            recommendations=recommendations,
            parameters=parameters,
            cluster=cluster,
        )
        session.add(incident)
        session.flush()
        audit.append(
            session,
            actor=actor,
            action="incident.suggested",
            subject=subject(incident.id),
            payload={
                "to": "suggested",
                "signal_id": signal,
                "playbook_id": playbook_id,
                "recommendations": _recommendation_ids(recommendations),
                "parameters": parameters,
                "cluster": cluster,
            },
        )
        return IncidentOut.model_validate(incident)


class AlreadyOpen(Conflict):
    """The signal already has an open incident: one remediation per signal at a time."""

    def __init__(self, incident: IncidentOut) -> None:
        super().__init__(
            f"signal {incident.signal_id} already has an open incident, {incident.id} "
            f"({incident.state}, flow run {incident.flow_run_id or '-'}): one remediation per "
            "signal at a time"
        )
        self.incident = incident

    def __reduce__(self) -> tuple[Any, ...]:  # Prefect may pickle a task's exception
        return (type(self), (self.incident,))


def _open_for_signal(session: Session, signal: uuid.UUID) -> Incident | None:
    return session.scalar(
        select(Incident).where(
            Incident.signal_id == signal, Incident.state.not_in(sorted(TERMINAL_STATES))
        )
    )


def open_for_signal(signal_id: uuid.UUID | str, *, url: URL | None = None) -> IncidentOut | None:
    """The signal's open (not terminal) incident, if any: at most one (migration 0006)."""
    signal = _uuid(signal_id, "signal id")
    with session_scope(url) as session:
        found = _open_for_signal(session, signal)
        return IncidentOut.model_validate(found) if found is not None else None


def _check_fields(fields: Mapping[str, Any]) -> dict[str, Any]:
    unknown = sorted(set(fields) - TRANSITION_FIELDS)
    if unknown:
        raise InvalidInput(
            f"a transition cannot set {', '.join(unknown)}; "
            f"it sets only {', '.join(sorted(TRANSITION_FIELDS))}"
        )
    values = dict(fields)
    if values.get("mode") is not None and values["mode"] not in SAFETY_MODES:
        raise InvalidInput(f"mode {values['mode']!r} is not one of {', '.join(SAFETY_MODES)}")
    if values.get("outcome") is not None and values["outcome"] not in OUTCOMES:
        raise InvalidInput(f"outcome {values['outcome']!r} is not one of {', '.join(OUTCOMES)}")
    for name in ("approved_at", "expires_at"):
        moment = values.get(name)
        if moment is not None and (not isinstance(moment, datetime) or moment.tzinfo is None):
            raise InvalidInput(f"{name} must be a timezone-aware datetime, not {moment!r}")
    if values.get("flow_run_id") is not None:
        values["flow_run_id"] = _uuid(values["flow_run_id"], "flow_run_id")
    return values


def transition(
    incident_id: uuid.UUID | str,
    to_state: str,
    *,
    actor: str,
    payload: Mapping[str, Any] | None = None,
    url: URL | None = None,
    **fields: Any,
) -> IncidentOut:
    """Move an incident to ``to_state``, setting ``fields``, with its audit entry.

    Raises IllegalTransition (a Conflict) when the table does not allow it from the current
    state, InvalidInput for an unknown state or field; in every failure nothing is written.
    """
    if to_state not in TRANSITIONS:
        raise InvalidInput(f"state {to_state!r} is not one of {', '.join(INCIDENT_STATES)}")
    values = _check_fields(fields)
    ident = _incident_id(incident_id)
    with session_scope(url) as session:
        incident = _load(session, ident, lock=True)
        from_state = incident.state
        if to_state not in TRANSITIONS[from_state]:
            raise IllegalTransition(ident, from_state, to_state)
        if from_state != "suggested" and (frozen := sorted(PLAN_FIELDS & set(values))):
            raise InvalidInput(
                f"incident {ident} is past its dry-run ({from_state}): its "
                f"{', '.join(frozen)} cannot change; start a new remediation instead"
            )
        incident.state = to_state
        for name, value in values.items():
            setattr(incident, name, value)
        session.flush()  # a value the database refuses fails here, before the audit entry
        audit.append(
            session,
            actor=actor,
            action=f"incident.{to_state}",
            subject=subject(ident),
            payload={**(payload or {}), "from": from_state, "to": to_state, **values},
        )
        return IncidentOut.model_validate(incident)


def record_outcome(
    incident_id: uuid.UUID | str,
    outcome: Literal["resolved", "not_resolved", "unverified"],
    *,
    actor: str,
    evidence: dict[str, Any],
    url: URL | None = None,
) -> IncidentOut:
    """Whether the signal cleared after execution: sets ``outcome`` (the state stays) and
    writes ``incident.verified``."""
    if outcome not in OUTCOMES:
        raise InvalidInput(f"outcome {outcome!r} is not one of {', '.join(OUTCOMES)}")
    ident = _incident_id(incident_id)
    with session_scope(url) as session:
        incident = _load(session, ident, lock=True)
        if incident.state not in ("succeeded", "failed"):
            raise Conflict(
                f"incident {ident} is '{incident.state}': an outcome is recorded only after "
                "execution (succeeded or failed)"
            )
        incident.outcome = outcome
        session.flush()
        audit.append(
            session,
            actor=actor,
            action="incident.verified",
            subject=subject(ident),
            payload={"state": incident.state, "outcome": outcome, "evidence": evidence},
        )
        return IncidentOut.model_validate(incident)


def note(
    incident_id: uuid.UUID | str,
    action: str,
    *,
    actor: str,
    payload: Mapping[str, Any] | None,
    url: URL | None = None,
) -> int:
    """An audit entry about an incident that changes nothing (``approval.refused``...);
    returns its sequence number."""
    if not action or len(action) > 64:
        raise InvalidInput(f"audit action {action!r} must be 1 to 64 characters")
    ident = _incident_id(incident_id)
    with session_scope(url) as session:
        incident = _load(session, ident)
        entry = audit.append(
            session,
            actor=actor,
            action=action,
            subject=subject(ident),
            payload={**(payload or {}), "state": incident.state},
        )
        return entry.seq


def get(incident_id: uuid.UUID | str, url: URL | None = None) -> IncidentOut:
    ident = _incident_id(incident_id)
    with session_scope(url) as session:
        return IncidentOut.model_validate(_load(session, ident))


def list_incidents(
    state: str | None = None, limit: int = 50, url: URL | None = None
) -> list[IncidentOut]:
    """Incidents newest first, optionally only those in ``state``."""
    if state is not None and state not in INCIDENT_STATES:
        raise InvalidInput(f"state {state!r} is not one of {', '.join(INCIDENT_STATES)}")
    if not 1 <= limit <= 1000:
        raise InvalidInput(f"limit {limit} must be between 1 and 1000")
    query = select(Incident).order_by(Incident.created_at.desc(), Incident.id).limit(limit)
    if state is not None:
        query = query.where(Incident.state == state)
    with session_scope(url) as session:
        return [IncidentOut.model_validate(row) for row in session.scalars(query)]


def find_by_flow_run(flow_run_id: uuid.UUID | str, url: URL | None = None) -> IncidentOut | None:
    """The incident a remediate flow run created (a resumed run continues it)."""
    ident = _uuid(flow_run_id, "flow run id")
    query = select(Incident).where(Incident.flow_run_id == ident).order_by(Incident.created_at)
    with session_scope(url) as session:
        row = session.scalars(query.limit(1)).first()
        return IncidentOut.model_validate(row) if row is not None else None


def attach_flow_run(
    incident_id: uuid.UUID | str, flow_run_id: uuid.UUID | str, *, url: URL | None = None
) -> None:
    """Record which flow run drives the incident (set once, right after ``create``)."""
    ident, run = _incident_id(incident_id), _uuid(flow_run_id, "flow run id")
    with session_scope(url) as session:
        incident = _load(session, ident, lock=True)
        if incident.flow_run_id not in (None, run):
            raise Conflict(f"incident {ident} is driven by flow run {incident.flow_run_id}")
        incident.flow_run_id = run


def count_notes(incident_id: uuid.UUID | str, action: str, *, url: URL | None = None) -> int:
    """How many ``action`` audit entries the incident has (e.g. refused approvals)."""
    ident = _incident_id(incident_id)
    query = (
        select(func.count())
        .select_from(AuditLog)
        .where(AuditLog.subject == subject(ident), AuditLog.action == action)
    )
    with session_scope(url) as session:
        return int(session.scalar(query) or 0)
