"""The run logger: every workflow run, validated, upserted by run_id, tied to its playbook."""

from __future__ import annotations

import json
import math
import uuid
from collections.abc import Iterable, Mapping
from datetime import UTC, datetime
from typing import Annotated, Any, Literal, get_args

from pydantic import (
    AfterValidator,
    AwareDatetime,
    BaseModel,
    ConfigDict,
    Field,
    NonNegativeInt,
    ValidationError,
    field_validator,
)
from sqlalchemy import Select, func, select, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.engine import URL
from sqlalchemy.orm import Session

from neuralops.db import session_scope
from neuralops.db.models import RUN_STATUSES, Playbook, WorkflowRun, utcnow
from neuralops.errors import InvalidInput, NotFound

RunStatus = Literal["pending", "running", "succeeded", "failed", "cancelled", "crashed"]
if set(get_args(RunStatus)) != set(RUN_STATUSES):  # the API and the CHECK constraint agree
    raise RuntimeError("RunStatus and models.RUN_STATUSES differ")

ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._:/-]{0,127}$"
MAX_JSON_BYTES = 1024 * 1024  # per JSON field; run history is not a blob store
MAX_BIGINT = 2**63 - 1


def refuse_nul(value: Any) -> Any:
    """``value`` unchanged; a ValueError if any string or key in it holds a NUL character,
    which PostgreSQL cannot store in text or JSONB (SQLite would, so the backends differ)."""
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, str):
            if "\x00" in item:
                raise ValueError("must not contain NUL characters (\\u0000)")
        elif isinstance(item, Mapping):
            stack.extend(item.keys())
            stack.extend(item.values())
        elif isinstance(item, list | tuple):
            stack.extend(item)
    return value


NoNulStr = Annotated[str, AfterValidator(refuse_nul)]


def _in_range(value: datetime | None) -> datetime | None:
    """An aware datetime that converts to UTC (year 1 at +14:00 does not)."""
    if value is not None:
        try:
            value.astimezone(UTC)
        except OverflowError:
            raise ValueError("is out of range once converted to UTC") from None
    return value


class NodeLog(BaseModel):
    """One step (task, node) of a run."""

    model_config = ConfigDict(extra="forbid")

    name: NoNulStr = Field(min_length=1, max_length=200)
    status: NoNulStr = Field(min_length=1, max_length=32)
    duration_ms: NonNegativeInt | None = Field(None, le=MAX_BIGINT)
    started_at: Annotated[AwareDatetime | None, AfterValidator(_in_range)] = None
    message: NoNulStr | None = Field(None, max_length=10_000)


class RunIn(BaseModel):
    """A run as logged by a flow hook, a connector or ``POST /runs``."""

    model_config = ConfigDict(extra="forbid")

    wpk_id: str = Field(
        pattern=ID_PATTERN, description="Playbook (workflow package) or flow the run belongs to."
    )
    run_id: str = Field(pattern=ID_PATTERN, description="Unique id; logging it again updates.")
    status: RunStatus
    duration_ms: NonNegativeInt = Field(le=MAX_BIGINT)
    inputs: dict[str, Any] = Field(default_factory=dict)
    outputs: dict[str, Any] = Field(default_factory=dict)
    node_logs: list[NodeLog] = Field(default_factory=list, max_length=10_000)
    cluster: NoNulStr | None = Field(None, max_length=128)
    flow_run_id: uuid.UUID | None = None
    created_at: Annotated[AwareDatetime | None, AfterValidator(_in_range)] = Field(
        None, description="When the run started; defaults to now. Set it to backfill history."
    )

    @field_validator("inputs", "outputs")
    @classmethod
    def _bounded_json(cls, value: dict[str, Any]) -> dict[str, Any]:
        try:
            size = len(json.dumps(value, allow_nan=False, default=str))
        except ValueError:
            raise ValueError("must not contain NaN or Infinity (not valid JSON)") from None
        if size > MAX_JSON_BYTES:
            raise ValueError(f"is {size} bytes of JSON; the limit is {MAX_JSON_BYTES}")
        refuse_nul(value)
        return json.loads(json.dumps(value, default=str))  # stored exactly as it will read back


class RunSummary(BaseModel):
    run_id: str
    status: RunStatus
    duration_ms: int
    created_at: datetime


class RunPage(BaseModel):
    workflow_id: str
    items: list[RunSummary]
    page: int
    limit: int
    total: int
    pages: int
    next_page: int | None


def validate_run(run: RunIn | Mapping[str, Any]) -> RunIn:
    if isinstance(run, RunIn):
        return run
    try:
        return RunIn.model_validate(run)
    except ValidationError as exc:
        raise InvalidInput.from_validation(exc, "run") from None


def log_run(run: RunIn | Mapping[str, Any], *, url: URL | None = None) -> str:
    """Validate and store one run; returns its run_id. Logging a run_id again updates it."""
    return log_runs([run], url=url)[0]


