"""Trust boundary (issue 15): each attack found from the outside, replayed as an attacker
would, on SQLite and PostgreSQL, and shown refused with nothing recorded that should not be.

Authentication (a real API server, uvicorn, ``api_server``):
- ``POST /runs`` without a token, or with one lacking ``runs:write``: 401/403, no row;
- ``PUT /healthz`` with only a cluster name, or another cluster's heartbeat key: refused, the
  cluster stays unreachable, no ``cluster.recovered`` audit entry;
- ``/recommend``, ``/analyze``, ``/register``, ``GET /signals`` without a token: 401;
- ``neuralops api --host 0.0.0.0`` while authentication is not configured: refused;
- tokens that are not API tokens (approval, HS256, ``alg: none``, expired, wrong audience or
  issuer, another key's): 401.
History (library and real API):
- poisoning: 200 "succeeded" uncordon-node runs posted for an OOM alert leave
  raise-memory-limit first, are shown as reported and weigh nothing, and give no precedent
  parameter;
- a finished run is immutable (same content idempotent, different content 409);
- ``created_at`` far in the future refused; a lone surrogate refused, nothing written;
- a bad stored row is quarantined by the export, the rest exported.
Execution:
- a playbook re-released (v1.0.1, other steps, re-signed) after the approval of v1.0.0's
  dry-run: execution refused (``execute.refused``), nothing run, local, auto or on a cluster;
- an approval for a stale plan digest refused;
- an attacker's image (``psql_image``) from a precedent never runs; unconstrained strings into
  ``args`` refused at ``playbook add``; a shell injection fails the dry-run.
Inputs:
- every secret kind redaction missed, planted in inputs, outputs and node_logs, kept out of
  the export;
- ``detect-file`` onto /dev/null, a FIFO, a symlink or its own input; non-UTF-8 input;
  concurrent ``db upgrade``; ``playbook add`` on a symlink to a non-manifest: refused, nothing
  written, no content echoed.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import hmac
import json
import os
import stat
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import jwt
import pytest
import sqlalchemy as sa
import yaml
from conftest import _admin, _admin_url, _postgres_reachable, api_headers, api_token, skip_or_fail
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from sqlalchemy import select, update
from sqlalchemy.engine import URL
from typer.testing import CliRunner

from neuralops import audit, clusters, db, etl, incidents, policy, registry, remediation, runs
from neuralops.approval import DEV_ISSUER, dev_keypair, issue_dev_token, keys_from_settings
from neuralops.db import get_engine, session_scope
from neuralops.db.models import AuditLog, Base, Cluster, WorkflowRun
from neuralops.embedding import HashingEmbedder, MiniLMEmbedder
from neuralops.errors import Conflict, InvalidInput, NotFound
from neuralops.incident_model import Incident
from neuralops.manifest import Manifest
from neuralops.mock_cluster import MockCluster
from neuralops.recommend import NEIGHBOURS, Recommender, incident_from_signal
from neuralops.registry import registered_manifests
from neuralops.settings import get_settings
from neuralops.signing import sign_playbook
from neuralops.vectorize import read_jsonl, vectorize_records
from neuralops.vectorstore import VectorStore, store_from_settings

# ==============================================================================================
# Point 1: every write is authenticated (real API server)
# ==============================================================================================


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


# ==============================================================================================
# Points 2 and 6: history NeuralOps can vouch for
# ==============================================================================================


ATTACKER = "api:attacker"
NODE = "ip-10-6-6-6.attacker.internal"


@pytest.fixture(scope="module")
def embedder(minilm: MiniLMEmbedder) -> MiniLMEmbedder:
    return minilm


def execution_like(
    signal: Any,
    playbook: str,
    parameters: dict[str, Any],
    *,
    run_id: str,
    status: str = "succeeded",
    ago: timedelta = timedelta(days=1),
    steps: tuple[str, ...] = ("uncordon", "wait-schedulable"),
) -> dict[str, Any]:
    """A run shaped exactly like remediation.log_execution's record of an execution."""
    incident = incident_from_signal(signal)
    incident_id = str(uuid.uuid4())
    return {
        "wpk_id": playbook,
        "run_id": run_id,
        "status": status,
        "duration_ms": 41_000,
        "inputs": {
            "parameters": parameters,
            "alert": {"alertname": incident.alert, "summary": incident.summary, **incident.labels},
            "incident_id": incident_id,
            "triggered_by": "remediate",
        },
        "outputs": {
            "incident_id": incident_id,
            "outcome": "resolved",
            "runtime": "mock-cluster",
            "message": f"{playbook} completed",
        },
        "node_logs": [{"name": s, "status": "Completed", "duration_ms": 20_000} for s in steps],
        "cluster": None,
        "created_at": (datetime.now(UTC) - ago).isoformat(),
    }


def poison(signal: Any, count: int = 200) -> list[dict[str, Any]]:
    return [
        execution_like(
            signal,
            "uncordon-node",
            {"node": NODE},
            run_id=f"evil-{n:04d}",
            ago=timedelta(hours=1 + n),
        )
        for n in range(count)
    ]


def vectorize_all(tmp_path: Path, embedder: MiniLMEmbedder, settings: Any) -> Any:
    exported = etl.export_runs(tmp_path / "runs.jsonl")
    store = store_from_settings(settings)
    vectorize_records(read_jsonl(exported.path), store, embedder)
    return store


def stored_runs() -> dict[str, tuple]:
    with session_scope() as session:
        rows = session.execute(
            sa.select(
                WorkflowRun.run_id,
                WorkflowRun.status,
                WorkflowRun.outputs,
                WorkflowRun.created_at,
                WorkflowRun.updated_at,
                WorkflowRun.provenance,
                WorkflowRun.verified,
            )
        ).all()
    return {row.run_id: tuple(row[1:]) for row in rows}


