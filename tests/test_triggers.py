"""Signed execution triggers (issue 7, items 2 and 5): sign, accept, and every refusal, on
SQLite and on the real PostgreSQL."""

from __future__ import annotations

import threading
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import func, select
from sqlalchemy.engine import URL

from neuralops import audit, db, registry
from neuralops.db import session_scope
from neuralops.db.models import AuditLog, TriggerNonce
from neuralops.errors import InvalidInput
from neuralops.manifest import load_manifest_file
from neuralops.policy import render
from neuralops.signing import LocalKeySigner
from neuralops.triggers import (
    MAX_LIFETIME,
    ExecutionTrigger,
    SignedTrigger,
    TriggerRejected,
    accept_trigger,
    new_trigger,
    parse_signed,
    prune_nonces,
    sign_trigger,
)

CLUSTER = "edge-1"
NOW = datetime(2025, 6, 1, 12, 0, tzinfo=UTC)
PARAMETERS = {
    "namespace": "payments",
    "deployment": "payments-api",
    "container": "api",
    "memory_limit": "2Gi",
}


@pytest.fixture
def signer(tmp_path: Path) -> LocalKeySigner:
    return LocalKeySigner(tmp_path / "trigger-key.pem")


@pytest.fixture
def url(database_url: URL) -> URL:
    db.upgrade(database_url)  # already at head: a no-op, as the connector would run it
    return database_url


def make_trigger(*, cluster: str = CLUSTER, now: datetime = NOW, **changes) -> ExecutionTrigger:
    manifest = load_manifest_file(registry.catalogue_dir() / "raise-memory-limit.yaml")
    rendered = render(manifest, PARAMETERS)
    trigger = new_trigger(
        cluster=cluster,
        incident_id=uuid.uuid4(),
        playbook_id=manifest.id,
        playbook_sha256=manifest.sha256(),
        parameters=rendered.parameters,
        steps=rendered.steps,
        now=now,
    )
    return trigger.model_copy(update=changes) if changes else trigger


def nonces(url: URL) -> list[TriggerNonce]:
    with session_scope(url) as session:
        return list(session.scalars(select(TriggerNonce)))


def audit_actions(url: URL) -> list[tuple[str, dict]]:
    with session_scope(url) as session:
        return [(e.action, e.payload) for e in session.scalars(select(AuditLog))]


def refused(signed: SignedTrigger, url: URL, public_key: bytes, **kwargs) -> TriggerRejected:
    kwargs.setdefault("cluster", CLUSTER)
    kwargs.setdefault("now", NOW + timedelta(seconds=5))
    with pytest.raises(TriggerRejected) as info:
        accept_trigger(signed, public_key_pem=public_key, url=url, **kwargs)
    return info.value


def test_canonical_bytes_are_stable_across_the_wire(signer: LocalKeySigner) -> None:
    signed = sign_trigger(make_trigger(), signer)
    again = parse_signed(signed.model_dump_json())
    assert again.trigger.canonical_bytes() == signed.trigger.canonical_bytes()
    assert b'"nonce"' in signed.trigger.canonical_bytes()
    assert b" " not in signed.trigger.canonical_bytes().split(b'"steps"')[0]
    assert len(signed.trigger.nonce) == 32


def test_a_signed_trigger_is_accepted_once_and_audited(url: URL, signer: LocalKeySigner) -> None:
    signed = parse_signed(sign_trigger(make_trigger(), signer).model_dump_json())
    accepted = accept_trigger(
        signed,
        cluster=CLUSTER,
        public_key_pem=signer.public_key_pem(),
        now=NOW + timedelta(seconds=5),
        url=url,
    )
    assert accepted == signed.trigger
    assert accepted.steps[0]["action"] == "patch"
    stored = nonces(url)
    assert [(n.nonce, n.cluster, n.incident_id) for n in stored] == [
        (signed.trigger.nonce, CLUSTER, signed.trigger.incident_id)
    ]
    assert stored[0].expires_at == signed.trigger.expires_at
    entries = audit_actions(url)
    assert [a for a, _ in entries] == ["trigger.accepted"]
    payload = entries[0][1]
    assert payload["nonce"] == signed.trigger.nonce and payload["playbook_id"] == (
        "raise-memory-limit"
    )
    assert signed.signature not in str(payload) and "2Gi" not in str(payload)

    # The same signed trigger again: a replay, refused; the nonce stays stored once.
    error = refused(signed, url, signer.public_key_pem())
    assert error.reason == "replayed" and isinstance(error, InvalidInput)
    assert len(nonces(url)) == 1
    actions = audit_actions(url)
    assert [a for a, _ in actions] == ["trigger.accepted", "trigger.refused"]
    assert actions[1][1]["reason"] == "replayed"
    assert audit.verify(url=url).ok


