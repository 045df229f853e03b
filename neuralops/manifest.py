"""The playbook manifest: the YAML an SRE writes, validated before it enters the registry.

A manifest declares what a playbook treats (symptoms), when it must not be used
(contraindications), who may run it (safety), what it may touch (scope), the parameters
an incident fills in, and the steps: Kubernetes actions or manifests, with ``{{ param }}``
placeholders that are rendered only at dry-run time.
"""

from __future__ import annotations

import hashlib
import json
import re
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from neuralops.errors import InvalidInput

# Playbook ids end up in URLs, file names and work-pool names: keep them boring.
PLAYBOOK_ID_PATTERN = r"^[a-z0-9](?:[a-z0-9-]{0,62}[a-z0-9])?$"
SEMVER_PATTERN = r"^\d+\.\d+\.\d+(?:-[0-9A-Za-z.-]+)?$"
TAG_PATTERN = r"^[a-z0-9][a-z0-9-]*$"
PLACEHOLDER = re.compile(r"\{\{\s*([A-Za-z_][A-Za-z0-9_]*)\s*\}\}")
# Manifests and rule files are a few KiB; a bigger file is a mistake or an attack.
MAX_YAML_BYTES = 1024 * 1024

Tag = Annotated[str, Field(pattern=TAG_PATTERN, max_length=64)]


class SafetyMode(StrEnum):
    manual = "manual"
    auto = "auto"


class Action(StrEnum):
    """Kubernetes actions a step may take. Each maps to one API call at execute time."""

    restart = "restart"  # rollout restart of a Deployment/StatefulSet/DaemonSet
    rollback = "rollback"  # roll back to the previous ReplicaSet / revision
    scale = "scale"  # set spec.replicas
    patch = "patch"  # strategic-merge patch of `target`
    apply = "apply"  # server-side apply of `manifest`
    delete = "delete"  # delete `target` (policy forbids namespaces and volumes)
    cordon = "cordon"
    uncordon = "uncordon"
    drain = "drain"  # cordon, then evict pods respecting PodDisruptionBudgets
    wait = "wait"  # wait until `condition` holds on `target` or `timeout_s` passes


class Safety(BaseModel):
    model_config = ConfigDict(extra="forbid")

    mode: SafetyMode = SafetyMode.manual
    allowed_roles: list[Tag] = Field(
        default_factory=lambda: ["org-admin"],
        min_length=1,
        description="Roles that may approve (manual) or trigger (auto) this playbook.",
    )


class Scope(BaseModel):
    """What the playbook may touch. Targets outside the scope fail the dry-run."""

    model_config = ConfigDict(extra="forbid")

    namespaces: list[str] = Field(
        default_factory=list,
        description="Namespaces (or {{ param }} placeholders); empty means cluster-scoped only.",
    )
    kinds: list[str] = Field(min_length=1, description="Kubernetes kinds the steps may act on.")


class ParamType(StrEnum):
    string = "string"
    integer = "integer"
    number = "number"
    boolean = "boolean"


