"""Playbook signing (issue 6, item 4): Vault transit through a real OpenBao dev server, the
cosign-compatible signature form, the enforcer's refusals, the dev key, and the CLI."""

from __future__ import annotations

import base64
import json
import logging
import os
import shutil
import stat
import subprocess
import sys
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import hvac
import pytest
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature
from sqlalchemy import select
from sqlalchemy.engine import URL
from typer.testing import CliRunner

from neuralops import audit, db, registry
from neuralops.cosign_enforcer import SignatureRejected, enforce, enforce_registered
from neuralops.db import session_scope
from neuralops.db.models import AuditLog, Playbook
from neuralops.errors import ConfigError, Unavailable
from neuralops.local_prometheus import free_port
from neuralops.manifest import Manifest
from neuralops.settings import get_settings
from neuralops.signing import (
    LocalKeySigner,
    VaultTransitSigner,
    export_for_cosign,
    key_fingerprint,
    sign_playbook,
    signer_from_settings,
    transit_policy,
    trusted_public_key,
    verify_signature,
)

PLAYBOOK = "raise-memory-limit"
TOKEN_SECRET = "s3cr3t-token-never-printed"


def _closed_port() -> int:
    return free_port()  # bound and released: nothing listens there


def _key_name() -> str:
    return f"test-{uuid.uuid4().hex[:10]}"


def _manifest(playbook_id: str = PLAYBOOK) -> Manifest:
    return next(
        m for m in registry.load_manifests([registry.catalogue_dir()]) if m.id == playbook_id
    )


def _register(url: URL) -> None:
    db.upgrade(url)
    registry.add_playbooks(registry.load_manifests([registry.catalogue_dir()]), url=url)


def _row(url: URL, playbook_id: str = PLAYBOOK) -> Playbook:
    with session_scope(url) as session:
        return session.get(Playbook, playbook_id)


def _update_row(url: URL, playbook_id: str = PLAYBOOK, **values: Any) -> None:
    """What an attacker with database access could do: bypass the registry."""
    with session_scope(url) as session:
        row = session.get(Playbook, playbook_id)
        for name, value in values.items():
            setattr(row, name, value)


@pytest.fixture
def vault_signer(openbao: tuple[str, str]) -> VaultTransitSigner:
    addr, token = openbao
    return VaultTransitSigner(addr, token, key_name=_key_name())


@pytest.fixture
def vault_env(openbao: tuple[str, str], monkeypatch: pytest.MonkeyPatch) -> tuple[str, str]:
    addr, token = openbao
    monkeypatch.setenv("VAULT_ADDR", addr)
    monkeypatch.setenv("VAULT_TOKEN", token)
    get_settings.cache_clear()
    return addr, token


# --- the signature form ----------------------------------------------------------------------


@pytest.mark.slow
def test_vault_signature_is_cosign_form_and_verifies_with_exported_key(
    openbao: tuple[str, str], vault_signer: VaultTransitSigner
) -> None:
    data = _manifest().canonical_json()
    signature = vault_signer.sign(data)

    # base64 of DER (not Vault's `vault:v1:` form): what cosign sign-blob prints
    assert not signature.startswith("vault:")
    r, s = decode_dss_signature(base64.b64decode(signature, validate=True))
    assert r > 0 and s > 0
    # the key exported by Vault itself, read independently of the signer
    addr, token = openbao
    exported = hvac.Client(url=addr, token=token).secrets.transit.read_key(vault_signer.key_name)
    pem = exported["data"]["keys"]["1"]["public_key"].encode()
    assert vault_signer.public_key_pem() == pem
    # plain cryptography, ECDSA over SHA-256 of the raw canonical bytes
    public_key = serialization.load_pem_public_key(pem)
    public_key.verify(base64.b64decode(signature), data, ec.ECDSA(hashes.SHA256()))
    assert verify_signature(data, signature, pem)
    assert not verify_signature(data + b" ", signature, pem)
    assert vault_signer.key_id == f"vault:transit/{vault_signer.key_name}:v1#{key_fingerprint(pem)}"


