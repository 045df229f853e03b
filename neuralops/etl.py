"""Export run history: workflow_runs → redacted JSONL or Parquet, incrementally.

Rows are read in keyset order ``(updated_at, id)`` a batch at a time, so memory stays flat
however many rows there are. Each batch is redacted (``neuralops.redaction``) before it is
written: nothing leaves the database unredacted. The file appears only when complete (a
temporary file in the same folder, renamed at the end); only then does the watermark — the
``(updated_at, id)`` of the last row exported, in table ``etl_watermarks`` — move, so a
failed export is simply done again.

Incremental: without ``full`` or ``since``, an export starts after the stored watermark and
ends at the newest row that existed when it started. ``full`` re-exports everything and
resets the watermark; ``since`` exports rows updated at or after a time and leaves the
watermark alone (an ad-hoc slice).

Each record carries the run's ``provenance`` and ``verified`` (neuralops.runs) as stored,
unredacted: they are NeuralOps' own metadata (a known word or ``api:<authenticated
subject>``), and the recommender matches them against the trusted writers.

Bad rows never block the export: a stored row that cannot be exported (JSON that does not
parse, text that is not valid UTF-8 or holds a lone surrogate, a number out of range, nesting
too deep, anything the redactor refuses; e.g. written before such input was refused) is
quarantined: left out, counted and named in ``ExportResult.quarantined`` (run_id and reason,
never its content), and the watermark still moves past it, so it is not met again.
"""

from __future__ import annotations

import json
import os
import tempfile
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Any

import polars as pl
import pyarrow.parquet as pq
from sqlalchemy import LargeBinary, Text, cast, func, select, tuple_
from sqlalchemy.engine import URL

from neuralops.db import get_engine, session_scope
from neuralops.db.models import EtlWatermark, WorkflowRun, utcnow
from neuralops.errors import InvalidInput
from neuralops.redaction import Redactor, default_redactor
from neuralops.vectorize import Quarantined, unencodable

BATCH_ROWS = 5_000
DEFAULT_STREAM = "runs"
FORMATS = {".jsonl": "jsonl", ".ndjson": "jsonl", ".parquet": "parquet"}
COLUMNS = (
    WorkflowRun.id,
    WorkflowRun.run_id,
    WorkflowRun.wpk_id,
    WorkflowRun.status,
    WorkflowRun.duration_ms,
    WorkflowRun.inputs,
    WorkflowRun.outputs,
    WorkflowRun.node_logs,
    WorkflowRun.cluster,
    WorkflowRun.flow_run_id,
    WorkflowRun.created_at,
    WorkflowRun.updated_at,
    WorkflowRun.provenance,
    WorkflowRun.verified,
)
# Nested fields travel as JSON text in Parquet (their shape differs from run to run).
NESTED = ("inputs", "outputs", "node_logs")
# Read undecoded (bytes on SQLite, JSON text on PostgreSQL) and decoded row by row, so that
# one bad row is quarantined instead of failing the whole batch.
RAW = (*NESTED, "run_id", "wpk_id", "status", "cluster", "provenance")
# Kept as stored, not redacted (NeuralOps' own metadata: see the module docstring).
UNREDACTED = ("provenance", "verified")


@dataclass(frozen=True)
class Watermark:
    updated_at: datetime
    id: uuid.UUID


@dataclass
class ExportResult:
    rows: int
    path: Path
    format: str
    previous: Watermark | None
    watermark: Watermark | None
    redactions: dict[str, int] = field(default_factory=dict)
    quarantined: list[Quarantined] = field(default_factory=list)  # rows left out, and why


