"""Trust boundary (issue 15, point 1): the attacks on the API's missing authentication,
replayed against a real API server (uvicorn, ``api_server``) on SQLite and PostgreSQL, each
refused with nothing recorded that should not be. (To be merged into tests/test_trust.py.)

- (a) ``POST /runs`` without a token, or with one lacking ``runs:write``;
- (b) ``PUT /healthz`` with only a cluster name, or with another cluster's key;
- (c) ``/recommend``, ``/analyze``, ``/register``, ``GET /signals`` without a token;
- (d) ``neuralops api --host 0.0.0.0`` without configured authentication;
- (e) tokens that are not API tokens: an approval token, HS256, ``alg: none``, expired,
  wrong audience or issuer, another key's.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import os
import subprocess
import sys
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import jwt
import pytest
import sqlalchemy as sa
from conftest import api_headers, api_token
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from sqlalchemy.engine import URL

from neuralops import clusters, db, registry
from neuralops.approval import DEV_ISSUER, dev_keypair, issue_dev_token
from neuralops.db.models import AuditLog, Base, Cluster
from neuralops.settings import get_settings

ROOT = Path(__file__).resolve().parents[1]


def counts(url: URL) -> dict[str, int]:
    """Rows in every table."""
    with db.get_engine(url).connect() as conn:
        return {
            name: conn.execute(sa.select(sa.func.count()).select_from(table)).scalar_one()
            for name, table in Base.metadata.tables.items()
        }


def a_run(run_id: str) -> dict:
    return {
        "wpk_id": "uncordon-node",
        "run_id": run_id,
        "status": "succeeded",
        "duration_ms": 1200,
        "inputs": {"node": "attacker-chosen"},
    }


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


# --- (a) POST /runs ---------------------------------------------------------------------------


def test_post_runs_without_a_token_or_without_runs_write_writes_nothing(
    api_server: str, database_url: URL
) -> None:
    registry.add_playbooks(registry.load_manifests([registry.catalogue_dir()]), url=database_url)
    before = counts(database_url)
    anonymous = httpx.post(f"{api_server}/runs", json=a_run("poison-1"))
    assert anonymous.status_code == 401
    assert anonymous.headers["www-authenticate"] == 'Bearer realm="neuralops-api"'
    lacking = api_headers("runs:read", "signals:read", "recommend", "signals:write")
    forbidden = httpx.post(f"{api_server}/runs", json=a_run("poison-2"), headers=lacking)
    assert forbidden.status_code == 403 and "'runs:write'" in forbidden.json()["detail"]
    # 200 of them, as the attack posted: every one refused
    with httpx.Client(base_url=api_server) as client:
        statuses = {client.post("/runs", json=a_run(f"poison-{n}")).status_code for n in range(200)}
    assert statuses == {401}
    assert counts(database_url) == before

    allowed = httpx.post(
        f"{api_server}/runs", json=a_run("honest-1"), headers=api_headers("runs:write")
    )
    assert allowed.status_code == 201, allowed.text
    assert counts(database_url)["workflow_runs"] == before["workflow_runs"] + 1


# --- (b) PUT /healthz -------------------------------------------------------------------------


def _registered(url: URL, name: str, key: str) -> None:
    """A cluster as registration leaves it (key hash stored), silent for an hour."""
    silent = datetime.now(UTC) - timedelta(hours=1)
    with db.session_scope(url) as session:
        session.add(
            Cluster(
                name=name,
                work_pool=clusters.work_pool_name(name),
                registered_at=silent,
                last_heartbeat=silent,
                status="unreachable",
                heartbeat_key_sha256=clusters.key_digest(key),
            )
        )


def _recovered(url: URL) -> list[str]:
    with db.session_scope(url) as session:
        return list(
            session.scalars(
                sa.select(AuditLog.subject).where(AuditLog.action == "cluster.recovered")
            )
        )


def test_a_heartbeat_needs_the_clusters_own_key(api_server: str, database_url: URL) -> None:
    key_a, key_b = clusters.new_heartbeat_key(), clusters.new_heartbeat_key()
    _registered(database_url, "edge-a", key_a)
    _registered(database_url, "edge-b", key_b)
    before = counts(database_url)

    only_a_name = httpx.put(f"{api_server}/healthz", json={"cluster": "edge-b"})
    assert only_a_name.status_code == 401
    assert only_a_name.headers["www-authenticate"].startswith("Bearer")
    with_a_key = httpx.put(
        f"{api_server}/healthz", json={"cluster": "edge-b"}, headers=bearer(key_a)
    )
    assert with_a_key.status_code == 403 and key_a not in with_a_key.text
    api_token_instead = httpx.put(
        f"{api_server}/healthz", json={"cluster": "edge-b"}, headers=api_headers()
    )
    assert api_token_instead.status_code == 403  # every scope, still not the cluster's key

    assert clusters.get_cluster("edge-b", url=database_url).status == "unreachable"
    assert _recovered(database_url) == []
    assert counts(database_url) == before

    own = httpx.put(f"{api_server}/healthz", json={"cluster": "edge-b"}, headers=bearer(key_b))
    assert own.status_code == 200 and own.json()["status"] == "healthy"
    assert _recovered(database_url) == ["cluster:edge-b"]
    assert clusters.get_cluster("edge-a", url=database_url).status == "unreachable"


@pytest.mark.slow
def test_the_key_registration_returns_is_the_one_that_beats(
    openbao: tuple[str, str], database_url: URL, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Through the real registration (OpenBao as Vault): POST /register needs clusters:admin
    and answers the key once; Vault holds it for the connector; re-registering rotates it."""
    import hvac
    from conftest import serve_api

    from neuralops.api import create_app

    addr, root = openbao
    monkeypatch.setenv("VAULT_ADDR", addr)
    monkeypatch.setenv("VAULT_TOKEN", root)
    get_settings.cache_clear()
    vault = hvac.Client(url=addr, token=root)

    def registration_token() -> str:
        return vault.auth.token.create(policies=["default"], ttl="10m")["auth"]["client_token"]

    name = f"edge-{uuid.uuid4().hex[:8]}"
    with serve_api(create_app(database_url)) as base:
        body = {"name": name, "vault_token": registration_token()}
        assert httpx.post(f"{base}/register", json=body).status_code == 401
        assert clusters.list_clusters(url=database_url) == []
        admin = api_headers("clusters:admin")
        first = httpx.post(f"{base}/register", json=body, headers=admin)
        assert first.status_code == 201, first.text
        key = first.json()["heartbeat_key"]
        stored = vault.secrets.kv.v2.read_secret_version(
            path=clusters.kv_path(name), mount_point="secret", raise_on_deleted_version=False
        )["data"]["data"]
        assert stored["heartbeat_key"] == key
        beat = httpx.put(f"{base}/healthz", json={"cluster": name}, headers=bearer(key))
        assert beat.status_code == 200
        again = httpx.post(
            f"{base}/register",
            json={"name": name, "vault_token": registration_token()},
            headers=admin,
        )
        new_key = again.json()["heartbeat_key"]
        assert new_key != key
        stale = httpx.put(f"{base}/healthz", json={"cluster": name}, headers=bearer(key))
        assert stale.status_code == 403
        fresh = httpx.put(f"{base}/healthz", json={"cluster": name}, headers=bearer(new_key))
        assert fresh.status_code == 200