def log_runs(runs: Iterable[RunIn | Mapping[str, Any]], *, url: URL | None = None) -> list[str]:
    """Store many runs in one transaction (all or none), each upserted by run_id.

    Each playbook's latest_run_id moves, in the same transaction, to its newest run.
    """
    valid = [validate_run(run) for run in runs]  # validate all before writing any
    if not valid:
        return []
    # One row per run_id (the last report wins), in run_id order so that concurrent batches
    # take the unique-index locks in the same order.
    unique = sorted({run.run_id: run for run in valid}.values(), key=lambda run: run.run_id)
    now = utcnow()
    rows = [
        {
            "id": uuid.uuid4(),
            **run.model_dump(mode="python", exclude={"created_at", "node_logs"}),
            "node_logs": [log.model_dump(mode="json", exclude_none=True) for log in run.node_logs],
            "created_at": run.created_at or now,
            "updated_at": now,
        }
        for run in unique
    ]
    with session_scope(url) as session:
        for chunk in _chunks(rows, _rows_per_statement(session)):
            session.execute(_upsert(session, chunk))
        _advance_latest_run_ids(session, {run.wpk_id for run in unique})
    return [run.run_id for run in valid]


def _upsert(session: Session, rows: list[dict[str, Any]]):
    insert = pg_insert if session.get_bind().dialect.name == "postgresql" else sqlite_insert
    stmt = insert(WorkflowRun).values(rows)
    # A re-logged run keeps its id and created_at; everything else is the latest report.
    updated = (
        "wpk_id",
        "inputs",
        "outputs",
        "status",
        "duration_ms",
        "node_logs",
        "cluster",
        "flow_run_id",
        "updated_at",
    )
    return stmt.on_conflict_do_update(
        index_elements=["run_id"], set_={name: stmt.excluded[name] for name in updated}
    )


def _rows_per_statement(session: Session) -> int:
    # SQLite caps bound parameters per statement (32766); 12 columns a row.
    return 2000 if session.get_bind().dialect.name == "sqlite" else 5000


def _chunks(rows: list[dict[str, Any]], size: int) -> Iterable[list[dict[str, Any]]]:
    for start in range(0, len(rows), size):
        yield rows[start : start + size]


def _advance_latest_run_ids(session: Session, wpk_ids: set[str]) -> None:
    ids = sorted(wpk_ids)
    # Lock the playbooks in a fixed order so concurrent batches cannot deadlock; the UPDATE
    # then runs on a fresh snapshot that sees every run committed before the lock was granted.
    session.execute(
        select(Playbook.id).where(Playbook.id.in_(ids)).order_by(Playbook.id).with_for_update()
    )
    newest = newest_runs(Playbook.id, WorkflowRun.run_id).limit(1).scalar_subquery()
    session.execute(
        update(Playbook)
        .where(Playbook.id.in_(ids))
        # A new run is not a change to the playbook: keep its updated_at.
        .values(latest_run_id=newest, updated_at=Playbook.updated_at)
    )


def newest_runs(wpk_id: Any, *columns: Any) -> Select:
    """Runs of a workflow (an id, or a correlated column), newest first."""
    return (
        select(*columns)
        .where(WorkflowRun.wpk_id == wpk_id)
        .order_by(WorkflowRun.created_at.desc(), WorkflowRun.id.desc())
    )


def get_run(run_id: str, *, url: URL | None = None) -> WorkflowRun:
    with session_scope(url) as session:
        run = session.scalar(select(WorkflowRun).where(WorkflowRun.run_id == run_id))
        if run is None:
            raise NotFound(f"run '{run_id}' not found")
        return run


def list_runs(wpk_id: str, *, limit: int = 50, page: int = 1, url: URL | None = None) -> RunPage:
    """A page of a workflow's runs, newest first. Unknown workflow ids raise NotFound."""
    if not 1 <= limit <= 500:
        raise InvalidInput("limit: must be between 1 and 500", [])
    if page < 1:
        raise InvalidInput("page: must be 1 or more", [])
    with session_scope(url) as session:
        total = session.scalar(
            select(func.count()).select_from(WorkflowRun).where(WorkflowRun.wpk_id == wpk_id)
        )
        if not total and session.get(Playbook, wpk_id) is None:
            raise NotFound(f"workflow '{wpk_id}' not found: no playbook and no runs with that id")
        rows = session.execute(
            newest_runs(
                wpk_id,
                WorkflowRun.run_id,
                WorkflowRun.status,
                WorkflowRun.duration_ms,
                WorkflowRun.created_at,
            )
            .limit(limit)
            .offset((page - 1) * limit)
        ).all()
    pages = max(1, math.ceil(total / limit))
    return RunPage(
        workflow_id=wpk_id,
        items=[RunSummary.model_validate(row, from_attributes=True) for row in rows],
        page=page,
        limit=limit,
        total=total,
        pages=pages,
        next_page=page + 1 if page < pages else None,
    )
