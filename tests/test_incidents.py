"""The incident state machine on SQLite and PostgreSQL: legal moves, audit, atomicity, races."""

from __future__ import annotations

import threading
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import func, select
from sqlalchemy.engine import URL

from neuralops import audit, incidents
from neuralops.db import session_scope
from neuralops.db.models import INCIDENT_STATES, AuditLog, Incident, InsightSignal
from neuralops.errors import Conflict, InvalidInput, NotFound
from neuralops.incidents import TRANSITIONS, IllegalTransition

# A legal path from suggested to each state.
PATH: dict[str, list[str]] = {
    "suggested": [],
    "dry_run_passed": ["dry_run_passed"],
    "dry_run_failed": ["dry_run_failed"],
    "awaiting_approval": ["dry_run_passed", "awaiting_approval"],
    "approved": ["dry_run_passed", "awaiting_approval", "approved"],
    "rejected": ["dry_run_passed", "awaiting_approval", "rejected"],
    "expired": ["dry_run_passed", "awaiting_approval", "expired"],
    "executing": ["dry_run_passed", "approved", "executing"],
    "succeeded": ["dry_run_passed", "approved", "executing", "succeeded"],
    "failed": ["dry_run_passed", "approved", "executing", "failed"],
}


def _create(url: URL, playbook_id: str = "restart-deployment") -> incidents.IncidentOut:
    return incidents.create(
        signal_id=None,
        playbook_id=playbook_id,
        recommendations=[{"playbook_id": playbook_id, "score": 0.9}],
        parameters={"namespace": "payments", "deployment": "api"},
        cluster="prod-eu",
        actor="test",
        url=url,
    )


def _at(url: URL, state: str) -> uuid.UUID:
    incident = _create(url)
    for step in PATH[state]:
        incidents.transition(incident.id, step, actor="test", url=url)
    return incident.id


def _audit(url: URL, incident_id: uuid.UUID | None = None) -> list[AuditLog]:
    query = select(AuditLog).order_by(AuditLog.seq)
    if incident_id is not None:
        query = query.where(AuditLog.subject == f"incident:{incident_id}")
    with session_scope(url) as session:
        return list(session.scalars(query))


def _audit_count(url: URL) -> int:
    with session_scope(url) as session:
        return session.scalar(select(func.count()).select_from(AuditLog))


def test_the_table_covers_every_state_and_terminal_states_are_final() -> None:
    assert set(TRANSITIONS) == set(INCIDENT_STATES)
    for state in ("dry_run_failed", "rejected", "expired", "succeeded", "failed"):
        assert TRANSITIONS[state] == frozenset()
    assert TRANSITIONS["dry_run_passed"] == {"awaiting_approval", "approved"}
    assert TRANSITIONS["executing"] == {"succeeded", "failed"}


def test_create_writes_a_suggested_incident_and_its_audit_entry(database_url: URL) -> None:
    incident = _create(database_url)
    assert incident.state == "suggested"
    assert incident.cluster == "prod-eu"
    assert incident.parameters == {"namespace": "payments", "deployment": "api"}
    assert incident.created_at.tzinfo is not None
    [entry] = _audit(database_url, incident.id)
    assert (entry.action, entry.actor, entry.subject) == (
        "incident.suggested",
        "test",
        f"incident:{incident.id}",
    )
    assert entry.payload["recommendations"] == ["restart-deployment"]
    assert incidents.get(str(incident.id), url=database_url) == incident


def test_create_checks_the_signal(database_url: URL) -> None:
    with pytest.raises(NotFound, match="signal"):
        incidents.create(
            signal_id=uuid.uuid4(),
            playbook_id=None,
            recommendations=[],
            parameters=None,
            actor="test",
            url=database_url,
        )
    with pytest.raises(InvalidInput, match="not a UUID"):
        incidents.create(
            signal_id="nope",
            playbook_id=None,
            recommendations=[],
            parameters=None,
            actor="test",
            url=database_url,
        )
    now = datetime.now(UTC)
    signal = InsightSignal(
        rule="p99",
        query="q",
        value=1.0,
        score=9.0,
        method="zscore",
        hint="h",
        window_start=now,
        window_end=now,
        fingerprint="f" * 64,
        last_seen_at=now,
    )
    with session_scope(database_url) as session:
        session.add(signal)
    incident = incidents.create(
        signal_id=str(signal.id),
        playbook_id="restart-deployment",
        recommendations=[],
        parameters={},
        actor="test",
        url=database_url,
    )
    assert incident.signal_id == signal.id


def test_every_allowed_transition_works_and_writes_one_audit_entry(database_url: URL) -> None:
    for from_state, targets in TRANSITIONS.items():
        for to_state in sorted(targets):
            incident_id = _at(database_url, from_state)
            before = len(_audit(database_url, incident_id))
            moved = incidents.transition(
                incident_id, to_state, actor="alice", payload={"why": "test"}, url=database_url
            )
            assert moved.state == to_state
            assert incidents.get(incident_id, url=database_url).state == to_state
            entries = _audit(database_url, incident_id)
            assert len(entries) == before + 1
            entry = entries[-1]
            assert entry.action == f"incident.{to_state}"
            assert entry.actor == "alice"
            assert entry.payload == {"why": "test", "from": from_state, "to": to_state}
    assert audit.verify(url=database_url).ok


