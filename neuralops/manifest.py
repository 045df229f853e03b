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
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from neuralops.errors import InvalidInput

# Playbook ids end up in URLs, file names and work-pool names: keep them boring.
PLAYBOOK_ID_PATTERN = r"^[a-z0-9](?:[a-z0-9-]{0,62}[a-z0-9])?$"
SEMVER_PATTERN = r"^\d+\.\d+\.\d+(?:-[0-9A-Za-z.-]+)?$"
TAG_PATTERN = r"^[a-z0-9][a-z0-9-]*$"
PLACEHOLDER = re.compile(r"\{\{\s*([A-Za-z_][A-Za-z0-9_]*)\s*\}\}")
# Manifests and rule files are a few KiB; a bigger file is a mistake or an attack.
MAX_YAML_BYTES = 1024 * 1024

Tag = Annotated[str, Field(pattern=TAG_PATTERN, max_length=64)]
# An alert name as Alertmanager sends it (``alertname``): any case, no control characters, no
# surrounding blanks. Stored verbatim; matched case-insensitively (``alias_key``).
ALIAS_PATTERN = r"^[^\s\x00-\x1f\x7f](?:[^\x00-\x1f\x7f]{0,198}[^\s\x00-\x1f\x7f])?$"
Alias = Annotated[str, Field(pattern=ALIAS_PATTERN)]
PlaybookKind = Literal["remediation", "runbook"]
MAX_SECTIONS = 100
MAX_SECTION_CHARS = 100_000


def alias_key(name: str) -> str:
    """How aliases and alert names compare: case-insensitively, blanks around ignored."""
    return name.strip().casefold()


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
    values: list[str | int | float | bool] | None = Field(
        None,
        min_length=1,
        description="The only values allowed (an enumeration); like a pattern, it constrains "
        "a string that reaches a container's command, args or image.",
    )
    minimum: float | None = None
    maximum: float | None = None

    @model_validator(mode="after")
    def _values_fit(self) -> Parameter:
        if self.pattern is not None:
            try:
                re.compile(self.pattern)
            except re.error as exc:
                raise ValueError(f"pattern is not a valid regular expression: {exc}") from None
        for allowed in self.values or []:
            if problem := self._check_one(allowed):
                raise ValueError(f"values: {allowed!r} {problem}")
        for field in ("default", "example"):
            value = getattr(self, field)
            if value is not None and (problem := self.check(value)):
                raise ValueError(f"{field} {value!r} {problem}")
        return self

    @property
    def constrained(self) -> bool:
        """Whether a string value is held to a shape (a pattern or a list of values): only
        such a parameter may reach a container's command, args or image."""
        return self.type is not ParamType.string or bool(self.pattern) or bool(self.values)

    def check(self, value: Any) -> str | None:
        """Why ``value`` does not fit this parameter, or None if it does."""
        if problem := self._check_one(value):
            return problem
        if self.values is not None and not any(
            value == allowed and isinstance(value, bool) is isinstance(allowed, bool)
            for allowed in self.values
        ):
            return f"is not one of {', '.join(repr(v) for v in self.values)}"
        return None

    def _check_one(self, value: Any) -> str | None:
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


# --- container images ----------------------------------------------------------------------

_DIGEST = re.compile(r"^sha256:[a-f0-9]{64}$")
_REPOSITORY = re.compile(
    r"^(?:[a-zA-Z0-9.-]+(?::[0-9]+)?/)?[a-z0-9]+(?:[._-]+[a-z0-9]+)*(?:/[a-z0-9]+(?:[._-]+[a-z0-9]+)*)*$"
)
_TAG = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9._-]{0,127}$")


class ImageRef(BaseModel):
    """A container image reference, split: ``repository`` is normalised the way a container
    runtime reads it (``postgres`` is ``docker.io/library/postgres``)."""

    repository: str
    tag: str | None = None
    digest: str | None = None


def parse_image(reference: str) -> ImageRef:
    """Split ``[registry/]path[:tag][@sha256:hex]``; raises ValueError naming what is wrong."""
    name, _, digest = reference.partition("@")
    if digest and not _DIGEST.match(digest):
        raise ValueError(f"image {reference!r}: a digest is sha256:<64 lowercase hex>")
    tag = None
    last = name.rsplit("/", 1)[-1]
    if ":" in last:
        name, tag = name.rsplit(":", 1)
        if not _TAG.match(tag):
            raise ValueError(f"image {reference!r}: {tag!r} is not a valid tag")
    if not _REPOSITORY.match(name):
        raise ValueError(f"image {reference!r}: not a valid repository name")
    first, _, rest = name.partition("/")
    if not rest or not _is_registry(first):
        name = f"docker.io/{name}"  # Docker Hub, the runtimes' default registry
    if name.startswith("docker.io/") and name.count("/") == 1:
        name = name.replace("docker.io/", "docker.io/library/", 1)
    return ImageRef(repository=name, tag=tag, digest=digest or None)


def _is_registry(component: str) -> bool:
    return "." in component or ":" in component or component == "localhost"


