"""Signed execution through cluster connectors (issue 7, items 2 and 5): two process work pools
``cluster-edge-a`` and ``cluster-edge-b`` stand in for two clusters, each served by a REAL
Prefect worker (a subprocess) whose NEURALOPS_CLUSTER names its cluster and whose kubeconfig
points at its own FAKE Kubernetes API server (tests/fake_kube.py: no cluster can run here).

A trigger signed for edge-a runs on edge-a's worker and reaches edge-a's API server; sent to
edge-b's deployment it is refused there (``wrong_cluster``) and edge-b's API server sees
nothing; replayed it is refused (``replayed``); tampered it is refused (``bad_signature``).
The remediate flow, given ``cluster="edge-a"``, executes through edge-a's worker.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import yaml
from conftest import ENV_NAMES, deployment_exists, wait_until
from fake_kube import FakeKubeAPI, FakeKubeServer
from sqlalchemy import select

from neuralops import audit, db, incidents, registry, runs
from neuralops.db import session_scope
from neuralops.db.models import AuditLog, Cluster
from neuralops.manifest import load_manifest_file
from neuralops.policy import render
from neuralops.settings import get_settings
from neuralops.signing import LocalKeySigner, dev_key_path
from neuralops.triggers import SignedTrigger, new_trigger, sign_trigger

pytestmark = pytest.mark.slow
REPO = Path(__file__).resolve().parents[1]
CLUSTERS = ("edge-a", "edge-b")
PARAMETERS = {
    "namespace": "payments",
    "deployment": "payments-api",
    "container": "api",
    "memory_limit": "2Gi",
}
APPS = "apps/v1"


def payments_api() -> dict[str, Any]:
    return {
        "apiVersion": APPS,
        "kind": "Deployment",
        "metadata": {"name": "payments-api", "namespace": "payments"},
        "spec": {
            "replicas": 3,
            "template": {
                "metadata": {"labels": {"app": "payments-api"}},
                "spec": {
                    "containers": [
                        {
                            "name": "api",
                            "image": "registry.internal/payments/api:1.4.2",
                            "resources": {"limits": {"memory": "1Gi", "cpu": "1"}},
                        }
                    ]
                },
            },
        },
    }


def memory_limit(fake: FakeKubeAPI) -> str:
    obj = fake.object(APPS, "deployments", "payments", "payments-api")
    return obj["spec"]["template"]["spec"]["containers"][0]["resources"]["limits"]["memory"]


def write_kubeconfig(path: Path, server: str) -> Path:
    path.write_text(
        yaml.safe_dump(
            {
                "apiVersion": "v1",
                "kind": "Config",
                "clusters": [{"name": "fake", "cluster": {"server": server}}],
                "users": [{"name": "nobody", "user": {}}],
                "contexts": [{"name": "fake", "context": {"cluster": "fake", "user": "nobody"}}],
                "current-context": "fake",
            }
        )
    )
    return path


def _worker_online(pool: str) -> bool:
    from prefect.client.orchestration import get_client

    with get_client(sync_client=True) as client:
        return any(
            w.status == "ONLINE"
            for w in client.read_workers_for_work_pool(pool, limit=10, offset=0)
        )


@pytest.fixture(scope="module")
def edges(
    prefect_server: None, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[dict[str, Any]]:
    """Two clusters: a fake API server, a kubeconfig, a work pool, a deployment of
    ``execute-playbook`` and a real worker each; one data dir (database, signing key)."""
    from prefect.settings import PREFECT_API_URL

    from flows.connector import execute_playbook
    from tasks.clusters import ensure_work_pool

    home = tmp_path_factory.mktemp("connectors")
    data_dir = home / "data"
    saved = {name: os.environ.get(name) for name in ("NEURALOPS_DATA_DIR",)}
    os.environ["NEURALOPS_DATA_DIR"] = str(data_dir)
    get_settings.cache_clear()
    settings = get_settings()
    db.upgrade(settings.database_url)
    signer = LocalKeySigner(dev_key_path(settings))  # the key the connectors trust
    signer.public_key_pem()
    now = datetime.now(UTC)
    with session_scope(settings.database_url) as session:
        for name in CLUSTERS:
            session.add(
                Cluster(
                    name=name,
                    work_pool=f"cluster-{name}",
                    registered_at=now,
                    last_heartbeat=now,
                    status="healthy",
                    labels={"site": name},
                )
            )
    servers = {name: FakeKubeServer() for name in CLUSTERS}
    fakes = {name: server.__enter__() for name, server in servers.items()}
    base_env = {k: v for k, v in os.environ.items() if k not in ENV_NAMES}
    workers: list[subprocess.Popen] = []
    logs = []
    try:
        for name in CLUSTERS:
            pool = f"cluster-{name}"
            ensure_work_pool(pool)
            execute_playbook.to_deployment(
                name=pool, work_pool_name=pool, job_variables={"working_dir": str(REPO)}
            ).apply()
            kubeconfig = write_kubeconfig(home / f"{name}.kubeconfig", fakes[name].url)
            log = (home / f"worker-{name}.log").open("wb")
            logs.append(log)
            env = base_env | {
                "PREFECT_API_URL": PREFECT_API_URL.value(),
                "PREFECT_HOME": str(home / f"prefect-{name}"),
                "PREFECT_WORKER_QUERY_SECONDS": "1",
                "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
                "NEURALOPS_CLUSTER": name,
                "NEURALOPS_KUBECONFIG": str(kubeconfig),
                "NEURALOPS_DATA_DIR": str(data_dir),
                "PYTHONPATH": str(REPO),
            }
            workers.append(
                subprocess.Popen(
                    [
                        sys.executable,
                        "-m",
                        "prefect",
                        "worker",
                        "start",
                        "--pool",
                        pool,
                        "--type",
                        "process",
                        "--name",
                        f"connector-{name}",
                    ],
                    cwd=REPO,
                    env=env,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,
                )
            )
        for name in CLUSTERS:
            wait_until(lambda n=name: deployment_exists(f"execute-playbook/cluster-{n}"))
            wait_until(
                lambda n=name: _worker_online(f"cluster-{n}"),
                timeout=120,
                what=f"the worker of cluster-{name}",
            )
        yield {"data_dir": data_dir, "fakes": fakes, "signer": signer, "home": home}
    finally:
        for worker in workers:
            os.killpg(worker.pid, signal.SIGTERM)
        for worker in workers:
            try:
                worker.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(worker.pid, signal.SIGKILL)
                worker.wait(10)
        for log in logs:
            log.close()
        for server in servers.values():
            server.__exit__(None, None, None)
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
        get_settings.cache_clear()
        db.dispose_engines()


@pytest.fixture
def world(edges: dict[str, Any], monkeypatch: pytest.MonkeyPatch) -> Iterator[dict[str, Any]]:
    """The test process on the connectors' data dir; each fake cluster holds payments-api
    (1Gi) and has seen no request."""
    monkeypatch.setenv("NEURALOPS_DATA_DIR", str(edges["data_dir"]))
    monkeypatch.setenv("NEURALOPS_EMBEDDER", "hashing")
    monkeypatch.setenv("NEURALOPS_SETTLE_S", "0")
    get_settings.cache_clear()
    for fake in edges["fakes"].values():
        with fake.lock:
            fake.objects.clear()
            fake.requests.clear()
        fake.put(payments_api())
    yield edges
    get_settings.cache_clear()
    db.dispose_engines()


def signed_for(cluster: str, signer: LocalKeySigner, **parameters: str) -> SignedTrigger:
    manifest = load_manifest_file(registry.catalogue_dir() / "raise-memory-limit.yaml")
    rendered = render(manifest, PARAMETERS | parameters)
    return sign_trigger(
        new_trigger(
            cluster=cluster,
            incident_id=uuid.uuid4(),
            playbook_id=manifest.id,
            playbook_sha256=manifest.sha256(),
            parameters=rendered.parameters,
            steps=rendered.steps,
        ),
        signer,
    )


def send(cluster: str, signed: SignedTrigger | dict[str, Any]):
    """Run execute-playbook on ``cluster``'s deployment and wait: the finished flow run."""
    from prefect.deployments import run_deployment

    payload = signed.model_dump(mode="json") if isinstance(signed, SignedTrigger) else signed
    flow_run = run_deployment(
        f"execute-playbook/cluster-{cluster}",
        parameters={"trigger": payload},
        timeout=120,
        poll_interval=1,
        as_subflow=False,
    )
    assert flow_run.state is not None and flow_run.state.is_final(), flow_run.state
    return flow_run


