"""Playbook signatures: ECDSA P-256 / SHA-256 over the canonical manifest, cosign-compatible.

What is signed is ``Manifest.canonical_json()`` (sorted keys, no whitespace, UTF-8). The
signature is the base64 of an ASN.1 DER ECDSA signature over SHA-256 of those bytes: the
form ``cosign sign-blob --key`` writes and ``cosign verify-blob --key pub.pem --signature``
reads, so a playbook can be checked with cosign or openssl, without NeuralOps.

Keys live in Vault's (or OpenBao's) transit engine: the private key never leaves it, and
verification uses the exported public key. A local PEM key file is a DEV ONLY fallback for
machines without Vault; every use of it logs a warning.

Verification trusts one key chosen by configuration (``trusted_public_key``), never a key the
database row names: whoever can rewrite the row could swap both the signature and the key.
The row's ``key_id`` (``<key ref>#<fingerprint>``) only explains a failure (signed by another
key, or by this key over other content). See docs/policies/safety.md.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import hashlib
import logging
import os
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol, runtime_checkable

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from pydantic import SecretStr
from sqlalchemy import select
from sqlalchemy.engine import URL

from neuralops import audit
from neuralops.db import session_scope
from neuralops.db.models import Playbook
from neuralops.errors import ConfigError, Conflict, InvalidInput, NotFound, Unavailable
from neuralops.manifest import Manifest
from neuralops.settings import Settings

log = logging.getLogger(__name__)

SIGNED_ACTION = "playbook.signed"
DEV_KEY_WARNING = (
    "DEV ONLY: playbooks signed with a local key file ({path}) are not protected like a "
    "Vault key; set VAULT_ADDR and VAULT_TOKEN to sign and verify with Vault transit"
)
# What an operator does about an unreachable Vault (nothing is signed or verified without it).
UNREACHABLE_FIX = (
    "check that Vault is running and unsealed and that VAULT_ADDR (or the Vault block's "
    "address) points at it, then retry"
)
_VAULT_SIGNATURE = re.compile(r"^vault:v(\d+):([A-Za-z0-9+/=]+)$")


# --- keys and signatures ---------------------------------------------------------------------


def load_public_key(public_key_pem: bytes, source: str = "public key") -> ec.EllipticCurvePublicKey:
    """Parse a PEM public key and check it is P-256 (a config problem otherwise, not a bad
    signature)."""
    try:
        key = serialization.load_pem_public_key(public_key_pem)
    except (ValueError, TypeError) as exc:
        raise ConfigError(f"{source} is not a PEM public key: {exc}") from None
    if not isinstance(key, ec.EllipticCurvePublicKey) or not isinstance(key.curve, ec.SECP256R1):
        raise ConfigError(f"{source} is not an ECDSA P-256 public key")
    return key


def key_fingerprint(public_key_pem: bytes) -> str:
    """Short identifier of a public key: SHA-256 of its DER SubjectPublicKeyInfo, 16 hex.

    It names a key in messages and key ids; it is not what makes a signature trusted."""
    der = load_public_key(public_key_pem).public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return hashlib.sha256(der).hexdigest()[:16]


def split_key_id(key_id: str) -> tuple[str, str | None]:
    """``vault:transit/k:v1#ab12...`` -> (``vault:transit/k:v1``, ``ab12...``)."""
    ref, sep, fingerprint = key_id.rpartition("#")
    return (ref, fingerprint) if sep and ref else (key_id, None)


def verify_signature(data: bytes, signature_b64: str, public_key_pem: bytes) -> bool:
    """True if ``signature_b64`` (base64 DER ECDSA) is a P-256/SHA-256 signature of ``data``.

    A bad, garbled or truncated signature gives False, never an exception; an unusable
    public key is a configuration error (ConfigError)."""
    key = load_public_key(public_key_pem)
    try:
        signature = base64.b64decode(signature_b64.strip(), validate=True)
        key.verify(signature, data, ec.ECDSA(hashes.SHA256()))
    except (InvalidSignature, ValueError, TypeError, binascii.Error, AttributeError):
        return False
    return True


