"""Rendering a playbook for one incident, and the policy checks its dry-run must pass.

``resolve_parameters`` fills a manifest's parameters: values given with the incident win,
then what the alert labels say (the namespace, the workload), then the parameter's default,
then its example. ``render`` substitutes ``{{ name }}`` placeholders in the steps and the
scope. ``check`` then rejects what no playbook may do, whoever approves it: deleting
namespaces or volumes, scaling a workload to zero, privileged pods, host paths, wildcard
RBAC, anything outside the playbook's declared scope, a string parameter without a pattern
reaching a container's command, args or image, and an image outside the playbook's
``allowed_images``. ``diff`` shows an approver what each step would change; ``plan_digest``
is what an approval binds to.
"""

from __future__ import annotations

import copy
import difflib
import hashlib
import json
import re
from collections.abc import Iterator, Mapping
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from neuralops.errors import FieldProblem, InvalidInput
from neuralops.incident_model import _POD_SUFFIX
from neuralops.manifest import (
    PLACEHOLDER,
    Action,
    Manifest,
    Parameter,
    ParamType,
    Scope,
    Step,
    image_allowed,
)

# Parameters that name the workload an alert is about, filled from the labels that name it.
WORKLOAD_PARAMETERS = ("deployment", "statefulset", "service", "target", "app")
_WORKLOAD_LABELS = ("service", "deployment", "statefulset", "app")
# Parameters read straight from a label (kube-state-metrics names). Deliberately short:
# `cluster` and `job` labels mean something else in Prometheus (the cluster, the scrape job).
LABEL_PARAMETERS: dict[str, tuple[str, ...]] = {
    "namespace": ("namespace",),
    "container": ("container",),
    "node": ("node",),
    "pvc": ("persistentvolumeclaim", "pvc"),
    "hpa": ("horizontalpodautoscaler", "hpa"),
    "job_name": ("job_name",),
}

Rule = Literal[
    "delete-namespace",
    "delete-volume",
    "scale-to-zero",
    "privileged",
    "host-path",
    "wildcard-rbac",
    "out-of-scope-kind",
    "out-of-scope-namespace",
    "unconstrained-parameter",
    "image-not-allowed",
]
RULES: tuple[str, ...] = Rule.__args__  # type: ignore[attr-defined]
# What each rule makes sure of, for the approver (the dry-run artifact lists every rule).
RULE_CHECKS: dict[str, str] = {
    "delete-namespace": "no step deletes a namespace",
    "delete-volume": "no step deletes a volume, claim or storage class",
    "scale-to-zero": "no workload is scaled to 0 replicas",
    "privileged": "no privileged container, privilege escalation, host namespaces or "
    "dangerous capabilities",
    "host-path": "no host path is mounted or exposed",
    "wildcard-rbac": "no RBAC rule grants '*', no binding to cluster-admin",
    "out-of-scope-kind": "every object is of a kind the playbook declares",
    "out-of-scope-namespace": "every object is in a namespace the playbook declares",
    "unconstrained-parameter": "every string parameter reaching a container's command, args "
    "or image has a pattern or a values list",
    "image-not-allowed": "every image is in the playbook's allowed_images",
}

VOLUME_KINDS = {"persistentvolume", "persistentvolumeclaim", "storageclass"}
WORKLOAD_KINDS = {"deployment", "statefulset", "replicaset"}
RBAC_ROLE_KINDS = {"role", "clusterrole"}
RBAC_BINDING_KINDS = {"rolebinding", "clusterrolebinding"}
DANGEROUS_CAPABILITIES = {"SYS_ADMIN", "ALL"}
# Kinds that live outside namespaces. Any other kind (custom resources included) is treated
# as namespaced, so a step that names no namespace for it cannot land in `default` unseen.
CLUSTER_SCOPED_KINDS = {
    k.lower()
    for k in (
        "Namespace",
        "Node",
        "PersistentVolume",
        "StorageClass",
        "ClusterRole",
        "ClusterRoleBinding",
        "CustomResourceDefinition",
        "PriorityClass",
        "IngressClass",
        "RuntimeClass",
        "CSIDriver",
        "CSINode",
        "VolumeAttachment",
        "CertificateSigningRequest",
        "MutatingWebhookConfiguration",
        "ValidatingWebhookConfiguration",
        "ValidatingAdmissionPolicy",
        "APIService",
        "ClusterIssuer",
    )
}
# Keys under which Kubernetes only accepts strings, so a bare placeholder there stays text
# even when its parameter is an integer or a boolean (EnvVar.value, labels, args...).
_STRING_MAPS = {"labels", "annotations", "data", "stringData", "nodeSelector", "matchLabels"}
_STRING_LISTS = {"args", "command", "values"}
_STRING_KEYS = {"name", "namespace", "image", "claimName", "secretName"}