class Parameter(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(pattern=r"^[A-Za-z_][A-Za-z0-9_]*$")
    type: ParamType = ParamType.string
    description: str = Field(min_length=1)
    required: bool = True
    default: str | int | float | bool | None = None
    example: str | int | float | bool | None = Field(
        None, description="A realistic value, shown to approvers and used by the demo history."
    )
    pattern: str | None = Field(None, description="Regular expression a string value must match.")
    minimum: float | None = None
    maximum: float | None = None

    @model_validator(mode="after")
    def _values_fit(self) -> Parameter:
        if self.pattern is not None:
            try:
                re.compile(self.pattern)
            except re.error as exc:
                raise ValueError(f"pattern is not a valid regular expression: {exc}") from None
        for field in ("default", "example"):
            value = getattr(self, field)
            if value is not None and (problem := self.check(value)):
                raise ValueError(f"{field} {value!r} {problem}")
        return self

    def check(self, value: Any) -> str | None:
        """Why ``value`` does not fit this parameter, or None if it does."""
        expected = {
            ParamType.string: (str,),
            ParamType.integer: (int,),
            ParamType.number: (int, float),
            ParamType.boolean: (bool,),
        }[self.type]
        if not isinstance(value, expected) or (
            isinstance(value, bool) and self.type is not ParamType.boolean
        ):
            return f"is not of type {self.type.value}"
        if isinstance(value, str) and self.pattern and not re.fullmatch(self.pattern, value):
            return f"does not match pattern {self.pattern!r}"
        if self.minimum is not None and not isinstance(value, str) and value < self.minimum:
            return f"is below the minimum {self.minimum:g}"
        if self.maximum is not None and not isinstance(value, str) and value > self.maximum:
            return f"is above the maximum {self.maximum:g}"
        return None


class Target(BaseModel):
    model_config = ConfigDict(extra="forbid")

    kind: str = Field(min_length=1)
    name: str = Field(min_length=1)
    namespace: str | None = None
    api_version: str | None = None


class Step(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(pattern=TAG_PATTERN, max_length=64)
    description: str = Field(min_length=1)
    action: Action
    target: Target | None = None
    manifest: dict[str, Any] | None = None
    patch: dict[str, Any] | None = None
    replicas: int | str | None = None
    condition: str | None = None
    timeout_s: int = Field(300, gt=0, le=3600)

    @model_validator(mode="after")
    def _fields_for_action(self) -> Step:
        needs = {
            Action.apply: ("manifest",),
            Action.patch: ("target", "patch"),
            Action.scale: ("target", "replicas"),
            Action.wait: ("target", "condition"),
        }.get(self.action, ("target",))
        missing = [name for name in needs if getattr(self, name) is None]
        if missing:
            raise ValueError(f"action '{self.action}' needs {', '.join(missing)}")
        return self


class Manifest(BaseModel):
    """A playbook manifest (schema version 1)."""

    model_config = ConfigDict(extra="forbid")

    id: str = Field(pattern=PLAYBOOK_ID_PATTERN)
    version: str = Field(pattern=SEMVER_PATTERN)
    title: str = Field(min_length=3, max_length=200)
    description: str = Field(min_length=20)
    symptoms: list[Tag] = Field(min_length=1, description="What the playbook treats.")
    contraindications: list[Tag] = Field(
        default_factory=list, description="Symptoms under which it must not be used."
    )
    safety: Safety = Field(default_factory=Safety)
    scope: Scope
    parameters: list[Parameter] = Field(default_factory=list)
    steps: list[Step] = Field(min_length=1)

    @model_validator(mode="after")
    def _consistent(self) -> Manifest:
        names = [p.name for p in self.parameters]
        duplicates = sorted({n for n in names if names.count(n) > 1})
        if duplicates:
            raise ValueError(f"parameters: duplicate names {duplicates}")
        overlap = sorted(set(self.symptoms) & set(self.contraindications))
        if overlap:
            raise ValueError(f"contraindications repeat symptoms {overlap}")
        steps_text = json.dumps([s.model_dump(mode="json") for s in self.steps])
        scope_text = json.dumps(self.scope.model_dump(mode="json"))
        undeclared = sorted(set(PLACEHOLDER.findall(steps_text + scope_text)) - set(names))
        if undeclared:
            raise ValueError(
                f"steps use undeclared parameters {undeclared}: add them under 'parameters'"
            )
        return self

    def canonical_json(self) -> bytes:
        """Stable bytes of the manifest: what is hashed and signed."""
        return json.dumps(
            self.model_dump(mode="json"), sort_keys=True, separators=(",", ":")
        ).encode()

    def sha256(self) -> str:
        return hashlib.sha256(self.canonical_json()).hexdigest()


def parse_manifest(data: Any, source: str = "manifest") -> Manifest:
    """Validate a manifest dict, raising InvalidInput that names the file and field."""
    if not isinstance(data, dict):
        raise InvalidInput(f"{source}: a playbook manifest must be a YAML mapping")
    try:
        return Manifest.model_validate(data)
    except ValidationError as exc:
        raise InvalidInput.from_validation(exc, source) from None


class _NoAliasLoader(yaml.SafeLoader):
    """``yaml.safe_load`` without aliases: ``*name`` lets a 1 KiB file expand to billions of
    nodes when validated (the "billion laughs"); manifests and rule files never need them."""

    def compose_node(self, parent: Any, index: Any) -> Any:
        if self.check_event(yaml.AliasEvent):
            raise yaml.composer.ComposerError(
                None, None, "aliases (*name) are not allowed", self.peek_event().start_mark
            )
        return super().compose_node(parent, index)


def read_yaml(path: Path) -> Any:
    """A small YAML file, safely: at most MAX_YAML_BYTES, no aliases. Raises OSError,
    yaml.YAMLError (invalid, or an alias) or InvalidInput (too big)."""
    size = path.stat().st_size
    if size > MAX_YAML_BYTES:
        raise InvalidInput(f"{path}: {size} bytes; the limit is {MAX_YAML_BYTES} bytes")
    return yaml.load(path.read_text(encoding="utf-8"), Loader=_NoAliasLoader)


def load_manifest_file(path: Path) -> Manifest:
    try:
        data = read_yaml(path)
    except yaml.YAMLError as exc:
        raise InvalidInput(f"{path}: not valid YAML: {exc}") from None
    except (OSError, UnicodeDecodeError) as exc:
        reason = getattr(exc, "strerror", None) or "not UTF-8 text"
        raise InvalidInput(f"{path}: cannot read: {reason}") from None
    return parse_manifest(data, str(path))