# --- (a) poisoning the recommender and the precedent parameters --------------------------


def test_posted_runs_cannot_steer_the_recommendation_or_the_parameters(
    database_url: URL, signed_catalogue: dict, embedder: MiniLMEmbedder, tmp_path: Path
) -> None:
    settings = signed_catalogue["settings"]
    signal = signed_catalogue["signals"]["oom-kills"]
    incident = incident_from_signal(signal)
    raise_memory = next(m for m in signed_catalogue["manifests"] if m.id == "raise-memory-limit")
    uncordon = next(m for m in signed_catalogue["manifests"] if m.id == "uncordon-node")
    # What NeuralOps itself did here before: raised the memory limit, and it worked.
    legit = execution_like(
        signal,
        raise_memory.id,
        {
            "namespace": "payments",
            "deployment": "payments-api",
            "container": "payments-api",
            "memory_limit": "2Gi",
        },
        run_id=f"remediate-{uuid.uuid4()}",
        ago=timedelta(days=9),
        steps=tuple(s.name for s in raise_memory.steps),
    )
    runs.log_run(legit, provenance=runs.NEURALOPS, verified=True)
    # The attack: 200 "succeeded" uncordon-node executions for this very OOM alert, and newer
    # "succeeded" raise-memory-limit runs with the attacker's values.
    runs.log_runs(poison(signal), provenance=ATTACKER)
    evil_limit = execution_like(
        signal,
        raise_memory.id,
        {
            "namespace": "payments",
            "deployment": "payments-api",
            "container": "payments-api",
            "memory_limit": "64Gi",
        },
        run_id="evil-memory",
        ago=timedelta(minutes=5),
    )
    runs.log_run(evil_limit, provenance=ATTACKER)
    store = vectorize_all(tmp_path, embedder, settings)
    assert store.count() == 202

    manifests = registered_manifests()
    recommender = Recommender(store, embedder, manifests)  # trusted: the setting (none)
    result = recommender.recommend(incident, top=20)
    ids = [r.playbook_id for r in result.recommendations]
    assert ids[0] == "raise-memory-limit"
    first = result.recommendations[0]
    assert first.similar_runs == 1 and [e.run_id for e in first.evidence if e.counted] == [
        legit["run_id"]
    ]
    for rec in result.recommendations:  # every attacker run shown is reported, never counted
        assert all(not e.counted for e in rec.evidence if e.provenance == ATTACKER)
        assert all(e.provenance != ATTACKER for e in rec.evidence if e.counted)
    if "uncordon-node" in ids:
        listed = result.recommendations[ids.index("uncordon-node")]
        assert (listed.similar_runs, listed.success_rate) == (0, None)
        assert listed.evidence and not any(e.counted for e in listed.evidence)
    # Its 200 runs are there to be seen, as reported: they weigh nothing.
    vector = embedder.embed([incident.text()])[0]
    shown = recommender.reported(["uncordon-node"], vector)["uncordon-node"]
    assert len(shown) == 5 and {r["provenance"] for r in shown} == {ATTACKER}
    candidates = recommender.candidates(incident, vector=vector)
    assert not any(r["provenance"] == ATTACKER for r in candidates.runs)

    # The control: were the attacker a trusted writer, its runs would be the evidence the
    # issue saw (uncordon-node: 100 similar runs then, as many as the recommender takes
    # now, 99 %). The trust boundary, not the data, is what keeps them out.
    fooled = Recommender(store, embedder, manifests, trusted={ATTACKER})
    steered = next(
        r
        for r in fooled.recommend(incident, top=20).recommendations
        if r.playbook_id == "uncordon-node"
    )
    assert steered.similar_runs == NEIGHBOURS and steered.success_rate >= 0.98

    # Precedent parameters come from NeuralOps' own execution, not the attacker's newer runs.
    assert remediation.precedent_parameters(uncordon, incident) == {}
    assert remediation.precedent_parameters(raise_memory, incident)["memory_limit"] == "2Gi"
    assert remediation.precedent_parameters(uncordon, incident, trusted={ATTACKER}) == {
        "node": NODE
    }
    # And the whole suggest step: the playbook and parameters it would run.
    suggested = remediation.suggest(recommender, signal_id=str(signal.id))
    assert suggested.playbook_id == "raise-memory-limit"
    assert suggested.parameters["memory_limit"] == "2Gi"


def test_a_future_dated_run_never_becomes_the_precedent(
    database_url: URL, signed_catalogue: dict
) -> None:
    """A run dated just inside the clock-skew allowance is accepted, but until its time has
    come it is not "the latest" succeeded run that parameters are taken from."""
    signal = signed_catalogue["signals"]["oom-kills"]
    incident = incident_from_signal(signal)
    manifest = next(m for m in signed_catalogue["manifests"] if m.id == "raise-memory-limit")
    params = {"namespace": "payments", "deployment": "payments-api", "container": "payments-api"}
    now = execution_like(
        signal, manifest.id, params | {"memory_limit": "2Gi"}, run_id="now", ago=timedelta(0)
    )
    ahead = execution_like(
        signal,
        manifest.id,
        params | {"memory_limit": "9Gi"},
        run_id="ahead",
        ago=-timedelta(minutes=4),
    )
    runs.log_runs([now, ahead], provenance=runs.NEURALOPS, verified=True)
    assert remediation.precedent_parameters(manifest, incident)["memory_limit"] == "2Gi"


# --- (b) (c) (d) rewriting, pinning, unencodable text: the library ------------------------


