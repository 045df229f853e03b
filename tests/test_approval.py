"""Approval tokens (policy 4): what proves who approved, and every way a token is refused."""

from __future__ import annotations

import base64
import copy
import hashlib
import hmac
import json
import logging
import pickle
import stat
import threading
import time
import uuid
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from typer.testing import CliRunner

from neuralops.approval import (
    DEV_ISSUER,
    REFUSAL_REASONS,
    ApprovalKeys,
    ApprovalRefused,
    dev_keypair,
    issue_dev_token,
    keys_from_settings,
    token_fingerprint,
    verify_approval_token,
)
from neuralops.errors import ConfigError, InvalidInput, Unavailable
from neuralops.local_prometheus import free_port
from neuralops.settings import get_settings

INCIDENT = "3f1c2b9e-6d0a-4a57-9a43-0c1e5b7d2f10"
APPROVER = "alice"


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def b64json(obj: dict[str, Any]) -> str:
    return b64(json.dumps(obj, separators=(",", ":")).encode())


def public_pem(key: rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey) -> bytes:
    return key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def claims(**overrides: Any) -> dict[str, Any]:
    now = int(time.time())
    body = {
        "iss": DEV_ISSUER,
        "sub": APPROVER,
        "iat": now,
        "nbf": now,
        "exp": now + 600,
        "jti": uuid.uuid4().hex,
        "incident": INCIDENT,
        "roles": ["org-admin"],
    }
    body.update(overrides)
    return {k: v for k, v in body.items() if v is not None}


@pytest.fixture
def dev(tmp_path: Path) -> tuple[Path, Path]:
    return dev_keypair(tmp_path / "dev")


@pytest.fixture
def keys(dev: tuple[Path, Path]) -> ApprovalKeys:
    return ApprovalKeys.from_pem_file(dev[1])


@pytest.fixture
def signer(dev: tuple[Path, Path]) -> ec.EllipticCurvePrivateKey:
    key = serialization.load_pem_private_key(dev[0].read_bytes(), password=None)
    assert isinstance(key, ec.EllipticCurvePrivateKey)
    return key


def token_for(**kw: Any) -> str:
    return issue_dev_token(
        incident_id=kw.pop("incident_id", INCIDENT),
        approver=kw.pop("approver", APPROVER),
        private_key_path=kw.pop("private_key_path"),
        **kw,
    )


def refused(token: str | None, keys: ApprovalKeys, **kw: Any) -> ApprovalRefused:
    with pytest.raises(ApprovalRefused) as info:
        verify_approval_token(
            token,
            incident_id=kw.pop("incident_id", INCIDENT),
            approver=kw.pop("approver", APPROVER),
            keys=keys,
            **kw,
        )
    exc = info.value
    assert exc.reason in REFUSAL_REASONS
    if token and exc.reason != "missing":
        assert token.strip() not in str(exc) and token.strip() not in repr(exc.args)
        assert exc.fingerprint == token_fingerprint(token)
        assert exc.audit_payload()["token_fingerprint"] == exc.fingerprint
    return exc


# --- the good path ---------------------------------------------------------------------------


def test_valid_token_passes_and_returns_its_claims(dev, keys) -> None:
    token = token_for(private_key_path=dev[0], kid="dev-1")
    got = verify_approval_token(token, incident_id=INCIDENT, approver=APPROVER, keys=keys)
    assert got.approver == APPROVER
    assert got.roles == ("org-admin",)
    assert got.incident_id == INCIDENT
    assert got.issuer == DEV_ISSUER and got.algorithm == "ES256" and got.key_id == "dev-1"
    assert got.jti and got.issued_at and got.expires_at > got.issued_at
    assert (
        got.fingerprint
        == token_fingerprint(token)
        == hashlib.sha256(token.encode()).hexdigest()[:16]
    )
    payload = got.audit_payload()
    assert payload["token_fingerprint"] == got.fingerprint and token not in json.dumps(payload)


