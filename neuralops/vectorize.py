"""Exported runs -> summaries -> vectors -> LanceDB, doing as little embedding as it can.

What is embedded is the incident a run handled (``embedding.incident_text``), so the
recommender compares incidents with incidents; the full run summary is stored beside it for
full-text search and display, and its hash detects changes. Embedding is the slow part (tens
of texts a second on a small CPU), so per batch: runs whose stored (summary hash, model)
match are skipped; each distinct incident text is embedded once, and an in-memory cache keyed
by its hash carries vectors across batches (identical incidents repeat a lot). The rest is
merged on run_id (``VectorStore.upsert``), so a re-run never duplicates.

Each row keeps the run's ``provenance`` and ``verified`` (records without them, from exports
made before they existed, are ``unknown`` and unverified); a change to either rewrites the row.

One vectorize at a time per store (``vectorize_lock``): a second one waits for the first, up
to ``lock_timeout_s``, then refuses with a ``Conflict`` naming the store. The lock is
- a local store (a directory): ``fcntl.flock`` on ``.neuralops-vectorize.lock`` inside it,
  which every process on the machine sees (the directory is only ever local);
- a remote store (s3://, gs://, az://): a PostgreSQL session advisory lock in the run-history
  database, keyed by the store's URI and table, which every process of the installation
  shares; with SQLite as the run-history database (one machine), ``fcntl.flock`` on a lock
  file in the data directory.
The merge on run_id cannot duplicate even without the lock (the table's primary key, see
``neuralops.vectorstore``); the lock keeps two runs from embedding the same rows twice.

A record that cannot be stored (text that cannot be encoded, such as a lone surrogate) is
quarantined: counted and named (run_id and reason, never its content) in the result, and the
rest goes on.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from itertools import islice
from pathlib import Path
from typing import Any

import numpy as np

from neuralops.embedding import Embedder, content_hash, incident_text, model_id, run_summary
from neuralops.errors import ConfigError, Conflict, InvalidInput
from neuralops.incident_model import run_resource, run_symptoms
from neuralops.quarantine import Quarantined, unencodable
from neuralops.vectorstore import VectorStore, is_remote

CACHE_MAX = 50_000  # vectors kept across batches: ~75 MiB at 384-d float32
LOCK_FILE = ".neuralops-vectorize.lock"
LOCK_TIMEOUT_S = 900.0  # a second vectorize waits this long for the first, then refuses
LOCK_POLL_S = 0.2


@dataclass
class VectorizeResult:
    read: int
    written: int
    skipped: int  # unchanged: same summary, model, provenance and verification as stored
    embedded_texts: int  # distinct texts sent to the embedder
    model: str
    warning: str | None = None
    quarantined: list[Quarantined] = field(default_factory=list)


class _VectorCache:
    """Least-recently-used vectors by content hash."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._items: OrderedDict[str, np.ndarray] = OrderedDict()

    def get(self, key: str) -> np.ndarray | None:
        vector = self._items.get(key)
        if vector is not None:
            self._items.move_to_end(key)
        return vector

    def put(self, key: str, vector: np.ndarray) -> None:
        self._items[key] = vector
        self._items.move_to_end(key)
        while len(self._items) > self.limit:
            self._items.popitem(last=False)


def vectorize_records(
    records: Iterable[Mapping[str, Any]],
    store: VectorStore,
    embedder: Embedder,
    batch_size: int = 512,
    progress: Callable[[int], None] | None = None,
    warning: str | None = None,
    *,
    lock: bool = True,
    lock_timeout_s: float = LOCK_TIMEOUT_S,
    on_wait: Callable[[str], None] | None = None,
    url: Any = None,
) -> VectorizeResult:
    """Embed and upsert ``records`` (exported, redacted runs); ``progress(done)`` per batch.
    Holds the store's vectorize lock throughout (``vectorize_lock``; ``url`` is the
    run-history database a remote store's lock lives in); ``lock=False`` is for callers that
    hold it already."""
    if embedder.dim != store.dim:
        raise ConfigError(
            f"embedder {embedder.name} makes {embedder.dim}-d vectors but the store holds "
            f"{store.dim}-d ones"
        )
    if batch_size < 1:
        raise InvalidInput(f"batch_size must be at least 1, not {batch_size}")
    held = (
        vectorize_lock(store, url=url, timeout_s=lock_timeout_s, on_wait=on_wait)
        if lock
        else contextlib.nullcontext()
    )
    with held:
        return _vectorize(records, store, embedder, batch_size, progress, warning)