def refusals(nonce: str) -> list[dict[str, Any]]:
    with session_scope() as session:
        entries = session.scalars(
            select(AuditLog).where(AuditLog.action == "trigger.refused").order_by(AuditLog.seq)
        ).all()
        return [e.payload for e in entries if e.payload.get("nonce") == nonce]


def test_a_trigger_runs_on_its_cluster_only_and_only_once(world: dict[str, Any]) -> None:
    fake_a, fake_b = world["fakes"]["edge-a"], world["fakes"]["edge-b"]
    signed = signed_for("edge-a", world["signer"])

    # Sent to edge-b's deployment, edge-b's worker runs it and refuses it: not its cluster.
    refused = send("edge-b", signed)
    assert refused.state.is_failed()
    assert "wrong_cluster" in (refused.state.message or "")
    assert fake_b.requests == []  # edge-b's API server saw nothing at all
    assert [p["reason"] for p in refusals(signed.trigger.nonce)] == ["wrong_cluster"]

    # Sent to edge-a's: accepted, server-side dry-run, then applied there.
    ran = send("edge-a", signed)
    assert ran.state.is_completed(), ran.state.message
    answer = ran.state.result()
    assert answer["ok"] is True and answer["stage"] == "apply"
    assert answer["cluster"] == "edge-a" and answer["nonce"] == signed.trigger.nonce
    assert [r["status"] for r in answer["results"]] == ["Completed"] * len(answer["results"])
    key = "Deployment/payments/payments-api"
    pre = answer["pre_state"][key]["spec"]["template"]["spec"]["containers"][0]
    post = answer["post_state"][key]["spec"]["template"]["spec"]["containers"][0]
    assert pre["resources"]["limits"]["memory"] == "1Gi"
    assert post["resources"]["limits"]["memory"] == "2Gi"
    assert memory_limit(fake_a) == "2Gi" and memory_limit(fake_b) == "1Gi"
    mutations = fake_a.mutations()
    assert mutations and mutations[0].dry_run  # the dry-run came first
    assert any(not m.dry_run for m in mutations)

    # Replayed, even to the right cluster: refused before anything reaches the API server.
    before = len(fake_a.mutations())
    replayed = send("edge-a", signed)
    assert replayed.state.is_failed() and "replayed" in (replayed.state.message or "")
    assert len(fake_a.mutations()) == before
    assert [p["reason"] for p in refusals(signed.trigger.nonce)] == ["wrong_cluster", "replayed"]
    assert fake_b.requests == []