def test_uuid_incident_ids_match_whatever_their_case_and_bearer_prefix_is_accepted(
    dev, keys
) -> None:
    token = token_for(private_key_path=dev[0], incident_id=INCIDENT.upper())
    got = verify_approval_token(
        f"  Bearer {token}\n", incident_id=uuid.UUID(INCIDENT), approver=APPROVER, keys=keys
    )
    assert got.incident_id == INCIDENT.upper()


def test_clock_skew_within_leeway_is_accepted(dev, keys) -> None:
    token = token_for(private_key_path=dev[0], ttl_s=60, now=time.time() - 70)
    verify_approval_token(token, incident_id=INCIDENT, approver=APPROVER, keys=keys)
    refused(token, keys, leeway_s=0)


def test_incident_id_claim_and_keycloak_roles_path(signer, dev) -> None:
    keys = ApprovalKeys.from_pem_file(
        dev[1], roles_claim="realm_access.roles", approver_claim="preferred_username"
    )
    body = claims(
        incident=None,
        incident_id=INCIDENT,
        roles=None,
        sub="f81d4fae-7dec-11d0-a765-00a0c91e6bf6",
        preferred_username=APPROVER,
        realm_access={"roles": ["offline_access", "org-admin"]},
    )
    token = jwt.encode(body, signer, algorithm="ES256")
    got = verify_approval_token(token, incident_id=INCIDENT, approver=APPROVER, keys=keys)
    assert got.approver == APPROVER and "org-admin" in got.roles


def test_rsa_pem_with_issuer_and_audience(tmp_path: Path) -> None:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    keys = ApprovalKeys.from_pem(public_pem(key), issuer="https://idp", audience="neuralops")
    for alg in ("RS256", "PS256"):
        body = claims(iss="https://idp", aud=["account", "neuralops"])
        token = jwt.encode(body, key, algorithm=alg)
        verify_approval_token(token, incident_id=INCIDENT, approver=APPROVER, keys=keys)
    assert (
        refused(
            jwt.encode(claims(iss="https://evil", aud="neuralops"), key, algorithm="RS256"), keys
        ).reason
        == "wrong_issuer"
    )
    assert (
        refused(
            jwt.encode(claims(iss="https://idp", aud="grafana"), key, algorithm="RS256"), keys
        ).reason
        == "wrong_audience"
    )
    assert (
        refused(jwt.encode(claims(iss="https://idp"), key, algorithm="RS256"), keys).reason
        == "wrong_audience"
    )
    assert (
        refused(
            jwt.encode(claims(iss="https://idp", aud="neuralops"), key, algorithm="RS384"), keys
        ).reason
        == "alg_not_allowed"
    )


# --- every refusal, each with its own token --------------------------------------------------


def test_expired(dev, keys) -> None:
    token = token_for(private_key_path=dev[0], ttl_s=3600, now=time.time() - 7200)
    exc = refused(token, keys)
    assert exc.reason == "expired" and "fresh token" in str(exc)


def test_not_yet_valid(dev, keys) -> None:
    token = token_for(private_key_path=dev[0], now=time.time() + 3600)
    assert refused(token, keys).reason == "not_yet_valid"


def test_now_is_injectable(dev, keys) -> None:
    token = token_for(private_key_path=dev[0], ttl_s=600, now=1_700_000_000)
    verify_approval_token(
        token, incident_id=INCIDENT, approver=APPROVER, keys=keys, now=1_700_000_300
    )
    assert refused(token, keys, now=1_700_001_000).reason == "expired"


def test_token_without_exp_is_malformed(signer, keys) -> None:
    token = jwt.encode(claims(exp=None), signer, algorithm="ES256")
    exc = refused(token, keys)
    assert exc.reason == "malformed" and "exp" in str(exc)


def test_for_another_incident(dev, keys) -> None:
    token = token_for(private_key_path=dev[0], incident_id="another-incident")
    exc = refused(token, keys)
    assert exc.reason == "wrong_incident" and "another-incident" in str(exc)
    unbound = jwt.encode(claims(incident=None), _key(dev[0]), algorithm="ES256")
    assert refused(unbound, keys).reason == "wrong_incident"