def test_illegal_transitions_raise_and_write_nothing(database_url: URL) -> None:
    at = {state: _at(database_url, state) for state in INCIDENT_STATES}
    entries = _audit_count(database_url)
    for from_state, incident_id in at.items():
        for to_state in INCIDENT_STATES:
            if to_state in TRANSITIONS[from_state]:
                continue
            with pytest.raises(IllegalTransition) as caught:
                incidents.transition(incident_id, to_state, actor="mallory", url=database_url)
            assert f"from '{from_state}' to '{to_state}'" in str(caught.value)
            assert (caught.value.from_state, caught.value.to_state) == (from_state, to_state)
            assert isinstance(caught.value, Conflict)
            assert incidents.get(incident_id, url=database_url).state == from_state
    assert _audit_count(database_url) == entries
    assert audit.verify(url=database_url).ok


def test_transition_sets_fields_and_audits_them(database_url: URL) -> None:
    incident_id = _at(database_url, "awaiting_approval")
    approved_at = datetime.now(UTC)
    flow_run = uuid.uuid4()
    incidents.transition(
        incident_id,
        "approved",
        actor="alice",
        approver="alice",
        approved_at=approved_at,
        flow_run_id=str(flow_run),
        url=database_url,
    )
    incidents.transition(
        incident_id,
        "executing",
        actor="worker",
        pre_state={"Deployment/payments/api": {"spec": {"replicas": 3}}},
        url=database_url,
    )
    done = incidents.transition(
        incident_id,
        "succeeded",
        actor="worker",
        post_state={"Deployment/payments/api": {"spec": {"replicas": 6}}},
        run_id="run-1",
        url=database_url,
    )
    assert done.approver == "alice"
    assert done.approved_at == approved_at
    assert done.flow_run_id == flow_run
    assert done.pre_state == {"Deployment/payments/api": {"spec": {"replicas": 3}}}
    assert done.run_id == "run-1"
    approved = [e for e in _audit(database_url, incident_id) if e.action == "incident.approved"]
    assert approved[0].payload["approver"] == "alice"
    assert approved[0].payload["flow_run_id"] == str(flow_run)


def test_auto_mode_goes_straight_to_approved(database_url: URL) -> None:
    incident_id = _at(database_url, "dry_run_passed")
    moved = incidents.transition(
        incident_id,
        "approved",
        actor="policy",
        mode="auto",
        mode_reason="playbook restart-deployment is auto",
        url=database_url,
    )
    assert (moved.state, moved.mode) == ("approved", "auto")


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"state": "failed"}, "cannot set state"),
        ({"colour": "red"}, "cannot set colour"),
        ({"mode": "yolo"}, "mode 'yolo'"),
        ({"approved_at": datetime(2026, 1, 1)}, "timezone-aware"),
        ({"flow_run_id": "not-a-uuid"}, "flow_run_id"),
    ],
)
def test_bad_fields_are_refused_before_anything_is_written(
    sqlite_url: URL, fields: dict[str, Any], message: str
) -> None:
    incident_id = _at(sqlite_url, "awaiting_approval")
    entries = _audit_count(sqlite_url)
    with pytest.raises(InvalidInput, match=message):
        incidents.transition(incident_id, "approved", actor="a", url=sqlite_url, **fields)
    with pytest.raises(InvalidInput, match="state 'done'"):
        incidents.transition(incident_id, "done", actor="a", url=sqlite_url)
    assert incidents.get(incident_id, url=sqlite_url).state == "awaiting_approval"
    assert _audit_count(sqlite_url) == entries


def test_a_failure_after_the_audit_append_writes_neither(
    database_url: URL, monkeypatch: pytest.MonkeyPatch
) -> None:
    incident_id = _at(database_url, "awaiting_approval")
    entries = _audit_count(database_url)
    appended: list[int] = []
    real_append = audit.append

    def append_then_fail(session, **kwargs):
        entry = real_append(session, **kwargs)
        appended.append(entry.seq)  # the entry was written in the transaction...
        raise RuntimeError("crash between the audit entry and the commit")

    monkeypatch.setattr(incidents.audit, "append", append_then_fail)
    with pytest.raises(RuntimeError, match="crash"):
        incidents.transition(incident_id, "approved", actor="alice", url=database_url)
    monkeypatch.undo()
    assert appended == [entries + 1]
    # ...and rolled back with the state.
    assert incidents.get(incident_id, url=database_url).state == "awaiting_approval"
    assert _audit_count(database_url) == entries
    assert audit.verify(url=database_url).ok


def test_a_value_the_database_refuses_writes_nothing(database_url: URL) -> None:
    incident_id = _at(database_url, "suggested")
    entries = _audit_count(database_url)
    with pytest.raises(Exception, match="not JSON serializable"):
        incidents.transition(
            incident_id, "dry_run_passed", actor="a", dry_run={"obj": object()}, url=database_url
        )
    assert incidents.get(incident_id, url=database_url).state == "suggested"
    assert _audit_count(database_url) == entries
    # The next transition still chains cleanly.
    incidents.transition(incident_id, "dry_run_passed", actor="a", url=database_url)
    assert audit.verify(url=database_url).ok


