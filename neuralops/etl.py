"""Export run history: workflow_runs → redacted JSONL or Parquet, incrementally.

Rows are read in keyset order ``(updated_at, id)`` a batch at a time, so memory stays flat
however many rows there are. Each batch is redacted (``neuralops.redaction``) before it is
written: nothing leaves the database unredacted. The file appears only when complete (a
temporary file in the same folder, renamed at the end); only then does the watermark — the
``(updated_at, id)`` of the last row exported, in table ``etl_watermarks`` — move, so a
failed export is simply done again.

On PostgreSQL the rows come through ``COPY (SELECT row_to_json(...)) TO STDOUT`` in keyset
slices (``(updated_at, id)`` bounds found first, so each slice is a plain range), read by a
background thread while the main thread redacts, so the database and the redaction overlap.
Each line is already the exported JSON; ``neuralops.redaction_batch.marked_lines`` marks,
over a whole chunk of the bytes COPY sent, the lines some redaction rule could touch, and
only those are decoded and redacted (in place where only string values change, else the
whole record; ``etl_lines.redact_line``); the rest are written as the bytes PostgreSQL sent
(the same values as the redactor's output, JSON spacing aside). In a large export the marked
lines are redacted by worker processes (``_Redaction``, one per core, running
``neuralops.etl_lines``), in order, while this process goes on reading and writing. SQLite
reads keyset batches and pre-filters the same way, in one process.

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

import contextlib
import fcntl
import io
import json
import os
import queue
import re
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections import deque
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import lru_cache
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

import numpy as np
from sqlalchemy import LargeBinary, Text, cast, func, select, tuple_
from sqlalchemy.engine import URL

from neuralops import etl_lines
from neuralops.db import get_engine, session_scope
from neuralops.db.models import EtlWatermark, WorkflowRun, utcnow
from neuralops.errors import InvalidInput
from neuralops.etl_lines import UNREDACTED, receive, send
from neuralops.quarantine import Quarantined, unencodable
from neuralops.redaction import (
    TRIGGERS,
    Redactor,
    compiled_scanners,
    default_redactor,
    scanner,
)
from neuralops.redaction_batch import line_ends, marked_lines, may_redact, triggers

if TYPE_CHECKING:
    import polars as pl
    import pyarrow.parquet as pq

BATCH_ROWS = 5_000  # rows per keyset batch (SQLite)
SLICE_ROWS = 50_000  # rows per keyset slice of COPY (PostgreSQL)
CHUNK_ROWS = 2_000  # COPY lines handed to the redaction at a time
QUEUE_CHUNKS = 8  # chunks the COPY reader may have read ahead
MAX_WORKERS = 4  # redaction worker processes at most (one per core by default)
PIPE_BYTES = 1 << 20  # Linux's default limit for an unprivileged process
# An export starts its workers once redacting here has taken this much of this thread's CPU
# time, and at least this share of it. Where few lines need redacting (an IP address in one
# line in fifty: a quarter of this thread's time), workers cost more CPU, on cores that
# PostgreSQL needs, than they save (measured: reports/vectorize.md).
POOL_MIN_REDACTION_S = 0.5
POOL_MIN_SHARE = 0.5
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
    batch_rows: int | None = None,
    redactor: Redactor | None = None,
    progress: Callable[[int], None] | None = None,
    commit: bool = True,
    workers: int | None = None,
) -> ExportResult:
    """Write the runs changed since the watermark (or all, or since a time) to ``out``.
    ``commit=False`` leaves the watermark where it was: the caller saves ``result.watermark``
    (``commit_watermark``) once what it does with the file has succeeded. ``workers``: the
    processes that may redact marked COPY lines (None: one per core, up to 4; 0: none)."""
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
    if get_engine(url).dialect.name == "postgresql":
        batches = _copy_batches(
            url, start, inclusive=since is not None, slice_rows=batch_rows or SLICE_ROWS
        )
    else:
        batches = _batches(
            url, start, inclusive=since is not None, batch_rows=batch_rows or BATCH_ROWS
        )

    out.parent.mkdir(parents=True, exist_ok=True)
    handle, temp = tempfile.mkstemp(dir=out.parent, prefix=f".{out.name}.", suffix=".tmp")
    rows, last = 0, None
    quarantined: list[Quarantined] = []
    redaction = _Redaction(redactor, _default_workers() if workers is None else workers)
    # Batches handed to the redaction and not yet written, in order (several only while
    # worker processes redact them: the reader and the writer keep going meanwhile).
    pending: deque[tuple[_Job, Watermark | None]] = deque()
    try:
        with os.fdopen(handle, "wb") as sink:
            writer = _JsonlWriter(sink) if kind == "jsonl" else _ParquetWriter(sink)

            def write_oldest() -> None:
                nonlocal rows, last
                job, mark = pending.popleft()
                good = job.result(quarantined)
                writer.write(good)
                rows += sum(p.count if isinstance(p, _Lines) else 1 for p in good)
                if mark is not None:
                    last = mark  # past the quarantined rows too
                if progress:
                    progress(rows + len(quarantined))

            for batch, mark, reread in batches:
                pending.append((redaction.submit(batch, reread), mark))
                while pending and (len(pending) > redaction.depth or pending[0][0].ready()):
                    write_oldest()
            while pending:
                write_oldest()
            writer.close()
        os.replace(temp, out)
    except BaseException:
        redaction.close(failed=True)  # the worker processes, if any were started
        Path(temp).unlink(missing_ok=True)
        raise
    finally:
        redaction.close()
        batches.close()  # stops the COPY reader when the export failed half-way
    watermark = previous
    if since is None and last is not None:
        watermark = last
        if commit:
            save_watermark(stream, last, rows, url=url)
    return ExportResult(
        rows, out, kind, previous, watermark, dict(redactor.stats), quarantined=quarantined
    )


def _default_workers() -> int:
    cores = os.cpu_count() or 1
    return min(cores, MAX_WORKERS) if cores > 1 else 0


class _Job:
    """One batch on its way through the redaction: ``result`` gives what will be written."""

    def __init__(
        self,
        finish: Callable[[list[Quarantined]], list[Piece]],
        worker: _Worker | None = None,
    ) -> None:
        self._finish, self._worker = finish, worker

    def ready(self) -> bool:
        return self._worker is None  # a worker's answer is read when its turn comes

    def result(self, quarantined: list[Quarantined]) -> list[Piece]:
        return self._finish(quarantined)


class _Worker:
    """A redaction worker process (``python -m neuralops.etl_lines``): tasks in, answers out,
    in order."""

    def __init__(self, redactor: Redactor) -> None:
        # The worker imports neuralops from where this process did (a sys.path entry of its
        # own, such as a script's, is not inherited).
        root = str(Path(__file__).resolve().parents[1])
        path = os.pathsep.join(p for p in (root, os.environ.get("PYTHONPATH")) if p)
        self.process = subprocess.Popen(
            [sys.executable, "-m", "neuralops.etl_lines"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            env={**os.environ, "PYTHONPATH": path},
        )
        assert self.process.stdin is not None and self.process.stdout is not None
        self.tasks, self.answers = self.process.stdin, self.process.stdout
        for pipe in (self.tasks, self.answers):  # a task (~1 MiB) in one go, not 64 KiB steps
            with contextlib.suppress(OSError, AttributeError):
                fcntl.fcntl(pipe.fileno(), fcntl.F_SETPIPE_SZ, PIPE_BYTES)
        # the hash key goes through the pipe, never the command line (visible in ps); so do
        # the trigger scanners this process compiled, which the worker would compile again
        wanted = [t for t in (TRIGGERS, triggers(redactor)) if t is not None]
        send(self.tasks, (dict(redactor.field_rules), redactor._key, compiled_scanners(*wanted)))

    def submit(self, lines: list[str]) -> None:
        send(self.tasks, lines)

    def answer(self) -> tuple[list[str | Quarantined | None], dict[str, int]]:
        try:
            status, value = receive(self.answers)
        except EOFError:
            code = self.process.wait()
            raise RuntimeError(f"an export redaction worker exited (code {code})") from None
        if status == "error":
            raise value
        return value

    def close(self, *, kill: bool) -> None:
        if kill:
            self.process.kill()
        with contextlib.suppress(OSError):
            self.tasks.close()
        self.process.wait()
        self.answers.close()


class _Redaction:
    """Redacts batches as ``_redact_batch`` does, in order. The COPY lines the pre-filter
    marks (a stock ``Redactor`` only) go to worker processes once redacting them here has
    cost enough (``POOL_MIN_REDACTION_S``, ``POOL_MIN_SHARE``), so that the redaction, then
    the most costly step, runs on the other cores while this process reads, pre-filters and
    writes. Each worker has a redactor with the same field rules and hash key and runs the
    same code on each line (``etl_lines.redact_lines``); its counts are added to
    ``redactor.stats``. Where a worker redacts a line changes nothing in the output."""

    def __init__(self, redactor: Redactor, workers: int) -> None:
        self.redactor = redactor
        self.workers = workers if type(redactor) is Redactor else 0
        self.pool: list[_Worker] = []
        self.turn = 0
        if self.workers:
            scanner(TRIGGERS)  # compiled once, before the clock starts: not redaction's cost
        self.started = time.thread_time()
        self.redacting_s = 0.0  # this thread's CPU time in redacting COPY lines here
        self.depth = 0  # batches that may wait for their workers before the oldest is written

    def _worth_a_pool(self) -> bool:
        spent = time.thread_time() - self.started
        return self.redacting_s >= POOL_MIN_REDACTION_S and self.redacting_s >= (
            POOL_MIN_SHARE * spent
        )

    def _here(
        self,
        batch: Batch,
        reread: Callable[[str], dict[str, Any] | Quarantined] | None,
        marks: _Marks,
    ) -> _Job:
        def finish(quarantined: list[Quarantined]) -> list[Piece]:
            start = time.thread_time()
            try:
                return _redact_batch(batch, self.redactor, quarantined, reread, marks)
            finally:
                self.redacting_s += time.thread_time() - start

        return _Job(finish)

    def submit(
        self, batch: Batch, reread: Callable[[str], dict[str, Any] | Quarantined] | None
    ) -> _Job:
        marks = _marks(batch, self.redactor)
        if not isinstance(batch, bytes):  # records (SQLite): redacted here
            return self._here(batch, reread, marks)
        if not self.pool and self.workers and self._worth_a_pool():
            self.pool = [_Worker(self.redactor) for _ in range(self.workers)]
            self.depth = self.workers + 1  # each has one to start when it is done
        if not self.pool or not marks.lines:
            return self._here(batch, reread, marks)
        worker = self.pool[self.turn % len(self.pool)]  # in turn: answers come back in order
        self.turn += 1
        worker.submit(list(marks.lines.values()))

        def finish(quarantined: list[Quarantined]) -> list[Piece]:
            results, stats = worker.answer()
            self.redactor.stats.update(stats)
            done = dict(zip(marks.lines, results, strict=True))
            return _redact_batch(batch, self.redactor, quarantined, reread, marks, done)

        return _Job(finish, worker)

    def close(self, *, failed: bool = False) -> None:
        for worker in self.pool:
            worker.close(kill=failed)
        self.pool = []


@dataclass(frozen=True)
class _Lines:
    """Lines written as COPY sent them (each ended by a newline): none needed redacting."""

    data: bytes
    count: int


# A batch: records and Quarantined (SQLite), or COPY's JSON lines (PostgreSQL). What is
# written: records, redacted lines (compact JSON) and runs of lines written as they came.
Batch = list[dict[str, Any] | Quarantined] | bytes
Piece = dict[str, Any] | str | _Lines


@dataclass(frozen=True)
class _Marks:
    """Which items of a batch the redactor could change. For COPY lines: each line's end
    (its newline's offset) and the marked lines, decoded, by position."""

    marked: list[bool] | None = None
    ends: Any = None  # numpy array of offsets
    lines: dict[int, str] = field(default_factory=dict)


def _marks(batch: Batch, redactor: Redactor) -> _Marks:
    if isinstance(batch, bytes):
        ends = line_ends(batch)
        lines: dict[int, str] = {}
        for i in np.flatnonzero(marked_lines(batch, redactor, ends)).tolist():
            start = int(ends[i - 1]) + 1 if i else 0
            lines[i] = batch[start : int(ends[i])].decode("utf-8", "surrogateescape")
        return _Marks(ends=ends, lines=lines)
    texts: list[str] = []
    for item in batch:
        if not isinstance(item, Quarantined):
            public = {k: v for k, v in item.items() if k not in UNREDACTED}
            texts.append(json.dumps(public, ensure_ascii=False))
    found = iter(may_redact(texts, redactor))
    return _Marks([False if isinstance(item, Quarantined) else next(found) for item in batch])


def _redact_batch(
    batch: Batch,
    redactor: Redactor,
    quarantined: list[Quarantined],
    reread: Callable[[str], dict[str, Any] | Quarantined] | None = None,
    marks: _Marks | None = None,
    done: Mapping[int, str | Quarantined | None] | None = None,
) -> list[Piece]:
    """The batch as it will be written: quarantined rows left out, each record the redactor
    could change redacted (``redaction_batch`` marks them over the whole batch), the others
    as they are (the redactor would return them unchanged). COPY lines: a marked line is
    decoded (one that does not decode cleanly is read again the reference way, ``reread``);
    the unmarked ones are written as they came. ``done``: marked lines a worker already
    redacted (``etl_lines.redact_lines``), by position."""
    marks = marks or _marks(batch, redactor)
    good: list[Piece] = []
    if isinstance(batch, bytes):
        start, first = 0, 0  # the first byte and line not written yet
        for i, line in marks.lines.items():
            begin = int(marks.ends[i - 1]) + 1 if i else 0
            if i > first:
                good.append(_Lines(batch[start:begin], i - first))
            start, first = int(marks.ends[i]) + 1, i + 1
            verdict = done.get(i) if done is not None else None
            if verdict is None:
                verdict = etl_lines.redact_line(line, redactor)
            if verdict is None:  # it does not decode cleanly: read it the reference way
                assert reread is not None
                record = reread(_line_run_id(line))
                verdict = (
                    record
                    if isinstance(record, Quarantined)
                    else etl_lines.redacted(record, redactor, quarantined)
                )
            if isinstance(verdict, Quarantined):
                quarantined.append(verdict)
            elif verdict is not None:
                good.append(verdict)
        if len(marks.ends) > first:
            good.append(_Lines(batch[start:], len(marks.ends) - first))
        return good
    assert marks.marked is not None
    for item, marked in zip(batch, marks.marked, strict=True):
        if isinstance(item, Quarantined):
            quarantined.append(item)
        elif not marked:
            good.append(item)
        elif (redacted := etl_lines.redacted(item, redactor, quarantined)) is not None:
            good.append(redacted)
    return good


_RUN_ID = re.compile(r'^\{"run_id":("(?:[^"\\]|\\.)*")')


def _line_run_id(line: str) -> str:
    found = _RUN_ID.match(line)
    if found is None:
        raise ValueError("a COPY line without its run_id")  # the query puts it first
    return json.loads(found.group(1))


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
) -> Iterator[tuple[list[dict[str, Any] | Quarantined], Watermark, None]]:
    """(records, and Quarantined for the rows that cannot be exported; the keyset position
    of the batch's last row; None), ``batch_rows`` at a time, up to the newest row at the
    start."""
    engine = get_engine(url)
    columns = _columns(sqlite=engine.dialect.name == "sqlite")
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
            yield [_record(row) for row in rows], mark, None
            if len(rows) < batch_rows:
                return