def _prefix(entry: str) -> str:
    """The repository prefix of a ``prefix/*`` entry, normalised like a repository."""
    path = entry[:-2]
    if not re.match(r"^[a-zA-Z0-9._:-]+(?:/[a-z0-9._-]+)*$", path) or "*" in path:
        raise ValueError(f"allowed image {entry!r}: a prefix is [registry/]path/*")
    if not _is_registry(path.split("/")[0]):
        path = f"docker.io/{path}"
    return path + "/"


def check_allowed_image(entry: str) -> str:
    """An ``allowed_images`` entry: ``repo@sha256:<hex>`` (exactly that digest), ``repo:tag``
    (exactly that tag), ``repo`` (that repository, any tag or digest) or ``prefix/*`` (any
    repository under that path, any tag or digest). Raises ValueError."""
    if entry.endswith("/*"):
        _prefix(entry)
        return entry
    parse_image(entry)
    return entry


def image_allowed(image: str, allowed: list[str]) -> bool:
    """Whether ``image`` matches an ``allowed_images`` entry (``check_allowed_image``)."""
    try:
        ref = parse_image(image)
    except ValueError:
        return False
    for entry in allowed:
        if entry.endswith("/*"):
            if ref.repository.startswith(_prefix(entry)):
                return True
            continue
        want = parse_image(entry)
        if want.repository != ref.repository:
            continue
        if want.digest is not None:
            if ref.digest == want.digest:
                return True
        elif want.tag is not None:
            if ref.digest is None and (ref.tag or "latest") == want.tag:
                return True
        else:
            return True
    return False


class Link(BaseModel):
    """Where to read more: a runbook's source page, a dashboard."""

    model_config = ConfigDict(extra="forbid")

    url: str = Field(pattern=r"^https?://[^\s]+$", max_length=2000)
    title: str | None = Field(None, max_length=200)


class Manifest(BaseModel):
    """A playbook manifest (schema version 1).

    ``kind: remediation`` (the default) has steps NeuralOps can dry-run and execute;
    ``kind: runbook`` is guidance only (a team's markdown runbook, ``neuralops playbook
    import-runbooks``): no steps, no scope, no parameters, recommended like any playbook and
    never executed (``policy.render`` refuses it)."""

    model_config = ConfigDict(extra="forbid")

    id: str = Field(pattern=PLAYBOOK_ID_PATTERN)
    version: str = Field(pattern=SEMVER_PATTERN)
    kind: PlaybookKind = Field(
        "remediation",
        description="remediation: executable steps; runbook: guidance only, never executed.",
    )
    title: str = Field(min_length=3, max_length=200)
    description: str = Field(min_length=20)
    aliases: list[Alias] = Field(
        default_factory=list,
        max_length=50,
        description="Alert names (any case, e.g. KubePodCrashLooping) this playbook answers: "
        "an alert with one of these names ranks it first.",
    )
    links: list[Link] = Field(default_factory=list, max_length=20)
    sections: dict[str, str] = Field(
        default_factory=dict,
        max_length=MAX_SECTIONS,
        description="A runbook's text by heading (Meaning, Impact, Diagnosis, Mitigation...).",
    )
    symptoms: list[Tag] = Field(
        default_factory=list,
        description="What the playbook treats (at least one for a remediation).",
    )
    contraindications: list[Tag] = Field(
        default_factory=list, description="Symptoms under which it must not be used."
    )
    safety: Safety = Field(default_factory=Safety)
    scope: Scope | None = Field(None, description="Required for a remediation.")
    parameters: list[Parameter] = Field(default_factory=list)
    allowed_images: list[str] = Field(
        default_factory=list,
        description="Images the steps may run (``check_allowed_image``); required when an "
        "image comes from a parameter, and then every image must match one.",
    )
    steps: list[Step] = Field(default_factory=list)

    @property
    def is_runbook(self) -> bool:
        return self.kind == "runbook"

    def alias_keys(self) -> set[str]:
        return {alias_key(a) for a in self.aliases}

    @field_validator("sections")
    @classmethod
    def _sections_fit(cls, sections: dict[str, str]) -> dict[str, str]:
        for heading, text in sections.items():
            if not heading.strip() or len(heading) > 200:
                raise ValueError("a section heading is 1 to 200 characters")
            if len(text) > MAX_SECTION_CHARS:
                raise ValueError(
                    f"section {heading!r} has {len(text)} characters; the limit is "
                    f"{MAX_SECTION_CHARS}"
                )
        return sections

    @field_validator("allowed_images")
    @classmethod
    def _images_parse(cls, entries: list[str]) -> list[str]:
        return [check_allowed_image(entry) for entry in entries]

    @model_validator(mode="wrap")
    @classmethod
    def _all_problems(cls, data: Any, handler: Any) -> Manifest:
        """A remediation missing scope, steps or symptoms says so with its other problems
        (they are optional only for a runbook, so pydantic alone would not name them)."""
        try:
            return handler(data)
        except ValidationError as exc:
            if not isinstance(data, dict) or data.get("kind", "remediation") != "remediation":
                raise
            missing = [name for name in ("scope", "steps", "symptoms") if name not in data]
            if not missing:
                raise
            errors: list[Any] = [
                {k: e[k] for k in ("type", "loc", "input", "ctx") if k in e}
                for e in exc.errors(include_url=False)
            ]
            errors += [{"type": "missing", "loc": (name,), "input": data} for name in missing]
            raise ValidationError.from_exception_data(exc.title, errors) from None

    @model_validator(mode="after")
    def _fits_kind(self) -> Manifest:
        if self.kind == "runbook":
            given = [
                name for name in ("steps", "parameters", "allowed_images") if getattr(self, name)
            ] + (["scope"] if self.scope is not None else [])
            if given:
                raise ValueError(
                    f"a runbook is guidance only and is never executed: remove {', '.join(given)} "
                    "(or make it kind: remediation)"
                )
            if self.safety.mode is SafetyMode.auto:
                raise ValueError("a runbook is never executed: safety.mode auto does not apply")
            return self
        missing = [
            name for name, value in (("scope", self.scope), ("steps", self.steps)) if not value
        ] + ([] if self.symptoms else ["symptoms"])
        if missing:
            raise ValueError(
                f"a remediation playbook needs {', '.join(missing)} (at least one step and "
                "symptom, and a scope); a guidance-only page is kind: runbook"
            )
        return self

    @model_validator(mode="after")
    def _consistent(self) -> Manifest:
        names = [p.name for p in self.parameters]
        duplicates = sorted({n for n in names if names.count(n) > 1})
        if duplicates:
            raise ValueError(f"parameters: duplicate names {duplicates}")
        overlap = sorted(set(self.symptoms) & set(self.contraindications))
        if overlap:
            raise ValueError(f"contraindications repeat symptoms {overlap}")
        keys = [alias_key(a) for a in self.aliases]
        repeated = sorted({a for a, k in zip(self.aliases, keys, strict=True) if keys.count(k) > 1})
        if repeated:
            raise ValueError(f"aliases repeat (case does not count): {repeated}")
        steps_text = json.dumps([s.model_dump(mode="json") for s in self.steps])
        scope_text = json.dumps(self.scope.model_dump(mode="json") if self.scope else None)
        undeclared = sorted(set(PLACEHOLDER.findall(steps_text + scope_text)) - set(names))
        if undeclared:
            raise ValueError(
                f"steps use undeclared parameters {undeclared}: add them under 'parameters'"
            )
        return self

    def canonical_json(self) -> bytes:
        """Stable bytes of the manifest: what is hashed and signed. Fields added after the
        first release (``allowed_images``, a parameter's ``values``, ``kind``, ``aliases``,
        ``links``, ``sections``) appear only when set, so a manifest that does not use them
        keeps its hash and its signature."""
        data = self.model_dump(mode="json")
        for name in ("allowed_images", "aliases", "links", "sections"):
            if not data[name]:
                del data[name]
        if data["kind"] == "remediation":
            del data["kind"]
        for param in data["parameters"]:
            if param["values"] is None:
                del param["values"]
        return json.dumps(data, sort_keys=True, separators=(",", ":")).encode()

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