def test_a_finished_run_cannot_be_rewritten(database_url: URL, signed_catalogue: dict) -> None:
    signal = signed_catalogue["signals"]["oom-kills"]
    own = execution_like(signal, "raise-memory-limit", {"memory_limit": "2Gi"}, run_id="r-own")
    runs.log_run(own, provenance=runs.NEURALOPS, verified=True)
    before = stored_runs()
    rewritten = {**own, "status": "failed", "outputs": {"error": "made up"}}
    with pytest.raises(Conflict, match="run 'r-own'"):
        runs.log_runs(
            [execution_like(signal, "x", {}, run_id="r-new"), rewritten], provenance=ATTACKER
        )
    assert stored_runs() == before  # nothing of the batch written
    assert runs.log_run(own, provenance=ATTACKER) == "r-own"  # the same: idempotent
    assert stored_runs() == before  # not even the provenance changed


def test_a_run_dated_in_the_far_future_is_refused(database_url: URL) -> None:
    pinned = {
        "wpk_id": "uncordon-node",
        "run_id": "pin",
        "status": "succeeded",
        "duration_ms": 1,
        "created_at": "9999-12-30T00:00:00+00:00",
    }
    with pytest.raises(InvalidInput, match=r"created_at: .*in the future"):
        runs.log_run(pinned, provenance=ATTACKER)
    assert stored_runs() == {}


def test_text_that_cannot_be_encoded_is_refused_alike(database_url: URL) -> None:
    bad = {
        "wpk_id": "uncordon-node",
        "run_id": "bad",
        "status": "succeeded",
        "duration_ms": 1,
        "inputs": {"note": "\ud800"},
    }
    with pytest.raises(InvalidInput, match=r"inputs: .*lone surrogate"):
        runs.log_runs([{**bad, "run_id": "good", "inputs": {}}, bad], provenance=ATTACKER)
    assert stored_runs() == {}


# --- (e) a bad stored row does not block the export ---------------------------------------


def test_a_bad_stored_row_is_quarantined_and_the_rest_exported(
    database_url: URL, tmp_path: Path
) -> None:
    good = {"wpk_id": "restart-deployment", "status": "succeeded", "duration_ms": 1}
    runs.log_runs([good | {"run_id": f"r-{n}"} for n in range(5)], provenance=runs.SEED)
    # Written before the fix (PostgreSQL would have refused a surrogate: a depth Python cannot
    # parse stands for it there).
    if database_url.get_backend_name() == "postgresql":
        value, reason = '\'{"a": ' + "[" * 3000 + "]" * 3000 + "}'::jsonb", "nested too deeply"
    else:
        value, reason = '\'{"a": "\\ud800"}\'', "text that cannot be encoded"
    with get_engine().begin() as conn:
        conn.execute(sa.text(f"UPDATE workflow_runs SET inputs = {value} WHERE run_id = 'r-2'"))
    result = etl.export_runs(tmp_path / "runs.jsonl")
    assert result.rows == 4
    assert [q.run_id for q in result.quarantined] == ["r-2"]
    assert reason in result.quarantined[0].reason
    lines = (tmp_path / "runs.jsonl").read_text().splitlines()
    assert len(lines) == 4 and '"provenance":"seed"' in lines[0]
    assert etl.count_pending() == 0  # the watermark moved past it


# --- the same attacks through the real API --------------------------------------------------


def test_the_api_records_the_writer_and_refuses_rewriting_pinning_and_bad_text(
    api_server: str, signed_catalogue: dict, embedder: MiniLMEmbedder, tmp_path: Path
) -> None:
    signal = signed_catalogue["signals"]["oom-kills"]
    writer = api_headers("runs:write", subject="attacker")
    with httpx.Client(base_url=api_server, timeout=30) as client:
        # (a) the 200 posted runs are recorded as the attacker's, unverified
        for run in poison(signal):
            assert client.post("/runs", json=run, headers=writer).status_code == 201
        stored = stored_runs()
        assert {v[4:] for k, v in stored.items() if k.startswith("evil-")} == {(ATTACKER, False)}
        # (b) a finished run is immutable: same content 201 (nothing written), else 409
        own = execution_like(signal, "raise-memory-limit", {"memory_limit": "2Gi"}, run_id="r-own")
        runs.log_run(own, provenance=runs.NEURALOPS, verified=True)
        before = stored_runs()
        assert client.post("/runs", json=own, headers=writer).status_code == 201
        rewrite = client.post("/runs", json={**own, "status": "failed"}, headers=writer)
        assert rewrite.status_code == 409 and "r-own" in rewrite.json()["detail"]
        posted = {**poison(signal, 1)[0], "status": "failed"}  # the attacker's own, rewritten
        assert client.post("/runs", json=posted, headers=writer).status_code == 409
        assert stored_runs() == before
        # (c) pinning a resource's latest run
        pin = {**poison(signal, 1)[0], "run_id": "pin", "created_at": "9999-12-30T00:00:00Z"}
        pinned = client.post("/runs", json=pin, headers=writer)
        assert pinned.status_code == 422 and "created_at" in pinned.text
        # (d) a lone surrogate, sent as the JSON escape a client would
        body = (
            '{"wpk_id": "x", "run_id": "sur", "status": "succeeded", "duration_ms": 1, '
            '"inputs": {"note": "\\ud800"}}'
        )
        refused = client.post(
            "/runs", content=body, headers=writer | {"Content-Type": "application/json"}
        )
        assert refused.status_code == 422 and "inputs" in refused.text
        assert stored_runs() == before
        # and none of it without a runs:write credential
        anonymous = client.post("/runs", json={**own, "run_id": "anon"})
        assert anonymous.status_code == 401
        assert "anon" not in stored_runs() and "pin" not in stored_runs()

        # The hourly vectorize, then POST /recommend for the OOM signal: the 200 posted runs
        # are shown as reported and count for nothing.
        vectorize_all(tmp_path, embedder, signed_catalogue["settings"])
        asked = client.post(
            "/recommend",
            json={"signal_id": str(signal.id), "top": 20},
            headers=api_headers("recommend"),
        )
        assert asked.status_code == 200, asked.text
        ranked = asked.json()["recommendations"]
        assert ranked[0]["playbook_id"] == "raise-memory-limit"
        for rec in ranked:
            for e in rec["evidence"]:
                assert e["counted"] == (e["provenance"] != ATTACKER)
            if rec["playbook_id"] == "uncordon-node":
                assert (rec["similar_runs"], rec["success_rate"]) == (0, None)


