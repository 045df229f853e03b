"""Signed execution triggers: what the control plane sends a cluster's connector to run.

The control plane never reaches into a cluster: it sends the connector's ``execute-playbook``
flow an ``ExecutionTrigger`` (which cluster, which incident, the playbook and the SHA-256 of
its manifest, the parameters, the rendered steps, when it was issued, when it expires, and a
random nonce), signed like a playbook: ECDSA P-256 / SHA-256, base64 DER, over the canonical
bytes (sorted-key compact JSON of the trigger). The connector accepts it only if

- the signature verifies with the key the connector trusts (``bad_signature``),
- it asks for no more than ``MAX_LIFETIME`` between issue and expiry (``too_long``),
- it was issued no later than now (allowing ``CLOCK_SKEW``; else ``not_yet_valid``),
- it has not expired (``expired``),
- it names this cluster (``wrong_cluster``), and
- its nonce was never used here (``replayed``).

Acceptance stores the nonce in ``trigger_nonces`` in the same transaction as the audit entry
``trigger.accepted``; the nonce is the primary key, so of two concurrent accepts of one
trigger exactly one commits and the other is refused as ``replayed``. Each refusal writes
``trigger.refused`` with its reason (never the signature). ``prune_nonces`` deletes the
nonces of expired triggers: an expired trigger is refused whatever its nonce.
"""

from __future__ import annotations

import json
import secrets
import uuid
from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator
from sqlalchemy import delete
from sqlalchemy.engine import URL
from sqlalchemy.exc import IntegrityError

from neuralops import audit
from neuralops.db import session_scope
from neuralops.db.models import TriggerNonce
from neuralops.errors import InvalidInput
from neuralops.signing import Signer, verify_signature

MAX_LIFETIME = timedelta(minutes=15)
DEFAULT_LIFETIME = timedelta(minutes=5)
CLOCK_SKEW = timedelta(seconds=60)  # tolerated for issued_at only; expiry is strict
ACCEPTED_ACTION = "trigger.accepted"
REFUSED_ACTION = "trigger.refused"

Reason = Literal[
    "bad_signature", "expired", "not_yet_valid", "wrong_cluster", "replayed", "too_long"
]


def _utc(value: datetime) -> datetime:
    if value.tzinfo is None:
        raise ValueError("must be timezone-aware (UTC)")
    return value.astimezone(UTC)


class ExecutionTrigger(BaseModel):
    """What is signed. Unknown fields are refused: an added field would not be signed."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    cluster: str = Field(min_length=1, max_length=63)
    incident_id: uuid.UUID
    playbook_id: str = Field(min_length=1, max_length=64)
    playbook_sha256: str = Field(pattern=r"^[0-9a-f]{64}$")
    parameters: dict[str, Any] = Field(default_factory=dict)
    steps: list[dict[str, Any]] = Field(min_length=1)
    issued_at: datetime
    expires_at: datetime
    nonce: str = Field(pattern=r"^[0-9a-f]{32}$")

    @field_validator("issued_at", "expires_at")
    @classmethod
    def _normalise(cls, value: datetime) -> datetime:
        return _utc(value)

    def canonical_bytes(self) -> bytes:
        """Sorted-key compact JSON (UTF-8) of every field: the bytes that are signed."""
        data = self.model_dump(mode="json")
        return json.dumps(data, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


class SignedTrigger(BaseModel):
    """A trigger with its signature (base64 DER) and the signing key's id (informative only:
    verification uses the key the connector is configured to trust)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    trigger: ExecutionTrigger
    signature: str = Field(min_length=1, max_length=512)
    key_id: str = Field("", max_length=200)


class TriggerRejected(InvalidInput):
    """The connector refuses the trigger; ``reason`` is one of ``Reason``."""

    def __init__(self, reason: Reason, message: str) -> None:
        super().__init__(f"execution trigger refused ({reason}): {message}")
        self.reason: Reason = reason


def new_trigger(
    *,
    cluster: str,
    incident_id: uuid.UUID | str,
    playbook_id: str,
    playbook_sha256: str,
    parameters: Mapping[str, Any],
    steps: list[Any],
    lifetime: timedelta = DEFAULT_LIFETIME,
    now: datetime | None = None,
) -> ExecutionTrigger:
    """A trigger with a fresh random nonce; ``steps`` as RenderedStep models or dicts."""
    issued = _utc(now or datetime.now(UTC))
    step_dicts = [
        s.model_dump(mode="json", exclude_none=True) if isinstance(s, BaseModel) else dict(s)
        for s in steps
    ]
    try:
        return ExecutionTrigger(
            cluster=cluster,
            incident_id=uuid.UUID(str(incident_id)),
            playbook_id=playbook_id,
            playbook_sha256=playbook_sha256,
            parameters=dict(parameters),
            steps=step_dicts,
            issued_at=issued,
            expires_at=issued + lifetime,
            nonce=secrets.token_hex(16),
        )
    except ValidationError as exc:
        raise InvalidInput.from_validation(exc, "execution trigger") from None