def _columns(*, sqlite: bool) -> list[Any]:
    return [
        (cast(c, LargeBinary) if sqlite else cast(c, Text) if c.key in NESTED else c).label(c.key)
        if c.key in RAW
        else c
        for c in COLUMNS
    ]


# --- PostgreSQL: COPY in keyset slices -------------------------------------------------------

# A timestamp as datetime.isoformat() writes it in UTC (microseconds only when not zero).
_ISO = (
    "to_char({c} AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS') || CASE WHEN "
    "mod(extract(microseconds FROM {c})::bigint, 1000000) = 0 THEN '' "
    "ELSE to_char({c} AT TIME ZONE 'UTC', '.US') END || '+00:00'"
)
# One run per line, as the JSON record ``_record`` builds (same keys, same order). CSV with a
# quote and a delimiter that JSON text never holds unescaped: each line is the JSON verbatim.
# The order is the table's columns (qualified: unqualified, ORDER BY would take the text
# aliases of the same names, which no index serves).
_SLICE = (
    "SELECT row_to_json(t)::text FROM (SELECT run_id, wpk_id, status, duration_ms, "
    "inputs, outputs, node_logs, cluster, flow_run_id::text AS flow_run_id, "
    f"{_ISO.format(c='created_at')} AS created_at, {_ISO.format(c='updated_at')} AS updated_at, "
    "provenance, coalesce(verified, false) AS verified FROM workflow_runs "
    "WHERE {where} ORDER BY workflow_runs.updated_at, workflow_runs.id) t"
)
_COPY = f"COPY ({_SLICE}) TO STDOUT (FORMAT csv, QUOTE e'\\x01', DELIMITER e'\\x02')"
# Each slice streams in index order from its first row. Where updated_at does not follow the
# rows' places on disk (runs updated, history imported), the planner would rather scan the
# whole table and sort the slice on disk first: a table scan per slice, with nothing to
# redact meanwhile. Set in the export's transaction only.
_STREAMING = "SET LOCAL enable_sort = off"
_DONE = object()