# ==============================================================================================
# Points 3 and 4: what executes is what was approved; constrained parameters
# ==============================================================================================


OOM_PARAMETERS = {"container": "api", "memory_limit": "2Gi"}
BACKUP = {
    "cluster": "orders-db",
    "destination_path": "s3://acme-pg-backups/orders-db",
    "credentials_secret": "orders-db-backup",
}
ORDERS_DB = {"namespace": "data", "service": "orders-db", "symptom": "long-running-queries"}
QUERIES = {"cluster": "orders-db", "database": "orders", "credentials_secret": "orders-db-app"}


@pytest.fixture
def env(database_url: URL, signed_catalogue: dict, tmp_path: Path) -> dict[str, Any]:
    """The signed catalogue on the database under test, a recommender, the mock cluster."""
    store = VectorStore(str(tmp_path / "lancedb"))
    return signed_catalogue | {
        "recommender": Recommender(store, HashingEmbedder(), signed_catalogue["manifests"]),
        "public_key": signed_catalogue["signer"].public_key_pem(),
        "cluster": MockCluster(tmp_path / "mock-cluster.json"),
        "keys": keys_from_settings(signed_catalogue["settings"]),
    }


def _decision(env, incident_id, *, verdict="approve", plan_digest=None):
    return remediation.ApprovalDecision(
        decision=verdict,
        approver="ana",
        token=issue_dev_token(
            incident_id=incident_id,
            approver="ana",
            roles=("org-admin",),
            ttl_s=600,
            private_key_path=env["private_key"],
        ),
        comment="reviewed the dry-run",
        plan_digest=plan_digest,
    )


def _dry_run(env, current: incidents.IncidentOut) -> incidents.IncidentOut:
    return remediation.dry_run(current.id, public_key_pem=env["public_key"], runtime=env["cluster"])


def _oom_incident(env, **kwargs) -> incidents.IncidentOut:
    current = remediation.suggest(
        env["recommender"],
        signal_id=str(env["signals"]["oom-kills"].id),
        parameters=OOM_PARAMETERS,
        **kwargs,
    )
    return _dry_run(env, current)


def _approved(env, current: incidents.IncidentOut) -> incidents.IncidentOut:
    current = remediation.decide(current.id, settings=env["settings"])
    assert current.state == "awaiting_approval"
    current, refusal = remediation.apply_decision(
        current.id, _decision(env, current.id), keys=env["keys"]
    )
    assert refusal is None and current.state == "approved"
    return current


def _republish(env, playbook_id: str, version: str) -> None:
    """What the attacker did: the same playbook re-added as a new version with other steps and
    re-signed with the same signing key (an honest-looking release)."""
    data = registry.get_playbook(playbook_id).manifest
    step = data["steps"][0]
    steps = [{**step, "description": step["description"] + " (and then some)"}, *data["steps"][1:]]
    new = Manifest.model_validate({**data, "version": version, "steps": steps})
    [result] = registry.add_playbooks([new])
    assert result.change is registry.Change.updated
    sign_playbook(playbook_id, env["signer"])


def _entries(incident_id, action: str) -> list[dict[str, Any]]:
    with session_scope() as session:
        return list(
            session.scalars(
                select(AuditLog.payload)
                .where(AuditLog.subject == incidents.subject(incident_id))
                .where(AuditLog.action == action)
                .order_by(AuditLog.seq)
            )
        )


def _assert_refused(env, current: incidents.IncidentOut, approved_digest: str) -> None:
    assert current.state == "failed"
    [refused] = _entries(current.id, "execute.refused")
    assert refused["approved_digest"] == approved_digest
    assert refused["current_digest"] not in (None, approved_digest)
    assert {"version", "manifest", "steps"} <= set(refused["differs"])
    assert "changed since it was approved" in refused["reason"]
    [failed] = _entries(current.id, "incident.failed")
    assert failed["refused"] is True and failed["approved_digest"] == approved_digest
    with pytest.raises(NotFound):  # no execution was logged: nothing ran
        runs.get_run(f"remediate-{current.id}")
    assert audit.verify().ok


# --- (a) a new version after the approval never runs under it -------------------------------


def test_a_playbook_re_released_after_approval_is_refused_at_execute(env) -> None:
    current = _oom_incident(env)
    assert current.state == "dry_run_passed" and current.dry_run["version"] == "1.0.0"
    digest = current.plan_digest
    assert digest and current.dry_run["plan_digest"] == digest
    current = _approved(env, current)
    [approved] = _entries(current.id, "incident.approved")
    assert approved["plan_digest"] == digest  # the audit trail says which plan was approved

    _republish(env, "raise-memory-limit", "1.0.1")
    current = remediation.execute(
        current.id, public_key_pem=env["public_key"], runtime=env["cluster"]
    )
    _assert_refused(env, current, digest)
    assert env["cluster"]._load() == {}  # nothing was applied to the mock cluster
    assert incidents.get(current.id).plan_digest == digest  # the incident kept its plan