def test_signed_with_another_key(tmp_path: Path, keys) -> None:
    other, _ = dev_keypair(tmp_path / "other")
    exc = refused(token_for(private_key_path=other), keys)
    assert exc.reason == "bad_signature"


def test_another_key_type(keys) -> None:
    """An RS256 token against an EC key: refused before any verification is tried."""
    rsa_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    allow_rsa = ApprovalKeys.from_pem(keys.public_key_pem or "", algorithms=("RS256", "ES256"))
    assert refused(jwt.encode(claims(), rsa_key, algorithm="RS256"), allow_rsa).reason == (
        "bad_signature"
    )
    p384 = ec.generate_private_key(ec.SECP384R1())
    allow_384 = ApprovalKeys.from_pem(public_pem(p384), algorithms=("ES256", "ES384"))
    p256 = ec.generate_private_key(ec.SECP256R1())
    assert refused(jwt.encode(claims(), p256, algorithm="ES256"), allow_384).reason == (
        "bad_signature"
    )


def test_tampered_payload(dev, keys) -> None:
    header, _, signature = token_for(private_key_path=dev[0], roles=("viewer",)).split(".")
    forged = f"{header}.{b64json(claims())}.{signature}"
    assert refused(forged, keys).reason == "bad_signature"


def test_alg_none_is_refused(keys) -> None:
    unsigned = f"{b64json({'alg': 'none', 'typ': 'JWT'})}.{b64json(claims())}."
    exc = refused(unsigned, keys)
    assert exc.reason == "alg_not_allowed" and "'none'" in str(exc)
    no_alg = f"{b64json({'typ': 'JWT'})}.{b64json(claims())}."
    assert refused(no_alg, keys).reason == "alg_not_allowed"


def test_hs256_signed_with_the_public_key_is_refused(keys) -> None:
    """The classic algorithm confusion: HMAC keyed with the (public) verification key."""
    secret = (keys.public_key_pem or "").encode()
    signing_input = f"{b64json({'alg': 'HS256', 'typ': 'JWT'})}.{b64json(claims())}"
    mac = hmac.new(secret, signing_input.encode(), hashlib.sha256).digest()
    exc = refused(f"{signing_input}.{b64(mac)}", keys)
    assert exc.reason == "alg_not_allowed"


def test_wrong_role(dev, keys) -> None:
    exc = refused(token_for(private_key_path=dev[0], roles=("viewer", "sre")), keys)
    assert exc.reason == "wrong_role" and "org-admin" in str(exc)


def test_missing_role_claim(signer, keys) -> None:
    exc = refused(jwt.encode(claims(roles=None), signer, algorithm="ES256"), keys)
    assert exc.reason == "wrong_role" and "no roles claim" in str(exc)


def test_role_name_must_match_exactly(dev, keys) -> None:
    assert refused(token_for(private_key_path=dev[0], roles=("org-admins",)), keys).reason == (
        "wrong_role"
    )


def test_approver_mismatch(dev, keys) -> None:
    token = token_for(private_key_path=dev[0], approver="mallory")
    exc = refused(token, keys)
    assert exc.reason == "approver_mismatch" and "'mallory'" in str(exc)
    assert refused(token_for(private_key_path=dev[0]), keys, approver="").reason == (
        "approver_mismatch"
    )


@pytest.mark.parametrize(
    "garbage",
    ["not-a-token", "a.b.c", "eyJhbGciOiJFUzI1NiJ9.e30", "x" * 20_000, "a.b.c.d.e", "ä.ö.ü"],
)
def test_garbage_is_malformed(garbage: str, keys) -> None:
    assert refused(garbage, keys).reason == "malformed"


def test_payload_that_is_not_json_is_malformed(signer, keys) -> None:
    header = b64json({"alg": "ES256", "typ": "JWT"})
    body = b64(b"not json")
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature

    der = signer.sign(f"{header}.{body}".encode(), ec.ECDSA(hashes.SHA256()))
    r, s = decode_dss_signature(der)
    sig = b64(r.to_bytes(32, "big") + s.to_bytes(32, "big"))
    assert refused(f"{header}.{body}.{sig}", keys).reason == "malformed"