# --- parameters ----------------------------------------------------------------------------


class ResolvedParameter(BaseModel):
    value: Any
    source: str = Field(description="given, label <name>, default or example")


def resolve_parameters(
    manifest: Manifest,
    given: Mapping[str, Any],
    labels: Mapping[str, str] | None = None,
    *,
    use_examples: bool = True,
) -> dict[str, Any]:
    """Every parameter's value: given, else from the labels, else its default, else its example.

    Raises InvalidInput naming each unknown, invalid or missing parameter.
    """
    resolved = resolve_parameter_sources(manifest, given, labels, use_examples=use_examples)
    return {name: r.value for name, r in resolved.items()}


def resolve_parameter_sources(
    manifest: Manifest,
    given: Mapping[str, Any],
    labels: Mapping[str, str] | None = None,
    *,
    use_examples: bool = True,
) -> dict[str, ResolvedParameter]:
    """``resolve_parameters`` with where each value came from (for the approval artifact)."""
    labels = labels or {}
    declared = {p.name: p for p in manifest.parameters}
    problems: list[FieldProblem] = []
    unknown = sorted(set(given) - set(declared))
    for name in unknown:
        takes = ", ".join(declared) or "no parameters"
        problems.append(
            FieldProblem(f"parameters.{name}", f"unknown parameter; {manifest.id} takes {takes}")
        )
    resolved: dict[str, ResolvedParameter] = {}
    images = image_parameters(manifest)
    for param in manifest.parameters:
        value = given.get(param.name)
        if value is not None:
            value = _coerce(param, value)
            if problem := value_problem(manifest, param, value, images):
                problems.append(FieldProblem(f"parameters.{param.name}", f"{value!r} {problem}"))
            else:
                resolved[param.name] = ResolvedParameter(value=value, source="given")
            continue
        label_notes: list[str] = []
        for label, raw in _label_candidates(param.name, labels):
            value = _coerce(param, raw)
            if problem := value_problem(manifest, param, value, images):
                # A label that does not fit (cAdvisor's container="POD") is skipped, not fatal.
                label_notes.append(f"label {label}={raw!r} {problem}")
                continue
            resolved[param.name] = ResolvedParameter(value=value, source=f"label {label}")
            break
        else:
            if param.default is not None:
                resolved[param.name] = ResolvedParameter(value=param.default, source="default")
            elif use_examples and param.example is not None:
                resolved[param.name] = ResolvedParameter(value=param.example, source="example")
            elif param.required:
                hint = f" ({'; '.join(label_notes)})" if label_notes else ""
                problems.append(
                    FieldProblem(
                        f"parameters.{param.name}",
                        f"is required and nothing gives it{hint}: {param.description.rstrip('.')}"
                        f". Give it as a parameter, {param.name}=<{param.type.value}>",
                    )
                )
    if problems:
        lines = "; ".join(f"{p.field}: {p.message}" for p in problems)
        raise InvalidInput(f"playbook {manifest.id}: {lines}", problems)
    return resolved


def value_problem(
    manifest: Manifest, param: Parameter, value: Any, images: set[str] | None = None
) -> str | None:
    """Why ``value`` may not be ``param``'s, or None: its type, pattern, values and bounds, and
    for a parameter that gives a container image, the manifest's ``allowed_images``. Every
    value passes here whatever its source (given, a label, a precedent run, a default)."""
    if problem := param.check(value):
        return problem
    images = image_parameters(manifest) if images is None else images
    if param.name in images and not image_allowed(str(value), manifest.allowed_images):
        allowed = ", ".join(manifest.allowed_images) or "none declared"
        return f"names image {value!r}, which is not in the playbook's allowed_images ({allowed})"
    return None


def _label_candidates(name: str, labels: Mapping[str, str]) -> Iterator[tuple[str, str]]:
    """(label, value) pairs that may give parameter ``name``, best first."""
    keys: tuple[str, ...] = LABEL_PARAMETERS.get(name, ())
    if name in WORKLOAD_PARAMETERS:
        keys = tuple(dict.fromkeys((name, *_WORKLOAD_LABELS)))
    for key in keys:
        value = str(labels.get(key) or "").strip()
        if value:
            yield key, value
    if name in WORKLOAD_PARAMETERS and (pod := str(labels.get("pod") or "").strip()):
        # api-7d9f8b6c5-x2x9z -> api; web-0 -> web
        yield "pod", _POD_SUFFIX.sub("", pod)