@runtime_checkable
class Signer(Protocol):
    """Signs bytes with ECDSA P-256 / SHA-256; the result is base64 DER (cosign's form)."""

    dev: bool  # True for the local dev key: callers say so loudly

    @property
    def key_id(self) -> str:
        """``<key ref>#<fingerprint>``, e.g. ``vault:transit/neuralops-playbooks:v1#ab12...``."""
        ...

    def sign(self, data: bytes) -> str: ...

    def public_key_pem(self) -> bytes: ...


# --- Vault / OpenBao transit -----------------------------------------------------------------


def transit_policy(
    mount: str = "transit", key_name: str = "neuralops-playbooks", *, sign: bool = True
) -> str:
    """The Vault policy a token needs: to sign (and create the key), or only to verify."""
    if not sign:
        return f'path "{mount}/keys/{key_name}" {{ capabilities = ["read"] }}\n'
    return (
        f'path "{mount}/keys/{key_name}" {{ capabilities = ["read", "create", "update"] }}\n'
        f'path "{mount}/sign/{key_name}" {{ capabilities = ["update"] }}\n'
    )


class VaultTransitSigner:
    """Signs with an ``ecdsa-p256`` key in Vault's transit engine (created on first sign).

    Only the SHA-256 digest goes to Vault (``prehashed``), with ``marshaling_algorithm=asn1``;
    the result verifies with plain ECDSA(SHA256) over the original bytes.
    """

    dev = False

    def __init__(
        self,
        addr: str,
        token: str | SecretStr,
        key_name: str = "neuralops-playbooks",
        mount: str = "transit",
        *,
        timeout_s: float = 10.0,
    ) -> None:
        import hvac  # hvac pulls in requests; only Vault users pay for it

        secret = token.get_secret_value() if isinstance(token, SecretStr) else token
        if not secret:
            raise ConfigError(
                f"VAULT_TOKEN is not set: a token for Vault at {addr} is needed to use transit "
                f"key '{mount}/{key_name}'"
            )
        self.addr = addr.rstrip("/")
        self.key_name = key_name
        self.mount = mount.strip("/")
        self.timeout_s = timeout_s
        self._client = hvac.Client(url=self.addr, token=secret, timeout=timeout_s)
        self._version: int | None = None  # the version the last signature (or read) used
        self._public_keys: dict[int, bytes] = {}

    def __repr__(self) -> str:  # no token, ever
        return f"VaultTransitSigner({self.addr!r}, key={self.mount}/{self.key_name})"

    @property
    def key_ref(self) -> str:
        return f"vault:{self.mount}/{self.key_name}"

    @property
    def key_id(self) -> str:
        if self._version is None:
            self._read_key(create=True)
        assert self._version is not None
        fingerprint = key_fingerprint(self._public_keys[self._version])
        return f"{self.key_ref}:v{self._version}#{fingerprint}"

    def sign(self, data: bytes) -> str:
        if self._version is None:
            self._read_key(create=True)
        digest = base64.b64encode(hashlib.sha256(data).digest()).decode()
        with self._errors("sign with", sign=True):
            response = self._client.secrets.transit.sign_data(
                self.key_name,
                hash_input=digest,
                hash_algorithm="sha2-256",
                prehashed=True,
                marshaling_algorithm="asn1",
                mount_point=self.mount,
            )
        match = _VAULT_SIGNATURE.match(str(response["data"].get("signature", "")))
        if match is None:
            raise Unavailable(f"Vault at {self.addr} returned a signature in an unknown form")
        version = int(match.group(1))
        if version not in self._public_keys:  # rotated since we read the key
            self._read_key(create=False)
        self._version = version
        return match.group(2)

    def public_key_pem(self, *, create: bool = True) -> bytes:
        """The public key of the latest key version (or of the version that last signed).

        Like signing, this creates the key if absent, unless ``create`` is False: a verifier
        must not create one (no playbook was ever signed with a key it just made)."""
        if self._version is None:
            self._read_key(create=create)
        assert self._version is not None
        return self._public_keys[self._version]

    def _read_key(self, *, create: bool) -> None:
        import hvac.exceptions

        transit = self._client.secrets.transit
        with self._errors("read", sign=create):
            try:
                data = transit.read_key(self.key_name, mount_point=self.mount)["data"]
            except hvac.exceptions.InvalidPath as exc:
                if _no_route(exc):
                    raise
                if not create:
                    raise ConfigError(
                        f"Vault at {self.addr} has no transit key '{self.mount}/{self.key_name}': "
                        "sign the playbooks first (`neuralops playbook sign --all`), or set "
                        "NEURALOPS_SIGNING_KEY to the key that signed them"
                    ) from None
                log.info("creating transit key %s/%s (ecdsa-p256)", self.mount, self.key_name)
                transit.create_key(self.key_name, key_type="ecdsa-p256", mount_point=self.mount)
                data = transit.read_key(self.key_name, mount_point=self.mount)["data"]
        if data.get("type") != "ecdsa-p256":
            raise ConfigError(
                f"transit key '{self.mount}/{self.key_name}' at {self.addr} is of type "
                f"{data.get('type')!r}, not ecdsa-p256: set NEURALOPS_SIGNING_KEY to another key"
            )
        self._public_keys = {
            int(version): entry["public_key"].encode()
            for version, entry in data["keys"].items()
            if entry.get("public_key")
        }
        self._version = int(data["latest_version"])

    @contextlib.contextmanager
    def _errors(self, doing: str, *, sign: bool) -> Iterator[None]:
        """Vault failures as errors an operator can act on; no token in any message."""
        import hvac.exceptions
        import requests

        where = f"Vault at {self.addr}"
        key = f"transit key '{self.mount}/{self.key_name}'"
        try:
            yield
        except requests.exceptions.SSLError:
            raise ConfigError(
                f"{where}: TLS verification failed; set VAULT_CACERT to the CA bundle that "
                "signed its certificate"
            ) from None
        except requests.exceptions.Timeout:
            raise Unavailable(
                f"{where} unreachable: no answer within {self.timeout_s:g}s; {UNREACHABLE_FIX}"
            ) from None
        except requests.exceptions.ConnectionError as exc:
            raise Unavailable(
                f"{where} unreachable: {_connection_reason(exc)}; {UNREACHABLE_FIX}"
            ) from None
        except (hvac.exceptions.Forbidden, hvac.exceptions.Unauthorized):
            policy = transit_policy(self.mount, self.key_name, sign=sign).strip()
            raise ConfigError(
                f"{where} denied the request to {doing} {key} (permission denied): check that "
                f"VAULT_TOKEN is valid and its policy grants: {policy}"
            ) from None
        except hvac.exceptions.InvalidPath as exc:
            if _no_route(exc):
                raise ConfigError(
                    f"{where} has no transit engine at '{self.mount}/': enable it "
                    f"(`vault secrets enable -path={self.mount} transit`) or set "
                    "NEURALOPS_VAULT_TRANSIT_MOUNT"
                ) from None
            raise ConfigError(f"{where}: {key} not found") from None
        except (hvac.exceptions.VaultDown, hvac.exceptions.VaultNotInitialized):
            raise Unavailable(f"{where} is sealed or not initialised") from None
        except hvac.exceptions.InvalidRequest as exc:
            raise ConfigError(f"{where} refused to {doing} {key}: {_vault_errors(exc)}") from None
        except hvac.exceptions.VaultError as exc:
            raise Unavailable(
                f"{where} failed to {doing} {key}: {type(exc).__name__}: {_vault_errors(exc)}"
            ) from None