@pytest.mark.parametrize("empty", [None, "", "   ", "Bearer "])
def test_missing(empty: str | None, keys) -> None:
    exc = refused(empty, keys)
    assert exc.reason == "missing" and exc.fingerprint is None
    assert isinstance(exc, InvalidInput) and exc.problems[0].field == "token"


def test_refusal_message_never_holds_the_token(dev, keys) -> None:
    token = token_for(private_key_path=dev[0], incident_id="other", approver="mallory")
    exc = refused(token, keys)
    for part in token.split("."):
        assert part not in str(exc)
    assert token not in json.dumps(exc.audit_payload())


# --- key configuration -----------------------------------------------------------------------


@pytest.mark.parametrize("alg", ["HS256", "none", "HS512", "EdDSA"])
def test_symmetric_or_unknown_algorithms_cannot_be_configured(alg: str, keys) -> None:
    with pytest.raises(ConfigError, match="asymmetric"):
        ApprovalKeys.from_pem(keys.public_key_pem or "", algorithms=(alg, "ES256"))


def test_bad_key_sources_are_config_errors(dev, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="PUBLIC key"):
        ApprovalKeys.from_pem(dev[0].read_text())
    with pytest.raises(ConfigError, match="not a PEM public key"):
        ApprovalKeys.from_pem("-----BEGIN PUBLIC KEY-----\nnope\n-----END PUBLIC KEY-----")
    with pytest.raises(ConfigError, match="cannot read"):
        ApprovalKeys.from_pem_file(tmp_path / "absent.pem")
    with pytest.raises(ConfigError, match="exactly one key source"):
        ApprovalKeys.build("test", public_key_pem=dev[1].read_text(), jwks_url="http://x/jwks")
    with pytest.raises(ConfigError, match="exactly one key source"):
        ApprovalKeys.build("test")
    with pytest.raises(ConfigError, match="no RSA or EC public"):
        ApprovalKeys.from_jwks({"keys": [{"kty": "oct", "k": b64(b"secret"), "kid": "s"}]})
    with pytest.raises(ConfigError, match="http"):
        ApprovalKeys.from_jwks_url("file:///etc/passwd")


def jwk(key: rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey, kid: str) -> dict[str, Any]:
    algorithm = (
        jwt.algorithms.RSAAlgorithm
        if isinstance(key, rsa.RSAPrivateKey)
        else (jwt.algorithms.ECAlgorithm)
    )
    return {**algorithm.to_jwk(key.public_key(), as_dict=True), "kid": kid, "use": "sig"}


@pytest.fixture(scope="module")
def two_keys() -> tuple[rsa.RSAPrivateKey, ec.EllipticCurvePrivateKey]:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048), ec.generate_private_key(
        ec.SECP256R1()
    )


def test_jwks_document_selects_the_key_by_kid(two_keys, tmp_path: Path) -> None:
    rsa_key, ec_key = two_keys
    document = {"keys": [jwk(rsa_key, "k-rsa"), jwk(ec_key, "k-ec")]}
    (tmp_path / "jwks.json").write_text(json.dumps(document))
    for keys in (ApprovalKeys.from_jwks(document), ApprovalKeys.from_jwks(tmp_path / "jwks.json")):
        for key, kid, alg in ((rsa_key, "k-rsa", "RS256"), (ec_key, "k-ec", "ES256")):
            token = jwt.encode(claims(), key, algorithm=alg, headers={"kid": kid})
            got = verify_approval_token(token, incident_id=INCIDENT, approver=APPROVER, keys=keys)
            assert got.key_id == kid
        wrong_kid = jwt.encode(claims(), ec_key, algorithm="ES256", headers={"kid": "k-rsa"})
        assert refused(wrong_kid, keys).reason == "bad_signature"
        unknown = jwt.encode(claims(), ec_key, algorithm="ES256", headers={"kid": "k-gone"})
        exc = refused(unknown, keys)
        assert exc.reason == "unknown_key" and "'k-gone'" in str(exc)
        no_kid = jwt.encode(claims(), ec_key, algorithm="ES256")
        verify_approval_token(no_kid, incident_id=INCIDENT, approver=APPROVER, keys=keys)