@pytest.mark.slow
def test_key_rotation_records_the_version(
    openbao: tuple[str, str], vault_signer: VaultTransitSigner
) -> None:
    data = _manifest().canonical_json()
    old = vault_signer.sign(data)
    old_key = vault_signer.public_key_pem()
    addr, token = openbao
    hvac.Client(url=addr, token=token).secrets.transit.rotate_key(vault_signer.key_name)
    new = vault_signer.sign(data)
    assert ":v2#" in vault_signer.key_id
    assert verify_signature(data, new, vault_signer.public_key_pem())
    assert verify_signature(data, old, old_key)
    # verification trusts the latest version only: old signatures need re-signing
    latest = VaultTransitSigner(addr, token, key_name=vault_signer.key_name).public_key_pem()
    assert latest == vault_signer.public_key_pem() != old_key
    with pytest.raises(SignatureRejected) as rejected:
        enforce(_manifest(), old, f"vault:transit/k:v1#{key_fingerprint(old_key)}", latest)
    assert rejected.value.reason == "unknown_key"


@pytest.mark.parametrize(
    "garbage",
    ["", "   ", "not base64 !!", base64.b64encode(b"\x30\x02\x01\x01").decode(), "vault:v1:AAAA"],
)
def test_verify_signature_is_false_for_garbage_never_raises(garbage: str, tmp_path: Path) -> None:
    signer = LocalKeySigner(tmp_path / "dev.pem")
    assert verify_signature(b"data", garbage, signer.public_key_pem()) is False
    truncated = signer.sign(b"data")[:-8]
    assert verify_signature(b"data", truncated, signer.public_key_pem()) is False


# --- the enforcer ----------------------------------------------------------------------------


def _set(path: str, value: Any) -> Callable[[dict], None]:
    def change(doc: dict) -> None:
        *parents, last = path.split(".")
        for part in parents:
            doc = doc[int(part)] if part.isdigit() else doc[part]
        doc[last] = value

    return change


TAMPERINGS = {
    "title": _set("title", "Raise the memory limit (edited)"),
    "version": _set("version", "9.9.9"),
    "safety mode": _set("safety.mode", "auto"),
    "allowed roles": _set("safety.allowed_roles", ["org-admin", "intern"]),
    "scope": _set("scope.kinds", ["Deployment", "Namespace"]),
    "step action": _set("steps.0.description", "and also delete the namespace"),
    "step timeout": _set("steps.0.timeout_s", 3600),
    "contraindications": _set("contraindications", []),
    "parameter pattern": _set("parameters.3.pattern", "^.*$"),
}


@pytest.mark.slow
@pytest.mark.parametrize("tampering", TAMPERINGS.values(), ids=TAMPERINGS.keys())
def test_tampering_any_field_is_refused(
    vault_signer: VaultTransitSigner, tampering: Callable[[dict], None]
) -> None:
    manifest = _manifest()
    signature = vault_signer.sign(manifest.canonical_json())
    key = vault_signer.public_key_pem()
    enforce(manifest, signature, vault_signer.key_id, key)  # untouched: passes

    doc = manifest.model_dump(mode="json")
    tampering(doc)
    changed = Manifest.model_validate(doc)
    assert changed.canonical_json() != manifest.canonical_json()
    with pytest.raises(SignatureRejected) as rejected:
        enforce(changed, signature, vault_signer.key_id, key)
    assert rejected.value.reason == "tampered"
    assert PLAYBOOK in str(rejected.value) and f"neuralops playbook sign {PLAYBOOK}" in str(
        rejected.value
    )


def test_unsigned_and_garbled_are_refused(tmp_path: Path) -> None:
    key = LocalKeySigner(tmp_path / "dev.pem").public_key_pem()
    for signature in (None, ""):
        with pytest.raises(SignatureRejected) as rejected:
            enforce(_manifest(), signature, None, key)
        assert rejected.value.reason == "unsigned"
    with pytest.raises(SignatureRejected) as rejected:
        enforce(_manifest(), "bm90IGEgc2lnbmF0dXJl", "file:x#0000", key)
    assert rejected.value.reason == "bad_signature"
    assert isinstance(rejected.value, ValueError)  # an InvalidInput: the API answers 4xx