def _no_route(exc: Exception) -> bool:
    return "no handler for route" in str(exc)


def _vault_errors(exc: Exception) -> str:
    errors = getattr(exc, "errors", None)
    return "; ".join(str(e) for e in errors) if errors else "no detail"


def _connection_reason(exc: Exception) -> str:
    """'[Errno 111] Connection refused' out of requests' long chain, or the error's type."""
    found = re.search(r"\[Errno -?\d+\][^'\")]*", str(exc))
    return found.group(0).strip() if found else type(exc).__name__


# --- the DEV ONLY local key ------------------------------------------------------------------


class LocalKeySigner:
    """DEV ONLY: a P-256 private key in a local PEM file (created with mode 0600 if absent).

    Anyone who can read the file can sign playbooks. Every construction logs a warning."""

    dev = True

    def __init__(self, path: Path) -> None:
        self.path = Path(path).expanduser()
        log.warning(DEV_KEY_WARNING.format(path=self.path))
        self._key = self._load_or_create()
        self._public = self._key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )

    def __repr__(self) -> str:
        return f"LocalKeySigner({str(self.path)!r})"

    @property
    def key_id(self) -> str:
        return f"file:{self.path}#{key_fingerprint(self._public)}"

    def sign(self, data: bytes) -> str:
        signature = self._key.sign(data, ec.ECDSA(hashes.SHA256()))  # DER, as cosign writes
        return base64.b64encode(signature).decode()

    def public_key_pem(self) -> bytes:
        return self._public

    def _load_or_create(self) -> ec.EllipticCurvePrivateKey:
        try:
            return self._load()
        except FileNotFoundError:
            pass
        self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        key = ec.generate_private_key(ec.SECP256R1())
        pem = key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
        try:  # O_EXCL: two processes creating it at once must not overwrite each other's key
            fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:
            return self._load()
        with os.fdopen(fd, "wb") as file:
            file.write(pem)
        log.warning("DEV ONLY: created a local signing key at %s (mode 0600)", self.path)
        return key

    def _load(self) -> ec.EllipticCurvePrivateKey:
        pem = self.path.read_bytes()
        if self.path.stat().st_mode & 0o077:
            log.warning(
                "the dev signing key %s is readable by other users: chmod 600 it", self.path
            )
        try:
            key = serialization.load_pem_private_key(pem, password=None)
        except (ValueError, TypeError) as exc:
            raise ConfigError(
                f"NEURALOPS_SIGNING_KEY_FILE {self.path} is not an unencrypted PEM private key: "
                f"{exc}"
            ) from None
        if not isinstance(key, ec.EllipticCurvePrivateKey) or not isinstance(
            key.curve, ec.SECP256R1
        ):
            raise ConfigError(
                f"NEURALOPS_SIGNING_KEY_FILE {self.path} is not an ECDSA P-256 private key"
            )
        return key