def _vectorize(
    records: Iterable[Mapping[str, Any]],
    store: VectorStore,
    embedder: Embedder,
    batch_size: int,
    progress: Callable[[int], None] | None,
    warning: str | None,
) -> VectorizeResult:
    model = model_id(embedder)
    cache = _VectorCache(CACHE_MAX)
    result = VectorizeResult(
        read=0, written=0, skipped=0, embedded_texts=0, model=model, warning=warning
    )
    iterator = iter(records)
    while batch := list(islice(iterator, batch_size)):
        result.read += len(batch)
        rows = _prepare(batch, result.read - len(batch), result.quarantined)
        stored = store.fingerprints(list(rows))
        todo = [
            row
            for run_id, row in rows.items()
            if stored.get(run_id)
            != (row["content_hash"], model, row["provenance"], row["verified"])
        ]
        result.skipped += len(rows) - len(todo)
        # Distinct incident texts not in the cache, each embedded once.
        missing = {
            row["embed_hash"]: row["embed_text"]
            for row in todo
            if cache.get(row["embed_hash"]) is None
        }
        if missing:
            vectors = embedder.embed(list(missing.values()))
            for digest, vector in zip(missing, vectors, strict=True):
                cache.put(digest, vector)
            result.embedded_texts += len(missing)
        for row in todo:
            vector = cache.get(row.pop("embed_hash"))
            text = row.pop("embed_text")
            if vector is None:  # evicted by this very batch (batch > CACHE_MAX)
                vector = embedder.embed([text])[0]
                result.embedded_texts += 1
            row["vector"] = vector
            row["model"] = model
        if todo:
            result.written += store.upsert(todo)
        if progress is not None:
            progress(result.read)
    return result


def _prepare(
    batch: list[Mapping[str, Any]], offset: int, quarantined: list[Quarantined]
) -> dict[str, dict[str, Any]]:
    """run_id -> row without vector; a run repeated in one batch keeps its last record; a
    record that cannot be stored goes to ``quarantined`` instead."""
    rows: dict[str, dict[str, Any]] = {}
    for i, record in enumerate(batch):
        run_id = record.get("run_id") if isinstance(record, Mapping) else None
        if not run_id:
            raise InvalidInput(f"record {offset + i + 1}: run_id is missing")
        problem = unencodable(record)
        if problem:
            quarantined.append(Quarantined(_printable(run_id), problem))
            rows.pop(str(run_id), None)
            continue
        summary = run_summary(record)
        embedded = incident_text(record)
        rows[str(run_id)] = {
            "run_id": str(run_id),
            "wpk_id": record.get("wpk_id"),
            "status": record.get("status"),
            "resource": run_resource(record),
            "symptoms": ",".join(run_symptoms(record)) or None,
            "summary": summary,
            "content_hash": content_hash(summary),  # any change (status too) rewrites the row
            "embed_text": embedded,
            "embed_hash": content_hash(embedded),
            "created_at": record.get("created_at"),
            "updated_at": record.get("updated_at"),
            "provenance": str(record.get("provenance") or "unknown"),
            "verified": record.get("verified") is True,
        }
    return rows


def _printable(run_id: Any) -> str:
    """A run_id safe to print (an unencodable one is escaped)."""
    return str(run_id).encode("utf-8", "backslashreplace").decode("utf-8")


@contextlib.contextmanager
def vectorize_lock(
    store: VectorStore,
    *,
    url: Any = None,
    timeout_s: float = LOCK_TIMEOUT_S,
    on_wait: Callable[[str], None] | None = None,
) -> Iterator[None]:
    """Hold the store's vectorize lock (see the module docstring for which lock). Waits up to
    ``timeout_s`` for another holder (``on_wait(message)`` once, when it has to wait), then
    raises ``Conflict``; ``timeout_s=0`` refuses at once."""
    what = f"{store.uri} (table {store.table_name})"
    if not is_remote(store.uri):
        folder = Path(store.uri.removeprefix("file://")).expanduser()
        folder.mkdir(parents=True, exist_ok=True)
        with _file_lock(folder / LOCK_FILE, what, timeout_s, on_wait):
            yield
        return
    from neuralops.db import get_engine

    engine = get_engine(url)
    key = int.from_bytes(
        hashlib.sha256(f"neuralops-vectorize:{store.uri}:{store.table_name}".encode()).digest()[:8],
        "big",
        signed=True,
    )
    if engine.dialect.name == "postgresql":
        with _advisory_lock(engine, key, what, timeout_s, on_wait):
            yield
        return
    folder = Path(engine.url.database or ".").expanduser().resolve().parent
    with _file_lock(folder / f"vectorize-{key & 0xFFFFFFFF:08x}.lock", what, timeout_s, on_wait):
        yield


