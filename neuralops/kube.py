"""KubernetesRuntime: executes rendered playbook steps against a real Kubernetes API server.

It offers the interface of ``MockCluster`` (``execute(steps, dry_run=False)`` and
``snapshot(steps)``), so the remediation code runs a playbook through either. Calls go through
the official ``kubernetes`` client (``ApiClient``), one REST call per action:

- ``apply``: server-side apply (PATCH, ``application/apply-patch+yaml``, field manager
  ``neuralops``, ``force=true``: an approved playbook takes ownership of the fields it sets).
- ``patch``: strategic merge patch for built-in kinds, JSON merge patch for custom resources
  (the API server refuses strategic merge for CRDs).
- ``scale``: JSON merge patch of ``spec.replicas``.
- ``restart``: strategic merge patch of the pod template annotation
  ``kubectl.kubernetes.io/restartedAt`` (what ``kubectl rollout restart`` does).
- ``delete``: DELETE with background propagation; an object already gone counts as deleted.
- ``cordon``/``uncordon``: merge patch of the Node's ``spec.unschedulable``.
- ``drain``: cordon, then evict (Eviction API, which respects PodDisruptionBudgets) every pod
  on the node that no DaemonSet owns.
- ``wait``: polls the target until ``condition`` holds or ``timeout_s`` passes (see
  ``condition_met``).
- ``rollback`` is NOT supported: ``kubectl rollout undo`` is client-side logic (it copies the
  previous ReplicaSet's template) with no API of its own; such a step fails before anything
  runs. Use a playbook that applies the known-good template instead.

Every mutating call is first sent with ``dryRun=All`` (the server validates and admits it
without persisting), then for real. ``execute(dry_run=True)`` sends only the dry-runs. The
first failing step stops the playbook; the steps after it are reported ``Skipped``.
"""

from __future__ import annotations

import copy
import json
import logging
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from neuralops.errors import ConfigError
from neuralops.mock_cluster import StepResult
from neuralops.policy import CLUSTER_SCOPED_KINDS, object_key

log = logging.getLogger(__name__)

RUNTIME = "kubernetes"
FIELD_MANAGER = "neuralops"
RESTARTED_AT = "kubectl.kubernetes.io/restartedAt"
SUPPORTED_ACTIONS = frozenset(
    {"apply", "patch", "scale", "restart", "delete", "cordon", "uncordon", "drain", "wait"}
)
ROLLBACK_UNSUPPORTED = (
    "rollback is not supported by the Kubernetes runtime: `kubectl rollout undo` is client-side "
    "(it copies the previous ReplicaSet's pod template) and has no API call of its own; apply "
    "the known-good template with an `apply` or `patch` step instead"
)

# kind -> (default apiVersion, plural, namespaced). Other kinds are custom resources: their
# apiVersion must be given (target.api_version or the manifest's), the plural is guessed as
# the lower-cased kind + "s" unless the runtime is given ``resources``.
BUILTIN_RESOURCES: dict[str, tuple[str, str, bool]] = {
    "Pod": ("v1", "pods", True),
    "Service": ("v1", "services", True),
    "ConfigMap": ("v1", "configmaps", True),
    "Secret": ("v1", "secrets", True),
    "ServiceAccount": ("v1", "serviceaccounts", True),
    "PersistentVolumeClaim": ("v1", "persistentvolumeclaims", True),
    "ResourceQuota": ("v1", "resourcequotas", True),
    "LimitRange": ("v1", "limitranges", True),
    "Namespace": ("v1", "namespaces", False),
    "Node": ("v1", "nodes", False),
    "PersistentVolume": ("v1", "persistentvolumes", False),
    "Deployment": ("apps/v1", "deployments", True),
    "StatefulSet": ("apps/v1", "statefulsets", True),
    "DaemonSet": ("apps/v1", "daemonsets", True),
    "ReplicaSet": ("apps/v1", "replicasets", True),
    "Job": ("batch/v1", "jobs", True),
    "CronJob": ("batch/v1", "cronjobs", True),
    "HorizontalPodAutoscaler": ("autoscaling/v2", "horizontalpodautoscalers", True),
    "PodDisruptionBudget": ("policy/v1", "poddisruptionbudgets", True),
    "Ingress": ("networking.k8s.io/v1", "ingresses", True),
    "NetworkPolicy": ("networking.k8s.io/v1", "networkpolicies", True),
    "Role": ("rbac.authorization.k8s.io/v1", "roles", True),
    "RoleBinding": ("rbac.authorization.k8s.io/v1", "rolebindings", True),
    "ClusterRole": ("rbac.authorization.k8s.io/v1", "clusterroles", False),
    "ClusterRoleBinding": ("rbac.authorization.k8s.io/v1", "clusterrolebindings", False),
    "StorageClass": ("storage.k8s.io/v1", "storageclasses", False),
    "PriorityClass": ("scheduling.k8s.io/v1", "priorityclasses", False),
}
_BUILTIN_GROUPS = {
    api.split("/")[0] if "/" in api else "" for api, _, _ in BUILTIN_RESOURCES.values()
}

