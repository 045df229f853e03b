"""Connector install: least-privilege RBAC from the playbooks, the Helm chart rendered and
validated against the Kubernetes schemas, checkov clean, and the install command end to end
against a real OpenBao."""

from __future__ import annotations

import os
import subprocess
import uuid
from pathlib import Path

import hvac
import pytest
import yaml
from conftest import skip_or_fail
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from sqlalchemy.engine import URL
from typer.testing import CliRunner

from neuralops import clusters, connector
from neuralops.errors import InvalidInput
from neuralops.registry import add_playbooks, catalogue_dir, load_manifests
from neuralops.settings import get_settings

ROOT = Path(__file__).resolve().parents[1]
CHECKOV = ROOT / ".venv-tools" / "bin" / "checkov"


@pytest.fixture(scope="module")
def catalogue():
    return load_manifests([catalogue_dir()])


def public_key() -> bytes:
    return (
        ec.generate_private_key(ec.SECP256R1())
        .public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    )


def rendered(catalogue, **overrides) -> connector.Rendered:
    chart_values = connector.values(
        "edge-1",
        prefect_api_url="https://10.20.0.5/api",
        signing_public_key=public_key(),
        manifests=catalogue,
        labels={"region": "eu-west-1"},
        prometheus_url="http://prometheus.monitoring.svc:9090",
        kubernetes_api_url="https://172.20.0.1:6443",
    )
    return connector.render(chart_values | overrides)


def by_kind(objects) -> dict[str, dict]:
    return {obj["kind"]: obj for obj in objects}


def test_rbac_grants_only_what_the_playbooks_do(catalogue):
    rules = {
        (r["apiGroups"][0], r["resources"][0]): r["verbs"] for r in connector.rbac_rules(catalogue)
    }
    assert rules[("apps", "deployments")] == ["get", "list", "patch", "watch"]
    assert rules[("batch", "jobs")] == ["create", "get", "list", "patch", "watch"]
    assert rules[("", "pods/eviction")] == ["create"]
    assert rules[("", "secrets")] == ["delete"]  # rotating a certificate never reads secrets
    assert rules[("cert-manager.io", "certificates")] == ["get", "list", "watch"]
    everything = (
        [v for verbs in rules.values() for v in verbs]
        + [g for g, _ in rules]
        + [r for _, r in rules]
    )
    assert "*" not in everything and "escalate" not in everything and "bind" not in everything
    assert ("", "namespaces") not in rules and ("", "persistentvolumes") not in rules


def test_rendered_manifests_validate_and_lock_the_worker_down(catalogue):
    objects = rendered(catalogue).objects
    connector.validate(objects)
    kinds = by_kind(objects)
    assert set(kinds) == {
        "Namespace",
        "ServiceAccount",
        "ClusterRole",
        "ClusterRoleBinding",
        "ConfigMap",
        "Deployment",
        "NetworkPolicy",
    }
    pod = kinds["Deployment"]["spec"]["template"]["spec"]
    [worker] = pod["containers"]
    assert worker["command"][:5] == ["prefect", "worker", "start", "--pool", "cluster-edge-1"]
    assert pod["securityContext"]["runAsNonRoot"] and pod["securityContext"]["runAsUser"] != 0
    assert worker["securityContext"]["readOnlyRootFilesystem"] is True
    assert worker["securityContext"]["allowPrivilegeEscalation"] is False
    assert worker["securityContext"]["capabilities"]["drop"] == ["ALL"]
    assert worker["resources"]["limits"] == {"cpu": "500m", "memory": "512Mi"}
    env = {e["name"]: e.get("value") for e in worker["env"]}
    assert env["NEURALOPS_CLUSTER"] == "edge-1"
    assert "PREFECT_API_KEY" not in env  # the key comes from a Secret file, not the manifest
    assert kinds["ConfigMap"]["data"]["signing.pub"].startswith("-----BEGIN PUBLIC KEY-----")
    assert kinds["Namespace"]["metadata"]["labels"]["neuralops.io/region"] == "eu-west-1"

    policy = kinds["NetworkPolicy"]["spec"]
    assert policy["ingress"] == [] and set(policy["policyTypes"]) == {"Ingress", "Egress"}
    destinations = [(rule["to"][0], rule["ports"][0]["port"]) for rule in policy["egress"]]
    assert ({"ipBlock": {"cidr": "10.20.0.5/32"}}, 443) in destinations  # the Prefect API
    assert ({"ipBlock": {"cidr": "172.20.0.1/32"}}, 6443) in destinations  # the Kubernetes API
    prometheus = {
        "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}}
    }
    assert (prometheus, 9090) in destinations
    assert len(destinations) == 4  # and DNS: nothing else leaves the pod