# --- (c) the other writers and readers --------------------------------------------------------


@pytest.mark.parametrize(
    ("method", "path", "body"),
    [
        ("POST", "/recommend", {"incident": {"alert": "KubePodOOMKilled", "summary": "oom"}}),
        ("POST", "/analyze", {"query": "up"}),
        ("POST", "/register", {"name": "edge-x", "vault_token": "s.whatever"}),
        ("GET", "/signals", None),
        ("GET", "/clusters", None),
        ("GET", "/playbooks", None),
        ("GET", "/workflows/uncordon-node/runs", None),
    ],
)
def test_every_other_operation_is_401_without_a_token(
    api_server: str, database_url: URL, method: str, path: str, body: dict | None
) -> None:
    before = counts(database_url)
    response = httpx.request(method, f"{api_server}{path}", json=body)
    assert response.status_code == 401, response.text
    assert response.headers["www-authenticate"] == 'Bearer realm="neuralops-api"'
    detail = response.json()["detail"]
    assert isinstance(detail, str) and "\n" not in detail and "Traceback" not in detail
    assert counts(database_url) == before


def test_health_and_metrics_stay_open(api_server: str) -> None:
    assert httpx.get(f"{api_server}/healthz").status_code == 200
    assert httpx.get(f"{api_server}/metrics").status_code == 200


# --- (d) neuralops api beyond loopback --------------------------------------------------------


@pytest.mark.parametrize(
    ("args", "env"),
    [
        (["--host", "0.0.0.0"], {}),
        (["--host", "::"], {}),
        ([], {"NEURALOPS_API_HOST": "0.0.0.0"}),
    ],
)
def test_api_refuses_a_non_loopback_host_without_authentication(
    sqlite_url: URL, args: list[str], env: dict[str, str]
) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "neuralops", "api", "--port", "1", *args],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, **env},
        cwd=ROOT,
    )
    assert result.returncode == 2, result.stdout + result.stderr
    [error] = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert "refusing to serve the API on" in error
    assert "NEURALOPS_API_PUBLIC_KEY" in error and "NEURALOPS_API_JWKS_URL" in error
    assert "Traceback" not in result.stderr