def _busy(what: str, holder: str, timeout_s: float) -> Conflict:
    waited = f" after waiting {timeout_s:g} s" if timeout_s > 0 else ""
    return Conflict(
        f"another vectorize is writing to the vector store at {what}{holder}{waited}: "
        "run it again once that one has finished"
    )


@contextlib.contextmanager
def _file_lock(
    path: Path, what: str, timeout_s: float, on_wait: Callable[[str], None] | None
) -> Iterator[None]:
    # flock locks belong to the open file: two threads or two processes exclude each other.
    handle = path.open("a+")
    try:
        deadline = time.monotonic() + max(timeout_s, 0.0)
        told = False
        while True:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                holder = _holder(path)
                if time.monotonic() >= deadline:
                    raise _busy(what, holder, timeout_s) from None
                if on_wait is not None and not told:
                    on_wait(f"waiting for another vectorize of {what}{holder} to finish")
                    told = True
                time.sleep(LOCK_POLL_S)
        handle.seek(0)
        handle.truncate()
        handle.write(f"{os.getpid()}\n")
        handle.flush()
        try:
            yield
        finally:
            handle.seek(0)
            handle.truncate()
            handle.flush()
            fcntl.flock(handle, fcntl.LOCK_UN)
    finally:
        handle.close()


def _holder(path: Path) -> str:
    try:
        pid = path.read_text().strip()
    except OSError:
        return ""
    return f" (lock {path}, held by process {pid})" if pid.isdigit() else f" (lock {path})"


@contextlib.contextmanager
def _advisory_lock(
    engine: Any, key: int, what: str, timeout_s: float, on_wait: Callable[[str], None] | None
) -> Iterator[None]:
    from sqlalchemy import func, select

    # A session-level lock on a connection of its own, in autocommit: held until unlocked or
    # the connection closes (a killed vectorize releases it).
    with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        deadline = time.monotonic() + max(timeout_s, 0.0)
        told = False
        while not conn.execute(select(func.pg_try_advisory_lock(key))).scalar():
            if time.monotonic() >= deadline:
                raise _busy(what, " (a PostgreSQL advisory lock)", timeout_s)
            if on_wait is not None and not told:
                on_wait(f"waiting for another vectorize of {what} to finish")
                told = True
            time.sleep(LOCK_POLL_S)
        try:
            yield
        finally:
            conn.execute(select(func.pg_advisory_unlock(key)))


def read_jsonl(
    path: str | Path, quarantine: list[Quarantined] | None = None
) -> Iterator[dict[str, Any]]:
    """One record per line, streamed; blank lines are skipped. A bad line (not JSON, not an
    object, not UTF-8) raises ``InvalidInput`` naming it, or, given a ``quarantine`` list, is
    recorded there (``line <n>`` and why) and skipped."""
    path = Path(path)
    try:
        # surrogateescape: bytes that are not UTF-8 become lone surrogates, which make the
        # line invalid JSON or the record quarantined (vectorize_records), not the file fail
        handle = path.open(encoding="utf-8", errors="surrogateescape")
    except FileNotFoundError:
        raise InvalidInput(f"{path}: no such file") from None
    with handle:
        for number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as exc:
                problem = f"not valid JSON ({exc.msg})"
            except RecursionError:
                problem = "nested too deeply"
            else:
                problem = (
                    None
                    if isinstance(record, dict)
                    else f"expected a JSON object, got {type(record).__name__}"
                )
            if problem is None:
                yield record
            elif quarantine is None:
                raise InvalidInput(f"{path} line {number}: {problem}")
            else:
                quarantine.append(Quarantined(f"line {number}", problem))