@pytest.mark.slow
def test_another_key_is_refused_and_the_row_cannot_redirect_verification(
    openbao: tuple[str, str], vault_signer: VaultTransitSigner, tmp_path: Path
) -> None:
    addr, token = openbao
    manifest = _manifest()
    data = manifest.canonical_json()
    pinned = vault_signer.public_key_pem()
    vault_signer.sign(data)  # creates the pinned key
    trusted_key_id = vault_signer.key_id

    others = [
        VaultTransitSigner(addr, token, key_name=_key_name()),  # a second transit key
        LocalKeySigner(tmp_path / "dev.pem"),  # the dev key
    ]
    for other in others:
        signature = other.sign(data)
        assert verify_signature(data, signature, other.public_key_pem())  # valid, by its key
        with pytest.raises(SignatureRejected) as rejected:
            enforce(manifest, signature, other.key_id, pinned)
        assert rejected.value.reason == "unknown_key"
        assert key_fingerprint(pinned) in rejected.value.detail
        # A row rewritten to claim the trusted key changes the reason, never the outcome.
        with pytest.raises(SignatureRejected) as rejected:
            enforce(manifest, signature, trusted_key_id, pinned)
        assert rejected.value.reason == "tampered"
        with pytest.raises(SignatureRejected):
            enforce(manifest, signature, None, pinned)


@pytest.mark.slow
def test_sign_playbook_stores_signature_and_audits(
    database_url: URL, vault_signer: VaultTransitSigner
) -> None:
    _register(database_url)
    result = sign_playbook(PLAYBOOK, vault_signer, actor="test", url=database_url)

    manifest = _manifest()
    row = _row(database_url)
    assert row.signature and row.key_id == result.key_id == vault_signer.key_id
    assert result.sha256 == manifest.sha256() and result.dev is False
    with session_scope(database_url) as session:
        entry = session.scalars(select(AuditLog).where(AuditLog.seq == result.audit_seq)).one()
        assert (entry.actor, entry.action, entry.subject) == (
            "test",
            "playbook.signed",
            f"playbook:{PLAYBOOK}",
        )
        assert entry.payload == {
            "version": manifest.version,
            "sha256": manifest.sha256(),
            "key_id": result.key_id,
        }
    assert audit.verify(url=database_url).ok
    pinned = vault_signer.public_key_pem()
    assert enforce_registered(PLAYBOOK, pinned, url=database_url) == manifest

    # The database changed behind the registry's back: same signature, other content.
    doc = manifest.model_dump(mode="json")
    doc["steps"][0]["description"] = "patched in the database"
    _update_row(database_url, manifest=doc)
    with pytest.raises(SignatureRejected) as rejected:
        enforce_registered(PLAYBOOK, pinned, url=database_url)
    assert rejected.value.reason == "tampered"


@pytest.mark.slow
def test_a_new_version_clears_the_signature(
    sqlite_url: URL, vault_signer: VaultTransitSigner
) -> None:
    _register(sqlite_url)
    sign_playbook(PLAYBOOK, vault_signer, url=sqlite_url)
    pinned = vault_signer.public_key_pem()
    enforce_registered(PLAYBOOK, pinned, url=sqlite_url)

    doc = _manifest().model_dump(mode="json")
    doc["version"], doc["title"] = "99.0.0", "Raise the memory limit, differently"
    registry.add_playbooks([Manifest.model_validate(doc)], url=sqlite_url)
    assert _row(sqlite_url).signature is None
    with pytest.raises(SignatureRejected) as rejected:
        enforce_registered(PLAYBOOK, pinned, url=sqlite_url)
    assert rejected.value.reason == "unsigned" and "99.0.0" in str(rejected.value)


# --- Vault failures --------------------------------------------------------------------------


def test_vault_unreachable_names_the_address_not_the_token(sqlite_url: URL) -> None:
    _register(sqlite_url)
    addr = f"http://127.0.0.1:{_closed_port()}"
    signer = VaultTransitSigner(addr, TOKEN_SECRET, timeout_s=2)
    with pytest.raises(Unavailable) as unavailable:
        sign_playbook(PLAYBOOK, signer, url=sqlite_url)
    message = str(unavailable.value)
    assert f"Vault at {addr} unreachable" in message and TOKEN_SECRET not in message
    assert TOKEN_SECRET not in repr(signer)
    assert _row(sqlite_url).signature is None  # nothing stored, nothing audited
    assert audit.verify(url=sqlite_url).entries == 0


