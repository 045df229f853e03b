"""The Kubernetes runtime (issue 7, items 2 and 5) through the real ``kubernetes`` client
against FakeKubeAPI, a FAKE API server (tests/fake_kube.py): no cluster can run here."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from fake_kube import FakeKubeAPI, FakeKubeServer
from kubernetes import client

from neuralops import registry
from neuralops.errors import ConfigError
from neuralops.kube import (
    FIELD_MANAGER,
    RESTARTED_AT,
    KubernetesRuntime,
    condition_met,
    runtime_from_kubeconfig,
)
from neuralops.manifest import load_manifest_file
from neuralops.policy import RenderedStep, render, resolve_parameters

MEMORY = {"namespace": "payments", "deployment": "payments-api", "container": "api"}
DEPLOY_KEY = "Deployment/payments/payments-api"


@pytest.fixture
def fake_kube_server() -> Iterator[FakeKubeAPI]:
    """The FAKE Kubernetes API (tests/fake_kube.py), started on a free port."""
    with FakeKubeServer() as fake:
        yield fake


@pytest.fixture
def fake_kube(fake_kube_server: FakeKubeAPI) -> Iterator[client.ApiClient]:
    """A real ``kubernetes`` ApiClient configured for the fake server (no auth)."""
    configuration = client.Configuration(host=fake_kube_server.url)
    with client.ApiClient(configuration) as api:
        yield api


@pytest.fixture
def runtime(fake_kube: client.ApiClient) -> KubernetesRuntime:
    return KubernetesRuntime(fake_kube, poll_s=0.02)


def rendered_steps(playbook: str, **parameters: Any) -> list[RenderedStep]:
    manifest = load_manifest_file(registry.catalogue_dir() / f"{playbook}.yaml")
    return render(manifest, resolve_parameters(manifest, parameters)).steps


def deployment(replicas: int = 3) -> dict[str, Any]:
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": "payments-api", "namespace": "payments"},
        "spec": {
            "replicas": replicas,
            "template": {
                "metadata": {"labels": {"app": "payments-api"}},
                "spec": {
                    "containers": [
                        {
                            "name": "api",
                            "image": "registry.internal/payments/api:1.4.2",
                            "resources": {"limits": {"memory": "1Gi", "cpu": "1"}},
                        },
                        {"name": "envoy", "image": "envoyproxy/envoy:v1.30.1"},
                    ]
                },
            },
        },
    }


def step(name: str, action: str, kind: str, target: str, namespace: str | None = None, **more):
    return RenderedStep(
        name=name,
        description=name,
        action=action,
        target={"kind": kind, "name": target, "namespace": namespace},
        **more,
    )


def assert_dry_run_before_each_real_call(fake: FakeKubeAPI) -> None:
    mutations = fake.mutations()
    assert mutations, "no mutating request reached the fake"
    for index, request in enumerate(mutations):
        if request.dry_run:
            continue
        previous = mutations[index - 1] if index else None
        assert previous is not None and previous.dry_run, f"{request.path} ran without a dry-run"
        assert (previous.method, previous.path, previous.body) == (
            request.method,
            request.path,
            request.body,
        )


def test_raise_memory_limit_patches_after_a_dry_run(
    runtime: KubernetesRuntime, fake_kube_server: FakeKubeAPI
) -> None:
    fake_kube_server.put(deployment())
    steps = rendered_steps("raise-memory-limit", **MEMORY, memory_limit="2Gi")
    pre = runtime.snapshot(steps)
    results = runtime.execute(steps)
    assert [(r.name, r.status) for r in results] == [
        ("patch-memory-limit", "Completed"),
        ("wait-rollout", "Completed"),
    ], results
    assert results[0].target == DEPLOY_KEY
    post = runtime.snapshot(steps)

    containers = post[DEPLOY_KEY]["spec"]["template"]["spec"]["containers"]
    api = next(c for c in containers if c["name"] == "api")
    assert api["resources"]["limits"] == {"memory": "2Gi", "cpu": "1"}
    assert api["image"] == "registry.internal/payments/api:1.4.2"  # merged by name
    assert [c["name"] for c in containers] == ["api", "envoy"]
    assert (
        pre[DEPLOY_KEY]["spec"]["template"]["spec"]["containers"][0]["resources"]["limits"][
            "memory"
        ]
        == "1Gi"
    )
    assert (
        post[DEPLOY_KEY]["metadata"]["generation"] == pre[DEPLOY_KEY]["metadata"]["generation"] + 1
    )

    mutations = fake_kube_server.mutations()
    assert [(m.method, m.dry_run) for m in mutations] == [("PATCH", True), ("PATCH", False)]
    assert mutations[0].path == "/apis/apps/v1/namespaces/payments/deployments/payments-api"
    assert mutations[0].content_type == "application/strategic-merge-patch+json"
    assert_dry_run_before_each_real_call(fake_kube_server)


def test_dry_run_changes_nothing(runtime: KubernetesRuntime, fake_kube_server: FakeKubeAPI) -> None:
    fake_kube_server.put(deployment())
    steps = rendered_steps("raise-memory-limit", **MEMORY, memory_limit="2Gi")
    before = runtime.snapshot(steps)
    results = runtime.execute(steps, dry_run=True)
    assert [r.status for r in results] == ["Completed", "Completed"]
    assert "dry-run" in results[0].message and "not waited" in results[1].message
    assert runtime.snapshot(steps) == before
    assert all(m.dry_run for m in fake_kube_server.mutations())
    # Applying a Job in a dry-run does not create it.
    job_steps = rendered_steps(
        "requeue-failed-job",
        namespace="batch",
        job_name="settlement",
        image="registry.internal/payments/settlement-batch:2.14.1",
        run_id="inc42",
    )
    assert [r.status for r in runtime.execute(job_steps, dry_run=True)] == ["Completed"] * 2
    assert fake_kube_server.object("batch/v1", "jobs", "batch", "settlement-retry-inc42") is None


def test_requeue_failed_job_server_side_applies_and_waits(
    runtime: KubernetesRuntime, fake_kube_server: FakeKubeAPI
) -> None:
    steps = rendered_steps(
        "requeue-failed-job",
        namespace="batch",
        job_name="settlement",
        image="registry.internal/payments/settlement-batch:2.14.1",
        run_id="inc42",
    )
    assert runtime.snapshot(steps) == {"Job/batch/settlement-retry-inc42": None}
    results = runtime.execute(steps)
    assert [r.status for r in results] == ["Completed", "Completed"], results
    assert "Complete" in results[1].message
    job = fake_kube_server.object("batch/v1", "jobs", "batch", "settlement-retry-inc42")
    assert job is not None
    assert job["spec"]["template"]["spec"]["containers"][0]["image"].endswith(":2.14.1")
    assert job["metadata"]["labels"]["neuralops.io/retry-of"] == "settlement"

    applies = fake_kube_server.mutations()
    assert [(m.method, m.dry_run) for m in applies] == [("PATCH", True), ("PATCH", False)]
    for request in applies:
        assert request.content_type == "application/apply-patch+yaml"
        assert request.query["fieldManager"] == FIELD_MANAGER
        assert request.path == "/apis/batch/v1/namespaces/batch/jobs/settlement-retry-inc42"
    assert_dry_run_before_each_real_call(fake_kube_server)
    post = runtime.snapshot(steps)["Job/batch/settlement-retry-inc42"]
    assert post["status"]["conditions"][0]["type"] == "Complete"


def test_a_failed_job_fails_the_wait(
    runtime: KubernetesRuntime, fake_kube_server: FakeKubeAPI
) -> None:
    fake_kube_server.failing_jobs.add("neuralops-verify-backup-inc7")
    steps = rendered_steps(
        "verify-postgres-backup",
        namespace="db",
        cluster="orders-db",
        destination_path="s3://acme-pg-backups/orders-db",
        credentials_secret="backup-creds",
        run_id="inc7",
    )
    results = runtime.execute(steps)
    assert [r.status for r in results] == ["Completed", "Failed"]
    assert "BackoffLimitExceeded" in results[1].message


def test_a_failing_step_stops_the_rest(
    runtime: KubernetesRuntime, fake_kube_server: FakeKubeAPI
) -> None:
    # No Deployment payments-api exists: the patch's dry-run gets a 404.
    steps = [
        *rendered_steps("raise-memory-limit", **MEMORY, memory_limit="2Gi"),
        step("scale-up", "scale", "Deployment", "payments-api", "payments", replicas=5),
    ]
    results = runtime.execute(steps)
    assert [r.status for r in results] == ["Failed", "Skipped", "Skipped"]
    assert "404" in results[0].message and "not found" in results[0].message
    assert all(m.dry_run for m in fake_kube_server.mutations())
    assert len(fake_kube_server.mutations()) == 1


def test_the_other_actions(runtime: KubernetesRuntime, fake_kube_server: FakeKubeAPI) -> None:
    fake_kube_server.put(deployment(replicas=2))
    fake_kube_server.put(
        {"apiVersion": "v1", "kind": "Node", "metadata": {"name": "node-1"}, "spec": {}}
    )
    for name, owner in (("web-1", "ReplicaSet"), ("agent-1", "DaemonSet")):
        fake_kube_server.put(
            {
                "apiVersion": "v1",
                "kind": "Pod",
                "metadata": {
                    "name": name,
                    "namespace": "payments",
                    "ownerReferences": [{"kind": owner, "name": "x"}],
                },
                "spec": {"nodeName": "node-1"},
            }
        )
    fake_kube_server.put(
        {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {"name": "stuck-0", "namespace": "payments"},
            "spec": {"nodeName": "node-2"},
        }
    )
    steps = [
        step("scale-up", "scale", "Deployment", "payments-api", "payments", replicas=4),
        step("restart", "restart", "Deployment", "payments-api", "payments"),
        step(
            "rollout",
            "wait",
            "Deployment",
            "payments-api",
            "payments",
            condition="rollout-complete",
        ),
        step("cordon", "cordon", "Node", "node-1"),
        step("drain", "drain", "Node", "node-1"),
        step("drained", "wait", "Node", "node-1", condition="node-drained"),
        step("delete-pod", "delete", "Pod", "stuck-0", "payments"),
        step("delete-again", "delete", "Pod", "stuck-0", "payments"),
        step("uncordon", "uncordon", "Node", "node-1"),
        step("schedulable", "wait", "Node", "node-1", condition="node-schedulable"),
    ]
    results = runtime.execute(steps)
    assert [r.status for r in results] == ["Completed"] * len(steps), results
    obj = fake_kube_server.object("apps/v1", "deployments", "payments", "payments-api")
    assert obj is not None and obj["spec"]["replicas"] == 4
    assert RESTARTED_AT in obj["spec"]["template"]["metadata"]["annotations"]
    assert obj["spec"]["template"]["metadata"]["labels"] == {"app": "payments-api"}
    node = fake_kube_server.object("v1", "nodes", None, "node-1")
    assert node is not None and node["spec"]["unschedulable"] is False
    assert fake_kube_server.object("v1", "pods", "payments", "web-1") is None  # evicted
    assert fake_kube_server.object("v1", "pods", "payments", "agent-1") is not None  # DaemonSet
    assert fake_kube_server.object("v1", "pods", "payments", "stuck-0") is None
    assert "1 pods evicted" in results[4].message
    assert "already absent" in results[7].message
    evictions = [m for m in fake_kube_server.mutations() if m.path.endswith("/eviction")]
    assert [m.dry_run for m in evictions] == [True, False]
    assert_dry_run_before_each_real_call(fake_kube_server)


def test_rollback_is_refused_before_anything_runs(
    runtime: KubernetesRuntime, fake_kube_server: FakeKubeAPI
) -> None:
    fake_kube_server.put(deployment())
    steps = [
        step("scale-up", "scale", "Deployment", "payments-api", "payments", replicas=4),
        step("undo", "rollback", "Deployment", "payments-api", "payments"),
    ]
    results = runtime.execute(steps)
    assert [r.status for r in results] == ["Skipped", "Failed"]
    assert "not supported" in results[1].message and "client-side" in results[1].message
    assert fake_kube_server.requests == []


def test_a_wait_times_out(fake_kube: client.ApiClient, fake_kube_server: FakeKubeAPI) -> None:
    fake_kube_server.settle = False  # no controller: the rollout never completes
    fake_kube_server.put(deployment())
    runtime = KubernetesRuntime(fake_kube, poll_s=0.05)
    steps = [
        step("restart", "restart", "Deployment", "payments-api", "payments"),
        step(
            "rollout",
            "wait",
            "Deployment",
            "payments-api",
            "payments",
            condition="rollout-complete",
            timeout_s=1,
        ),
        step("after", "scale", "Deployment", "payments-api", "payments", replicas=5),
    ]
    results = runtime.execute(steps)
    assert [r.status for r in results] == ["Completed", "Failed", "Skipped"]
    assert "timed out after 1s" in results[1].message


def test_conditions() -> None:
    job_failed = {"status": {"conditions": [{"type": "Failed", "status": "True"}]}}
    assert condition_met("Job", job_failed, "job-complete")[0] is False
    available = {"status": {"conditions": [{"type": "Available", "status": "True"}]}}
    assert condition_met("Deployment", available, "condition=available")[0] is True
    assert condition_met("Pod", {"status": {}}, "pod-ready")[0] is None
    pvc = {
        "spec": {"resources": {"requests": {"storage": "20Gi"}}},
        "status": {"capacity": {"storage": "20Gi"}},
    }
    assert condition_met("PersistentVolumeClaim", pvc, "pvc-resized")[0] is True


def test_runtime_from_kubeconfig(fake_kube_server: FakeKubeAPI, tmp_path: Path) -> None:
    fake_kube_server.put(deployment())
    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text(
        yaml.safe_dump(
            {
                "apiVersion": "v1",
                "kind": "Config",
                "clusters": [{"name": "fake", "cluster": {"server": fake_kube_server.url}}],
                "users": [{"name": "nobody", "user": {}}],
                "contexts": [{"name": "fake", "context": {"cluster": "fake", "user": "nobody"}}],
                "current-context": "fake",
            }
        )
    )
    runtime = runtime_from_kubeconfig(kubeconfig)
    assert runtime.get("Deployment", "payments", "payments-api")["spec"]["replicas"] == 3
    assert runtime.get("Deployment", "payments", "absent") is None
    with pytest.raises(ConfigError, match="kubeconfig"):
        runtime_from_kubeconfig(tmp_path / "missing")