class _JWKSServer:
    def __init__(self, document: dict[str, Any]) -> None:
        self.document = document
        self.requests = 0
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                outer.requests += 1
                body = json.dumps(outer.document).encode()
                self.send_response(200 if self.path == "/jwks" else 404)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/jwks"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)


@pytest.fixture
def jwks_server(two_keys) -> Iterator[_JWKSServer]:
    rsa_key, ec_key = two_keys
    server = _JWKSServer({"keys": [jwk(rsa_key, "k-rsa"), jwk(ec_key, "k-ec")]})
    server.thread.start()
    yield server
    server.server.shutdown()
    server.server.server_close()


def test_jwks_url_selects_by_kid_and_caches(jwks_server: _JWKSServer, two_keys) -> None:
    rsa_key, ec_key = two_keys
    keys = ApprovalKeys.from_jwks_url(jwks_server.url, issuer=DEV_ISSUER)
    for key, kid, alg in ((rsa_key, "k-rsa", "RS256"), (ec_key, "k-ec", "ES256")) * 2:
        token = jwt.encode(claims(), key, algorithm=alg, headers={"kid": kid})
        got = verify_approval_token(token, incident_id=INCIDENT, approver=APPROVER, keys=keys)
        assert got.key_id == kid
    assert jwks_server.requests == 1  # the key set is cached
    forged = jwt.encode(claims(), ec_key, algorithm="ES256", headers={"kid": "k-rsa"})
    assert refused(forged, keys).reason == "bad_signature"
    unknown = jwt.encode(claims(), ec_key, algorithm="ES256", headers={"kid": "k-other"})
    assert refused(unknown, keys).reason == "unknown_key"


def test_jwks_url_unreachable_is_unavailable(keys, dev) -> None:
    url = f"http://127.0.0.1:{free_port()}/jwks"  # nothing listens there
    remote = ApprovalKeys.from_jwks_url(url, jwks_timeout_s=2)
    token = token_for(private_key_path=dev[0], kid="k-ec")
    with pytest.raises(Unavailable, match="did not answer") as info:
        verify_approval_token(token, incident_id=INCIDENT, approver=APPROVER, keys=remote)
    assert token not in str(info.value) and url in str(info.value)


def test_jwks_url_serving_garbage_is_unavailable(jwks_server: _JWKSServer, dev) -> None:
    jwks_server.document = {"keys": []}
    remote = ApprovalKeys.from_jwks_url(jwks_server.url)
    with pytest.raises(Unavailable, match="no usable keys"):
        verify_approval_token(
            token_for(private_key_path=dev[0], kid="k"),
            incident_id=INCIDENT,
            approver=APPROVER,
            keys=remote,
        )


def test_keys_pickle_and_copy(dev, jwks_server: _JWKSServer) -> None:
    """Prefect may pickle or copy task parameters: the keys rebuild from their fields."""
    token = token_for(private_key_path=dev[0])
    for keys in (
        ApprovalKeys.from_pem_file(dev[1]),
        ApprovalKeys.from_jwks_url(jwks_server.url),
    ):
        for clone in (pickle.loads(pickle.dumps(keys)), copy.deepcopy(keys), copy.copy(keys)):
            assert clone == keys
    clone = pickle.loads(pickle.dumps(ApprovalKeys.from_pem_file(dev[1])))
    verify_approval_token(token, incident_id=INCIDENT, approver=APPROVER, keys=clone)


# --- settings and the dev key ----------------------------------------------------------------


def test_dev_keypair_is_private_and_stable(tmp_path: Path) -> None:
    private, public = dev_keypair(tmp_path)
    assert private.parent == tmp_path / "keys"
    assert stat.S_IMODE(private.stat().st_mode) == 0o600
    assert dev_keypair(tmp_path) == (private, public)
    assert public.read_text() == dev_keypair(tmp_path)[1].read_text()


