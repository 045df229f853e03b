"""FakeKubeAPI: a FAKE Kubernetes API server for tests. It is not Kubernetes.

No real cluster can run on these machines, so the Kubernetes runtime is tested against this
small HTTP server (``http.server`` in a thread) that speaks just enough of the Kubernetes REST
API for the calls ``neuralops.kube.KubernetesRuntime`` makes:

- GET/PATCH/DELETE of one object under ``/api/v1/...`` and ``/apis/<group>/<version>/...``
  (namespaced and cluster-scoped), GET of a collection (``fieldSelector=spec.nodeName=`` for
  pods), POST of a collection (create) and of a pod's ``eviction`` subresource;
- PATCH content types ``application/apply-patch+yaml`` (server-side apply: creates when
  absent, merges otherwise), ``application/merge-patch+json`` (RFC 7386) and
  ``application/strategic-merge-patch+json`` (a JSON merge where lists of objects with a
  ``name`` merge by name, the common strategic-merge case);
- ``dryRun=All``: the answer is computed, nothing is stored;
- 404 (and 409, 415, 405) with a ``Status`` body as the real server sends.

With ``settle=True`` (default) it plays the controllers: after each real write a Deployment's
status shows it rolled out and a Job's shows Complete (or Failed, for names in
``failing_jobs``). Every request is recorded in ``requests`` so tests can check that a dry-run
came before each real call.
"""

from __future__ import annotations

import copy
import json
import threading
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

import yaml

Key = tuple[str, str, str | None, str]  # (group/version, plural, namespace, name)

KINDS = {
    "pods": "Pod",
    "nodes": "Node",
    "deployments": "Deployment",
    "statefulsets": "StatefulSet",
    "jobs": "Job",
    "horizontalpodautoscalers": "HorizontalPodAutoscaler",
    "persistentvolumeclaims": "PersistentVolumeClaim",
    "secrets": "Secret",
    "configmaps": "ConfigMap",
    "resourcequotas": "ResourceQuota",
    "namespaces": "Namespace",
}


@dataclass
class RecordedRequest:
    method: str
    path: str
    query: dict[str, str]
    content_type: str
    body: Any

    @property
    def dry_run(self) -> bool:
        return self.query.get("dryRun") == "All"