def _copy_batches(
    url: URL | None, start: Watermark | None, *, inclusive: bool, slice_rows: int
) -> Iterator[tuple[bytes, Watermark | None, Callable[[str], Any]]]:
    """(JSON lines as COPY sent them, each ended by a newline; the keyset position reached or
    None inside a slice; ``reread``), up to the
    newest row at the start. A thread runs the COPYs (one per slice of ``slice_rows`` rows,
    its upper bound found first) and queues chunks of lines, so PostgreSQL keeps sending
    while this thread redacts; a few chunks at most are in memory."""
    engine = get_engine(url)
    chunks: queue.Queue[Any] = queue.Queue(maxsize=QUEUE_CHUNKS)
    stop = threading.Event()

    def put(item: Any) -> None:
        while not stop.is_set():
            try:
                chunks.put(item, timeout=0.2)
                return
            except queue.Full:
                continue
        raise _Stopped

    def read() -> None:
        try:
            with engine.connect() as conn:
                conn.exec_driver_sql(_STREAMING)
                ceiling = conn.execute(select(func.max(WorkflowRun.updated_at))).scalar()
                raw = conn.connection.driver_connection
                mark, first = start, ceiling is not None
                while ceiling is not None:
                    end = _slice_end(conn, mark, inclusive and first, ceiling, slice_rows)
                    if end is None:
                        break
                    where, params = "(updated_at, id) <= (%s, %s)", [end.updated_at, end.id]
                    if mark is not None:
                        op = ">=" if inclusive and first else ">"
                        where = f"(updated_at, id) {op} (%s, %s) AND {where}"
                        params = [mark.updated_at, mark.id, *params]
                    with (
                        raw.cursor() as cursor,
                        cursor.copy(_COPY.format(where=where), params) as copy,
                    ):
                        parts: list[Any] = []
                        for data in copy:
                            parts.append(data)
                            if len(parts) == CHUNK_ROWS:
                                put((b"".join(parts), None))
                                parts = []
                    put((b"".join(parts), end))
                    mark, first = end, False
            put(_DONE)
        except _Stopped:
            pass
        except BaseException as exc:  # handed to the consumer, raised there
            with contextlib.suppress(_Stopped):
                put(exc)

    thread = threading.Thread(target=read, name="neuralops-export-copy", daemon=True)
    thread.start()
    try:
        while (item := chunks.get()) is not _DONE:
            if isinstance(item, BaseException):
                raise item
            data, mark = item
            yield data, mark, lambda run_id: _reread(url, run_id)
    finally:
        stop.set()
        thread.join()