STRATEGIC = "application/strategic-merge-patch+json"
MERGE = "application/merge-patch+json"
APPLY = "application/apply-patch+yaml"


class StepFailed(Exception):
    """One step could not be carried out; the message says why (no credentials in it)."""


@dataclass(frozen=True)
class Resource:
    kind: str
    api_version: str
    plural: str
    namespaced: bool
    builtin: bool

    def path(self, namespace: str | None, name: str | None = None, sub: str | None = None) -> str:
        base = f"/api/{self.api_version}" if "/" not in self.api_version else ""
        base = base or f"/apis/{self.api_version}"
        if self.namespaced:
            if not namespace:
                raise StepFailed(f"{self.kind} {name} is namespaced: the step names no namespace")
            base += f"/namespaces/{namespace}"
        path = f"{base}/{self.plural}"
        if name:
            path += f"/{name}"
        if sub:
            path += f"/{sub}"
        return path


class KubernetesRuntime:
    """Runs rendered steps through a ``kubernetes.client.ApiClient``.

    ``poll_s`` is the interval of ``wait`` polls; ``resources`` adds or overrides kinds
    (``{"Certificate": ("cert-manager.io/v1", "certificates", True)}``); ``request_timeout_s``
    bounds each REST call.
    """

    runtime = RUNTIME

    def __init__(
        self,
        api_client: Any,
        *,
        poll_s: float = 2.0,
        request_timeout_s: float = 30.0,
        resources: Mapping[str, tuple[str, str, bool]] | None = None,
        sleep: Callable[[float], None] = time.sleep,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.api = api_client
        self.poll_s = poll_s
        self.request_timeout_s = request_timeout_s
        self.resources = {**BUILTIN_RESOURCES, **(resources or {})}
        self._custom = set(resources or ())
        self._sleep = sleep
        self._clock = clock

    # --- REST ------------------------------------------------------------------------------

    def request(
        self,
        method: str,
        path: str,
        *,
        query: Mapping[str, str] | None = None,
        body: Any = None,
        content_type: str | None = None,
    ) -> dict[str, Any]:
        """One REST call; the JSON answer as a dict. Non-2xx raises ``ApiException``."""
        from kubernetes.client.exceptions import ApiException

        headers = {"Accept": "application/json"}
        if content_type:
            headers["Content-Type"] = content_type
        method, url, headers, body, _ = self.api.param_serialize(
            method=method,
            resource_path=path,
            query_params=list((query or {}).items()),
            header_params=headers,
            body=body,
            auth_settings=["BearerToken"],
        )
        response = self.api.call_api(
            method, url, header_params=headers, body=body, _request_timeout=self.request_timeout_s
        )
        response.read()
        text = (response.data or b"").decode("utf-8", "replace")
        if not 200 <= response.status <= 299:
            raise ApiException.from_response(http_resp=response, body=text, data=None)
        return json.loads(text) if text.strip() else {}

    def get(
        self, kind: str, namespace: str | None, name: str, api_version: str | None = None
    ) -> dict[str, Any] | None:
        """The object, or None when the API answers 404."""
        resource = self.resource(kind, api_version)
        try:
            return self.request("GET", resource.path(namespace, name))
        except Exception as exc:
            if getattr(exc, "status", None) == 404:
                return None
            raise

    def resource(self, kind: str, api_version: str | None = None) -> Resource:
        if kind in self.resources:
            default_api, plural, namespaced = self.resources[kind]
            builtin = kind not in self._custom and kind in BUILTIN_RESOURCES
            return Resource(kind, api_version or default_api, plural, namespaced, builtin)
        if not api_version:
            raise StepFailed(
                f"kind {kind} is not a built-in kind: the step must give its api_version"
            )
        group = api_version.split("/")[0] if "/" in api_version else ""
        namespaced = kind.lower() not in CLUSTER_SCOPED_KINDS
        plural = kind.lower() + ("es" if kind.lower().endswith("s") else "s")
        return Resource(kind, api_version, plural, namespaced, group in _BUILTIN_GROUPS)

    def _mutate(
        self,
        method: str,
        path: str,
        *,
        dry_run: bool,
        query: Mapping[str, str] | None = None,
        body: Any = None,
        content_type: str | None = None,
    ) -> dict[str, Any]:
        """Server-side dry-run first; then, unless ``dry_run``, the same call for real."""
        query = dict(query or {})
        answer = self.request(
            method, path, query={**query, "dryRun": "All"}, body=body, content_type=content_type
        )
        if dry_run:
            return answer
        return self.request(method, path, query=query, body=body, content_type=content_type)

    # --- the MockCluster interface ---------------------------------------------------------

    def snapshot(self, steps: Iterable[Any]) -> dict[str, Any]:
        """The current objects the steps target (None where absent), keyed like the mock's."""
        out: dict[str, Any] = {}
        for step in steps:
            kind, namespace, name, api_version = _target(step)
            if not kind:
                continue
            key = object_key(kind, namespace, name)
            if kind == "Secret":  # never read: the connector's RBAC may delete, not get, them
                out[key] = {"kind": "Secret", "note": "contents not read"}
                continue
            try:
                obj = self.get(kind, namespace, name, api_version)
            except StepFailed:
                obj = None
            if obj is not None:
                obj = copy.deepcopy(obj)
                obj.get("metadata", {}).pop("managedFields", None)
            out[key] = obj
        return out

    def execute(self, steps: Iterable[Any], *, dry_run: bool = False) -> list[StepResult]:
        """Run the steps in order (each mutation dry-run first); stop at the first failure."""
        steps = list(steps)
        unsupported = next((s for s in steps if str(s.action) not in SUPPORTED_ACTIONS), None)
        results: list[StepResult] = []
        failed = False
        for step in steps:
            kind, namespace, name, _ = _target(step)
            label = object_key(kind, namespace, name) if kind else step.name
            if failed or (unsupported is not None and step is not unsupported):
                results.append(
                    StepResult(
                        name=step.name, action=str(step.action), target=label, status="Skipped"
                    )
                )
                continue
            started = time.monotonic()
            try:
                if step is unsupported:
                    raise StepFailed(
                        ROLLBACK_UNSUPPORTED
                        if str(step.action) == "rollback"
                        else f"action {step.action} is not supported by the Kubernetes runtime"
                    )
                message = self._run(step, dry_run=dry_run)
                status = "Completed"
            except StepFailed as exc:
                message, status, failed = str(exc), "Failed", True
            except Exception as exc:  # ApiException, connection errors
                message, status, failed = _api_error(exc), "Failed", True
            results.append(
                StepResult(
                    name=step.name,
                    action=str(step.action),
                    target=label,
                    status=status,
                    message=message,
                    duration_ms=int((time.monotonic() - started) * 1000),
                )
            )
            if unsupported is not None:
                failed = True
        return results

    # --- actions ---------------------------------------------------------------------------

    def _run(self, step: Any, *, dry_run: bool) -> str:
        action = str(step.action)
        kind, namespace, name, api_version = _target(step)
        if action == "apply":
            return self._apply(step.manifest, dry_run=dry_run)
        resource = self.resource(kind, api_version)
        path = resource.path(namespace, name)
        key = object_key(kind, namespace, name)
        suffix = " (server-side dry-run only)" if dry_run else ""
        if action == "patch":
            content_type = STRATEGIC if resource.builtin else MERGE
            self._mutate("PATCH", path, dry_run=dry_run, body=step.patch, content_type=content_type)
            return f"patched {key}{suffix}"
        if action == "scale":
            replicas = int(step.replicas)
            body = {"spec": {"replicas": replicas}}
            self._mutate("PATCH", path, dry_run=dry_run, body=body, content_type=MERGE)
            return f"scaled {key} to {replicas}{suffix}"
        if action == "restart":
            stamp = datetime.now(UTC).isoformat(timespec="seconds").replace("+00:00", "Z")
            body = {"spec": {"template": {"metadata": {"annotations": {RESTARTED_AT: stamp}}}}}
            content_type = STRATEGIC if resource.builtin else MERGE
            self._mutate("PATCH", path, dry_run=dry_run, body=body, content_type=content_type)
            return f"restarted {key}{suffix}"
        if action == "delete":
            body = {"kind": "DeleteOptions", "apiVersion": "v1", "propagationPolicy": "Background"}
            try:
                self._mutate(
                    "DELETE", path, dry_run=dry_run, body=body, content_type="application/json"
                )
            except Exception as exc:
                if getattr(exc, "status", None) == 404:
                    return f"{key} was already absent"
                raise
            return f"deleted {key}{suffix}"
        if action in ("cordon", "uncordon"):
            body = {"spec": {"unschedulable": action == "cordon"}}
            self._mutate("PATCH", path, dry_run=dry_run, body=body, content_type=MERGE)
            return f"{action}ed {key}{suffix}"
        if action == "drain":
            return self._drain(path, name, key, dry_run=dry_run)
        if action == "wait":
            if dry_run:
                return f"{key}: not waited for {step.condition} (dry-run)"
            return self._wait(step, resource, path, key)
        raise StepFailed(f"action {action} is not supported by the Kubernetes runtime")

    def _apply(self, manifest: Mapping[str, Any] | None, *, dry_run: bool) -> str:
        if not manifest:
            raise StepFailed("apply step without a manifest")
        meta = manifest.get("metadata") or {}
        kind, name = str(manifest.get("kind") or ""), str(meta.get("name") or "")
        if not kind or not name or not manifest.get("apiVersion"):
            raise StepFailed("the manifest needs apiVersion, kind and metadata.name")
        resource = self.resource(kind, str(manifest["apiVersion"]))
        namespace = meta.get("namespace")
        path = resource.path(namespace, name)
        query = {"fieldManager": FIELD_MANAGER, "force": "true"}
        self._mutate(
            "PATCH", path, dry_run=dry_run, query=query, body=dict(manifest), content_type=APPLY
        )
        key = object_key(kind, namespace, name)
        return f"applied {key} (server-side apply)" + (" (dry-run only)" if dry_run else "")

    def _drain(self, node_path: str, node: str, key: str, *, dry_run: bool) -> str:
        body = {"spec": {"unschedulable": True}}
        self._mutate("PATCH", node_path, dry_run=dry_run, body=body, content_type=MERGE)
        pods = self.request(
            "GET", "/api/v1/pods", query={"fieldSelector": f"spec.nodeName={node}"}
        ).get("items", [])
        evicted = []
        for pod in pods:
            meta = pod.get("metadata") or {}
            if any(o.get("kind") == "DaemonSet" for o in meta.get("ownerReferences") or []):
                continue
            pod_ns, pod_name = meta.get("namespace"), meta.get("name")
            eviction = {
                "apiVersion": "policy/v1",
                "kind": "Eviction",
                "metadata": {"name": pod_name, "namespace": pod_ns},
            }
            path = f"/api/v1/namespaces/{pod_ns}/pods/{pod_name}/eviction"
            try:
                self._mutate(
                    "POST", path, dry_run=dry_run, body=eviction, content_type="application/json"
                )
            except Exception as exc:
                if getattr(exc, "status", None) == 429:
                    raise StepFailed(
                        f"evicting pod {pod_ns}/{pod_name} from {key} would violate its "
                        "PodDisruptionBudget (HTTP 429); retry later"
                    ) from None
                raise
            evicted.append(f"{pod_ns}/{pod_name}")
        suffix = " (server-side dry-run only)" if dry_run else ""
        return f"drained {key}: cordoned, {len(evicted)} pods evicted{suffix}"

    def _wait(self, step: Any, resource: Resource, path: str, key: str) -> str:
        condition = str(step.condition or "")
        deadline = self._clock() + float(getattr(step, "timeout_s", 300) or 300)
        last = "not checked yet"
        while True:
            try:
                obj = self.request("GET", path)
            except Exception as exc:
                if getattr(exc, "status", None) != 404:
                    raise
                obj, last = None, f"{key} does not exist"
            if obj is not None:
                if condition == "node-drained":
                    obj = {"pods": self._pods_on(resource, obj)}
                met, last = condition_met(resource.kind, obj, condition)
                if met is True:
                    return f"{key}: {condition} ({last})"
                if met is False:
                    raise StepFailed(f"{key}: {condition} can no longer hold: {last}")
            if self._clock() >= deadline:
                raise StepFailed(
                    f"{key}: timed out after {step.timeout_s}s waiting for {condition} ({last})"
                )
            self._sleep(self.poll_s)

    def _pods_on(self, resource: Resource, node: Mapping[str, Any]) -> list[dict[str, Any]]:
        name = (node.get("metadata") or {}).get("name", "")
        items = self.request(
            "GET", "/api/v1/pods", query={"fieldSelector": f"spec.nodeName={name}"}
        ).get("items", [])
        return [
            p
            for p in items
            if not any(
                o.get("kind") == "DaemonSet"
                for o in (p.get("metadata") or {}).get("ownerReferences") or []
            )
        ]


# --- conditions ------------------------------------------------------------------------------


def _conditions(obj: Mapping[str, Any]) -> dict[str, Mapping[str, Any]]:
    items = (obj.get("status") or {}).get("conditions") or []
    return {str(c.get("type", "")).lower(): c for c in items if isinstance(c, Mapping)}


def condition_met(kind: str, obj: Mapping[str, Any], condition: str) -> tuple[bool | None, str]:
    """(True: holds, False: never will, None: not yet) and what was seen.

    ``rollout-complete``: as ``kubectl rollout status`` (observedGeneration caught up, every
    replica updated and available); ``job-complete``: the Complete condition (Failed ends the
    wait as failed); ``node-schedulable``: spec.unschedulable unset; ``node-drained``: no pods
    but DaemonSets' on the node; ``pvc-resized``: status.capacity.storage equals the request;
    anything else (``pod-ready``, ``certificate-ready``, ``condition=available``): the status
    condition named by its last word is True.
    """
    name = condition.split("=", 1)[1] if condition.startswith("condition=") else condition
    name = name.strip()
    spec, status = obj.get("spec") or {}, obj.get("status") or {}
    conditions = _conditions(obj)
    if name == "rollout-complete":
        generation = (obj.get("metadata") or {}).get("generation", 0)
        observed = status.get("observedGeneration", 0)
        want = spec.get("replicas", 1)
        updated = status.get("updatedReplicas", 0)
        available = status.get("availableReplicas", 0)
        total = status.get("replicas", 0)
        progressing = conditions.get("progressing")
        seen = f"{updated}/{want} updated, {available} available, {total} total"
        if progressing and progressing.get("reason") == "ProgressDeadlineExceeded":
            return False, f"progress deadline exceeded ({seen})"
        if observed < generation:
            return None, f"generation {generation} not yet observed ({seen})"
        return (updated >= want and available >= want and total <= updated) or None, seen
    if name in ("job-complete", "complete"):
        if str((conditions.get("failed") or {}).get("status")) == "True":
            reason = conditions["failed"].get("reason") or "Failed"
            return False, f"the Job failed ({reason})"
        done = str((conditions.get("complete") or {}).get("status")) == "True"
        return done or None, "Complete" if done else "not complete yet"
    if name == "node-schedulable":
        ok = not spec.get("unschedulable")
        return ok or None, "schedulable" if ok else "still unschedulable"
    if name == "node-drained":
        pods = obj.get("pods") or []
        return (not pods) or None, f"{len(pods)} pods left"
    if name == "pvc-resized":
        want = ((spec.get("resources") or {}).get("requests") or {}).get("storage")
        have = (status.get("capacity") or {}).get("storage")
        return (want is not None and want == have) or None, f"capacity {have}, requested {want}"
    wanted = name.replace("_", "-").split("-")[-1].lower()
    found = conditions.get(wanted)
    if found is None:
        return None, f"no {wanted} condition yet"
    ok = str(found.get("status")) == "True"
    return ok or None, f"{found.get('type')}={found.get('status')}"


# --- helpers ---------------------------------------------------------------------------------


def _target(step: Any) -> tuple[str, str | None, str, str | None]:
    target = getattr(step, "target", None)
    if target is not None:
        get = (
            (lambda f: target.get(f))
            if isinstance(target, Mapping)
            else (lambda f: getattr(target, f, None))
        )
        return get("kind") or "", get("namespace"), get("name") or "", get("api_version")
    manifest = getattr(step, "manifest", None) or {}
    meta = manifest.get("metadata") or {}
    return (
        str(manifest.get("kind") or ""),
        meta.get("namespace"),
        str(meta.get("name") or ""),
        manifest.get("apiVersion"),
    )


def _api_error(exc: Exception) -> str:
    """An ApiException as 'HTTP 404 NotFound: <the Status message>'; never headers."""
    status = getattr(exc, "status", None)
    if status is None:
        return f"Kubernetes API unreachable: {type(exc).__name__}: {str(exc)[:300]}"
    message = ""
    try:
        body = json.loads(getattr(exc, "body", None) or "{}")
        message = str(body.get("message") or "")
    except (ValueError, AttributeError):
        message = str(getattr(exc, "body", "") or "")[:300]
    reason = getattr(exc, "reason", "") or ""
    return f"HTTP {status} {reason}: {message}".rstrip(": ")


def runtime_from_kubeconfig(
    path: str | Path | None = None, *, context: str | None = None, **options: Any
) -> KubernetesRuntime:
    """A runtime for the cluster a kubeconfig names (``None``: the in-cluster service account,
    as a connector worker running in its cluster uses)."""
    from kubernetes import client, config

    try:
        if path is None:
            config.load_incluster_config()
            return KubernetesRuntime(client.ApiClient(), **options)
        configuration = client.Configuration()
        config.load_kube_config(
            config_file=str(path), context=context, client_configuration=configuration
        )
    except (config.ConfigException, FileNotFoundError) as exc:
        where = f"kubeconfig {path}" if path else "the in-cluster service account"
        raise ConfigError(f"cannot load {where}: {exc}") from None
    return KubernetesRuntime(client.ApiClient(configuration), **options)
