"""MockCluster: a stand-in for a Kubernetes API, for the local runtime only.

No Kubernetes API server can run on these machines, so when a remediation names no cluster
it executes against this mock: a JSON file of objects (``<data dir>/mock-cluster.json``)
keyed by kind, namespace and name. It is a mock and says so everywhere it is shown (the
execution record's ``runtime`` is ``mock-cluster``); real clusters execute through their
connector's work pool (docs/operations.md).

What each action does to the stored object mirrors the Kubernetes call it stands for:
``apply`` stores the manifest, ``patch`` deep-merges (a ``null`` removes a key), ``scale``
sets ``spec.replicas``, ``restart`` stamps ``kubectl.kubernetes.io/restartedAt`` on the pod
template, ``rollback`` records the rollback, ``delete`` removes, ``cordon``/``uncordon`` set
``spec.unschedulable``, ``drain`` cordons, and ``wait`` succeeds at once (nothing runs in
the mock; a Job's condition is set complete). The mock starts with the objects it is given
(``initial``; the local runtime gives it the demo's Deployments with their real specs, so
that a dry-run diff shows what changes against what runs: ``512Mi → 2Gi``). An object a
step touches that the mock has never seen is first created as a skeleton (kind, metadata,
empty spec): the mock knows nothing else of a real cluster's objects.

``fail_steps`` makes the named steps fail when executed (not in a dry-run), for tests and
drills of the failure path.
"""

from __future__ import annotations

import copy
import json
import os
import tempfile
import threading
from collections.abc import Iterable, Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from neuralops.policy import object_key

RUNTIME = "mock-cluster"
_LOCK = threading.Lock()


class StepResult(BaseModel):
    name: str
    action: str
    target: str
    status: str  # Completed | Failed | Skipped
    message: str = ""
    duration_ms: int = 0