def sign_trigger(trigger: ExecutionTrigger, signer: Signer) -> SignedTrigger:
    return SignedTrigger(
        trigger=trigger, signature=signer.sign(trigger.canonical_bytes()), key_id=signer.key_id
    )


def parse_signed(data: Mapping[str, Any] | str | bytes) -> SignedTrigger:
    """A SignedTrigger from its JSON (or dict) form; malformed input is InvalidInput."""
    try:
        if isinstance(data, str | bytes):
            return SignedTrigger.model_validate_json(data)
        return SignedTrigger.model_validate(data)
    except ValidationError as exc:
        raise InvalidInput.from_validation(exc, "signed execution trigger") from None


def accept_trigger(
    signed: SignedTrigger,
    *,
    cluster: str,
    public_key_pem: bytes,
    now: datetime | None = None,
    url: URL | None = None,
    actor: str | None = None,
) -> ExecutionTrigger:
    """Verify ``signed`` for this ``cluster`` and record its nonce; the trigger, or
    ``TriggerRejected`` (audited as ``trigger.refused``)."""
    trigger = signed.trigger
    now = _utc(now or datetime.now(UTC))
    actor = actor or f"connector:{cluster}"
    try:
        _check(signed, cluster=cluster, public_key_pem=public_key_pem, now=now)
        try:
            with session_scope(url) as session:
                session.add(
                    TriggerNonce(
                        nonce=trigger.nonce,
                        cluster=cluster,
                        incident_id=trigger.incident_id,
                        expires_at=trigger.expires_at,
                        used_at=now,
                    )
                )
                session.flush()  # the primary key refuses a nonce already used
                audit.append(
                    session,
                    actor=actor,
                    action=ACCEPTED_ACTION,
                    subject=_subject(trigger),
                    payload=_summary(signed) | {"steps": len(trigger.steps)},
                )
        except IntegrityError:
            raise TriggerRejected(
                "replayed", f"nonce {trigger.nonce} was already used on cluster {cluster}"
            ) from None
    except TriggerRejected as exc:
        with session_scope(url) as session:
            audit.append(
                session,
                actor=actor,
                action=REFUSED_ACTION,
                subject=_subject(trigger),
                payload=_summary(signed) | {"reason": exc.reason, "message": str(exc)[:500]},
            )
        raise
    return trigger


def _check(signed: SignedTrigger, *, cluster: str, public_key_pem: bytes, now: datetime) -> None:
    trigger = signed.trigger
    # The signature first: nothing else in an unsigned trigger deserves an answer.
    if not verify_signature(trigger.canonical_bytes(), signed.signature, public_key_pem):
        raise TriggerRejected(
            "bad_signature",
            "the signature does not verify with the trusted key (tampered, or signed by "
            f"another key: {signed.key_id or 'no key id'})",
        )
    lifetime = trigger.expires_at - trigger.issued_at
    if lifetime > MAX_LIFETIME:
        raise TriggerRejected(
            "too_long",
            f"valid for {lifetime}, more than the {MAX_LIFETIME} a trigger may live",
        )
    if trigger.issued_at > now + CLOCK_SKEW:
        raise TriggerRejected(
            "not_yet_valid", f"issued at {trigger.issued_at.isoformat()}, in the future"
        )
    if now >= trigger.expires_at:
        raise TriggerRejected("expired", f"expired at {trigger.expires_at.isoformat()}")
    if trigger.cluster != cluster:
        raise TriggerRejected(
            "wrong_cluster", f"issued for cluster {trigger.cluster!r}, not {cluster!r}"
        )


def _subject(trigger: ExecutionTrigger) -> str:
    return f"incident:{trigger.incident_id}"


def _summary(signed: SignedTrigger) -> dict[str, Any]:
    """What the audit keeps of a trigger: no signature, no parameter values (they may be
    sensitive), only their names."""
    trigger = signed.trigger
    return {
        "cluster": trigger.cluster[:63],
        "incident_id": str(trigger.incident_id),
        "playbook_id": trigger.playbook_id[:64],
        "playbook_sha256": trigger.playbook_sha256,
        "parameters": sorted(trigger.parameters)[:50],
        "nonce": trigger.nonce,
        "issued_at": trigger.issued_at.isoformat(),
        "expires_at": trigger.expires_at.isoformat(),
        "key_id": signed.key_id[:200],
    }


def prune_nonces(now: datetime | None = None, *, url: URL | None = None) -> int:
    """Delete the nonces of triggers that expired before ``now``; how many were deleted."""
    now = _utc(now or datetime.now(UTC))
    with session_scope(url) as session:
        result = session.execute(delete(TriggerNonce).where(TriggerNonce.expires_at < now))
        return int(result.rowcount or 0)