_INTEGER = re.compile(r"^[+-]?\d+$")
_TRUE, _FALSE = {"true", "yes", "1", "on"}, {"false", "no", "0", "off"}


def _coerce(param: Parameter, value: Any) -> Any:
    """Text from a label or a command line ("5", "true") as the parameter's type; else as is."""
    if not isinstance(value, str) or param.type is ParamType.string:
        return value
    text = value.strip()
    if param.type is ParamType.integer and _INTEGER.match(text):
        return int(text)
    if param.type is ParamType.number:
        try:
            return int(text) if _INTEGER.match(text) else float(text)
        except ValueError:
            return value
    if param.type is ParamType.boolean and text.lower() in _TRUE | _FALSE:
        return text.lower() in _TRUE
    return value


# --- rendering -----------------------------------------------------------------------------


class RenderedStep(Step):
    """A step with every placeholder substituted; ``replicas`` is a number by now."""

    replicas: int | None = Field(None, ge=0)


class RenderedPlaybook(BaseModel):
    model_config = ConfigDict(extra="forbid")

    playbook_id: str
    version: str
    parameters: dict[str, Any]
    scope: Scope
    steps: list[RenderedStep]


class GuidanceOnly(InvalidInput):
    """A ``kind: runbook`` playbook was asked to run: runbooks are guidance, never executed."""

    def __init__(self, manifest: Manifest) -> None:
        where = f" ({manifest.links[0].url})" if manifest.links else ""
        super().__init__(
            f"playbook {manifest.id} is a runbook: guidance for a person{where}, never executed "
            "by NeuralOps; follow it by hand, or choose a remediation playbook",
            [FieldProblem("kind", "runbook playbooks are never executed")],
        )


def refuse_guidance(manifest: Manifest) -> None:
    """Raise GuidanceOnly for a runbook: nothing renders, dry-runs or executes it."""
    if manifest.is_runbook:
        raise GuidanceOnly(manifest)


def render(manifest: Manifest, parameters: Mapping[str, Any]) -> RenderedPlaybook:
    """Substitute ``{{ name }}`` in the steps and the scope. A runbook (guidance only) is
    refused (GuidanceOnly): it is never executed.

    A string that is exactly one placeholder takes the parameter's typed value (an integer
    stays an integer), except where Kubernetes only takes strings (env values, labels,
    args); anywhere else the value is interpolated as text. A placeholder without a value,
    an undeclared or invalid parameter raises InvalidInput.
    """
    refuse_guidance(manifest)
    declared = {p.name: p for p in manifest.parameters}
    images = image_parameters(manifest)
    problems: list[FieldProblem] = []
    for name, value in parameters.items():
        if name not in declared:
            problems.append(FieldProblem(f"parameters.{name}", "is not declared by the playbook"))
        elif problem := value_problem(manifest, declared[name], value, images):
            problems.append(FieldProblem(f"parameters.{name}", f"{value!r} {problem}"))
        elif isinstance(value, str) and PLACEHOLDER.search(value):
            # Values are substituted once; one that looks like a placeholder is a mistake or
            # an attempt to smuggle another parameter in.
            problems.append(FieldProblem(f"parameters.{name}", "contains a {{ placeholder }}"))
    if problems:
        lines = "; ".join(f"{p.field}: {p.message}" for p in problems)
        raise InvalidInput(f"playbook {manifest.id}: {lines}", problems)

    renderer = _Renderer(parameters)
    assert manifest.scope is not None  # a remediation always has one (Manifest._fits_kind)
    scope = Scope(
        namespaces=[renderer.text(ns) for ns in manifest.scope.namespaces],
        kinds=list(manifest.scope.kinds),
    )
    raw_steps = []
    for step in manifest.steps:
        data = step.model_dump(mode="json", exclude_none=True)
        data["description"] = renderer.text(data["description"])
        if "target" in data:
            data["target"] = {k: renderer.text(v) for k, v in data["target"].items()}
        for key in ("manifest", "patch"):
            if key in data:
                data[key] = renderer.value(data[key], ())
        if "replicas" in data:
            data["replicas"] = renderer.value(data["replicas"], ())
        if "condition" in data:
            data["condition"] = renderer.text(data["condition"])
        raw_steps.append(data)
    if renderer.missing:
        names = ", ".join(sorted(renderer.missing))
        raise InvalidInput(
            f"playbook {manifest.id}: no value for parameters {names}: resolve them first",
            [FieldProblem(f"parameters.{n}", "has no value") for n in sorted(renderer.missing)],
        )
    steps: list[RenderedStep] = []
    for data in raw_steps:
        try:
            steps.append(RenderedStep.model_validate(data))
        except ValidationError as exc:
            raise InvalidInput.from_validation(
                exc, f"playbook {manifest.id} step {data['name']} (rendered)"
            ) from None
    return RenderedPlaybook(
        playbook_id=manifest.id,
        version=manifest.version,
        parameters=dict(parameters),
        scope=scope,
        steps=steps,
    )