def test_a_broken_object_fails_validation_naming_it(catalogue):
    objects = rendered(catalogue).objects
    deployment = by_kind(objects)["Deployment"]
    deployment["spec"]["replicas"] = "one"
    with pytest.raises(InvalidInput, match="Deployment/neuralops-connector does not validate"):
        connector.validate(objects)


def test_missing_values_fail_with_the_chart_message(catalogue):
    with pytest.raises(InvalidInput, match=r"prefect\.apiUrl is required"):
        rendered(catalogue, prefect={"apiUrl": ""})


@pytest.mark.slow
def test_checkov_reports_no_failed_checks(catalogue, tmp_path):
    if not CHECKOV.exists():
        skip_or_fail(f"checkov is not installed at {CHECKOV}: run `make tools`")
    connector.write(rendered(catalogue), tmp_path)
    proc = subprocess.run(
        [str(CHECKOV), "-d", str(tmp_path), "--framework", "kubernetes", "--compact", "--quiet"],
        capture_output=True,
        text=True,
        timeout=600,
        env={**os.environ, "BC_SKIP_MAPPING": "TRUE"},
        check=False,
    )
    assert "Failed checks: 0" in proc.stdout, proc.stdout[-3000:]
    assert proc.returncode == 0


@pytest.mark.slow
def test_connector_install_registers_and_writes_valid_manifests(
    openbao, sqlite_url: URL, tmp_path, monkeypatch, catalogue
):
    from neuralops.cli import app
    from neuralops.signing import VaultTransitSigner

    addr, root = openbao
    monkeypatch.setenv("VAULT_ADDR", addr)
    monkeypatch.setenv("VAULT_TOKEN", root)
    monkeypatch.setenv("NEURALOPS_SIGNING_KEY", "connector-test")
    monkeypatch.setenv("PREFECT_API_URL", "http://127.0.0.1:9/api")  # nothing listens there
    get_settings.cache_clear()
    VaultTransitSigner(addr, root, "connector-test").public_key_pem()  # the key exists
    add_playbooks(catalogue, url=sqlite_url)
    token = hvac.Client(url=addr, token=root).auth.token.create(policies=["default"], ttl="10m")[
        "auth"
    ]["client_token"]
    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text(
        yaml.safe_dump(
            {
                "apiVersion": "v1",
                "kind": "Config",
                "current-context": "edge",
                "contexts": [{"name": "edge", "context": {"cluster": "edge"}}],
                "clusters": [{"name": "edge", "cluster": {"server": "https://172.20.0.1:6443"}}],
            }
        )
    )
    name = f"edge-{uuid.uuid4().hex[:6]}"
    result = CliRunner().invoke(
        app,
        [
            "connector", "install", "--cluster", name, "--kubeconfig", str(kubeconfig),
            "--vault-token", token, "--label", "env=prod", "--output", str(tmp_path / "out"),
        ],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert f"cluster {name} registered" in result.output
    written = (tmp_path / "out" / "connector.yaml").read_text()
    assert token not in written and token not in result.output
    objects = [doc for doc in yaml.safe_load_all(written) if doc]
    connector.validate(objects)
    assert (
        by_kind(objects)["Deployment"]["spec"]["template"]["spec"]["containers"][0]["command"][4]
        == f"cluster-{name}"
    )
    assert clusters.get_cluster(name).labels == {"env": "prod"}
    # the heartbeat key: shown once to the installer, in Vault for the connector, not on disk
    stored = hvac.Client(url=addr, token=root).secrets.kv.v2.read_secret_version(
        path=clusters.kv_path(name), mount_point="secret", raise_on_deleted_version=False
    )["data"]["data"]
    assert f"HEARTBEAT_KEY={stored['heartbeat_key']}" in result.output
    assert stored["heartbeat_key"] not in written
    refused = CliRunner().invoke(
        app,
        [
            "connector", "install", "--cluster", name, "--kubeconfig", str(kubeconfig),
            "--vault-token", "not-a-token", "--output", str(tmp_path / "bad"),
        ],
    )  # fmt: skip
    assert refused.exit_code != 0 and not (tmp_path / "bad").exists()