class _Stopped(Exception):
    pass


def _slice_end(
    conn: Any, mark: Watermark | None, inclusive: bool, ceiling: datetime, rows: int
) -> Watermark | None:
    """The keyset position of the last of the next ``rows`` rows (None: no rows left)."""
    inner = select(WorkflowRun.updated_at, WorkflowRun.id).where(WorkflowRun.updated_at <= ceiling)
    if mark is not None:
        inner = inner.where(_after(mark, inclusive=inclusive))
    keys = inner.order_by(WorkflowRun.updated_at, WorkflowRun.id).limit(rows).subquery()
    last = conn.execute(
        select(keys.c.updated_at, keys.c.id)
        .order_by(keys.c.updated_at.desc(), keys.c.id.desc())
        .limit(1)
    ).first()
    return Watermark(last.updated_at, last.id) if last else None


def _reread(url: URL | None, run_id: str) -> dict[str, Any] | Quarantined:
    """One run read and judged the reference way (``_record``): a COPY line that did not
    decode cleanly gets the same verdict and reason as the batch reads give it."""
    with get_engine(url).connect() as conn:
        row = conn.execute(
            select(*_columns(sqlite=False)).where(WorkflowRun.run_id == run_id)
        ).first()
    if row is None:
        return Quarantined(_printable(run_id), "deleted while it was exported")
    return _record(row)