@dataclass
class FakeKubeAPI:
    """The fake's state: ``objects`` keyed by (group/version, plural, namespace, name)."""

    objects: dict[Key, dict[str, Any]] = field(default_factory=dict)
    requests: list[RecordedRequest] = field(default_factory=list)
    settle: bool = True
    failing_jobs: set[str] = field(default_factory=set)
    lock: threading.Lock = field(default_factory=threading.Lock)
    url: str = ""

    # --- helpers for tests -----------------------------------------------------------------

    def put(self, obj: dict[str, Any]) -> dict[str, Any]:
        """Store an object as if it existed in the cluster (no request recorded)."""
        api_version, kind = obj["apiVersion"], obj["kind"]
        plural = next(p for p, k in KINDS.items() if k == kind)
        meta = obj.setdefault("metadata", {})
        key = (api_version, plural, meta.get("namespace"), meta["name"])
        with self.lock:
            self.objects[key] = _stamp(copy.deepcopy(obj), None)
            return self.objects[key]

    def object(
        self, api_version: str, plural: str, namespace: str | None, name: str
    ) -> dict[str, Any] | None:
        with self.lock:
            return copy.deepcopy(self.objects.get((api_version, plural, namespace, name)))

    def mutations(self) -> list[RecordedRequest]:
        return [r for r in self.requests if r.method in ("PATCH", "POST", "PUT", "DELETE")]

    # --- request handling ------------------------------------------------------------------

    def handle(
        self, method: str, raw_path: str, content_type: str, raw_body: bytes
    ) -> tuple[int, dict[str, Any]]:
        split = urlsplit(raw_path)
        query = {k: v[-1] for k, v in parse_qs(split.query).items()}
        body: Any = None
        if raw_body:
            try:
                body = yaml.safe_load(raw_body) if "yaml" in content_type else json.loads(raw_body)
            except (ValueError, yaml.YAMLError) as exc:
                return _status(400, "BadRequest", f"body is not valid: {exc}")
        with self.lock:
            self.requests.append(
                RecordedRequest(method, split.path, query, content_type, copy.deepcopy(body))
            )
            parsed = _parse(split.path)
            if parsed is None:
                return _status(404, "NotFound", f"the server could not find {split.path}")
            gv, plural, namespace, name, sub = parsed
            key = (gv, plural, namespace, name or "")
            dry = query.get("dryRun") == "All"
            if name is None:
                if method == "GET":
                    return 200, self._list(gv, plural, namespace, query)
                if method == "POST":
                    return self._create(gv, plural, namespace, body, dry)
                return _status(405, "MethodNotAllowed", f"{method} on a collection")
            if sub == "eviction" and method == "POST":
                if key not in self.objects:
                    return _status(404, "NotFound", f'pods "{name}" not found')
                if not dry:
                    del self.objects[key]
                return 201, {"kind": "Status", "apiVersion": "v1", "status": "Success"}
            if sub is not None:
                return _status(404, "NotFound", f"subresource {sub} is not faked")
            current = self.objects.get(key)
            if method == "GET":
                if current is None:
                    return _not_found(plural, name)
                return 200, copy.deepcopy(current)
            if method == "DELETE":
                if current is None:
                    return _not_found(plural, name)
                if not dry:
                    del self.objects[key]
                return 200, copy.deepcopy(current)
            if method == "PATCH":
                return self._patch(key, current, content_type, body, query, dry)
            return _status(405, "MethodNotAllowed", f"{method} is not faked")

    def _list(
        self, gv: str, plural: str, namespace: str | None, query: dict[str, str]
    ) -> dict[str, Any]:
        node = None
        selector = query.get("fieldSelector", "")
        if selector.startswith("spec.nodeName="):
            node = selector.split("=", 1)[1]
        items = [
            copy.deepcopy(obj)
            for (g, p, ns, _), obj in sorted(self.objects.items(), key=lambda kv: str(kv[0]))
            if g == gv
            and p == plural
            and (namespace is None or ns == namespace)
            and (node is None or (obj.get("spec") or {}).get("nodeName") == node)
        ]
        kind = KINDS.get(plural, plural.title())
        return {"kind": f"{kind}List", "apiVersion": gv, "metadata": {}, "items": items}

    def _create(
        self, gv: str, plural: str, namespace: str | None, body: Any, dry: bool
    ) -> tuple[int, dict[str, Any]]:
        if not isinstance(body, dict) or not (body.get("metadata") or {}).get("name"):
            return _status(400, "BadRequest", "the object needs metadata.name")
        key = (gv, plural, namespace, body["metadata"]["name"])
        if key in self.objects:
            return _status(409, "AlreadyExists", f'{plural} "{key[3]}" already exists')
        obj = _stamp(copy.deepcopy(body), None)
        if not dry:
            self.objects[key] = obj
            self._settle(key)
        return 201, copy.deepcopy(obj)

    def _patch(
        self,
        key: Key,
        current: dict[str, Any] | None,
        content_type: str,
        body: Any,
        query: dict[str, str],
        dry: bool,
    ) -> tuple[int, dict[str, Any]]:
        ctype = content_type.split(";")[0].strip()
        if not isinstance(body, dict):
            return _status(400, "BadRequest", "the patch must be an object")
        if ctype == "application/apply-patch+yaml":
            if not query.get("fieldManager"):
                return _status(422, "Invalid", "fieldManager is required for apply requests")
            if body.get("kind") != KINDS.get(key[1], body.get("kind")):
                return _status(400, "BadRequest", "the body's kind does not match the path")
            merged = _merge(copy.deepcopy(current) if current else {}, body, by_name=True)
            code = 200 if current is not None else 201
        elif ctype in ("application/merge-patch+json", "application/strategic-merge-patch+json"):
            if current is None:
                return _not_found(key[1], key[3])
            strategic = ctype.startswith("application/strategic")
            merged = _merge(copy.deepcopy(current), body, by_name=strategic)
            code = 200
        else:
            return _status(415, "UnsupportedMediaType", f"content type {ctype} is not faked")
        merged = _stamp(merged, current)
        if not dry:
            self.objects[key] = merged
            self._settle(key)
            merged = self.objects[key]
        return code, copy.deepcopy(merged)

    def _settle(self, key: Key) -> None:
        """Play the controllers: rolled-out Deployments, finished Jobs."""
        if not self.settle:
            return
        obj = self.objects[key]
        kind = obj.get("kind") or KINDS.get(key[1])
        if kind == "Deployment":
            replicas = (obj.get("spec") or {}).get("replicas", 1)
            obj["status"] = {
                "observedGeneration": obj["metadata"].get("generation", 1),
                "replicas": replicas,
                "updatedReplicas": replicas,
                "readyReplicas": replicas,
                "availableReplicas": replicas,
                "conditions": [{"type": "Available", "status": "True"}],
            }
        elif kind == "Job" and not (obj.get("status") or {}).get("conditions"):
            failed = key[3] in self.failing_jobs
            condition = {"type": "Failed" if failed else "Complete", "status": "True"}
            if failed:
                condition["reason"] = "BackoffLimitExceeded"
            obj["status"] = {"conditions": [condition], "succeeded": 0 if failed else 1}