def test_a_tampered_trigger_is_refused(world: dict[str, Any]) -> None:
    fake_a = world["fakes"]["edge-a"]
    signed = signed_for("edge-a", world["signer"])
    data = signed.model_dump(mode="json")
    # Raise the memory limit to 64Gi in the signed steps without re-signing.
    other = signed_for("edge-a", world["signer"], memory_limit="64Gi").trigger
    data["trigger"]["steps"] = other.model_dump(mode="json")["steps"]
    refused = send("edge-a", data)
    assert refused.state.is_failed() and "bad_signature" in (refused.state.message or "")
    assert fake_a.mutations() == []
    assert memory_limit(fake_a) == "1Gi"

    # Signed by another key (a compromised signer the connector does not trust): refused.
    rogue = LocalKeySigner(world["home"] / "rogue.pem")
    refused = send("edge-a", signed_for("edge-a", rogue))
    assert refused.state.is_failed() and "bad_signature" in (refused.state.message or "")
    assert fake_a.mutations() == []


def test_remediate_on_a_cluster_executes_through_its_connector(world: dict[str, Any]) -> None:
    from test_remediate_flow import decision, paused_incident, resume, start

    from neuralops.demo import demo_signals
    from neuralops.registry import add_playbooks, catalogue_dir, load_manifests
    from neuralops.signals import record_signals
    from neuralops.signing import sign_playbook

    fake_a, fake_b = world["fakes"]["edge-a"], world["fakes"]["edge-b"]
    settings = get_settings()
    manifests = load_manifests([catalogue_dir()])
    add_playbooks(manifests)
    for manifest in manifests:
        sign_playbook(manifest.id, world["signer"])
    candidates, cooldowns = demo_signals(datetime.now(UTC))
    signals = {r.signal.rule: r.signal for r in record_signals(candidates, cooldowns)}
    from neuralops.approval import dev_keypair

    private, _ = dev_keypair(settings.data_dir)

    thread, box = start(
        signal_id=str(signals["oom-kills"].id), parameters=PARAMETERS, cluster="edge-a"
    )
    current = paused_incident()
    assert current.cluster == "edge-a"
    assert current.dry_run["ok"] and current.dry_run["runtime"] == "connector:edge-a"
    assert "in the connector" in current.dry_run["server_dry_run_note"]
    assert fake_a.mutations() == []  # nothing reaches the cluster before approval
    resume(current.flow_run_id, decision({"private_key": private}, current.id))
    thread.join(180)
    assert "error" not in box, box.get("error")
    assert box["result"]["state"] == "succeeded", incidents.get(current.id).model_dump()
    final = incidents.get(current.id)
    key = "Deployment/payments/payments-api"
    container = final.post_state[key]["spec"]["template"]["spec"]["containers"][0]
    assert container["resources"]["limits"]["memory"] == "2Gi"
    assert memory_limit(fake_a) == "2Gi" and fake_b.requests == []
    run = runs.get_run(final.run_id)
    assert run.status == "succeeded" and run.cluster == "edge-a"
    assert run.outputs["runtime"] == "connector:edge-a"
    trail = [e.action for e in audit.recent(subject=incidents.subject(current.id))]
    assert "trigger.accepted" in trail and "incident.succeeded" in trail
    assert audit.verify().ok