def _as_text(value: Any) -> str:
    if isinstance(value, bool):  # YAML/Kubernetes spelling, not Python's True
        return "true" if value else "false"
    return str(value)


class _Renderer:
    def __init__(self, parameters: Mapping[str, Any]) -> None:
        self.parameters = parameters
        self.missing: set[str] = set()

    def _lookup(self, match: re.Match[str]) -> str:
        name = match.group(1)
        if name not in self.parameters:
            self.missing.add(name)
            return match.group(0)
        # One pass: a value that itself contains "{{ x }}" is not expanded again.
        return _as_text(self.parameters[name])

    def text(self, value: str) -> str:
        return PLACEHOLDER.sub(self._lookup, value)

    def typed(self, value: str) -> Any:
        whole = PLACEHOLDER.fullmatch(value)
        if whole and whole.group(1) in self.parameters:
            return self.parameters[whole.group(1)]
        return self.text(value)

    def value(self, value: Any, path: tuple[str | int, ...]) -> Any:
        if isinstance(value, str):
            return self.text(value) if _string_only(path) else self.typed(value)
        if isinstance(value, dict):
            return {self.text(str(k)): self.value(v, (*path, str(k))) for k, v in value.items()}
        if isinstance(value, list):
            return [self.value(v, (*path, i)) for i, v in enumerate(value)]
        return value


def _string_only(path: tuple[str | int, ...]) -> bool:
    if path and path[-1] in _STRING_KEYS:
        return True
    if any(isinstance(p, str) and p in _STRING_MAPS for p in path[:-1]):
        return True
    if len(path) >= 3 and path[-1] == "value" and path[-3] == "env":
        return True
    return len(path) >= 2 and isinstance(path[-1], int) and path[-2] in _STRING_LISTS


# --- policy checks -------------------------------------------------------------------------


class Violation(BaseModel):
    step: str
    rule: Rule
    message: str = Field(description="What the step would do, in words an approver reads.")


# --- what reaches a shell or an image --------------------------------------------------------

_SHELL_KEYS = ("command", "args")


def _container_strings(step: Step) -> Iterator[tuple[str, str, str]]:
    """(where, path, text) for each string of a step's manifest or patch that is a container
    ``image`` or part of a ``command``/``args`` (where: image, command or args)."""
    for field in ("manifest", "patch"):
        body = getattr(step, field)
        if body is not None:
            yield from _strings(body, (field,))


def _strings(value: Any, path: tuple[str | int, ...]) -> Iterator[tuple[str, str, str]]:
    if isinstance(value, dict):
        for key, item in value.items():
            yield from _strings(item, (*path, str(key)))
    elif isinstance(value, list):
        for index, item in enumerate(value):
            yield from _strings(item, (*path, index))
    elif isinstance(value, str):
        dotted = ".".join(str(p) for p in path)
        if path[-1] == "image":
            yield "image", dotted, value
            return
        shell = [p for p in path if isinstance(p, str) and p in _SHELL_KEYS]
        if shell:
            yield shell[-1], dotted, value


def image_parameters(manifest: Manifest) -> set[str]:
    """Parameters that are a whole container image (``image: "{{ name }}"``): their values
    must match ``allowed_images`` wherever they come from. An image that only contains a
    placeholder (``postgres:{{ tag }}``) is checked once rendered, by ``check``."""
    found = set()
    for step in manifest.steps:
        for where, _, text in _container_strings(step):
            if where == "image" and (whole := PLACEHOLDER.fullmatch(text.strip())):
                found.add(whole.group(1))
    return found


def _image_violation(step: str, image: str, path: str, manifest: Manifest) -> Violation:
    allowed = ", ".join(manifest.allowed_images)
    return Violation(
        step=step,
        rule="image-not-allowed",
        message=f"step {step}: runs image {image!r} ({path}), which is not in the playbook's "
        f"allowed_images ({allowed})",
    )