def _printable(text: str) -> str:
    return text.encode("utf-8", "backslashreplace").decode("utf-8")


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
    except etl_lines.BadRow as exc:
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
            raise etl_lines.BadRow(f"{name}: not valid UTF-8") from None
    if isinstance(value, str) and (problem := unencodable(value, name)):
        raise etl_lines.BadRow(problem)
    return value


def _json(value: Any, name: str) -> Any:
    text = _text(value, name)
    if text is None:
        return None
    if not isinstance(text, str):  # already decoded by the driver
        parsed = text
    else:
        try:
            parsed = json.loads(
                text, parse_constant=etl_lines.no_constant, parse_float=etl_lines.finite
            )
        except RecursionError:
            raise etl_lines.BadRow(f"{name}: nested too deeply") from None
        except etl_lines.BadRow as exc:
            raise etl_lines.BadRow(f"{name}: {exc}") from None
        except ValueError:
            raise etl_lines.BadRow(f"{name}: not valid JSON") from None
    if problem := unencodable(parsed, name):
        raise etl_lines.BadRow(problem)
    return parsed


def _compact(record: dict[str, Any]) -> str:
    return json.dumps(record, ensure_ascii=False, separators=(",", ":"))


def _json_lines(pieces: list[Piece], shape: Callable[[str | dict[str, Any]], str]) -> bytes:
    """What is written, as JSON lines: lines as they came, and the redacted lines and records
    each as ``shape`` writes it."""
    out: list[bytes] = []
    for piece in pieces:
        out.append(piece.data if isinstance(piece, _Lines) else shape(piece).encode() + b"\n")
    return b"".join(out)


