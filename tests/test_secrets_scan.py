"""Secrets (issue 9, point 5): plant credentials everywhere a user or a cluster can put them,
run the pieces that produce output, and scan every output for them.

Planted: a Vault token in ``VAULT_TOKEN``; a password in a ``POSTGRES_DSN``-like string; an
AWS secret key, a bearer token and an API key in run inputs, outputs and node logs and in
signal labels (a series label and a label the caller adds); an approval JWT (accepted, and
one refused for another incident) and the same JWT pasted into a node log.

Outputs scanned: log records (caplog) and the logs the Prefect server holds; the CLI's
stdout and stderr (and the doctor's JSON report); Prefect events and artifacts, read back
through the API; the exported JSONL; the LanceDB rows; every audit entry; the API's answers.
The database itself keeps raw run history by design (tests/test_etl.py); redaction happens
on the way out, so the raw run is checked to hold the plants (else the test proves nothing).
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import uuid
from pathlib import Path

import numpy as np
import pytest
from conftest import api_headers, wait_until
from fastapi.testclient import TestClient
from sqlalchemy import select

from neuralops import etl, remediation, runs
from neuralops.api import create_app
from neuralops.approval import issue_dev_token, keys_from_settings
from neuralops.db import session_scope
from neuralops.db.models import AuditLog, InsightSignal
from neuralops.embedding import HashingEmbedder
from neuralops.mock_cluster import MockCluster
from neuralops.recommend import Recommender
from neuralops.settings import get_settings
from neuralops.vectorize import read_jsonl, vectorize_records
from neuralops.vectorstore import VectorStore

VAULT_TOKEN = "hvs.CAESIPlantedVaultTok3nZ9qX7wLmN4bV2cR8tY"
PG_PASSWORD = "PlantedPgPassw0rdQ7xK"
DSN = f"postgresql+psycopg://neuralops:{PG_PASSWORD}@127.0.0.1:1/neuralops"
AWS_SECRET = "wJalrXUtnFEMI/K7MDENG/bPxRfiCYPLANTED9KEY"
BEARER = "PlantedBearerTok3n0123456789abcdefXYZ"
API_KEY = "PlantedApiKey0123456789abcdefQRS"
PLANTED = {
    "vault token": VAULT_TOKEN,
    "postgres password": PG_PASSWORD,
    "aws secret key": AWS_SECRET,
    "bearer token": BEARER,
    "api key": API_KEY,
}
OOM_PARAMETERS = {"container": "api", "memory_limit": "2Gi"}


def _replay(path: Path) -> Path:
    """latency_p99 of payments-api spiking at the end; a series label carries a bearer token."""
    end = 1_795_000_000
    rng = np.random.default_rng(3)
    values = 0.2 + rng.normal(0, 0.01, 120)
    values[-3:] = 3.0
    lines = ["timestamp,__name__,namespace,deployment,auth,value"]
    for n, value in enumerate(values):
        stamp = end - 60 * (119 - n)
        lines.append(f"{stamp},latency_p99,payments,payments-api,Bearer {BEARER},{value:.6f}")
    path.write_text("\n".join(lines) + "\n")
    return path


def _planted_run(jwt: str) -> dict:
    return {
        "wpk_id": "restart-deployment",
        "run_id": "planted-run",
        "status": "failed",
        "duration_ms": 1200,
        "inputs": {
            "alert": {"alertname": "KubePodCrashLooping", "namespace": "payments"},
            "api_key": API_KEY,
            "headers": {"Authorization": f"Bearer {BEARER}"},
            "dsn": DSN,
            "env": f"AWS_SECRET_ACCESS_KEY={AWS_SECRET}",
        },
        "outputs": {
            "error": f"could not connect to {DSN}: connection refused",
            "aws": {"aws_secret_access_key": AWS_SECRET},
            "request": f"curl -H 'Authorization: Bearer {BEARER}' -H 'X-Api-Key: {API_KEY}'",
        },
        "node_logs": [
            {"name": "connect", "status": "failed", "message": f"psql {DSN} failed"},
            {"name": "approve", "status": "ok", "message": f"approved with token {jwt}"},
            {"name": "fetch", "status": "ok", "message": f"api_key={API_KEY} bearer {BEARER}"},
        ],
    }


def _cli(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "neuralops", *args],
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=120,
        cwd=Path(__file__).parents[1],
    )


@pytest.mark.slow
def test_no_planted_secret_reaches_any_output(
    prefect_server,
    signed_catalogue: dict,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    from prefect.client.orchestration import get_client
    from prefect.events.filters import EventFilter, EventNameFilter, EventResourceFilter

    from flows import detection as detection_flows

    caplog.set_level(logging.DEBUG)
    monkeypatch.setenv("VAULT_TOKEN", VAULT_TOKEN)
    monkeypatch.setenv("NEURALOPS_REPLAY_FILE", str(_replay(tmp_path / "metrics.csv")))
    monkeypatch.setenv("NEURALOPS_EMBEDDER", "hashing")
    get_settings.cache_clear()
    settings = get_settings()
    outputs: dict[str, str] = {}

    # Detection through Prefect: a signal whose labels carry an API key and a bearer token.
    result = detection_flows.analyze(
        query="latency_p99",
        lookback="2h",
        labels={
            "symptom": "oom-killed",
            "api_key": API_KEY,
            "authorization": f"Bearer {BEARER}",
        },
    )
    assert result["signal_id"] and result["new_signal"], result
    signal_id = uuid.UUID(result["signal_id"])
    outputs["analyze flow result"] = json.dumps(result)

    # Remediation: the incident, a token for another incident (refused), the right one.
    recommender = Recommender(
        VectorStore(str(tmp_path / "lancedb-rec")),
        HashingEmbedder(),
        signed_catalogue["manifests"],
    )
    current = remediation.suggest(
        recommender,
        signal_id=str(signal_id),
        playbook_id="raise-memory-limit",
        parameters=OOM_PARAMETERS,
    )
    cluster = MockCluster(tmp_path / "mock-cluster.json")
    public_key = signed_catalogue["signer"].public_key_pem()
    current = remediation.dry_run(current.id, public_key_pem=public_key, runtime=cluster)
    assert current.state == "dry_run_passed", current.dry_run
    current = remediation.decide(current.id, settings=settings)
    keys = keys_from_settings(settings)

    def token(incident_id) -> str:
        return issue_dev_token(
            incident_id=incident_id,
            approver="ana",
            ttl_s=600,
            private_key_path=signed_catalogue["private_key"],
        )

    wrong = token(uuid.uuid4())
    refused, why = remediation.apply_decision(
        current.id,
        remediation.ApprovalDecision(decision="approve", approver="ana", token=wrong),
        keys=keys,
    )
    assert why and refused.state == "awaiting_approval"
    jwt = token(current.id)
    current, why = remediation.apply_decision(
        current.id,
        remediation.ApprovalDecision(decision="approve", approver="ana", token=jwt),
        keys=keys,
    )
    assert why is None and current.state == "approved"
    current = remediation.execute(current.id, public_key_pem=public_key, runtime=cluster)
    assert current.state == "succeeded"
    planted = PLANTED | {"approval JWT": jwt, "refused JWT": wrong}
    planted |= {"approval JWT signature": jwt.rsplit(".", 1)[1]}

    # A run logged with credentials in inputs, outputs and node logs (the run logger).
    runs.log_run(_planted_run(jwt))
    raw = runs.get_run("planted-run")
    stored = json.dumps([raw.inputs, raw.outputs, raw.node_logs])
    for kind in ("postgres password", "aws secret key", "bearer token", "api key"):
        assert planted[kind] in stored, f"{kind} was not planted"
    assert jwt in stored

    # Export (JSONL) and vectorize (LanceDB).
    exported = etl.export_runs(tmp_path / "runs.jsonl")
    assert exported.rows >= 3  # the planted run, the analyze flow run, the remediation run
    outputs["exported JSONL"] = (tmp_path / "runs.jsonl").read_text()
    store = VectorStore(str(tmp_path / "lancedb"))
    vectorized = vectorize_records(read_jsonl(tmp_path / "runs.jsonl"), store, HashingEmbedder())
    assert vectorized.written == exported.rows
    import lancedb

    table = lancedb.connect(str(tmp_path / "lancedb")).open_table("runs").to_arrow()
    outputs["LanceDB rows"] = json.dumps(table.drop_columns(["vector"]).to_pylist(), default=str)

    # Audit entries, the stored signal, and what the API answers about it.
    with session_scope() as session:
        entries = session.scalars(select(AuditLog).order_by(AuditLog.seq)).all()
        outputs["audit entries"] = json.dumps(
            [[e.actor, e.action, e.subject, e.payload] for e in entries], default=str
        )
        row = session.get(InsightSignal, signal_id)
        outputs["signal row"] = json.dumps([row.labels, row.hint, row.correlated], default=str)
    assert "approval.refused" in outputs["audit entries"]
    assert "incident.approved" in outputs["audit entries"]
    api = TestClient(create_app(), headers=api_headers())
    outputs["GET /signals"] = api.get("/signals").text
    outputs["POST /recommend"] = api.post("/recommend", json={"signal_id": str(signal_id)}).text
    outputs["POST /runs echo"] = api.post(
        "/runs", json=_planted_run(jwt) | {"duration_ms": API_KEY}
    ).text

    # Prefect: the signal's event, every artifact, the flow-run logs.
    with get_client(sync_client=True) as client:
        wanted = EventFilter(
            event=EventNameFilter(name=["neuralops.signal.detected"]),
            resource=EventResourceFilter(id=[f"neuralops.signal.{signal_id}"]),
        )
        events = wait_until(
            lambda: client.read_events(wanted, limit=10).events, timeout=30, what="signal event"
        )
        outputs["Prefect signal event"] = json.dumps(
            [e.model_dump(mode="json") for e in events], default=str
        )
        ours = EventFilter(event=EventNameFilter(prefix=["neuralops."]))
        outputs["Prefect events"] = json.dumps(
            [
                e.model_dump(mode="json")
                for wanted in (ours, EventFilter())  # NeuralOps' own, then the latest of all
                for e in client.read_events(wanted, limit=50).events
            ]
        )
        outputs["Prefect artifacts"] = json.dumps(
            client.request("POST", "/artifacts/filter", json={"limit": 200}).json()
        )
        outputs["Prefect logs"] = json.dumps(
            client.request("POST", "/logs/filter", json={"limit": 200}).json()
        )
    assert "api_key" in outputs["Prefect signal event"]  # the label is there, its value not

    # The CLI: the database unreachable through a DSN with a password, a Vault token set.
    cli_env = {"NEURALOPS_DATA_DIR": str(settings.data_dir), "VAULT_TOKEN": VAULT_TOKEN}
    listed = _cli("signals", "list", env=cli_env)
    assert listed.returncode == 0, listed.stderr
    outputs["CLI signals list"] = listed.stdout + listed.stderr
    broken = _cli("playbook", "list", env=cli_env | {"POSTGRES_DSN": DSN})
    assert broken.returncode == 2 and "cannot reach the database" in broken.stderr
    outputs["CLI stderr (database down)"] = broken.stdout + broken.stderr
    report = tmp_path / "prereqs.json"
    doctor = _cli(
        "doctor",
        "--json-out",
        str(report),
        env=cli_env | {"POSTGRES_DSN": DSN, "VAULT_ADDR": "http://127.0.0.1:1"},
    )
    outputs["CLI doctor"] = doctor.stdout + doctor.stderr + report.read_text()

    outputs["caplog"] = "\n".join(
        f"{r.name} {r.getMessage()} {r.args!r} {r.exc_text or ''}" for r in caplog.records
    )
    outputs["caplog text"] = caplog.text

    leaks = [
        f"{kind} in {where}"
        for where, text in outputs.items()
        for kind, value in planted.items()
        if value in text
    ]
    assert not leaks, "planted secrets leaked:\n" + "\n".join(leaks)