def _race(url: URL, incident_id: uuid.UUID, *to_states: str) -> dict[str, str]:
    """Start one transition per state at the same moment; which won, which lost."""
    barrier = threading.Barrier(len(to_states))
    results: dict[str, str] = {}

    def decide(to_state: str) -> None:
        barrier.wait()
        try:
            incidents.transition(incident_id, to_state, actor=to_state, url=url)
            results[to_state] = "won"
        except IllegalTransition:
            results[to_state] = "lost"

    threads = [threading.Thread(target=decide, args=(s,)) for s in to_states]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    return results


def test_racing_transitions_let_exactly_one_win(database_url: URL) -> None:
    for _ in range(3):
        incident_id = _at(database_url, "awaiting_approval")
        results = _race(database_url, incident_id, "approved", "rejected")
        assert sorted(results.values()) == ["lost", "won"], results
        winner = next(s for s, r in results.items() if r == "won")
        assert incidents.get(incident_id, url=database_url).state == winner
        decisions = [
            e.action for e in _audit(database_url, incident_id) if e.action != "incident.suggested"
        ]
        assert decisions[-1] == f"incident.{winner}"
        assert decisions.count("incident.approved") + decisions.count("incident.rejected") == 1
    assert audit.verify(url=database_url).ok


def test_record_outcome_after_execution(database_url: URL) -> None:
    incident_id = _at(database_url, "approved")
    with pytest.raises(Conflict, match="only after execution"):
        incidents.record_outcome(
            incident_id, "resolved", actor="verifier", evidence={}, url=database_url
        )
    with pytest.raises(InvalidInput, match="outcome 'fixed'"):
        incidents.record_outcome(incident_id, "fixed", actor="v", evidence={}, url=database_url)
    incidents.transition(incident_id, "executing", actor="worker", url=database_url)
    incidents.transition(incident_id, "succeeded", actor="worker", url=database_url)
    out = incidents.record_outcome(
        incident_id,
        "resolved",
        actor="verifier",
        evidence={"signal_value": 0.2, "threshold": 0.5},
        url=database_url,
    )
    assert (out.state, out.outcome) == ("succeeded", "resolved")
    entry = _audit(database_url, incident_id)[-1]
    assert entry.action == "incident.verified"
    assert entry.payload["evidence"] == {"signal_value": 0.2, "threshold": 0.5}


def test_note_writes_an_audit_entry_only(database_url: URL) -> None:
    incident_id = _at(database_url, "awaiting_approval")
    seq = incidents.note(
        incident_id,
        "approval.refused",
        actor="bob",
        payload={"reason": "token signature does not verify"},
        url=database_url,
    )
    entry = _audit(database_url, incident_id)[-1]
    assert entry.seq == seq
    assert entry.action == "approval.refused"
    assert entry.payload == {
        "reason": "token signature does not verify",
        "state": "awaiting_approval",
    }
    assert incidents.get(incident_id, url=database_url).state == "awaiting_approval"
    with pytest.raises(NotFound):
        incidents.note(uuid.uuid4(), "approval.refused", actor="b", payload={}, url=database_url)


def test_get_and_list(database_url: URL) -> None:
    first = _at(database_url, "suggested")
    second = _at(database_url, "dry_run_failed")
    # Same-second creations: pin the order so "newest first" is unambiguous.
    with session_scope(database_url) as session:
        session.get(Incident, first).created_at = datetime.now(UTC) - timedelta(minutes=5)
    for bad in ("nope", uuid.uuid4(), ""):
        with pytest.raises(NotFound):
            incidents.get(bad, url=database_url)
    assert [i.id for i in incidents.list_incidents(url=database_url)] == [second, first]
    assert [i.id for i in incidents.list_incidents("dry_run_failed", url=database_url)] == [second]
    assert len(incidents.list_incidents(limit=1, url=database_url)) == 1
    with pytest.raises(InvalidInput, match="state 'done'"):
        incidents.list_incidents("done", url=database_url)
    with pytest.raises(InvalidInput, match="limit"):
        incidents.list_incidents(limit=0, url=database_url)


def test_past_its_dry_run_an_incident_keeps_its_playbook_parameters_and_plan(
    sqlite_url: URL,
) -> None:
    incident_id = _at(sqlite_url, "awaiting_approval")
    entries = _audit_count(sqlite_url)
    for field, value in [
        ("playbook_id", "uncordon-node"),
        ("parameters", {"node": "evil"}),
        ("plan_digest", "0" * 64),
    ]:
        with pytest.raises(InvalidInput, match=f"past its dry-run.*{field}"):
            incidents.transition(
                incident_id, "approved", actor="a", url=sqlite_url, **{field: value}
            )
    assert incidents.get(incident_id, url=sqlite_url).state == "awaiting_approval"
    assert _audit_count(sqlite_url) == entries