@pytest.mark.parametrize(
    "field, value",
    [
        ("cluster", "edge-2"),
        ("playbook_id", "restart-deployment"),
        ("parameters", {**PARAMETERS, "memory_limit": "64Gi"}),
        ("nonce", "0" * 32),
    ],
)
def test_a_tampered_field_is_a_bad_signature(
    url: URL, signer: LocalKeySigner, field: str, value: object
) -> None:
    signed = sign_trigger(make_trigger(), signer)
    tampered = SignedTrigger(
        trigger=signed.trigger.model_copy(update={field: value}),
        signature=signed.signature,
        key_id=signed.key_id,
    )
    assert refused(tampered, url, signer.public_key_pem()).reason == "bad_signature"
    assert nonces(url) == []
    [(action, payload)] = audit_actions(url)
    assert action == "trigger.refused" and payload["reason"] == "bad_signature"
    assert signed.signature not in str(payload)


def test_a_tampered_step_and_another_key_are_bad_signatures(
    url: URL, signer: LocalKeySigner, tmp_path: Path
) -> None:
    signed = sign_trigger(make_trigger(), signer)
    steps = [dict(step) for step in signed.trigger.steps]
    steps[0] = {**steps[0], "action": "delete"}
    tampered = signed.model_copy(
        update={"trigger": signed.trigger.model_copy(update={"steps": steps})}
    )
    assert refused(tampered, url, signer.public_key_pem()).reason == "bad_signature"
    other = LocalKeySigner(tmp_path / "other-key.pem")
    assert refused(signed, url, other.public_key_pem()).reason == "bad_signature"
    garbled = signed.model_copy(update={"signature": "not base64!"})
    assert refused(garbled, url, signer.public_key_pem()).reason == "bad_signature"
    assert nonces(url) == []


def test_expired_not_yet_valid_too_long_and_wrong_cluster(url: URL, signer: LocalKeySigner) -> None:
    key = signer.public_key_pem()
    signed = sign_trigger(make_trigger(), signer)
    expiry = signed.trigger.expires_at
    assert refused(signed, url, key, now=expiry).reason == "expired"
    assert refused(signed, url, key, now=expiry + timedelta(hours=1)).reason == "expired"
    early = NOW - timedelta(minutes=5)
    assert refused(signed, url, key, now=early).reason == "not_yet_valid"
    assert refused(signed, url, key, cluster="edge-2").reason == "wrong_cluster"
    long_lived = make_trigger().model_copy(
        update={"expires_at": NOW + MAX_LIFETIME + timedelta(seconds=1)}
    )
    assert refused(sign_trigger(long_lived, signer), url, key).reason == "too_long"
    assert nonces(url) == []
    reasons = [p["reason"] for a, p in audit_actions(url) if a == "trigger.refused"]
    assert reasons == ["expired", "expired", "not_yet_valid", "wrong_cluster", "too_long"]
    # A trigger for the other cluster is refused here, but still good there.
    accept_trigger(signed, cluster=CLUSTER, public_key_pem=key, now=NOW, url=url)


def test_concurrent_accepts_of_one_trigger_let_exactly_one_through(
    url: URL, signer: LocalKeySigner
) -> None:
    signed = sign_trigger(make_trigger(), signer)
    key = signer.public_key_pem()
    outcomes: list[str] = []
    barrier = threading.Barrier(4)

    def accept() -> None:
        barrier.wait()
        try:
            accept_trigger(signed, cluster=CLUSTER, public_key_pem=key, now=NOW, url=url)
            outcomes.append("accepted")
        except TriggerRejected as exc:
            outcomes.append(exc.reason)

    threads = [threading.Thread(target=accept) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert sorted(outcomes) == ["accepted", "replayed", "replayed", "replayed"]
    assert len(nonces(url)) == 1
    with session_scope(url) as session:
        count = session.scalar(select(func.count()).where(AuditLog.action == "trigger.accepted"))
    assert count == 1
    assert audit.verify(url=url).ok


def test_prune_deletes_only_expired_nonces(url: URL, signer: LocalKeySigner) -> None:
    key = signer.public_key_pem()
    old = sign_trigger(make_trigger(now=NOW - timedelta(hours=1)), signer)
    fresh = sign_trigger(make_trigger(), signer)
    accept_trigger(old, cluster=CLUSTER, public_key_pem=key, now=NOW - timedelta(hours=1), url=url)
    accept_trigger(fresh, cluster=CLUSTER, public_key_pem=key, now=NOW, url=url)
    assert prune_nonces(NOW, url=url) == 1
    assert [n.nonce for n in nonces(url)] == [fresh.trigger.nonce]
    # The pruned trigger is still refused: it expired.
    assert refused(old, url, key, now=NOW).reason == "expired"


def test_malformed_triggers_are_invalid_input(signer: LocalKeySigner) -> None:
    data = sign_trigger(make_trigger(), signer).model_dump(mode="json")
    data["trigger"]["extra"] = "unsigned"
    with pytest.raises(InvalidInput, match="extra"):
        parse_signed(data)
    data["trigger"].pop("extra")
    data["trigger"]["nonce"] = "short"
    with pytest.raises(InvalidInput, match="nonce"):
        parse_signed(data)
    data["trigger"]["nonce"] = "a" * 32
    data["trigger"]["issued_at"] = "2025-06-01T12:00:00"  # naive
    with pytest.raises(InvalidInput, match="issued_at"):
        parse_signed(data)