def manifest_problems(manifest: Manifest) -> list[Violation]:
    """What makes a manifest unsafe whatever its parameters' values: a string parameter with
    neither a pattern nor a values list interpolated into a container's command, args or image
    (a shell or an image of the caller's choosing), an image from a parameter without
    ``allowed_images``, a literal image, default or example outside ``allowed_images``.
    Registration refuses such a manifest; a dry-run reports these as violations."""
    declared = {p.name: p for p in manifest.parameters}
    found: list[Violation] = []

    def add(violation: Violation) -> None:
        if violation not in found:
            found.append(violation)

    for step in manifest.steps:
        for where, path, text in _container_strings(step):
            names = list(dict.fromkeys(PLACEHOLDER.findall(text)))
            for name in names:
                param = declared.get(name)
                if param is None:  # undeclared placeholders are refused by the manifest itself
                    continue
                if not param.constrained:
                    add(
                        Violation(
                            step=step.name,
                            rule="unconstrained-parameter",
                            message=f"step {step.name}: string parameter '{name}' reaches the "
                            f"container's {where} ({path}) unconstrained: add a pattern (or a "
                            f"values list) to parameter '{name}' that admits only safe values",
                        )
                    )
                if where != "image":
                    continue
                if not manifest.allowed_images:
                    add(
                        Violation(
                            step=step.name,
                            rule="image-not-allowed",
                            message=f"step {step.name}: the container image ({path}) comes "
                            f"from parameter '{name}', but the playbook declares no "
                            "allowed_images: add allowed_images listing the images it may run",
                        )
                    )
                    continue
                if PLACEHOLDER.fullmatch(text.strip()):
                    for field in ("default", "example"):
                        value = getattr(param, field)
                        if value is None or image_allowed(str(value), manifest.allowed_images):
                            continue
                        where_from = f"parameter {name}'s {field}"
                        add(_image_violation(step.name, str(value), where_from, manifest))
            literal = where == "image" and not names and manifest.allowed_images
            if literal and not image_allowed(text, manifest.allowed_images):
                add(_image_violation(step.name, text, path, manifest))
    return found


def check_registrable(manifests: list[Manifest]) -> None:
    """Raise InvalidInput naming each playbook, step and parameter ``manifest_problems``
    finds, with the fix; return if there are none."""
    problems = [
        FieldProblem(f"{manifest.id}.steps.{v.step}", v.message)
        for manifest in manifests
        for v in manifest_problems(manifest)
    ]
    if problems:
        lines = "\n".join(f"playbook {p.field.split('.')[0]}: {p.message}" for p in problems)
        raise InvalidInput(lines, problems)


def check(manifest: Manifest, rendered: RenderedPlaybook) -> list[Violation]:
    """Every policy violation of the rendered steps; empty means the dry-run may pass."""
    refuse_guidance(manifest)
    assert manifest.scope is not None  # a remediation always has one (Manifest._fits_kind)
    scope_kinds = {k.lower() for k in manifest.scope.kinds}
    namespaces = rendered.scope.namespaces
    found: list[Violation] = manifest_problems(manifest)
    for step in rendered.steps:

        def flag(rule: Rule, what: str, step: RenderedStep = step) -> None:
            violation = Violation(step=step.name, rule=rule, message=f"step {step.name}: {what}")
            if violation not in found:
                found.append(violation)

        if manifest.allowed_images:
            for where, path, text in _container_strings(step):
                if where != "image" or image_allowed(text, manifest.allowed_images):
                    continue
                if (image := _image_violation(step.name, text, path, manifest)) not in found:
                    found.append(image)

        objects: list[tuple[str, str | None, str]] = []  # (kind, namespace, name) touched
        if step.target is not None:
            objects.append((step.target.kind, step.target.namespace, step.target.name))
        if step.manifest is not None:
            objects.append(_manifest_ref(step.manifest))

        for kind, namespace, name in objects:
            ref = _ref(kind, namespace, name)
            if not kind:
                flag("out-of-scope-kind", f"applies a manifest without a kind ({ref})")
            elif kind.lower() not in scope_kinds:
                allowed = ", ".join(manifest.scope.kinds)
                flag("out-of-scope-kind", f"acts on {ref}, a kind outside the scope ({allowed})")
            if namespace:
                if not namespaces:
                    flag(
                        "out-of-scope-namespace",
                        f"acts on {ref} in namespace {namespace}, but the playbook declares no "
                        "namespaces (cluster-scoped objects only)",
                    )
                elif namespace not in namespaces:
                    flag(
                        "out-of-scope-namespace",
                        f"acts on {ref}, outside the playbook's namespaces "
                        f"({', '.join(namespaces)})",
                    )
            elif kind and kind.lower() not in CLUSTER_SCOPED_KINDS:
                flag(
                    "out-of-scope-namespace",
                    f"acts on {ref} without naming its namespace (it would use the default "
                    "namespace); namespaced objects must name one of the scope's namespaces",
                )

        if step.action is Action.delete and step.target is not None:
            kind, ref = step.target.kind.lower(), _target_ref(step)
            if kind == "namespace":
                flag("delete-namespace", f"deletes {ref} and everything in it")
            elif kind in VOLUME_KINDS:
                flag("delete-volume", f"deletes {ref}; the data on it would be lost")

        if step.action is Action.scale and step.replicas == 0 and step.target is not None:
            flag("scale-to-zero", f"scales {_target_ref(step)} to 0 replicas")

        for kind, namespace, name, body in _bodies(step):
            ref = _ref(kind, namespace, name)
            if kind.lower() in WORKLOAD_KINDS and _is_zero(_get(body, "spec", "replicas")):
                flag("scale-to-zero", f"scales {ref} to 0 replicas")
            for rule, what in _pod_problems(body):
                flag(rule, f"{what} in {ref}")
            if kind.lower() == "persistentvolume" and _get(body, "spec", "hostPath"):
                path = _get(body, "spec", "hostPath", "path") or "?"
                flag("host-path", f"{ref} exposes host path {path} of a node")
            for what in _rbac_problems(kind, body):
                flag("wildcard-rbac", f"{ref} {what}")
    return found


