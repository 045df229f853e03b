"""The audit trail: append-only, hash-chained entries in ``audit_logs``.

Each entry stores the SHA-256 of the previous entry (``prev_hash``; the first one's is 64
zeros) and its own ``hash`` over its sequence number, time, actor, action, subject, payload
and ``prev_hash`` (canonical JSON). Changing, deleting or reordering any entry breaks the
chain at that point, and ``verify`` names the first broken entry. The database refuses
UPDATE and DELETE on the table (migration 0001), so a break means someone bypassed it.

``append`` writes inside the caller's transaction, so an incident's state change and its
audit entry commit together or not at all. Writers are serialised (an advisory lock on
PostgreSQL, the write lock on SQLite) so the chain stays linear.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import select, text
from sqlalchemy.engine import URL
from sqlalchemy.orm import Session

from neuralops.db import session_scope
from neuralops.db.models import AuditLog

GENESIS = "0" * 64
_LOCK_KEY = 0x6E6F_6175  # pg_advisory_xact_lock key for the audit chain ("noau")
_VERIFY_BATCH = 5000


def entry_hash(
    *,
    seq: int,
    created_at: datetime,
    actor: str,
    action: str,
    subject: str,
    payload: Mapping[str, Any],
    prev_hash: str,
) -> str:
    """SHA-256 of an entry's canonical JSON (sorted keys, UTC microsecond time)."""
    moment = created_at if created_at.tzinfo else created_at.replace(tzinfo=UTC)
    body = {
        "seq": seq,
        "created_at": moment.astimezone(UTC).isoformat(timespec="microseconds"),
        "actor": actor,
        "action": action,
        "subject": subject,
        "payload": payload,
        "prev_hash": prev_hash,
    }
    canonical = json.dumps(body, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()


def _lock_chain(session: Session) -> None:
    if session.get_bind().dialect.name == "postgresql":
        session.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": _LOCK_KEY})
    else:  # SQLite: take the database write lock now, not at the first INSERT
        session.execute(text("UPDATE audit_shipments SET sink = sink WHERE 0"))


def append(
    session: Session,
    *,
    actor: str,
    action: str,
    subject: str,
    payload: Mapping[str, Any] | None = None,
) -> AuditLog:
    """Add one entry to the chain in ``session``'s transaction (committed with it)."""
    _lock_chain(session)
    last = session.execute(
        select(AuditLog.seq, AuditLog.hash).order_by(AuditLog.seq.desc()).limit(1)
    ).first()
    seq = (last.seq + 1) if last else 1
    prev_hash = last.hash if last else GENESIS
    body = json.loads(json.dumps(dict(payload or {}), default=str))  # what the JSON column keeps
    created_at = datetime.now(UTC)
    entry = AuditLog(
        seq=seq,
        created_at=created_at,
        actor=actor,
        action=action,
        subject=subject,
        payload=body,
        prev_hash=prev_hash,
        hash=entry_hash(
            seq=seq,
            created_at=created_at,
            actor=actor,
            action=action,
            subject=subject,
            payload=body,
            prev_hash=prev_hash,
        ),
    )
    session.add(entry)
    session.flush()
    return entry


def record(
    *,
    actor: str,
    action: str,
    subject: str,
    payload: Mapping[str, Any] | None = None,
    url: URL | None = None,
) -> int:
    """Append one entry in its own transaction; returns its sequence number."""
    with session_scope(url) as session:
        return append(session, actor=actor, action=action, subject=subject, payload=payload).seq


@dataclass(frozen=True)
class Verification:
    entries: int
    ok: bool
    broken_seq: int | None = None
    reason: str | None = None


def entries(session: Session, after: int = 0) -> Iterator[AuditLog]:
    """Every entry after ``after`` in sequence order, read in batches."""
    while True:
        batch = session.scalars(
            select(AuditLog).where(AuditLog.seq > after).order_by(AuditLog.seq).limit(_VERIFY_BATCH)
        ).all()
        if not batch:
            return
        yield from batch
        after = batch[-1].seq


def verify(*, url: URL | None = None) -> Verification:
    """Recompute the chain; the first entry whose hash or link does not hold is reported."""
    count, prev_hash, expected_seq = 0, GENESIS, 1
    with session_scope(url) as session:
        for entry in entries(session):
            count += 1
            if entry.seq != expected_seq:
                reason = (
                    f"entry {expected_seq} is missing (next is {entry.seq})"
                    if entry.seq > expected_seq
                    else f"entry {entry.seq} is out of order"
                )
                return Verification(count, False, entry.seq, reason)
            if entry.prev_hash != prev_hash:
                return Verification(
                    count, False, entry.seq, "prev_hash does not match the previous entry"
                )
            recomputed = entry_hash(
                seq=entry.seq,
                created_at=entry.created_at,
                actor=entry.actor,
                action=entry.action,
                subject=entry.subject,
                payload=entry.payload,
                prev_hash=entry.prev_hash,
            )
            if recomputed != entry.hash:
                return Verification(count, False, entry.seq, "its content does not match its hash")
            prev_hash, expected_seq = entry.hash, entry.seq + 1
    return Verification(count, True)
