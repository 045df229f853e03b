"""Exported runs -> summaries -> vectors -> LanceDB, doing as little embedding as it can.

What is embedded is the incident a run handled (``embedding.incident_text``), so the
recommender compares incidents with incidents; the full run summary is stored beside it for
full-text search and display, and its hash detects changes. Embedding is the slow part (tens
of texts a second on a small CPU), so per batch: runs whose stored (summary hash, model)
match are skipped; each distinct incident text is embedded once, and an in-memory cache keyed
by its hash carries vectors across batches (identical incidents repeat a lot). The rest is
upserted on run_id, so a re-run never duplicates.
"""

from __future__ import annotations

import json
from collections import OrderedDict
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from itertools import islice
from pathlib import Path
from typing import Any

import numpy as np

from neuralops.embedding import Embedder, content_hash, incident_text, model_id, run_summary
from neuralops.errors import ConfigError, InvalidInput
from neuralops.incident import run_resource, run_symptoms
from neuralops.vectorstore import VectorStore

CACHE_MAX = 50_000  # vectors kept across batches: ~75 MiB at 384-d float32


@dataclass
class VectorizeResult:
    read: int
    written: int
    skipped: int  # unchanged: same summary and same model as stored
    embedded_texts: int  # distinct texts sent to the embedder
    model: str
    warning: str | None = None


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
) -> VectorizeResult:
    """Embed and upsert ``records`` (exported, redacted runs); ``progress(done)`` per batch."""
    if embedder.dim != store.dim:
        raise ConfigError(
            f"embedder {embedder.name} makes {embedder.dim}-d vectors but the store holds "
            f"{store.dim}-d ones"
        )
    if batch_size < 1:
        raise InvalidInput(f"batch_size must be at least 1, not {batch_size}")
    model = model_id(embedder)
    cache = _VectorCache(CACHE_MAX)
    result = VectorizeResult(
        read=0, written=0, skipped=0, embedded_texts=0, model=model, warning=warning
    )
    iterator = iter(records)
    while batch := list(islice(iterator, batch_size)):
        result.read += len(batch)
        rows = _prepare(batch, result.read - len(batch))
        stored = store.fingerprints(list(rows))
        todo = [
            row
            for run_id, row in rows.items()
            if stored.get(run_id) != (row["content_hash"], model)
        ]
        result.skipped += len(batch) - len(todo)
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


def _prepare(batch: list[Mapping[str, Any]], offset: int) -> dict[str, dict[str, Any]]:
    """run_id -> row without vector; a run repeated in one batch keeps its last record."""
    rows: dict[str, dict[str, Any]] = {}
    for i, record in enumerate(batch):
        run_id = record.get("run_id") if isinstance(record, Mapping) else None
        if not run_id:
            raise InvalidInput(f"record {offset + i + 1}: run_id is missing")
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
        }
    return rows


def read_jsonl(path: str | Path) -> Iterator[dict[str, Any]]:
    """One record per line, streamed; blank lines are skipped."""
    path = Path(path)
    try:
        handle = path.open(encoding="utf-8")
    except FileNotFoundError:
        raise InvalidInput(f"{path}: no such file") from None
    with handle:
        for number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as exc:
                raise InvalidInput(f"{path} line {number}: not valid JSON ({exc.msg})") from None
            if not isinstance(record, dict):
                raise InvalidInput(
                    f"{path} line {number}: expected a JSON object, got {type(record).__name__}"
                )
            yield record