def _ref(kind: str, namespace: str | None, name: str) -> str:
    return f"{kind or 'object'} {namespace}/{name}" if namespace else f"{kind or 'object'} {name}"


def _target_ref(step: RenderedStep) -> str:
    assert step.target is not None
    return _ref(step.target.kind, step.target.namespace, step.target.name)


def _bodies(step: RenderedStep) -> Iterator[tuple[str, str | None, str, dict[str, Any]]]:
    """The object bodies a step writes: an applied manifest, or a patch of its target."""
    if step.manifest is not None:
        yield (*_manifest_ref(step.manifest), step.manifest)
    if step.patch is not None and step.target is not None:
        yield step.target.kind, step.target.namespace, step.target.name, step.patch


def _manifest_ref(manifest: dict[str, Any]) -> tuple[str, str | None, str]:
    namespace = _get(manifest, "metadata", "namespace")
    return (
        str(manifest.get("kind") or ""),
        str(namespace) if namespace else None,
        str(_get(manifest, "metadata", "name") or "?"),
    )


def _get(body: Any, *keys: str) -> Any:
    for key in keys:
        if not isinstance(body, dict):
            return None
        body = body.get(key)
    return body


def _is_true(value: Any) -> bool:
    return value is True or (isinstance(value, str) and value.strip().lower() == "true")


def _is_zero(value: Any) -> bool:
    return (isinstance(value, int) and not isinstance(value, bool) and value == 0) or (
        isinstance(value, str) and value.strip() == "0"
    )