def test_verification_with_vault_unreachable_fails_clearly(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    addr = f"http://127.0.0.1:{_closed_port()}"
    monkeypatch.setenv("VAULT_ADDR", addr)
    monkeypatch.setenv("VAULT_TOKEN", TOKEN_SECRET)
    get_settings.cache_clear()
    with pytest.raises(Unavailable, match="unreachable") as unavailable:
        trusted_public_key(get_settings())
    assert addr in str(unavailable.value) and TOKEN_SECRET not in str(unavailable.value)


@pytest.mark.slow
def test_bad_token_is_a_config_error_naming_vault_token(openbao: tuple[str, str]) -> None:
    addr, _ = openbao
    with pytest.raises(ConfigError) as denied:
        VaultTransitSigner(addr, TOKEN_SECRET, key_name=_key_name()).sign(b"data")
    assert "VAULT_TOKEN" in str(denied.value) and "/sign/" in str(denied.value)
    assert TOKEN_SECRET not in str(denied.value)


@pytest.mark.slow
def test_documented_policies_are_exactly_enough(openbao: tuple[str, str]) -> None:
    addr, root = openbao
    key_name = _key_name()
    admin = hvac.Client(url=addr, token=root)

    def token_for(policy: str) -> str:
        name = f"p-{uuid.uuid4().hex[:8]}"
        admin.sys.create_or_update_policy(name=name, policy=policy)
        return admin.auth.token.create(policies=[name], ttl="10m")["auth"]["client_token"]

    signer = VaultTransitSigner(addr, token_for(transit_policy("transit", key_name)), key_name)
    signature = signer.sign(b"data")  # creates the key, then signs
    reader = VaultTransitSigner(
        addr, token_for(transit_policy("transit", key_name, sign=False)), key_name
    )
    assert verify_signature(b"data", signature, reader.public_key_pem())
    with pytest.raises(ConfigError, match="permission denied"):
        reader.sign(b"data")


@pytest.mark.slow
def test_missing_mount_or_key_says_what_to_set(openbao: tuple[str, str]) -> None:
    addr, token = openbao
    with pytest.raises(ConfigError, match="NEURALOPS_VAULT_TRANSIT_MOUNT"):
        VaultTransitSigner(addr, token, mount="no-such-mount").sign(b"data")
    with pytest.raises(ConfigError, match="playbook sign --all"):
        VaultTransitSigner(addr, token, key_name=_key_name()).public_key_pem(create=False)


# --- dev key and configuration ---------------------------------------------------------------


def test_local_key_is_dev_only_loud_and_private(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "keys" / "dev.pem"
    with caplog.at_level(logging.WARNING, logger="neuralops.signing"):
        first = LocalKeySigner(path)
        second = LocalKeySigner(path)
    warnings = [r for r in caplog.records if "DEV ONLY: playbooks signed" in r.getMessage()]
    assert len(warnings) == 2 and "VAULT_ADDR" in warnings[0].getMessage()
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert first.public_key_pem() == second.public_key_pem()  # created once, then reused
    assert first.dev and first.key_id == f"file:{path}#{key_fingerprint(first.public_key_pem())}"
    assert verify_signature(b"data", first.sign(b"data"), second.public_key_pem())


def test_settings_choose_vault_or_the_dev_key(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    signer = signer_from_settings(get_settings())
    assert isinstance(signer, LocalKeySigner)
    assert signer.path == get_settings().data_dir / "keys" / "signing-dev.pem"
    assert trusted_public_key(get_settings()) == signer.public_key_pem()

    monkeypatch.setenv("VAULT_ADDR", f"http://127.0.0.1:{_closed_port()}")
    get_settings.cache_clear()
    with pytest.raises(ConfigError, match="VAULT_TOKEN"):
        signer_from_settings(get_settings())

    # A pinned key wins, without asking Vault (the address above is closed).
    pinned = tmp_path / "pinned.pub"
    pinned.write_bytes(LocalKeySigner(tmp_path / "other.pem").public_key_pem())
    monkeypatch.setenv("NEURALOPS_SIGNING_PUBLIC_KEY", str(pinned))
    get_settings.cache_clear()
    assert trusted_public_key(get_settings()) == pinned.read_bytes()
    pinned.write_text("not a key")
    with pytest.raises(ConfigError, match="NEURALOPS_SIGNING_PUBLIC_KEY"):
        trusted_public_key(get_settings())


@pytest.mark.slow
def test_export_for_cosign_verifies_with_openssl(
    sqlite_url: URL, vault_signer: VaultTransitSigner, tmp_path: Path
) -> None:
    _register(sqlite_url)
    sign_playbook(PLAYBOOK, vault_signer, url=sqlite_url)
    files = export_for_cosign(
        PLAYBOOK, tmp_path / "cosign", vault_signer.public_key_pem(), url=sqlite_url
    )
    assert files.blob.read_bytes() == _manifest().canonical_json()
    assert files.blob.name == f"{PLAYBOOK}.json" and files.public_key.name == "cosign.pub"
    # what `cosign verify-blob --key cosign.pub --signature <id>.sig <id>.json` checks
    assert verify_signature(
        files.blob.read_bytes(), files.signature.read_text(), files.public_key.read_bytes()
    )
    if shutil.which("openssl") is None:
        return
    der = tmp_path / "sig.der"
    der.write_bytes(base64.b64decode(files.signature.read_text()))
    checked = subprocess.run(
        ["openssl", "dgst", "-sha256", "-verify", files.public_key, "-signature", der, files.blob],
        capture_output=True,
        text=True,
    )
    assert checked.returncode == 0 and "Verified OK" in checked.stdout
    files.blob.write_bytes(files.blob.read_bytes().replace(b"memory", b"Memory", 1))
    checked = subprocess.run(
        ["openssl", "dgst", "-sha256", "-verify", files.public_key, "-signature", der, files.blob],
        capture_output=True,
        text=True,
    )
    assert checked.returncode != 0


# --- CLI -------------------------------------------------------------------------------------


runner = CliRunner()


@pytest.mark.slow
def test_cli_sign_and_verify_with_vault(
    sqlite_url: URL, vault_env: tuple[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    from neuralops.cli import app

    _register(sqlite_url)
    key_name = _key_name()
    monkeypatch.setenv("NEURALOPS_SIGNING_KEY", key_name)
    get_settings.cache_clear()
    # Verifying never creates the key: before any signing there is nothing to trust.
    no_key = runner.invoke(app, ["playbook", "verify", PLAYBOOK])
    assert isinstance(no_key.exception, ConfigError)
    assert "sign the playbooks first" in str(no_key.exception)

    signed = runner.invoke(app, ["playbook", "sign", "--all"])
    assert signed.exit_code == 0, signed.output
    assert f"20 signed with vault:transit/{key_name}:v1#" in signed.output
    assert "DEV" not in signed.output

    verified = runner.invoke(app, ["playbook", "verify", "--all", "--json"])
    assert verified.exit_code == 0, verified.output
    report = json.loads(verified.output[verified.output.index("{") :])
    assert len(report["playbooks"]) == 20 and all(p["verified"] for p in report["playbooks"])
    assert f"Vault transit key transit/{key_name}" in report["trusted_key"]["source"]

    doc = _manifest().model_dump(mode="json")
    doc["safety"]["mode"] = "auto"
    _update_row(sqlite_url, manifest=doc)
    failed = runner.invoke(app, ["playbook", "verify", "--all"])
    assert failed.exit_code == 1
    assert "tampered" in failed.output and "19 verified, 1 refused" in failed.output
    assert f"neuralops playbook sign {PLAYBOOK}" in failed.output

    both = runner.invoke(app, ["playbook", "sign", PLAYBOOK, "--all"])
    assert both.exit_code == 2 and "not both" in both.output


def test_cli_signs_with_the_dev_key_loudly(sqlite_url: URL) -> None:
    from neuralops.cli import app

    _register(sqlite_url)
    signed = runner.invoke(app, ["playbook", "sign", "uncordon-node"])
    assert signed.exit_code == 0, signed.output
    assert "DEV ONLY" in signed.output and "the DEV key (not for production)" in signed.output
    verified = runner.invoke(app, ["playbook", "verify", "uncordon-node", "--json"])
    assert verified.exit_code == 0, verified.output
    refused = runner.invoke(app, ["playbook", "verify", PLAYBOOK])
    assert refused.exit_code == 1 and "unsigned" in refused.output


def test_cli_vault_unreachable_is_a_clean_error(sqlite_url: URL) -> None:
    _register(sqlite_url)
    addr = f"http://127.0.0.1:{_closed_port()}"
    result = subprocess.run(
        [sys.executable, "-m", "neuralops", "playbook", "sign", PLAYBOOK],
        capture_output=True,
        text=True,
        env={**os.environ, "VAULT_ADDR": addr, "VAULT_TOKEN": TOKEN_SECRET},
        timeout=60,
    )
    assert result.returncode == 2
    assert f"Vault at {addr} unreachable" in result.stderr and "Traceback" not in result.stderr
    assert TOKEN_SECRET not in result.stderr + result.stdout
