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
from sqlalchemy import func, select, tuple_
from sqlalchemy.engine import URL

from neuralops.db import get_engine, session_scope
from neuralops.db.models import EtlWatermark, WorkflowRun, utcnow
from neuralops.errors import InvalidInput
from neuralops.redaction import Redactor, default_redactor

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
)
# Nested fields travel as JSON text in Parquet (their shape differs from run to run).
NESTED = ("inputs", "outputs", "node_logs")


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
    try:
        with os.fdopen(handle, "wb") as sink:
            writer = _JsonlWriter(sink) if kind == "jsonl" else _ParquetWriter(sink)
            for batch in batches:
                writer.write([redactor.record(_public(record)) for record in batch])
                rows += len(batch)
                last = Watermark(batch[-1]["_updated_at"], batch[-1]["_id"])
                if progress:
                    progress(rows)
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
    return ExportResult(rows, out, kind, previous, watermark, dict(redactor.stats))


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
) -> Iterator[list[dict[str, Any]]]:
    """Rows as export records, ``batch_rows`` at a time, up to the newest row at the start."""
    engine = get_engine(url)
    with engine.connect() as conn:
        ceiling = conn.execute(select(func.max(WorkflowRun.updated_at))).scalar()
        if ceiling is None:
            return
        mark, first = start, True
        while True:
            query = select(*COLUMNS).where(WorkflowRun.updated_at <= ceiling)
            if mark is not None:
                query = query.where(_after(mark, inclusive=inclusive and first))
            query = query.order_by(WorkflowRun.updated_at, WorkflowRun.id).limit(batch_rows)
            rows = conn.execute(query).all()
            if not rows:
                return
            batch = [_record(row) for row in rows]
            yield batch
            mark, first = Watermark(rows[-1].updated_at, rows[-1].id), False
            if len(rows) < batch_rows:
                return


def _record(row: Any) -> dict[str, Any]:
    return {
        "run_id": row.run_id,
        "wpk_id": row.wpk_id,
        "status": row.status,
        "duration_ms": row.duration_ms,
        "inputs": row.inputs,
        "outputs": row.outputs,
        "node_logs": row.node_logs,
        "cluster": row.cluster,
        "flow_run_id": str(row.flow_run_id) if row.flow_run_id else None,
        "created_at": row.created_at.isoformat(),
        "updated_at": row.updated_at.isoformat(),
        # Keyset position; dropped by the writers.
        "_updated_at": row.updated_at,
        "_id": row.id,
    }


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
}


def _public(record: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in record.items() if not k.startswith("_")}