def _pod_specs(body: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """Pod specs in a Pod, a workload's template, or a CronJob's job template."""
    for keys in (
        ("spec",),
        ("spec", "template", "spec"),
        ("spec", "jobTemplate", "spec", "template", "spec"),
    ):
        spec = _get(body, *keys)
        if isinstance(spec, dict):
            yield spec


def _pod_problems(body: dict[str, Any]) -> Iterator[tuple[Rule, str]]:
    for spec in _pod_specs(body):
        for field in ("hostNetwork", "hostPID", "hostIPC"):
            if _is_true(spec.get(field)):
                yield "privileged", f"sets {field}: true (the pod shares the node's namespaces)"
        for volume in spec.get("volumes") or []:
            if isinstance(volume, dict) and volume.get("hostPath"):
                path = _get(volume, "hostPath", "path") or "?"
                yield "host-path", f"mounts host path {path} (volume '{volume.get('name')}')"
        for key in ("initContainers", "containers", "ephemeralContainers"):
            for container in spec.get(key) or []:
                if not isinstance(container, dict):
                    continue
                who = f"container '{container.get('name', '?')}'"
                context = container.get("securityContext") or {}
                if not isinstance(context, dict):
                    continue
                if _is_true(context.get("privileged")):
                    yield "privileged", f"{who} runs privileged"
                if _is_true(context.get("allowPrivilegeEscalation")):
                    yield "privileged", f"{who} allows privilege escalation"
                added = _get(context, "capabilities", "add") or []
                caps = {str(c).upper().removeprefix("CAP_") for c in added}
                if bad := sorted(caps & DANGEROUS_CAPABILITIES):
                    yield "privileged", f"{who} adds capabilities {', '.join(bad)}"


def _rbac_problems(kind: str, body: dict[str, Any]) -> Iterator[str]:
    kind = kind.lower()
    if kind in RBAC_ROLE_KINDS:
        for i, rule in enumerate(body.get("rules") or []):
            if not isinstance(rule, dict):
                continue
            for field in ("verbs", "resources", "apiGroups", "nonResourceURLs"):
                if "*" in (rule.get(field) or []):
                    yield f"grants '*' in {field} (rule {i + 1}); name what it needs instead"
    if kind in RBAC_BINDING_KINDS and _get(body, "roleRef", "name") == "cluster-admin":
        yield "binds the cluster-admin role"


# --- diff ----------------------------------------------------------------------------------


def object_key(kind: str, namespace: str | None, name: str) -> str:
    """Key of one object in a pre-state mapping: ``Kind/namespace/name`` or ``Kind/name``."""
    return f"{kind}/{namespace}/{name}" if namespace else f"{kind}/{name}"


def diff(rendered: RenderedPlaybook, pre_state: Mapping[str, Any] | None = None) -> str:
    """What each step would change, for the dry-run artifact.

    ``pre_state`` maps ``object_key(...)`` to the object as it is now (None if absent).
    Without it, the rendered steps are shown as YAML. Patches are merged the way a
    strategic-merge patch would for the common cases (maps merge, lists of named items
    merge by name, other lists are replaced); the API server has the last word.
    """
    parts: list[str] = []
    for number, step in enumerate(rendered.steps, 1):
        header = f"# step {number}: {step.name} ({step.action.value}) - {step.description}"
        if pre_state is None:
            body = step.model_dump(mode="json", exclude_none=True)
            for key in ("name", "description"):
                body.pop(key, None)
            parts.append(f"{header}\n{_yaml(body)}")
            continue
        parts.append(f"{header}\n{_step_diff(step, pre_state)}")
    return "\n".join(parts)


def changes(rendered: RenderedPlaybook, pre_state: Mapping[str, Any]) -> list[str]:
    """Each field a step changes in an object whose current state is known, one line each:
    ``Deployment/payments/api: spec...containers[api].resources.limits.memory: 512Mi → 2Gi``.
    Objects are followed from step to step; an object not in ``pre_state`` (unknown) is left
    to the diff. Lists of named items are matched by name."""
    state = {key: copy.deepcopy(value) for key, value in pre_state.items()}
    found: list[str] = []
    for step in rendered.steps:
        target = step.target
        key = object_key(target.kind, target.namespace, target.name) if target else None
        if step.action is Action.apply and step.manifest is not None:
            key = object_key(*_manifest_ref(step.manifest))
            if key not in state:
                continue
            before = state[key]
            after = _merge(before, step.manifest) if before else step.manifest
        elif key is None or key not in state:
            continue
        else:
            before = state[key]
            if step.action is Action.patch and step.patch is not None:
                after = _merge(before or {}, step.patch)
            elif step.action is Action.scale:
                after = _merge(before or {}, {"spec": {"replicas": step.replicas}})
            elif step.action is Action.delete:
                if before is not None:
                    found.append(f"`{key}`: deleted")
                state[key] = None
                continue
            else:
                continue
        if before is None:
            found.append(f"`{key}`: created")
        else:
            found += [
                f"`{key}`: `{path}`: {old} → {new}" for path, old, new in _leaves(before, after)
            ]
        state[key] = after
    return found


def _leaves(before: Any, after: Any, path: str = "") -> Iterator[tuple[str, str, str]]:
    """(path, old, new) of each leaf that differs; lists of named items matched by name."""
    if isinstance(before, dict) and isinstance(after, dict):
        for key in list(dict.fromkeys([*before, *after])):
            yield from _leaves(before.get(key), after.get(key), f"{path}.{key}" if path else key)
    elif _named(before) and _named(after) and before and after:
        old = {item["name"]: item for item in before}
        new = {item["name"]: item for item in after}
        for name in list(dict.fromkeys([*old, *new])):
            yield from _leaves(old.get(name), new.get(name), f"{path}[{name}]")
    elif before != after:
        yield path, _shown(before), _shown(after)


def _shown(value: Any) -> str:
    if value is None:
        return "(none)"
    text = json.dumps(value, sort_keys=True) if isinstance(value, dict | list) else str(value)
    return f"`{text if len(text) <= 80 else text[:77] + '...'}`"


class _Dumper(yaml.SafeDumper):
    """Block style for multi-line strings (scripts in Job args stay readable)."""


def _str(dumper: yaml.SafeDumper, value: str) -> yaml.ScalarNode:
    style = "|" if "\n" in value else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)


_Dumper.add_representer(str, _str)