def test_an_auto_approved_incident_is_bound_to_its_plan_too(env) -> None:
    current = remediation.suggest(
        env["recommender"],
        incident=Incident(alert="PostgresBackupStale", labels={"namespace": "data"}),
        playbook_id="verify-postgres-backup",
        parameters=BACKUP,
    )
    current = _dry_run(env, current)
    assert current.state == "dry_run_passed", current.dry_run
    current = remediation.decide(current.id, settings=env["settings"])
    assert (current.state, current.approver) == ("approved", "policy:auto")
    [approved] = _entries(current.id, "incident.approved")
    assert approved["plan_digest"] == current.plan_digest

    _republish(env, "verify-postgres-backup", "1.1.1")
    done = remediation.execute(current.id, public_key_pem=env["public_key"], runtime=env["cluster"])
    _assert_refused(env, done, current.plan_digest)
    assert env["cluster"]._load() == {}  # the mock cluster holds no object at all


def test_a_release_between_dry_run_and_decision_is_never_auto_approved(env) -> None:
    current = remediation.suggest(
        env["recommender"],
        incident=Incident(alert="PostgresBackupStale", labels={"namespace": "data"}),
        playbook_id="verify-postgres-backup",
        parameters=BACKUP,
    )
    current = _dry_run(env, current)
    _republish(env, "verify-postgres-backup", "1.1.1")
    current = remediation.decide(current.id, settings=env["settings"])
    assert current.state == "awaiting_approval"
    assert "changed since the dry-run" in current.mode_reason


def test_on_a_cluster_a_changed_plan_never_reaches_the_connector(env) -> None:
    with session_scope() as session:
        session.add(Cluster(name="edge-1", work_pool="cluster-edge-1", status="healthy"))
    current = _oom_incident(env, cluster="edge-1")
    assert current.state == "dry_run_passed", current.dry_run
    digest = current.plan_digest
    current = _approved(env, current)
    _republish(env, "raise-memory-limit", "1.0.1")
    sent: list[Any] = []
    current = remediation.execute(
        current.id,
        public_key_pem=env["public_key"],
        runtime=env["cluster"],
        signer=env["signer"],
        dispatch=lambda cluster, trigger: sent.append(trigger) or {"ok": True, "results": []},
    )
    _assert_refused(env, current, digest)
    assert sent == []  # no trigger was signed for the connector


def test_the_unchanged_plan_still_executes(env) -> None:
    current = _approved(env, _oom_incident(env))
    done = remediation.execute(current.id, public_key_pem=env["public_key"], runtime=env["cluster"])
    assert done.state == "succeeded" and _entries(done.id, "execute.refused") == []
    deployment = env["cluster"].get("Deployment", "payments", "payments-api")
    limits = deployment["spec"]["template"]["spec"]["containers"][0]["resources"]["limits"]
    assert limits == {"memory": "2Gi"}


# --- (b) an approval for another plan -------------------------------------------------------


def test_an_approval_carrying_a_stale_digest_is_refused(env) -> None:
    current = remediation.decide(_oom_incident(env).id, settings=env["settings"])
    stale = "0" * 64
    after, refusal = remediation.apply_decision(
        current.id, _decision(env, current.id, plan_digest=stale), keys=env["keys"]
    )
    assert refusal and "the plan changed since you reviewed it" in refusal
    assert after.state == "awaiting_approval" and after.approver is None
    [entry] = _entries(current.id, "approval.refused")
    assert entry["reason"] == "plan_changed"
    assert (entry["reviewed_digest"], entry["plan_digest"]) == (stale, current.plan_digest)

    # The CLI refuses it too, before resuming anything, and shows the plan it would approve.
    token = _decision(env, current.id).token.get_secret_value()
    args = ["approve", str(current.id), "--token", token, "--approver", "ana"]
    result = CliRunner().invoke(_cli(), [*args, "--plan-digest", stale])
    assert result.exit_code == 2 and "the plan changed since you reviewed it" in result.output
    assert current.plan_digest in result.output and "raise-memory-limit" in result.output
    assert "patch-memory-limit" in result.output
    assert incidents.get(current.id).state == "awaiting_approval"
    assert len(_entries(current.id, "approval.refused")) == 2

    result = CliRunner().invoke(_cli(), [*args, "--plan-digest", current.plan_digest])
    assert result.exit_code == 0, result.output
    assert incidents.get(current.id).state == "approved"
    [approved] = _entries(current.id, "incident.approved")
    assert approved["plan_digest"] == approved["reviewed_digest"] == current.plan_digest


def test_a_rejection_needs_no_digest_and_records_the_plan(env) -> None:
    current = remediation.decide(_oom_incident(env).id, settings=env["settings"])
    after, refusal = remediation.apply_decision(
        current.id,
        _decision(env, current.id, verdict="reject", plan_digest="1" * 64),
        keys=env["keys"],
    )
    assert refusal is None and after.state == "rejected"
    [rejected] = _entries(current.id, "incident.rejected")
    assert rejected["plan_digest"] == current.plan_digest


def _cli():
    from neuralops.cli import app

    return app


# --- (c) an image outside allowed_images, even from a precedent -----------------------------


def _precedent(image: str) -> None:
    """A succeeded run of kill-long-running-queries on orders-db whose psql_image is the
    attacker's, marked as NeuralOps' own verified execution: the most trusted precedent."""
    runs.log_run(
        {
            "wpk_id": "kill-long-running-queries",
            "run_id": "precedent-1",
            "status": "succeeded",
            "duration_ms": 1200,
            "inputs": {
                "parameters": {**QUERIES, "namespace": "data", "psql_image": image},
                "alert": {"alertname": "PostgresLongRunningQueries", **ORDERS_DB},
            },
            "outputs": {"message": "done"},
        }
    )
    with session_scope() as session:
        session.execute(
            update(WorkflowRun)
            .where(WorkflowRun.run_id == "precedent-1")
            .values(provenance="neuralops", verified=True)
        )