# --- (e) what is not an API token -------------------------------------------------------------


def _b64(data: dict) -> str:
    return base64.urlsafe_b64encode(json.dumps(data).encode()).rstrip(b"=").decode()


def _claims(**overrides) -> dict:
    now = int(time.time())
    claims = {
        "iss": DEV_ISSUER,
        "sub": "mallory@example.com",
        "aud": "neuralops-api",
        "iat": now,
        "nbf": now,
        "exp": now + 600,
        "scope": "runs:write",
    }
    claims.update(overrides)
    return {k: v for k, v in claims.items() if v is not None}


def _forged_tokens() -> dict[str, str]:
    settings = get_settings()
    private_path, public_path = dev_keypair(settings.data_dir)
    private = serialization.load_pem_private_key(private_path.read_bytes(), password=None)
    other = ec.generate_private_key(ec.SECP256R1())
    public_pem = public_path.read_bytes()
    return {
        "approval token": issue_dev_token(
            incident_id=uuid.uuid4(),
            approver="sre@example.com",
            private_key_path=private_path,
        ),
        "approval token with a scope": issue_dev_token(
            incident_id=uuid.uuid4(),
            approver="sre@example.com",
            private_key_path=private_path,
            extra_claims={"scope": "runs:write"},
        ),
        # alg confusion: HMAC keyed with the (public) verification key
        "HS256": _hs256(_claims(), public_pem),
        "alg none": f"{_b64({'alg': 'none', 'typ': 'JWT'})}.{_b64(_claims())}.",
        "expired": jwt.encode(
            _claims(iat=int(time.time()) - 7200, nbf=None, exp=int(time.time()) - 3600),
            private,
            algorithm="ES256",
        ),
        "no exp": jwt.encode(_claims(exp=None), private, algorithm="ES256"),
        "wrong audience": jwt.encode(_claims(aud="neuralops"), private, algorithm="ES256"),
        "no audience": jwt.encode(_claims(aud=None), private, algorithm="ES256"),
        "wrong issuer": jwt.encode(_claims(iss="https://evil.example"), private, algorithm="ES256"),
        "another key": jwt.encode(_claims(), other, algorithm="ES256"),
        "no subject": jwt.encode(_claims(sub=None), private, algorithm="ES256"),
        "tampered": _tamper(jwt.encode(_claims(scope="runs:read"), private, algorithm="ES256")),
    }


def _hs256(claims: dict, secret: bytes) -> str:
    """By hand: PyJWT itself refuses to HMAC with a PEM public key."""
    signing_input = f"{_b64({'alg': 'HS256', 'typ': 'JWT'})}.{_b64(claims)}"
    mac = hmac.new(secret, signing_input.encode(), hashlib.sha256).digest()
    return f"{signing_input}.{base64.urlsafe_b64encode(mac).rstrip(b'=').decode()}"


def _tamper(token: str) -> str:
    header, _, signature = token.split(".")
    return f"{header}.{_b64(_claims(scope='runs:write clusters:admin'))}.{signature}"


def test_tokens_that_are_not_api_tokens_are_refused(api_server: str, database_url: URL) -> None:
    registry.add_playbooks(registry.load_manifests([registry.catalogue_dir()]), url=database_url)
    before = counts(database_url)
    for n, (what, token) in enumerate(_forged_tokens().items()):
        response = httpx.post(
            f"{api_server}/runs", json=a_run(f"forged-{n}"), headers=bearer(token)
        )
        assert response.status_code == 401, (what, response.text)
        assert token not in response.text, what
        assert response.headers["www-authenticate"].endswith('error="invalid_token"'), what
        detail = response.json()["detail"]
        assert detail.startswith("API token refused (") and "\n" not in detail, (what, detail)
    assert counts(database_url) == before
    # the positive control: the same claims, signed right, in `scp` form
    good = jwt.encode(
        _claims(scope=None, scp=["runs:write"]),
        serialization.load_pem_private_key(
            dev_keypair(get_settings().data_dir)[0].read_bytes(), password=None
        ),
        algorithm="ES256",
    )
    ok = httpx.post(f"{api_server}/runs", json=a_run("signed-right"), headers=bearer(good))
    assert ok.status_code == 201, ok.text


def test_an_api_token_is_never_an_approval_token() -> None:
    from neuralops.approval import ApprovalRefused, keys_from_settings, verify_approval_token

    token = api_token()  # every scope
    with pytest.raises(ApprovalRefused) as refused:
        verify_approval_token(
            token,
            incident_id=uuid.uuid4(),
            approver="tester@example.com",
            keys=keys_from_settings(get_settings()),
        )
    assert refused.value.reason == "wrong_incident"