# Quoted text PyYAML's problems may keep: punctuation (',' ']') and token names (<stream end>).
_YAML_TOKEN = re.compile(r"<[a-z ]+>|[^\w\s']{1,3}|\\(?:[a-z]|x[0-9a-f]{2})")


def yaml_problem(exc: yaml.YAMLError) -> str:
    """Where a YAML file is broken and how, never what it holds: str(exc) quotes the
    offending lines (a symlink to /etc/shadow or a kubeconfig would print its secrets), and
    problems can quote a word of it (an alias, a tag), which becomes "…"."""
    mark = getattr(exc, "problem_mark", None) or getattr(exc, "context_mark", None)
    if mark is not None:
        where = f"line {mark.line + 1}, column {mark.column + 1}"
    elif getattr(exc, "position", None) is not None:  # a ReaderError: a byte or character
        where = f"character {exc.position}"  # type: ignore[attr-defined]
    else:
        where = "somewhere"
    parts = [
        getattr(exc, "context", None),
        getattr(exc, "problem", None) or getattr(exc, "reason", None) or "cannot be parsed",
    ]
    what = ": ".join(str(p) for p in parts if p)
    what = re.sub(
        r"'([^'\n]*)'",
        lambda m: m.group(0) if _YAML_TOKEN.fullmatch(m.group(1)) else "'…'",
        what,
    )
    return f"{where}: {what}"


def load_manifest_file(path: Path) -> Manifest:
    try:
        data = read_yaml(path)
    except yaml.YAMLError as exc:
        raise InvalidInput(
            f"{path}: not valid YAML at {yaml_problem(exc)}; a playbook manifest is a YAML "
            "mapping (id, version, title, description, steps, ...)"
        ) from None
    except (OSError, UnicodeDecodeError) as exc:
        reason = getattr(exc, "strerror", None) or "not UTF-8 text"
        raise InvalidInput(f"{path}: cannot read: {reason}") from None
    return parse_manifest(data, str(path))