def _as_written(piece: str | dict[str, Any]) -> str:
    return piece if isinstance(piece, str) else _compact(piece)


class _JsonlWriter:
    def __init__(self, sink: IO[bytes]) -> None:
        self.sink = sink

    def write(self, pieces: list[Piece]) -> None:
        self.sink.write(_json_lines(pieces, _as_written))

    def close(self) -> None:
        self.sink.flush()


class _ParquetWriter:
    """One row group per batch, through pyarrow's streaming writer. Each batch's columns are
    built by polars from its lines in a few calls (``_parquet_columns``), not row by row."""

    def __init__(self, sink: IO[bytes]) -> None:
        import pyarrow.parquet as pq  # here: about 30 MiB that a JSONL export does without

        self.sink, self.pq = sink, pq
        self.writer: pq.ParquetWriter | None = None

    def write(self, pieces: list[Piece]) -> None:
        frame = _parquet_columns(_json_lines(pieces, _copy_shaped)).to_arrow()
        if self.writer is None:
            self.writer = self.pq.ParquetWriter(self.sink, frame.schema, compression="zstd")
        self.writer.write_table(frame)

    def close(self) -> None:
        if self.writer is None:  # no rows: still a valid (empty) Parquet file
            import polars as pl

            empty = pl.DataFrame(schema=_parquet_schema()).to_arrow()
            self.writer = self.pq.ParquetWriter(self.sink, empty.schema, compression="zstd")
        self.writer.close()