@pytest.mark.parametrize("image", ["evil.example/psql:latest", "evil.example/psql:16"])
def test_an_attackers_image_from_a_precedent_never_runs(env, image: str) -> None:
    """Even from the most trusted precedent, a value the manifest refuses is left out (as a
    bad label is): the playbook's own default image runs, never the attacker's."""
    _precedent(image)
    asked = Incident(alert="PostgresLongRunningQueries", labels=ORDERS_DB)
    manifest = registry.registered_manifests()
    manifest = next(m for m in manifest if m.id == "kill-long-running-queries")
    assert "psql_image" not in remediation.precedent_parameters(manifest, asked)

    current = remediation.suggest(
        env["recommender"],
        incident=asked,
        playbook_id="kill-long-running-queries",
        parameters={"cluster": "orders-db", "database": "orders"},
    )
    current = _dry_run(env, current)
    assert current.state == "dry_run_passed", current.dry_run
    assert current.parameters["psql_image"] == "postgres:16.4-alpine"
    assert image not in json.dumps(current.dry_run)


@pytest.mark.parametrize("image", ["evil.example/psql:latest", "evil.example/psql:16"])
def test_an_attackers_image_stored_with_the_incident_fails_the_dry_run(env, image: str) -> None:
    """Whatever wrote the incident's parameters, the dry-run renders them through the same
    checks: the image is named in the failure and nothing reaches the cluster."""
    current = incidents.create(
        signal_id=None,
        playbook_id="kill-long-running-queries",
        recommendations=[],
        parameters={**QUERIES, "namespace": "data", "psql_image": image, "run_id": "x1"},
        actor="test",
    )
    current = _dry_run(env, current)
    assert current.state == "dry_run_failed" and current.plan_digest is None
    assert image in current.dry_run["reason"]
    with pytest.raises(incidents.IllegalTransition):
        remediation.decide(current.id, settings=env["settings"])


def test_an_allowed_image_from_a_precedent_passes(env) -> None:
    _precedent("postgres:17.2-alpine")
    current = remediation.suggest(
        env["recommender"],
        incident=Incident(alert="PostgresLongRunningQueries", labels=ORDERS_DB),
        playbook_id="kill-long-running-queries",
        parameters={"cluster": "orders-db", "database": "orders"},
    )
    current = _dry_run(env, current)
    assert current.state == "dry_run_passed", current.dry_run
    assert current.parameters["psql_image"] == "postgres:17.2-alpine"


# --- (d) an unconstrained string into args is refused at `playbook add` ---------------------


def test_playbook_add_refuses_an_unconstrained_string_in_args(env, tmp_path: Path) -> None:
    data = yaml.safe_load((registry.catalogue_dir() / "kill-long-running-queries.yaml").read_text())
    data["id"] = "run-any-sql"
    data["parameters"].append({"name": "sql", "type": "string", "description": "SQL to run."})
    container = data["steps"][0]["manifest"]["spec"]["template"]["spec"]["containers"][0]
    container["args"] = ['psql -c "{{ sql }}"']
    path = tmp_path / "run-any-sql.yaml"
    path.write_text(yaml.safe_dump(data))
    result = CliRunner().invoke(_cli(), ["playbook", "add", str(path)])
    assert result.exit_code != 0 and isinstance(result.exception, InvalidInput)  # rc 2 in main()
    output = " ".join(str(result.exception).split())
    assert "run-any-sql" in output and "run-terminate-job" in output and "'sql'" in output
    assert "add a pattern" in output
    with pytest.raises(NotFound):
        registry.get_playbook("run-any-sql")


def test_playbook_add_refuses_a_parameterised_image_without_allowed_images(
    env, tmp_path: Path
) -> None:
    data = yaml.safe_load((registry.catalogue_dir() / "kill-long-running-queries.yaml").read_text())
    data["id"] = "any-image"
    del data["allowed_images"]
    path = tmp_path / "any-image.yaml"
    path.write_text(yaml.safe_dump(data))
    with pytest.raises(InvalidInput, match=r"psql_image.*add allowed_images"):
        registry.add_playbooks(registry.load_manifests([path]))
    with pytest.raises(NotFound):
        registry.get_playbook("any-image")


# --- (e) a pattern-violating value for a constrained parameter ------------------------------

INJECTION = "x; rm -rf /"


def test_a_shell_injection_in_a_constrained_parameter_fails_the_dry_run(env) -> None:
    given = remediation.suggest(
        env["recommender"],
        incident=Incident(alert="PostgresTableBloat", labels=ORDERS_DB),
        playbook_id="vacuum-bloated-table",
        parameters={**QUERIES, "table": INJECTION},
    )
    assert given.state == "dry_run_failed"
    assert (
        "parameters.table" in given.dry_run["reason"]
        and "does not match" in given.dry_run["reason"]
    )

    stored = incidents.create(
        signal_id=None,
        playbook_id="vacuum-bloated-table",
        recommendations=[],
        parameters={**QUERIES, "namespace": "data", "table": INJECTION, "run_id": "x1"},
        actor="test",
    )
    stored = _dry_run(env, stored)
    assert stored.state == "dry_run_failed" and "does not match" in stored.dry_run["reason"]
    manifest = next(m for m in env["manifests"] if m.id == "vacuum-bloated-table")
    with pytest.raises(InvalidInput, match="does not match"):
        policy.render(manifest, {**QUERIES, "namespace": "data", "table": INJECTION})


# ==============================================================================================
# Points 5 and 7: redaction and hostile inputs to the CLI
# ==============================================================================================


NEURALOPS = str(Path(sys.executable).with_name("neuralops"))  # the installed console script


def neuralops(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [NEURALOPS, *args],
        capture_output=True,
        text=True,
        env={**os.environ, **(env or {})},
        timeout=120,
    )


