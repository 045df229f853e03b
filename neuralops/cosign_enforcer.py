"""The cosign enforcer: a playbook runs only if its signature verifies with the pinned key.

``enforce`` checks an ECDSA P-256 / SHA-256 signature (base64 DER, cosign's form) over
``Manifest.canonical_json()`` against one trusted public key that the caller took from
configuration (``neuralops.signing.trusted_public_key``), never from the database row: the
row's ``key_id`` only makes the refusal's reason more precise. Anything else raises
``SignatureRejected`` with a reason code:

- ``unsigned``: no signature (never signed, or the manifest changed and the registry
  cleared the old one);
- ``bad_signature``: the stored signature is not base64 DER at all (garbled);
- ``unknown_key``: signed by a key other than the trusted one (the row's key fingerprint
  differs from the trusted key's, or no key id was recorded);
- ``tampered``: a well-formed signature by the trusted key that does not match this
  manifest: it changed after signing, or the signature was swapped.

This module only decides. The caller (the dry-run) records the refusal in the audit trail
and stops: nothing executes after a ``SignatureRejected``. Pure core: no Prefect.
"""

from __future__ import annotations

import base64
import binascii
from typing import Literal

from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature
from sqlalchemy.engine import URL

from neuralops.db import session_scope
from neuralops.db.models import Playbook
from neuralops.errors import FieldProblem, InvalidInput, NotFound
from neuralops.manifest import Manifest, parse_manifest
from neuralops.signing import key_fingerprint, split_key_id, verify_signature

Reason = Literal["unsigned", "tampered", "bad_signature", "unknown_key"]
REASONS: tuple[Reason, ...] = ("unsigned", "tampered", "bad_signature", "unknown_key")


class SignatureRejected(InvalidInput):
    """A playbook whose signature does not verify; it must not run. ``reason`` is one of
    ``REASONS``; the message names the playbook and the fix."""

    def __init__(self, playbook_id: str, reason: Reason, detail: str) -> None:
        message = (
            f"playbook '{playbook_id}' refused ({reason}): {detail}; after reviewing the "
            f"manifest, sign it with `neuralops playbook sign {playbook_id}`"
        )
        super().__init__(message, [FieldProblem("signature", f"{reason}: {detail}")])
        self.playbook_id = playbook_id
        self.reason: Reason = reason
        self.detail = detail


def enforce(
    manifest: Manifest, signature: str | None, key_id: str | None, public_key_pem: bytes
) -> None:
    """Return if ``signature`` verifies over ``manifest.canonical_json()`` with
    ``public_key_pem``; raise ``SignatureRejected`` otherwise. ``key_id`` (from the row) is
    never used to choose the key, only to tell ``unknown_key`` from ``tampered``."""
    pid = manifest.id
    if not signature:
        raise SignatureRejected(pid, "unsigned", f"version {manifest.version} has no signature")
    if verify_signature(manifest.canonical_json(), signature, public_key_pem):
        return
    if not _is_der_base64(signature):
        raise SignatureRejected(
            pid, "bad_signature", "the stored signature is not a base64 DER ECDSA signature"
        )
    trusted = key_fingerprint(public_key_pem)
    if not key_id:
        raise SignatureRejected(
            pid, "unknown_key", f"no key id recorded; the trusted key is {trusted}"
        )
    ref, fingerprint = split_key_id(key_id)
    if fingerprint is not None and fingerprint != trusted:
        raise SignatureRejected(
            pid,
            "unknown_key",
            f"signed with {ref} (key {fingerprint}), which is not the trusted key {trusted}",
        )
    raise SignatureRejected(
        pid,
        "tampered",
        f"the signature from {ref} does not match version {manifest.version} as registered "
        f"(sha256 {manifest.sha256()[:16]}...): the manifest or the signature changed "
        "after signing",
    )


def enforce_registered(
    playbook_id: str, public_key_pem: bytes, *, url: URL | None = None
) -> Manifest:
    """Load a registered playbook and ``enforce`` its stored signature; the verified manifest
    is returned, so the caller runs exactly what was checked."""
    with session_scope(url) as session:
        row = session.get(Playbook, playbook_id)
        if row is None:
            raise NotFound(
                f"playbook '{playbook_id}' not found: `neuralops playbook list` shows the registry"
            )
        manifest = parse_manifest(row.manifest, f"playbook '{playbook_id}' as registered")
        signature, key_id = row.signature, row.key_id
    enforce(manifest, signature, key_id, public_key_pem)
    return manifest


def _is_der_base64(signature: str) -> bool:
    """Structurally an ECDSA signature: base64 of a DER SEQUENCE of two INTEGERs."""
    try:
        der = base64.b64decode(signature.strip(), validate=True)
    except (binascii.Error, ValueError):
        return False
    try:
        decode_dss_signature(der)
    except ValueError:
        return False
    return True