def _copy_shaped(piece: str | dict[str, Any]) -> str:
    """A redacted line or a record as a line shaped like COPY's: the fields in the query's
    order, the top level compact and nested values spaced (", ", ": ") as PostgreSQL prints
    jsonb. In such a line each top-level key appears once as ``,"name":`` (in a nested value
    a comma is followed by a space, and a quote inside a string is escaped)."""
    record = json.loads(piece) if isinstance(piece, str) else piece
    fields = (
        f'"{name}":{json.dumps(record[name], ensure_ascii=False)}' for name in _PARQUET_COLUMNS
    )
    return "{" + ",".join(fields) + "}"


def _parquet_columns(data: bytes) -> pl.DataFrame:
    """COPY-shaped JSON lines as the Parquet file's columns: polars parses the scalar fields,
    and each nested field is cut out of its line as the JSON text it is (numbers as written).
    A batch polars cannot parse (a number past its range) is decoded by Python's json."""
    import polars as pl

    if not data:
        return pl.DataFrame(schema=_parquet_schema())
    try:
        scalars = pl.read_ndjson(io.BytesIO(data), schema=_parquet_schema(nested=False))
    except pl.exceptions.PolarsError:
        return _decoded_columns(data)
    lines = pl.DataFrame({"line": pl.Series(data.split(b"\n")[:-1], dtype=pl.Binary)})
    text = pl.col("line").cast(pl.String)
    # byte offsets (str.find) into the bytes (bin.slice): the text may not be ASCII
    bounds = [text.str.find(f',"{name}":', literal=True) for name in (*NESTED, "cluster")]
    nested = lines.select(
        pl.col("line")
        .bin.slice(start + len(f',"{name}":'), end - start - len(f',"{name}":'))
        .cast(pl.String)
        .alias(name)
        for name, start, end in zip(NESTED, bounds, bounds[1:], strict=False)
    )
    return pl.concat([scalars, nested], how="horizontal").select(_PARQUET_COLUMNS)


def _decoded_columns(data: bytes) -> pl.DataFrame:
    import polars as pl

    rows = [json.loads(line) for line in data.splitlines()]
    for row in rows:
        for name in NESTED:
            row[name] = json.dumps(row[name], ensure_ascii=False)
    return pl.DataFrame(rows, schema=_parquet_schema())


# The Parquet file's columns, in the COPY query's order (strings but these).
_PARQUET_COLUMNS = (
    "run_id", "wpk_id", "status", "duration_ms", "inputs", "outputs", "node_logs", "cluster",
    "flow_run_id", "created_at", "updated_at", "provenance", "verified",
)  # fmt: skip


@lru_cache(maxsize=2)
def _parquet_schema(*, nested: bool = True) -> dict[str, Any]:
    import polars as pl  # here: about 25 MiB that a JSONL export does without

    types = {"duration_ms": pl.Int64, "verified": pl.Boolean}
    return {
        name: types.get(name, pl.String)
        for name in _PARQUET_COLUMNS
        if nested or name not in NESTED
    }
