"""The run logger: every workflow run, validated, stored by run_id, tied to its playbook.

Each run records where it came from (``provenance``) and whether that was confirmed
(``verified``): ``prefect`` (the run-logger hook; verified when the Prefect API knows the flow
run), ``neuralops`` (an execution NeuralOps performed; verified), ``api:<subject>`` (a writer
authenticated at ``POST /runs``), ``seed`` (synthetic history), ``local`` (any other library
call). Only verified runs and runs of writers an operator trusts (``NEURALOPS_TRUSTED_WRITERS``)
teach the recommender (docs/run-history.md).

A finished run (succeeded, failed, cancelled, crashed) is immutable: logging the same run_id
with the same content again is idempotent (nothing is written), with different content it is
a ``Conflict`` and nothing in the batch is written. A pending or running run may be updated,
only by the writer (provenance) that logged it. NeuralOps corrects the status of its own
executions through ``record_outcome``, never through ``log_run``.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
import uuid
from collections.abc import Iterable, Mapping
from datetime import UTC, datetime, timedelta
from typing import Annotated, Any, Literal, get_args
from urllib.parse import quote

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

from neuralops.db import ensure_local_schema, session_scope
from neuralops.db.models import RUN_STATUSES, Playbook, WorkflowRun, utcnow
from neuralops.errors import Conflict, FieldProblem, InvalidInput, NotFound
from neuralops.settings import get_settings

RunStatus = Literal["pending", "running", "succeeded", "failed", "cancelled", "crashed"]
if set(get_args(RunStatus)) != set(RUN_STATUSES):  # the API and the CHECK constraint agree
    raise RuntimeError("RunStatus and models.RUN_STATUSES differ")
# Words writers may send for a status, and the status stored: the specification and
# LangGraph-style run loggers say "completed" for a successful run.
STATUS_SYNONYMS: dict[str, RunStatus] = {"completed": "succeeded"}


def _stored_status(value: str) -> RunStatus:
    return STATUS_SYNONYMS.get(value, value)  # type: ignore[return-value]


# What a writer may send (the synonyms included, so the OpenAPI enum lists them and a bad
# value's error names them); what is stored is always a RunStatus.
RunStatusIn = Annotated[
    Literal["pending", "running", "succeeded", "completed", "failed", "cancelled", "crashed"],
    AfterValidator(_stored_status),
]

ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._:/-]{0,127}$"
MAX_JSON_BYTES = 1024 * 1024  # per JSON field; run history is not a blob store
MAX_BIGINT = 2**63 - 1
FINISHED = frozenset({"succeeded", "failed", "cancelled", "crashed"})
# A run cannot start after it is logged; a little slack for writers' clocks.
MAX_CLOCK_SKEW = timedelta(minutes=5)

# Where a run came from (workflow_runs.provenance, migration 0007).
PREFECT = "prefect"  # the run-logger hook (neuralops.hooks), with its flow run id
NEURALOPS = "neuralops"  # an execution NeuralOps performed (remediation.log_execution)
SEED = "seed"  # synthetic history: `neuralops seed runs`, the demo's seed-demo flow
LOCAL = "local"  # any other library call
API_PREFIX = "api:"  # + the authenticated subject of POST /runs
# Provenance values: a known word, or api:<subject> (no spaces or commas: the trusted-writers
# setting is a comma-separated list of them).
PROVENANCE_PATTERN = r"^(prefect|neuralops|seed|local|unknown|api:[^\s,\x00-\x1f\x7f]{1,196})$"
_PROVENANCE = re.compile(PROVENANCE_PATTERN)


# Run ids NeuralOps gives its own executions (remediation.log_execution): no other writer may
# take one first, or the execution's record would be refused as a conflict.
EXECUTION_RUN_PREFIX = "remediate-"
_MAX_SUBJECT = 180


def api_provenance(subject: str) -> str:
    """The provenance of runs posted by an authenticated API writer: ``api:<subject>``, the
    subject percent-encoded where it holds a space, a comma or a control character (an IdP
    may issue such subjects; the trusted-writers setting is a comma-separated list), and
    shortened with a hash suffix beyond 180 characters."""
    encoded = quote(subject, safe="@:/._-+~!$&'()*;=")
    if len(encoded) > _MAX_SUBJECT:
        digest = hashlib.sha256(subject.encode("utf-8", "surrogatepass")).hexdigest()[:12]
        encoded = f"{encoded[: _MAX_SUBJECT - 13]}~{digest}"
    return check_provenance(f"{API_PREFIX}{encoded}")


def check_provenance(value: str) -> str:
    if not isinstance(value, str) or not _PROVENANCE.fullmatch(value):
        raise InvalidInput(
            f"provenance {value!r}: use prefect, neuralops, seed, local, unknown or "
            "api:<subject> (at most 200 characters, no spaces or commas)"
        )
    return value


def refuse_nul(value: Any) -> Any:
    """``value`` unchanged; a ValueError if any string or key in it holds a NUL character,
    which PostgreSQL cannot store in text or JSONB (SQLite would, so the backends differ), or
    text that cannot be encoded as UTF-8 (a lone surrogate such as \\ud800: neither backend
    can store it, and an export could not write it)."""
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, str):
            if "\x00" in item:
                raise ValueError("must not contain NUL characters (\\u0000)")
            if not item.isascii():
                try:
                    item.encode("utf-8")
                except UnicodeEncodeError:
                    raise ValueError(
                        "must be valid Unicode text: a lone surrogate (\\ud800-\\udfff) "
                        "cannot be encoded"
                    ) from None
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


def _not_future(value: datetime | None) -> datetime | None:
    """Not more than MAX_CLOCK_SKEW ahead of now: a future time would pin a resource's
    "latest" run (and the recommender's recency) for as long as it lies ahead."""
    if value is not None and value > datetime.now(UTC) + MAX_CLOCK_SKEW:
        minutes = int(MAX_CLOCK_SKEW.total_seconds() // 60)
        raise ValueError(
            f"is more than {minutes} minutes in the future: a run is logged after it starts "
            "(check the writer's clock)"
        )
    return value


RunTime = Annotated[AwareDatetime | None, AfterValidator(_in_range), AfterValidator(_not_future)]


class NodeLog(BaseModel):
    """One step (task, node) of a run."""

    model_config = ConfigDict(extra="forbid")

    name: NoNulStr = Field(min_length=1, max_length=200)
    status: NoNulStr = Field(min_length=1, max_length=32)
    duration_ms: NonNegativeInt | None = Field(None, le=MAX_BIGINT)
    started_at: RunTime = None
    message: NoNulStr | None = Field(None, max_length=10_000)


class RunIn(BaseModel):
    """A run as logged by a flow hook, a connector or ``POST /runs``."""

    model_config = ConfigDict(extra="forbid")

    wpk_id: str = Field(
        pattern=ID_PATTERN, description="Playbook (workflow package) or flow the run belongs to."
    )
    run_id: str = Field(
        pattern=ID_PATTERN,
        description="Unique id. A finished run is immutable: logging it again with the same "
        "content changes nothing, with different content is refused (409).",
    )
    status: RunStatusIn = Field(
        description="`completed` is a synonym of `succeeded` and is stored as `succeeded`."
    )
    duration_ms: NonNegativeInt = Field(le=MAX_BIGINT)
    inputs: dict[str, Any] = Field(default_factory=dict)
    outputs: dict[str, Any] = Field(default_factory=dict)
    node_logs: list[NodeLog] = Field(default_factory=list, max_length=10_000)
    cluster: NoNulStr | None = Field(None, max_length=128)
    flow_run_id: uuid.UUID | None = None
    created_at: RunTime = Field(
        None,
        description="When the run started; defaults to now. Set it to backfill history; at "
        "most 5 minutes in the future.",
    )

    @field_validator("inputs", "outputs")
    @classmethod
    def _bounded_json(cls, value: dict[str, Any]) -> dict[str, Any]:
        try:
            size = len(json.dumps(value, allow_nan=False, default=str))
        except ValueError:
            raise ValueError("must not contain NaN or Infinity (not valid JSON)") from None
        except RecursionError:
            raise ValueError("is nested too deeply") from None
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


def log_run(
    run: RunIn | Mapping[str, Any],
    *,
    url: URL | None = None,
    provenance: str = LOCAL,
    verified: bool = False,
) -> str:
    """Validate and store one run; returns its run_id. See ``log_runs``."""
    return log_runs([run], url=url, provenance=provenance, verified=verified)[0]


def log_runs(
    runs: Iterable[RunIn | Mapping[str, Any]],
    *,
    url: URL | None = None,
    provenance: str = LOCAL,
    verified: bool = False,
    keep_existing: bool = False,
) -> list[str]:
    """Store many runs in one transaction (all or none), recorded as coming from
    ``provenance`` (``verified`` when the caller confirmed it).

    A run_id not stored yet is inserted. A stored finished run is immutable: the same content
    again writes nothing, different content raises ``Conflict`` naming the run_id. A stored
    pending or running run is updated, only by the same provenance (else ``Conflict``).
    ``keep_existing`` (seeding) leaves every stored run_id as it is and inserts the rest.
    Each playbook's latest_run_id moves, in the same transaction, to its newest run.
    """
    check_provenance(provenance)
    valid = [validate_run(run) for run in runs]  # validate all before writing any
    if not valid:
        return []
    if url is None:  # a script on the settings' database: a fresh local SQLite gets its schema
        ensure_local_schema(get_settings().database_url)
    if provenance != NEURALOPS:
        taken = next((r.run_id for r in valid if r.run_id.startswith(EXECUTION_RUN_PREFIX)), None)
        if taken is not None:
            raise InvalidInput(
                f"run: run_id: {taken!r}: ids starting with {EXECUTION_RUN_PREFIX!r} are "
                "reserved for NeuralOps' own executions; choose another run_id",
                [FieldProblem("run_id", f"{EXECUTION_RUN_PREFIX!r} ids are reserved")],
            )
    # One row per run_id (the last report wins), in run_id order so that concurrent batches
    # take the unique-index locks in the same order.
    unique = sorted({run.run_id: run for run in valid}.values(), key=lambda run: run.run_id)
    now = utcnow()
    with session_scope(url) as session:
        stored = _stored(session, [run.run_id for run in unique], lock=True)
        todo = []
        for run in unique:
            row = stored.get(run.run_id)
            if row is None or (not keep_existing and _may_update(row, run, provenance)):
                todo.append(run)
        rows = [_row(run, now, provenance, verified) for run in todo]
        written: set[str] = set()
        for chunk in _chunks(rows, _rows_per_statement(session)):
            written.update(session.scalars(_upsert(session, chunk)))
        # Rows another writer inserted or finished between our read and our write were left
        # alone by the upsert's guard: they are the same run again, or a conflict.
        raced = [run for run in todo if run.run_id not in written]
        if raced:
            again = _stored(session, [run.run_id for run in raced], lock=False)
            for run in raced:
                row = again.get(run.run_id)
                if row is None or keep_existing:
                    continue
                if row.status not in FINISHED or not _same(row, run):
                    raise _conflict(run.run_id, row, provenance)
        if todo:
            _advance_latest_run_ids(session, {run.wpk_id for run in todo})
    return [run.run_id for run in valid]


def record_outcome(
    run_id: str,
    status: RunStatus,
    *,
    outputs: Mapping[str, Any],
    url: URL | None = None,
) -> None:
    """NeuralOps' own correction of an execution it logged: the outcome it verified later
    (``remediation.verify_outcome``: the signal was not resolved, so the run failed). Only
    runs of provenance ``neuralops`` can be corrected; their other fields stay as logged."""
    with session_scope(url) as session:
        row = session.scalar(
            select(WorkflowRun).where(WorkflowRun.run_id == run_id).with_for_update()
        )
        if row is None:
            raise NotFound(f"run '{run_id}' not found")
        if row.provenance != NEURALOPS:
            raise Conflict(
                f"run '{run_id}' was not logged by NeuralOps' own execution: its outcome "
                "cannot be corrected"
            )
        checked = validate_run(
            {
                "wpk_id": row.wpk_id,
                "run_id": row.run_id,
                "status": status,
                "duration_ms": row.duration_ms,
                "outputs": dict(outputs),
            }
        )
        row.status = checked.status
        row.outputs = checked.outputs
        row.updated_at = utcnow()


# The content of a run: what makes a second report of a finished run "the same".
_CONTENT = (
    "wpk_id",
    "status",
    "duration_ms",
    "inputs",
    "outputs",
    "node_logs",
    "cluster",
    "flow_run_id",
    "created_at",
)


def _stored(session: Session, run_ids: list[str], *, lock: bool) -> dict[str, Any]:
    """run_id -> stored (provenance, content) of those already stored; locked for update on
    PostgreSQL (SQLite has one writer at a time anyway)."""
    found: dict[str, Any] = {}
    columns = [getattr(WorkflowRun, name) for name in ("run_id", "provenance", *_CONTENT)]
    for chunk in _chunks(run_ids, 1000):
        query = select(*columns).where(WorkflowRun.run_id.in_(chunk)).order_by(WorkflowRun.run_id)
        if lock:
            query = query.with_for_update()
        found.update({row.run_id: row for row in session.execute(query)})
    return found


def _may_update(row: Any, run: RunIn, provenance: str) -> bool:
    """False when ``run`` repeats the stored finished run (nothing to write); True when it
    may replace a stored pending or running one; else the Conflict."""
    if row.status in FINISHED:
        if _same(row, run):
            return False
        raise _conflict(run.run_id, row, provenance)
    if row.provenance != provenance:
        raise _conflict(run.run_id, row, provenance)
    return True


def _same(row: Any, run: RunIn) -> bool:
    mine = _content(run)
    if run.created_at is None:  # "now" by default: a re-post need not repeat it
        mine.pop("created_at")
    return all(getattr(row, name) == value for name, value in mine.items())


def _content(run: RunIn) -> dict[str, Any]:
    return {
        **run.model_dump(mode="python", include=set(_CONTENT) - {"node_logs"}),
        "node_logs": [log.model_dump(mode="json", exclude_none=True) for log in run.node_logs],
    }


def _conflict(run_id: str, row: Any, provenance: str) -> Conflict:
    if row.status in FINISHED:
        return Conflict(
            f"run '{run_id}' is already recorded as {row.status} with different content: a "
            "finished run is immutable (logging the same content again is fine)"
        )
    return Conflict(
        f"run '{run_id}' is still {row.status} and was logged by another writer: only that "
        f"writer may update it, not {provenance}"
    )


def _row(run: RunIn, now: datetime, provenance: str, verified: bool) -> dict[str, Any]:
    return {
        "id": uuid.uuid4(),
        "run_id": run.run_id,
        **_content(run),
        "created_at": run.created_at or now,
        "updated_at": now,
        "provenance": provenance,
        "verified": verified,
    }


def _upsert(session: Session, rows: list[dict[str, Any]]):
    """Insert, or update a stored run that is still pending or running and was logged by the
    same provenance; RETURNING the run_ids written (a guarded-out row returns nothing)."""
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
        "verified",
    )
    table = WorkflowRun.__table__
    return stmt.on_conflict_do_update(
        index_elements=["run_id"],
        set_={name: stmt.excluded[name] for name in updated},
        where=table.c.status.in_(("pending", "running"))
        & (table.c.provenance == stmt.excluded.provenance),
    ).returning(table.c.run_id)


def _rows_per_statement(session: Session) -> int:
    # Bound parameters per statement are capped: SQLite 32,766, PostgreSQL's protocol 65,535;
    # 14 columns a row (5,000 rows were 70,000 once provenance and verified were added).
    return 2000 if session.get_bind().dialect.name == "sqlite" else 4000


def _chunks(rows: list[Any], size: int) -> Iterable[list[Any]]:
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