# --- configuration ---------------------------------------------------------------------------


def dev_key_path(settings: Settings) -> Path:
    return settings.signing_key_file or settings.data_dir / "keys" / "signing-dev.pem"


def vault_signer(settings: Settings) -> VaultTransitSigner:
    if not settings.vault_addr:
        raise ConfigError("VAULT_ADDR is not set")
    if settings.vault_token is None:
        raise ConfigError(
            f"VAULT_ADDR is set ({settings.vault_addr}) but VAULT_TOKEN is not: set a token whose "
            "policy allows the transit key (see docs/policies/safety.md)"
        )
    return VaultTransitSigner(
        settings.vault_addr,
        settings.vault_token,
        key_name=settings.signing_key,
        mount=settings.vault_transit_mount,
    )


def signer_from_settings(settings: Settings) -> Signer:
    """Vault transit when VAULT_ADDR is set; otherwise the DEV ONLY local key (with a warning)."""
    if settings.vault_addr:
        return vault_signer(settings)
    return LocalKeySigner(dev_key_path(settings))


def trusted_public_key(settings: Settings) -> bytes:
    """The one public key playbook signatures must verify against.

    In order: the pinned PEM at NEURALOPS_SIGNING_PUBLIC_KEY; the latest version of the
    Vault transit key; the DEV ONLY local key's (with the warning). Never a key named by a
    database row."""
    if settings.signing_public_key is not None:
        path = settings.signing_public_key
        try:
            pem = path.read_bytes()
        except OSError as exc:
            raise ConfigError(
                f"NEURALOPS_SIGNING_PUBLIC_KEY {path}: cannot read: {exc.strerror}"
            ) from None
        load_public_key(pem, f"NEURALOPS_SIGNING_PUBLIC_KEY {path}")
        return pem
    if settings.vault_addr:
        return vault_signer(settings).public_key_pem(create=False)
    return LocalKeySigner(dev_key_path(settings)).public_key_pem()


