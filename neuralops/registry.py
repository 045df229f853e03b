"""The playbook registry: validated manifests in the database, versions that only move forward."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from importlib import resources
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, Field
from sqlalchemy import func, select
from sqlalchemy.engine import URL
from sqlalchemy.orm import Session

from neuralops.db import session_scope
from neuralops.db.models import Playbook, WorkflowRun
from neuralops.errors import Conflict, InvalidInput, NotFound
from neuralops.manifest import Manifest, PlaybookKind, alias_key, load_manifest_file
from neuralops.runs import newest_runs


class Change(StrEnum):
    added = "added"
    updated = "updated"
    unchanged = "unchanged"


@dataclass(frozen=True)
class AddResult:
    id: str
    version: str
    change: Change
    previous_version: str | None = None


def catalogue_dir() -> Path:
    """The catalogue shipped inside the package."""
    return Path(str(resources.files("neuralops") / "catalogue"))


def manifest_files(paths: list[Path]) -> list[Path]:
    """Expand files and directories (``*.yaml``/``*.yml``, sorted) into manifest files."""
    files: list[Path] = []
    for path in paths:
        if path.is_dir():
            found = sorted([*path.glob("*.yaml"), *path.glob("*.yml")])
            if not found:
                raise InvalidInput(f"{path}: no *.yaml playbook manifests in this directory")
            files.extend(found)
        elif path.is_file():
            files.append(path)
        else:
            raise InvalidInput(f"{path}: no such file or directory")
    return files


def load_manifests(paths: list[Path]) -> list[Manifest]:
    """Parse every manifest, collecting all problems before failing (so one run shows them all)."""
    manifests: list[Manifest] = []
    problems: list[str] = []
    for file in manifest_files(paths):
        try:
            manifests.append(load_manifest_file(file))
        except InvalidInput as exc:
            problems.append(str(exc))
    seen: dict[str, int] = {}
    for manifest in manifests:
        seen[manifest.id] = seen.get(manifest.id, 0) + 1
    problems += [f"playbook id '{pid}' appears in {n} files" for pid, n in seen.items() if n > 1]
    if problems:
        raise InvalidInput("\n".join(problems))
    return manifests


def add_playbooks(manifests: list[Manifest], *, url: URL | None = None) -> list[AddResult]:
    """Register manifests in one transaction: all are stored, or none.

    A new id is added; a higher version replaces the stored one; the same version with the
    same content is a no-op (re-runs are idempotent); the same version with other content,
    or a lower version, is refused: published versions are immutable. A manifest that lets
    an unconstrained parameter reach a container's command, args or image is refused
    (``policy.manifest_problems``), naming the playbook, step, parameter and fix.
    """
    from neuralops.policy import check_registrable

    check_registrable(manifests)
    results: list[AddResult] = []
    with session_scope(url) as session:
        stored = {
            p.id: p
            for p in session.scalars(
                select(Playbook).where(Playbook.id.in_([m.id for m in manifests]))
            )
        }
        _check_aliases(session, manifests)
        for manifest in manifests:
            current = stored.get(manifest.id)
            change = _change(current, manifest)
            previous = current.version if current else None
            if current is None:
                current = Playbook(id=manifest.id, latest_run_id=_newest_run(session, manifest.id))
                session.add(current)
            if change is not Change.unchanged:
                _fill(current, manifest)
            results.append(AddResult(manifest.id, manifest.version, change, previous))
    return results


def _check_aliases(session: Session, manifests: list[Manifest]) -> None:
    """An alert name leads to one playbook: refuse an alias (case-insensitive) that another
    playbook, stored or in this batch, already answers to."""
    owners: dict[str, str] = {}
    incoming = {m.id for m in manifests}
    for row_id, manifest in session.execute(select(Playbook.id, Playbook.manifest)):
        if row_id not in incoming:
            for alias in (manifest or {}).get("aliases") or []:
                owners[alias_key(alias)] = row_id
    problems = []
    for manifest in manifests:
        for alias in manifest.aliases:
            owner = owners.setdefault(alias_key(alias), manifest.id)
            if owner != manifest.id:
                problems.append(
                    f"playbook '{manifest.id}': alias '{alias}' already belongs to playbook "
                    f"'{owner}': an alert name leads to one playbook; remove it from one of them"
                )
    if problems:
        raise Conflict("\n".join(problems))


def _change(current: Playbook | None, manifest: Manifest) -> Change:
    if current is None:
        return Change.added
    if current.manifest_sha256 == manifest.sha256():
        return Change.unchanged
    ordering = _version_key(manifest.version), _version_key(current.version)
    if ordering[0] > ordering[1]:
        return Change.updated
    if ordering[0] == ordering[1]:
        raise Conflict(
            f"playbook '{manifest.id}' version {manifest.version} is already registered with "
            "different content: bump 'version' to publish a change"
        )
    raise Conflict(
        f"playbook '{manifest.id}': version {manifest.version} is older than the registered "
        f"{current.version}; versions only move forward"
    )


def _version_key(version: str) -> tuple[int, int, int, int, str]:
    core, _, pre = version.partition("-")
    major, minor, patch = (int(part) for part in core.split("."))
    # A release sorts after its own pre-releases (1.0.0-rc1 < 1.0.0).
    return major, minor, patch, 0 if pre else 1, pre


def _newest_run(session: Session, playbook_id: str) -> str | None:
    """Runs may be logged before their playbook is registered; pick up the newest."""
    return session.scalar(newest_runs(playbook_id, WorkflowRun.run_id).limit(1))


def _fill(row: Playbook, manifest: Manifest) -> None:
    row.version = manifest.version
    row.title = manifest.title
    row.description = manifest.description
    row.manifest = manifest.model_dump(mode="json")
    row.manifest_sha256 = manifest.sha256()
    row.safety_mode = manifest.safety.mode.value
    row.allowed_roles = list(manifest.safety.allowed_roles)
    # A new manifest invalidates any signature over the old one (signing is a separate step).
    row.signature = None
    row.key_id = None


def get_playbook(playbook_id: str, *, url: URL | None = None) -> Playbook:
    with session_scope(url) as session:
        playbook = session.get(Playbook, playbook_id)
        if playbook is None:
            raise NotFound(
                f"playbook '{playbook_id}' not found: `neuralops playbook list` shows the registry"
            )
        return playbook


class WorkflowInfo(BaseModel):
    """A workflow as the API shows it: a registered playbook, or a flow known by its runs."""

    id: str
    kind: Literal["playbook", "flow"]
    playbook_kind: PlaybookKind | None = Field(
        None, description="remediation (executable) or runbook (guidance, never executed)."
    )
    aliases: list[str] = Field(default_factory=list, description="Alert names it answers.")
    title: str | None = None
    version: str | None = None
    description: str | None = None
    safety_mode: str | None = None
    allowed_roles: list[str] = Field(default_factory=list)
    signed: bool = False
    latest_run_id: str | None
    run_count: int
    created_at: datetime | None = None
    updated_at: datetime | None = None


def describe_workflow(workflow_id: str, *, url: URL | None = None) -> WorkflowInfo:
    with session_scope(url) as session:
        run_count = session.scalar(
            select(func.count()).select_from(WorkflowRun).where(WorkflowRun.wpk_id == workflow_id)
        )
        playbook = session.get(Playbook, workflow_id)
        if playbook is None:
            if not run_count:
                raise NotFound(f"workflow '{workflow_id}' not found: no playbook and no runs")
            return WorkflowInfo(
                id=workflow_id,
                kind="flow",
                latest_run_id=_newest_run(session, workflow_id),
                run_count=run_count,
            )
        return _playbook_info(playbook, run_count)


def list_playbooks(*, url: URL | None = None) -> list[WorkflowInfo]:
    """Every registered playbook with its run count, in id order."""
    with session_scope(url) as session:
        counts = dict(
            session.execute(
                select(WorkflowRun.wpk_id, func.count())
                .where(WorkflowRun.wpk_id.in_(select(Playbook.id)))
                .group_by(WorkflowRun.wpk_id)
            ).all()
        )
        playbooks = session.scalars(select(Playbook).order_by(Playbook.id)).all()
        return [_playbook_info(p, counts.get(p.id, 0)) for p in playbooks]


def _playbook_info(playbook: Playbook, run_count: int) -> WorkflowInfo:
    return WorkflowInfo(
        id=playbook.id,
        kind="playbook",
        playbook_kind=(playbook.manifest or {}).get("kind", "remediation"),
        aliases=list((playbook.manifest or {}).get("aliases") or []),
        title=playbook.title,
        version=playbook.version,
        description=playbook.description,
        safety_mode=playbook.safety_mode,
        allowed_roles=playbook.allowed_roles,
        signed=playbook.signature is not None,
        latest_run_id=playbook.latest_run_id,
        run_count=run_count,
        created_at=playbook.created_at,
        updated_at=playbook.updated_at,
    )


def registered_manifests(*, url: URL | None = None) -> list[Manifest]:
    """The manifest of every registered playbook (its current version), by id."""
    with session_scope(url) as session:
        rows = session.scalars(select(Playbook).order_by(Playbook.id)).all()
        return [Manifest.model_validate(row.manifest) for row in rows]