class MockCluster:
    """``initial``: the objects the mock starts with while its file does not exist yet
    (``object_key`` → object); the local runtime starts with the demo's workloads."""

    def __init__(
        self,
        path: Path,
        fail_steps: Iterable[str] = (),
        initial: Mapping[str, Any] | None = None,
    ) -> None:
        self.path = Path(path)
        self.fail_steps = set(fail_steps)
        self.initial = dict(initial or {})

    # --- state -------------------------------------------------------------------------

    def _load(self) -> dict[str, Any]:
        try:
            return json.loads(self.path.read_text())
        except FileNotFoundError:
            return copy.deepcopy(self.initial)

    def reset(self) -> None:
        """Start again from the initial objects (the demo does, with each new incident)."""
        self._save(copy.deepcopy(self.initial))

    def _save(self, objects: Mapping[str, Any]) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        handle, temp = tempfile.mkstemp(dir=self.path.parent, prefix=".mock-cluster.")
        with os.fdopen(handle, "w") as out:
            json.dump(objects, out, indent=1, sort_keys=True)
        os.replace(temp, self.path)

    @staticmethod
    def key(kind: str, namespace: str | None, name: str) -> str:
        return object_key(kind, namespace, name)  # the same keys the dry-run diff reads

    def get(self, kind: str, namespace: str | None, name: str) -> dict[str, Any] | None:
        return self._load().get(self.key(kind, namespace, name))

    def snapshot(self, steps: Iterable[Any]) -> dict[str, Any]:
        """The current objects the steps target (None where absent): pre- and post-state."""
        objects = self._load()
        out: dict[str, Any] = {}
        for step in steps:
            kind, namespace, name = _target(step)
            if kind:
                key = self.key(kind, namespace, name)
                out[key] = copy.deepcopy(objects.get(key))
        return out

    # --- actions -----------------------------------------------------------------------

    def execute(self, steps: Iterable[Any], *, dry_run: bool = False) -> list[StepResult]:
        """Run the rendered steps in order; stop at the first failure. ``dry_run`` computes
        the results without saving (the server-side dry-run of a real API)."""
        with _LOCK:
            objects = self._load()
            results: list[StepResult] = []
            failed = False
            for step in steps:
                kind, namespace, name = _target(step)
                label = self.key(kind, namespace, name) if kind else step.name
                if failed:
                    results.append(
                        StepResult(
                            name=step.name, action=step.action, target=label, status="Skipped"
                        )
                    )
                    continue
                started = datetime.now(UTC)
                try:
                    if step.name in self.fail_steps and not dry_run:
                        raise RuntimeError(f"step {step.name} failed (injected by the mock)")
                    message = self._apply(objects, step, kind, namespace, name)
                    status = "Completed"
                except (RuntimeError, KeyError, ValueError) as exc:
                    message, status, failed = str(exc), "Failed", True
                elapsed = int((datetime.now(UTC) - started).total_seconds() * 1000)
                results.append(
                    StepResult(
                        name=step.name,
                        action=step.action,
                        target=label,
                        status=status,
                        message=message,
                        duration_ms=elapsed,
                    )
                )
            if not dry_run and not failed:
                self._save(objects)
            return results

    def _apply(
        self, objects: dict[str, Any], step: Any, kind: str, namespace: str | None, name: str
    ) -> str:
        action = str(step.action)
        key = self.key(kind, namespace, name)
        if action == "apply":
            body = copy.deepcopy(step.manifest)
            objects[key] = body
            return f"applied {key}"
        if action == "delete":
            known = objects.pop(key, None) is not None
            return f"deleted {key}" + ("" if known else " (the mock had no record of it)")
        obj = objects.setdefault(key, _skeleton(kind, namespace, name))
        if action == "patch":
            _merge(obj, step.patch or {})
            return f"patched {key}"
        if action == "scale":
            obj.setdefault("spec", {})["replicas"] = int(step.replicas)
            return f"scaled {key} to {int(step.replicas)}"
        if action == "restart":
            template = obj.setdefault("spec", {}).setdefault("template", {})
            annotations = template.setdefault("metadata", {}).setdefault("annotations", {})
            annotations["kubectl.kubernetes.io/restartedAt"] = datetime.now(UTC).isoformat()
            return f"restarted {key}"
        if action == "rollback":
            obj.setdefault("metadata", {}).setdefault("annotations", {})[
                "neuralops.io/rolled-back-at"
            ] = datetime.now(UTC).isoformat()
            return f"rolled back {key}"
        if action in ("cordon", "drain", "uncordon"):
            obj.setdefault("spec", {})["unschedulable"] = action != "uncordon"
            return f"{action}ed {key}" if action != "drain" else f"drained {key}"
        if action == "wait":
            obj.setdefault("status", {})["conditions"] = [
                {"type": "Complete" if kind == "Job" else "Ready", "status": "True"}
            ]
            return f"{key}: {step.condition} (the mock satisfies waits at once)"
        raise ValueError(f"action {action} is not supported by the mock cluster")


def _target(step: Any) -> tuple[str, str | None, str]:
    if getattr(step, "target", None) is not None:
        t = step.target
        return _get(t, "kind"), _get(t, "namespace"), _get(t, "name")
    manifest = getattr(step, "manifest", None) or {}
    meta = manifest.get("metadata", {})
    return manifest.get("kind", ""), meta.get("namespace"), meta.get("name", "")


def _get(obj: Any, field: str) -> Any:
    return obj.get(field) if isinstance(obj, Mapping) else getattr(obj, field, None)


def _skeleton(kind: str, namespace: str | None, name: str) -> dict[str, Any]:
    meta = {"name": name} | ({"namespace": namespace} if namespace else {})
    return {"kind": kind, "metadata": meta, "spec": {}}


def _merge(into: dict[str, Any], patch: Mapping[str, Any]) -> None:
    """JSON merge patch (RFC 7386): dicts merge, None removes, everything else replaces."""
    for key, value in patch.items():
        if value is None:
            into.pop(key, None)
        elif isinstance(value, Mapping) and isinstance(into.get(key), dict):
            _merge(into[key], value)
        else:
            into[key] = copy.deepcopy(value)