def export_runs(
    out: str | Path,
    *,
    url: URL | None = None,
    since: datetime | None = None,
    full: bool = False,
    stream: str = DEFAULT_STREAM,
    batch_rows: int = BATCH_ROWS,
    redactor: Redactor | None = None,
    progress: Callable[[int], None] | None = None,
    commit: bool = True,
) -> ExportResult:
    """Write the runs changed since the watermark (or all, or since a time) to ``out``.
    ``commit=False`` leaves the watermark where it was: the caller saves ``result.watermark``
    (``commit_watermark``) once what it does with the file has succeeded."""
    out = Path(out)
    kind = FORMATS.get(out.suffix.lower())
    if kind is None:
        raise InvalidInput(f"--out {out}: use a .jsonl, .ndjson or .parquet file name")
    if full and since is not None:
        raise InvalidInput("--full and --since: choose one")
    if since is not None and since.tzinfo is None:
        since = since.replace(tzinfo=UTC)
    redactor = redactor or default_redactor()
    previous = None if full or since is not None else read_watermark(stream, url=url)
    start = previous or (Watermark(since, uuid.UUID(int=0)) if since else None)
    batches = _batches(url, start, inclusive=since is not None, batch_rows=batch_rows)

    out.parent.mkdir(parents=True, exist_ok=True)
    handle, temp = tempfile.mkstemp(dir=out.parent, prefix=f".{out.name}.", suffix=".tmp")
    rows, last = 0, None
    quarantined: list[Quarantined] = []
    try:
        with os.fdopen(handle, "wb") as sink:
            writer = _JsonlWriter(sink) if kind == "jsonl" else _ParquetWriter(sink)
            for batch, mark in batches:
                good = []
                for record in batch:
                    if isinstance(record, Quarantined):
                        quarantined.append(record)
                    elif (done := _redacted(record, redactor, quarantined)) is not None:
                        good.append(done)
                writer.write(good)
                rows += len(good)
                last = mark  # past the quarantined rows too
                if progress:
                    progress(rows + len(quarantined))
            writer.close()
        os.replace(temp, out)
    except BaseException:
        Path(temp).unlink(missing_ok=True)
        raise
    watermark = previous
    if since is None and last is not None:
        watermark = last
        if commit:
            save_watermark(stream, last, rows, url=url)
    return ExportResult(
        rows, out, kind, previous, watermark, dict(redactor.stats), quarantined=quarantined
    )


def _redacted(
    record: dict[str, Any], redactor: Redactor, quarantined: list[Quarantined]
) -> dict[str, Any] | None:
    """The record redacted, or None (and the reason in ``quarantined``) when it cannot be."""
    try:
        done = redactor.record({k: v for k, v in _public(record).items() if k not in UNREDACTED})
        # What the writers will do with it: text that cannot be encoded fails here, not there.
        json.dumps(done, ensure_ascii=False, allow_nan=False).encode("utf-8")
    except (ValueError, TypeError, RecursionError) as exc:
        reason = unencodable(record) or f"could not be redacted ({type(exc).__name__})"
        quarantined.append(Quarantined(record["run_id"], reason))
        return None
    return done | {k: record[k] for k in UNREDACTED}


def commit_watermark(
    result: ExportResult, *, stream: str = DEFAULT_STREAM, url: URL | None = None
) -> bool:
    """Save the watermark of an export made with ``commit=False``; False when it did not move."""
    if result.watermark is None or result.watermark == result.previous:
        return False
    save_watermark(stream, result.watermark, result.rows, url=url)
    return True


def count_pending(*, url: URL | None = None, stream: str = DEFAULT_STREAM) -> int:
    """Rows an incremental export would write now."""
    mark = read_watermark(stream, url=url)
    query = select(func.count()).select_from(WorkflowRun)
    if mark is not None:
        query = query.where(_after(mark, inclusive=False))
    with session_scope(url) as session:
        return int(session.scalar(query) or 0)


def read_watermark(stream: str = DEFAULT_STREAM, *, url: URL | None = None) -> Watermark | None:
    with session_scope(url) as session:
        row = session.get(EtlWatermark, stream)
        return Watermark(row.last_updated_at, row.last_id) if row else None


def save_watermark(stream: str, mark: Watermark, rows: int, *, url: URL | None = None) -> None:
    with session_scope(url) as session:
        row = session.get(EtlWatermark, stream, with_for_update=True)
        if row is None:
            row = EtlWatermark(name=stream, rows_exported=0)
            session.add(row)
        row.last_updated_at, row.last_id = mark.updated_at, mark.id
        row.rows_exported = (row.rows_exported or 0) + rows
        row.exported_at = utcnow()


def _after(mark: Watermark, *, inclusive: bool):
    key = tuple_(WorkflowRun.updated_at, WorkflowRun.id)
    return key >= (mark.updated_at, mark.id) if inclusive else key > (mark.updated_at, mark.id)


def _batches(
    url: URL | None, start: Watermark | None, *, inclusive: bool, batch_rows: int
) -> Iterator[tuple[list[dict[str, Any] | Quarantined], Watermark]]:
    """(records, and Quarantined for the rows that cannot be exported; the keyset position
    of the batch's last row), ``batch_rows`` at a time, up to the newest row at the start."""
    engine = get_engine(url)
    sqlite = engine.dialect.name == "sqlite"
    columns = [
        (cast(c, LargeBinary) if sqlite else cast(c, Text) if c.key in NESTED else c).label(c.key)
        if c.key in RAW
        else c
        for c in COLUMNS
    ]
    with engine.connect() as conn:
        ceiling = conn.execute(select(func.max(WorkflowRun.updated_at))).scalar()
        if ceiling is None:
            return
        mark, first = start, True
        while True:
            query = select(*columns).where(WorkflowRun.updated_at <= ceiling)
            if mark is not None:
                query = query.where(_after(mark, inclusive=inclusive and first))
            query = query.order_by(WorkflowRun.updated_at, WorkflowRun.id).limit(batch_rows)
            rows = conn.execute(query).all()
            if not rows:
                return
            mark, first = Watermark(rows[-1].updated_at, rows[-1].id), False
            yield [_record(row) for row in rows], mark
            if len(rows) < batch_rows:
                return