def test_settings_without_a_key_fall_back_to_the_dev_key_loudly(
    caplog: pytest.LogCaptureFixture,
) -> None:
    with caplog.at_level(logging.WARNING, logger="neuralops.approval"):
        keys = keys_from_settings(get_settings())
    assert keys.dev and keys.issuer == DEV_ISSUER
    assert any("DEV ONLY" in r.getMessage() for r in caplog.records)
    private, _ = dev_keypair(get_settings().data_dir)
    got = verify_approval_token(
        token_for(private_key_path=private), incident_id=INCIDENT, approver=APPROVER, keys=keys
    )
    assert got.dev and got.audit_payload()["dev_key"] is True


def test_settings_public_key_file(
    monkeypatch: pytest.MonkeyPatch, dev, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setenv("NEURALOPS_APPROVAL_PUBLIC_KEY", str(dev[1]))
    monkeypatch.setenv("NEURALOPS_APPROVAL_AUDIENCE", "neuralops")
    get_settings.cache_clear()
    with caplog.at_level(logging.WARNING):
        keys = keys_from_settings(get_settings())
    assert not keys.dev and keys.audience == "neuralops" and not caplog.records
    token = token_for(private_key_path=dev[0], audience="neuralops")
    verify_approval_token(token, incident_id=INCIDENT, approver=APPROVER, keys=keys)
    monkeypatch.setenv("NEURALOPS_APPROVAL_PUBLIC_KEY", dev[1].read_text())
    get_settings.cache_clear()
    with pytest.raises(ConfigError, match="path of a PEM file"):
        keys_from_settings(get_settings())
    monkeypatch.setenv("NEURALOPS_APPROVAL_JWKS_URL", "https://idp.example/jwks")
    get_settings.cache_clear()
    with pytest.raises(ConfigError, match="not both"):
        keys_from_settings(get_settings())


def test_settings_jwks_url(monkeypatch: pytest.MonkeyPatch, jwks_server: _JWKSServer) -> None:
    monkeypatch.setenv("NEURALOPS_APPROVAL_JWKS_URL", jwks_server.url)
    get_settings.cache_clear()
    keys = keys_from_settings(get_settings())
    assert keys.jwks_url == jwks_server.url and not keys.dev


def test_block_builds_the_keys(dev) -> None:
    from blocks.approval import ApprovalKeysBlock

    block = ApprovalKeysBlock(public_key_pem=dev[1].read_text(), issuer=DEV_ISSUER)
    keys = block.keys()
    verify_approval_token(
        token_for(private_key_path=dev[0]), incident_id=INCIDENT, approver=APPROVER, keys=keys
    )
    with pytest.raises(ConfigError, match="asymmetric"):
        ApprovalKeysBlock(public_key_pem=dev[1].read_text(), algorithms=["HS256"]).keys()


# --- CLI -------------------------------------------------------------------------------------


def test_cli_issue_dev_token_verifies() -> None:
    from neuralops.cli import app

    result = CliRunner().invoke(
        app, ["token", "issue-dev", "--incident", INCIDENT, "--approver", APPROVER]
    )
    assert result.exit_code == 0, result.output
    assert "DEV ONLY" in result.stderr
    token = result.stdout.strip()
    assert token.count(".") == 2
    keys = keys_from_settings(get_settings())
    got = verify_approval_token(token, incident_id=INCIDENT, approver=APPROVER, keys=keys)
    assert got.roles == ("org-admin",)

    viewer = CliRunner().invoke(
        app,
        ["token", "issue-dev", "--incident", INCIDENT, "--approver", APPROVER, "--role", "viewer"],
    )
    assert viewer.exit_code == 0, viewer.output
    assert refused(viewer.stdout.strip(), keys).reason == "wrong_role"


def _key(path: Path) -> ec.EllipticCurvePrivateKey:
    key = serialization.load_pem_private_key(path.read_bytes(), password=None)
    assert isinstance(key, ec.EllipticCurvePrivateKey)
    return key