# --- helpers ---------------------------------------------------------------------------------


def _parse(path: str) -> tuple[str, str, str | None, str | None, str | None] | None:
    parts = [p for p in path.split("/") if p]
    if len(parts) >= 2 and parts[0] == "api":
        gv, rest = parts[1], parts[2:]
    elif len(parts) >= 3 and parts[0] == "apis":
        gv, rest = f"{parts[1]}/{parts[2]}", parts[3:]
    else:
        return None
    namespace = None
    if len(rest) >= 3 and rest[0] == "namespaces":
        namespace, rest = rest[1], rest[2:]
    if not rest or len(rest) > 3:
        return None
    plural = rest[0]
    name = rest[1] if len(rest) > 1 else None
    sub = rest[2] if len(rest) > 2 else None
    return gv, plural, namespace, name, sub


def _merge(into: dict[str, Any], patch: dict[str, Any], *, by_name: bool) -> dict[str, Any]:
    for key, value in patch.items():
        if value is None:
            into.pop(key, None)
        elif isinstance(value, dict) and isinstance(into.get(key), dict):
            _merge(into[key], value, by_name=by_name)
        elif by_name and _named(value) and _named(into.get(key)):
            items = {item["name"]: item for item in into[key]}
            for item in value:
                if item["name"] in items:
                    _merge(items[item["name"]], item, by_name=True)
                else:
                    items[item["name"]] = copy.deepcopy(item)
            into[key] = list(items.values())
        else:
            into[key] = copy.deepcopy(value)
    return into


def _named(items: Any) -> bool:
    return isinstance(items, list) and all(isinstance(i, dict) and "name" in i for i in items)


def _stamp(obj: dict[str, Any], before: dict[str, Any] | None) -> dict[str, Any]:
    meta = obj.setdefault("metadata", {})
    previous = (before or {}).get("metadata") or {}
    meta["uid"] = previous.get("uid") or meta.get("uid") or str(uuid.uuid4())
    meta.setdefault(
        "creationTimestamp",
        previous.get("creationTimestamp") or datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
    )
    meta["resourceVersion"] = str(int(previous.get("resourceVersion") or 0) + 1)
    generation = int(previous.get("generation") or 1)
    if before is not None and obj.get("spec") != before.get("spec"):
        generation += 1
    meta["generation"] = generation
    return obj


def _status(code: int, reason: str, message: str) -> tuple[int, dict[str, Any]]:
    return code, {
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": message,
        "reason": reason,
        "code": code,
    }


def _not_found(plural: str, name: str) -> tuple[int, dict[str, Any]]:
    return _status(404, "NotFound", f'{plural} "{name}" not found')


class _Handler(BaseHTTPRequestHandler):
    fake: FakeKubeAPI  # set on the subclass each server makes

    def _serve(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length) if length else b""
        code, body = self.fake.handle(
            self.command, self.path, self.headers.get("Content-Type") or "", raw
        )
        data = json.dumps(body).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    do_GET = do_PATCH = do_DELETE = do_POST = do_PUT = _serve

    def log_message(self, format: str, *args: Any) -> None:  # quiet
        pass


class FakeKubeServer:
    """The fake API on 127.0.0.1 and a free port, in a daemon thread; a context manager."""

    def __init__(self, fake: FakeKubeAPI | None = None) -> None:
        self.fake = fake or FakeKubeAPI()
        handler = type("FakeKubeHandler", (_Handler,), {"fake": self.fake})
        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self.httpd.daemon_threads = True
        self.fake.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self._thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def __enter__(self) -> FakeKubeAPI:
        self._thread.start()
        return self.fake

    def __exit__(self, *exc: object) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
        self._thread.join(timeout=5)