class _BadRow(ValueError):
    pass


def _record(row: Any) -> dict[str, Any] | Quarantined:
    try:
        record = {
            "run_id": _text(row.run_id, "run_id"),
            "wpk_id": _text(row.wpk_id, "wpk_id"),
            "status": _text(row.status, "status"),
            "duration_ms": row.duration_ms,
            "inputs": _json(row.inputs, "inputs"),
            "outputs": _json(row.outputs, "outputs"),
            "node_logs": _json(row.node_logs, "node_logs"),
            "cluster": _text(row.cluster, "cluster"),
            "flow_run_id": str(row.flow_run_id) if row.flow_run_id else None,
            "created_at": row.created_at.isoformat(),
            "updated_at": row.updated_at.isoformat(),
            "provenance": _text(row.provenance, "provenance"),
            "verified": bool(row.verified),
        }
    except _BadRow as exc:
        run_id = (
            row.run_id.decode("utf-8", "backslashreplace")
            if isinstance(row.run_id, bytes)
            else str(row.run_id)
        )
        return Quarantined(run_id.encode("utf-8", "backslashreplace").decode(), str(exc))
    return record


def _text(value: Any, name: str) -> Any:
    if isinstance(value, bytes | memoryview):
        try:
            value = bytes(value).decode("utf-8")
        except UnicodeDecodeError:
            raise _BadRow(f"{name}: not valid UTF-8") from None
    if isinstance(value, str) and (problem := unencodable(value, name)):
        raise _BadRow(problem)
    return value


def _json(value: Any, name: str) -> Any:
    text = _text(value, name)
    if text is None:
        return None
    if not isinstance(text, str):  # already decoded by the driver
        parsed = text
    else:
        try:
            parsed = json.loads(text, parse_constant=_no_constant, parse_float=_finite)
        except RecursionError:
            raise _BadRow(f"{name}: nested too deeply") from None
        except _BadRow as exc:
            raise _BadRow(f"{name}: {exc}") from None
        except ValueError:
            raise _BadRow(f"{name}: not valid JSON") from None
    if problem := unencodable(parsed, name):
        raise _BadRow(problem)
    return parsed


def _no_constant(name: str) -> Any:
    raise _BadRow(f"{name} is not JSON")


def _finite(text: str) -> float:
    value = float(text)
    if value in (float("inf"), float("-inf")):
        raise _BadRow("a number out of range")
    return value


class _JsonlWriter:
    def __init__(self, sink: IO[bytes]) -> None:
        self.sink = sink

    def write(self, records: list[dict[str, Any]]) -> None:
        lines = (json.dumps(r, ensure_ascii=False, separators=(",", ":")) for r in records)
        self.sink.write(("\n".join(lines) + "\n").encode())

    def close(self) -> None:
        self.sink.flush()


class _ParquetWriter:
    """One row group per batch, through polars and pyarrow's streaming writer."""

    def __init__(self, sink: IO[bytes]) -> None:
        self.sink = sink
        self.writer: pq.ParquetWriter | None = None

    def write(self, records: list[dict[str, Any]]) -> None:
        rows = [dict(r) for r in records]
        for row in rows:
            for name in NESTED:
                row[name] = json.dumps(row[name], ensure_ascii=False, separators=(",", ":"))
        frame = pl.DataFrame(rows, schema=_PARQUET_SCHEMA).to_arrow()
        if self.writer is None:
            self.writer = pq.ParquetWriter(self.sink, frame.schema, compression="zstd")
        self.writer.write_table(frame)

    def close(self) -> None:
        if self.writer is None:  # no rows: still a valid (empty) Parquet file
            empty = pl.DataFrame(schema=_PARQUET_SCHEMA).to_arrow()
            self.writer = pq.ParquetWriter(self.sink, empty.schema, compression="zstd")
        self.writer.close()


_PARQUET_SCHEMA = {
    "run_id": pl.String,
    "wpk_id": pl.String,
    "status": pl.String,
    "duration_ms": pl.Int64,
    "inputs": pl.String,
    "outputs": pl.String,
    "node_logs": pl.String,
    "cluster": pl.String,
    "flow_run_id": pl.String,
    "created_at": pl.String,
    "updated_at": pl.String,
    "provenance": pl.String,
    "verified": pl.Boolean,
}


def _public(record: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in record.items() if not k.startswith("_")}