def refused(result: subprocess.CompletedProcess, *must_say: str) -> str:
    """rc 2, one line of error (after the SQLite notice), no traceback; returns the line."""
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    lines = [line for line in result.stderr.splitlines() if "POSTGRES_DSN is not set" not in line]
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    for text in must_say:
        assert text in lines[0], lines[0]
    return lines[0]


def snapshot(folder: Path) -> dict[str, tuple[int, bytes | str]]:
    """Every entry of ``folder``: its kind and its bytes (or a link's target)."""
    found: dict[str, tuple[int, bytes | str]] = {}
    for entry in sorted(folder.iterdir()):
        mode = os.lstat(entry).st_mode
        if stat.S_ISLNK(mode):
            found[entry.name] = (stat.S_IFMT(mode), os.readlink(entry))
        elif stat.S_ISREG(mode):
            found[entry.name] = (stat.S_IFMT(mode), entry.read_bytes())
        else:
            found[entry.name] = (stat.S_IFMT(mode), b"")
    return found


CSV = "timestamp,value\n" + "".join(f"2024-01-01 00:{m:02d}:00,{m % 7}\n" for m in range(60))


# ----------------------------------------------------------------- detect-file: the output


@pytest.mark.slow
@pytest.mark.parametrize(
    "attack", ["/dev/null", "fifo", "symlink to a victim", "the input", "a hard link to the input"]
)
def test_detect_file_never_replaces_what_is_not_its_own_regular_output(
    tmp_path: Path, attack: str
) -> None:
    work = tmp_path / "work"
    work.mkdir()
    source = work / "in.csv"
    source.write_text(CSV)
    victim = tmp_path / "victim.conf"
    victim.write_text("do not touch\n")
    if attack == "/dev/null":
        target, expect = Path("/dev/null"), "is a character device"
    elif attack == "fifo":
        target, expect = work / "out.csv", "is a FIFO"
        os.mkfifo(target)
    elif attack == "symlink to a victim":
        target, expect = work / "out.csv", "is a symbolic link"
        target.symlink_to(victim)
    elif attack == "the input":
        target, expect = source, "is the input file"
    else:
        target, expect = work / "out.csv", "is the input file"
        os.link(source, target)
    before = snapshot(work)
    line = refused(neuralops("detect-file", str(source), str(target)), "OUTPUT_CSV", expect)
    assert "name a new file" in line or "name another file" in line  # the fix
    assert snapshot(work) == before  # nothing written, renamed or left behind
    assert victim.read_text() == "do not touch\n"
    assert stat.S_ISCHR(os.stat("/dev/null").st_mode)


@pytest.mark.slow
def test_detect_file_through_a_symlinked_input_does_not_overwrite_it(tmp_path: Path) -> None:
    source = tmp_path / "in.csv"
    source.write_text(CSV)
    (tmp_path / "alias.csv").symlink_to(source)
    refused(neuralops("detect-file", str(tmp_path / "alias.csv"), str(source)), "is the input file")
    assert source.read_text() == CSV


@pytest.mark.slow
def test_detect_file_non_utf8_input_is_one_line_naming_line_and_byte(tmp_path: Path) -> None:
    source = tmp_path / "latin1.csv"
    source.write_bytes(CSV.encode() + "2024-01-01 01:00:00,caf\xe9\n".encode("latin-1"))
    line = refused(
        neuralops("detect-file", str(source), str(tmp_path / "out.csv")),
        str(source),
        "line 62",
        f"byte {len(CSV.encode()) + 23} is not UTF-8",
    )
    assert "caf" not in line
    assert sorted(p.name for p in tmp_path.iterdir()) == ["latin1.csv"]


# -------------------------------------------------------------- db upgrade, several at once


@contextlib.contextmanager
def _empty_database(kind: str, tmp_path: Path) -> Iterator[tuple[URL, dict[str, str]]]:
    if kind == "sqlite":
        data = tmp_path / "data"
        url = URL.create("sqlite+pysqlite", database=str(data / "neuralops.db"))
        yield url, {"NEURALOPS_DATA_DIR": str(data)}
        return
    reason = _postgres_reachable()
    if reason:
        skip_or_fail(reason)
    name = f"neuralops_trust_{uuid.uuid4().hex[:10]}"
    _admin(f"CREATE DATABASE {name}")
    url = _admin_url().set(database=name)
    try:
        yield url, {"POSTGRES_DSN": url.render_as_string(hide_password=False)}
    finally:
        db.dispose_engines()
        _admin(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["sqlite", "postgresql"])
def test_four_db_upgrades_at_once_all_succeed(kind: str, tmp_path: Path) -> None:
    with _empty_database(kind, tmp_path) as (url, env):
        environ = {k: v for k, v in os.environ.items() if k != "POSTGRES_DSN"}
        procs = [
            subprocess.Popen(
                [NEURALOPS, "db", "upgrade"],
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
                env={**environ, **env},
            )
            for _ in range(4)
        ]
        results = [(p.wait(timeout=120), *p.communicate()) for p in procs]
        assert [rc for rc, _, _ in results] == [0, 0, 0, 0], [e for _, _, e in results]
        assert not any("Traceback" in stderr for _, _, stderr in results)
        assert db.current_revision(url) == db.head_revision()


# --------------------------------------------------------- playbook add never echoes a file


SECRET_LINE = "db_password: hunter2-ZQX\nroot:x:0:0:hunter2-ZQX:/root: [\n"