def _yaml(data: Any) -> str:
    return yaml.dump(data, Dumper=_Dumper, sort_keys=False, default_flow_style=False, width=100)


def _unified(before: Any, after: Any, label: str) -> str:
    old = _yaml(before).splitlines(keepends=True) if before is not None else []
    new = _yaml(after).splitlines(keepends=True) if after is not None else []
    lines = difflib.unified_diff(old, new, f"{label} (now)", f"{label} (after)", n=3)
    return "".join(lines) or f"(no change to {label})\n"


def _step_diff(step: RenderedStep, pre_state: Mapping[str, Any]) -> str:
    target = step.target
    key = object_key(target.kind, target.namespace, target.name) if target else None
    current = pre_state.get(key) if key else None
    known = key is not None and key in pre_state
    if step.action is Action.apply and step.manifest is not None:
        key = object_key(*_manifest_ref(step.manifest))
        current = pre_state.get(key)
        after = _merge(current, step.manifest) if current else step.manifest
        return _unified(current, after, key)
    if step.action is Action.patch and step.patch is not None:
        if not known:
            return f"(current state of {key} unknown) patch:\n{_yaml(step.patch)}"
        return _unified(current, _merge(current or {}, step.patch), str(key))
    if step.action is Action.scale:
        now = _get(current, "spec", "replicas") if known else "unknown"
        return f"{key}: spec.replicas {now} -> {step.replicas}\n"
    if step.action is Action.delete:
        if known and current is not None:
            return _unified(current, None, str(key))
        return f"- {key} is deleted\n"
    verbs = {
        Action.restart: "pods are replaced one by one (rollout restart)",
        Action.rollback: "the pod template goes back to the previous revision",
        Action.cordon: "spec.unschedulable: true",
        Action.uncordon: "spec.unschedulable: false",
        Action.drain: "cordoned, then its pods are evicted (PodDisruptionBudgets respected)",
        Action.wait: f"no change; waits up to {step.timeout_s}s for {step.condition}",
    }
    return f"{key}: {verbs.get(step.action, step.action.value)}\n"


def _merge(base: Any, patch: Any) -> Any:
    if not isinstance(base, dict) or not isinstance(patch, dict):
        return patch
    merged = dict(base)
    for key, value in patch.items():
        if value is None:
            merged.pop(key, None)
        elif isinstance(value, list) and _named(value) and _named(merged.get(key)):
            by_name = {item["name"]: item for item in merged[key]}
            for item in value:
                by_name[item["name"]] = _merge(by_name.get(item["name"]), item)
            merged[key] = list(by_name.values())
        else:
            merged[key] = _merge(merged.get(key), value)
    return merged


def _named(items: Any) -> bool:
    return isinstance(items, list) and all(isinstance(i, dict) and "name" in i for i in items)


# --- the plan an approval binds to ---------------------------------------------------------

PLAN_FIELDS = ("playbook", "manifest_sha256", "version", "steps", "parameters", "cluster")


def plan_of(manifest: Manifest, rendered: RenderedPlaybook, cluster: str | None) -> dict[str, Any]:
    """What would run: the playbook, its exact manifest (SHA-256) and version, the rendered
    steps, the resolved parameters and the cluster (None: the local runtime)."""
    return {
        "playbook": manifest.id,
        "manifest_sha256": manifest.sha256(),
        "version": manifest.version,
        "steps": [step.model_dump(mode="json") for step in rendered.steps],
        "parameters": dict(rendered.parameters),
        "cluster": cluster,
    }


def digest_of_plan(plan: Mapping[str, Any]) -> str:
    """SHA-256 (hex) of a plan's canonical JSON (sorted keys, no whitespace)."""
    data = {name: plan.get(name) for name in PLAN_FIELDS}
    text = json.dumps(data, sort_keys=True, separators=(",", ":"), ensure_ascii=True)
    return hashlib.sha256(text.encode()).hexdigest()


def plan_digest(manifest: Manifest, rendered: RenderedPlaybook, cluster: str | None) -> str:
    """The plan digest: computed by the dry-run, approved, and recomputed right before
    execution; a playbook re-registered with other steps, another version or another
    manifest, other parameters or another cluster give another digest."""
    return digest_of_plan(plan_of(manifest, rendered, cluster))


def plan_differences(approved: Mapping[str, Any], current: Mapping[str, Any]) -> list[str]:
    """Which parts of two plans differ (``PLAN_FIELDS`` names, manifest_sha256 as manifest)."""
    names = {"manifest_sha256": "manifest"}
    return [names.get(f, f) for f in PLAN_FIELDS if approved.get(f) != current.get(f)]