def trusted_key_source(settings: Settings) -> str:
    """Where ``trusted_public_key`` takes the key from, for messages (no secrets)."""
    if settings.signing_public_key is not None:
        return f"pinned NEURALOPS_SIGNING_PUBLIC_KEY {settings.signing_public_key}"
    if settings.vault_addr:
        return (
            f"Vault transit key {settings.vault_transit_mount}/{settings.signing_key} "
            f"at {settings.vault_addr}"
        )
    return f"DEV ONLY local key {dev_key_path(settings)}"


# --- signing registered playbooks ------------------------------------------------------------


@dataclass(frozen=True)
class SignResult:
    id: str
    version: str
    sha256: str
    key_id: str
    dev: bool
    audit_seq: int


def _not_found(playbook_id: str) -> NotFound:
    return NotFound(
        f"playbook '{playbook_id}' not found: `neuralops playbook list` shows the registry"
    )


def sign_playbook(
    playbook_id: str, signer: Signer, *, actor: str = "neuralops", url: URL | None = None
) -> SignResult:
    """Sign a registered playbook's canonical manifest; store signature and key id on its row
    and write a ``playbook.signed`` audit entry, in one transaction.

    The signer is called outside the transaction (a Vault round trip must not hold the
    database write lock); if the manifest changed meanwhile, nothing is stored (Conflict)."""
    with session_scope(url) as session:
        row = session.get(Playbook, playbook_id)
        if row is None:
            raise _not_found(playbook_id)
        manifest = Manifest.model_validate(row.manifest)
    data = manifest.canonical_json()
    signature = signer.sign(data)
    key_id = signer.key_id
    # Check before storing: a signer whose public key does not match is a misconfiguration.
    if not verify_signature(data, signature, signer.public_key_pem()):
        raise ConfigError(
            f"the signature from {key_id} does not verify with its own public key; "
            "nothing was stored"
        )
    digest = manifest.sha256()
    with session_scope(url) as session:
        row = session.get(Playbook, playbook_id, with_for_update=True)
        if row is None:
            raise _not_found(playbook_id)
        if row.manifest_sha256 != digest:
            raise Conflict(
                f"playbook '{playbook_id}' changed while it was being signed: sign it again"
            )
        row.signature = signature
        row.key_id = key_id
        entry = audit.append(
            session,
            actor=actor,
            action=SIGNED_ACTION,
            subject=f"playbook:{playbook_id}",
            payload={"version": manifest.version, "sha256": digest, "key_id": key_id},
        )
        seq = entry.seq
    return SignResult(playbook_id, manifest.version, digest, key_id, signer.dev, seq)


def registered_ids(*, url: URL | None = None) -> list[str]:
    with session_scope(url) as session:
        return list(session.scalars(select(Playbook.id).order_by(Playbook.id)))


@dataclass(frozen=True)
class CosignFiles:
    blob: Path
    signature: Path
    public_key: Path

    def command(self) -> str:
        return (
            f"cosign verify-blob --key {self.public_key} --signature {self.signature} "
            f"--insecure-ignore-tlog=true {self.blob}"
        )


def export_for_cosign(
    playbook_id: str, out_dir: Path, public_key_pem: bytes, *, url: URL | None = None
) -> CosignFiles:
    """Write ``<id>.json`` (the signed canonical bytes), ``<id>.sig`` (base64 DER) and
    ``cosign.pub`` to ``out_dir``, for ``cosign verify-blob`` or openssl to check."""
    load_public_key(public_key_pem)
    with session_scope(url) as session:
        row = session.get(Playbook, playbook_id)
        if row is None:
            raise _not_found(playbook_id)
        manifest, signature = Manifest.model_validate(row.manifest), row.signature
    if not signature:
        raise InvalidInput(
            f"playbook '{playbook_id}' is unsigned: `neuralops playbook sign {playbook_id}`"
        )
    out_dir.mkdir(parents=True, exist_ok=True)
    files = CosignFiles(
        out_dir / f"{playbook_id}.json", out_dir / f"{playbook_id}.sig", out_dir / "cosign.pub"
    )
    files.blob.write_bytes(manifest.canonical_json())
    files.signature.write_text(signature)
    files.public_key.write_bytes(public_key_pem)
    return files