@pytest.mark.slow
@pytest.mark.parametrize(
    "target", ["/etc/passwd", "a broken yaml with a secret", "a text file", "a yaml list"]
)
def test_playbook_add_on_a_symlink_names_the_file_never_its_content(
    tmp_path: Path, target: str
) -> None:
    assert neuralops("db", "upgrade").returncode == 0
    link = tmp_path / "manifest.yaml"
    if target == "/etc/passwd":
        if not Path("/etc/passwd").is_file():
            pytest.skip("no /etc/passwd here")
        link.symlink_to("/etc/passwd")
        content = Path("/etc/passwd").read_text(errors="replace").splitlines()
    else:
        body = {
            "a broken yaml with a secret": SECRET_LINE,
            "a text file": "the password is hunter2-ZQX\nnothing else\n",
            "a yaml list": "- hunter2-ZQX\n- token: hunter2-ZQX\n",
        }[target]
        (tmp_path / "other.txt").write_text(body)
        link.symlink_to(tmp_path / "other.txt")
        content = body.splitlines()
    line = refused(neuralops("playbook", "add", str(link)), str(link))
    assert "hunter2" not in line
    for text in content:  # not one line of the file, nor a piece of one
        for piece in text.split(":"):
            if len(piece) >= 6:
                assert piece not in line.removeprefix(f"error: {link}"), piece
    assert registry.list_playbooks() == []  # nothing registered


@pytest.mark.slow
def test_a_broken_kubeconfig_is_located_never_quoted(tmp_path: Path) -> None:
    assert neuralops("db", "upgrade").returncode == 0
    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text("users:\n- name: admin\n  user: {token: hunter2-ZQX\n")
    install = ["connector", "install", "--cluster", "c1", "--kubeconfig", str(kubeconfig)]
    line = refused(
        neuralops(*install, "--vault-token", "unused"), "--kubeconfig", "not valid YAML at line"
    )
    assert "hunter2" not in line and "token" not in line


@pytest.mark.slow
def test_error_messages_with_brackets_print_verbatim(tmp_path: Path) -> None:
    assert neuralops("db", "upgrade").returncode == 0
    missing = tmp_path / "[a-z0-9]" / "[/b]" / "m.yaml"
    refused(neuralops("playbook", "add", str(missing)), f"{missing}: no such file")


# ------------------------------------------------ redaction: the kinds it used to miss


def _value(kind: str, where: str) -> str:
    digest = hashlib.sha256(f"{kind}/{where}".encode()).hexdigest()
    # mixed case and digits, as real tokens are
    return "".join(c.upper() if i % 3 == 0 else c for i, c in enumerate(digest)) + "Zq9"


def _digits(kind: str, where: str) -> str:
    return str(int(hashlib.sha256(f"{kind}/{where}#".encode()).hexdigest(), 16))[:13]


def plants(where: str) -> list[tuple[str, str]]:
    """(text to plant, the secret that must not be exported) for every kind issue 15 names."""
    v = {kind: _value(kind, where) for kind in ("gh", "pat", "slack", "sk", "pw", "p", "phrase")}
    slack = f"xoxb-{_digits('s1', where)}-{_digits('s2', where)}-{v['slack'][:24]}"
    return [
        (f"cloned with ghp_{v['gh'][:36]}", f"ghp_{v['gh'][:36]}"),
        (f"pushed with github_pat_{v['pat'][:22]}_{v['pat'][:59]} to origin", v["pat"][:22]),
        (f"notify {slack} done", slack),
        (f"embedded with sk-proj-{v['sk'][:48]} (ada)", v["sk"][:48]),
        (f"pg_dump --password {v['pw'][:14]} -h db", v["pw"][:14]),
        (f"mysql -u root -p{v['p'][:14]} app", v["p"][:14]),
        (f"mysql -u root -p {v['p'][14:28]} app", v["p"][14:28]),
        (f"the password is {v['phrase'][:12]}.", v["phrase"][:12]),
        (f"gpg --batch --passphrase {v['phrase'][12:26]}", v["phrase"][12:26]),
        (f'{{"passphrase": "{v["phrase"][26:40]}"}}', v["phrase"][26:40]),
    ]


def test_no_missed_secret_kind_reaches_the_export(database_url: URL, tmp_path: Path) -> None:
    must_go: list[str] = []
    stored = []
    for n in range(3):
        inputs_plants, outputs_plants, logs_plants = (
            plants(f"in{n}"),
            plants(f"out{n}"),
            plants(f"log{n}"),
        )
        passphrases = {
            "in": f"Pp{_value('key', f'in{n}')[:16]}",
            "out": f"Pp{_value('key', f'out{n}')[:16]}",
            "deep": f"Pp{_value('key', f'deep{n}')[:16]}",
        }
        must_go += [s for _, s in inputs_plants + outputs_plants + logs_plants]
        must_go += list(passphrases.values())
        stored.append(
            {
                "wpk_id": "restart-deployment",
                "run_id": f"trust-redact-{n}",
                "status": "succeeded",
                "duration_ms": 1200,
                "inputs": {
                    "notes": [text for text, _ in inputs_plants],
                    "passphrase": passphrases["in"],
                    "gpg": {"keyring": {"GPG_PASSPHRASE": passphrases["deep"]}},
                },
                "outputs": {f"step{i}": text for i, (text, _) in enumerate(outputs_plants)}
                | {"Passphrase": passphrases["out"]},
                "node_logs": [
                    {"name": f"step{i}", "status": "Completed", "message": text}
                    for i, (text, _) in enumerate(logs_plants)
                ],
            }
        )
    runs.log_runs(stored, url=database_url)
    out = tmp_path / "export.jsonl"
    result = etl.export_runs(out, url=database_url, full=True)
    assert result.rows == 3
    exported = out.read_text()
    assert len(exported.splitlines()) == 3
    leaked = [secret for secret in must_go if secret in exported]
    assert leaked == []
    records = [json.loads(line) for line in exported.splitlines()]
    assert all(r["node_logs"] and r["outputs"] for r in records)  # redacted, not dropped
    assert result.redactions.get("<API_TOKEN>", 0) >= 3 * 3 * 4
    assert result.redactions.get("<SECRET>", 0) >= 3 * 3 * 6
