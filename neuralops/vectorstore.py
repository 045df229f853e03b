"""Run vectors in LanceDB: one row per run, merged on ``run_id``.

The store lives at ``LANCEDB_URI``: a local directory by default (``<data dir>/lancedb``) or
an object-storage URI (``s3://bucket/path``, ``gs://``, ``az://``), passed to LanceDB as is.
Each row records the summary's content hash and the embedding model (``name@version``), so
the vectorize pipeline can skip runs whose text and model are unchanged, and the run's
``provenance`` and ``verified`` (neuralops.runs), so the recommender can count only runs it
can vouch for. ``run_id`` is the table's (unenforced) primary key: LanceDB then detects two
concurrent ``merge_insert`` commits inserting the same run_id and retries the second as an
update, so concurrent writers cannot leave duplicates (without the key they do: lance#4585).
One vectorize at a time per store is still the rule (``neuralops.vectorize.vectorize_lock``).

Queries are brute force until the table reaches ``INDEX_MIN_ROWS``; from there an
IVF_HNSW_SQ index answers them. The threshold and the index type come from
``bench/vector_index.py``: below 20k rows an exact scan takes under ~25 ms on 2 cores and is
exact; above it the scan grows linearly (~70 ms at 50k) while the index stays at ~4-5 ms with
recall@10 ~0.97. IVF_PQ was slower to build and lost recall as the table grew.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

import lancedb
import numpy as np
import pyarrow as pa
from lancedb.index import FTS, Bitmap, BTree, IvfHnswSq

from neuralops.errors import ConfigError, InvalidInput, Unavailable

# Rows at which the ANN index starts to pay off (bench/vector_index.py, reports/vectorize.md).
INDEX_MIN_ROWS = 20_000
# Re-train the index (new IVF centroids) once the table has grown this much past the rows
# it was trained on; smaller growth is folded in incrementally by ``optimize()``.
RETRAIN_GROWTH = 2.0
# Rows added or rewritten since the index was last updated are still found (LanceDB searches
# them exactly beside the index); they are folded in (``optimize``: compaction, index update,
# old versions pruned) only once they are this fraction of the table, not on every refresh:
# an optimize() takes seconds to minutes on a 100k-row table, while the rows waiting outside
# the index cost a few milliseconds a query (bench/vector_index.py --fold).
FOLD_FRACTION = 0.05
NPROBES = 20
EF = 64
ROWS_PER_PARTITION = 8192
REMOTE_SCHEMES = ("s3://", "s3+ddb://", "gs://", "az://", "abfs://")
VECTOR_COLUMN = "vector"
TEXT_COLUMN = "summary"
KEY = "run_id"
# Low-cardinality columns of every recommendation's prefilter (vouched runs; a playbook's
# reported runs): bitmap indexes make that filter ~2x cheaper at 1M rows than a scan
# (reports/recommend.md, latency).
BITMAP_COLUMNS = ("verified", "provenance", "wpk_id")
# Field metadata LanceDB writes for set_unenforced_primary_key.
_PRIMARY_KEY_META = b"lance-schema:unenforced-primary-key"
_IN_CHUNK = 1000
INDEX_CHECK_S = 60.0
# One LanceDB session (its cache of index partitions and table metadata) for every connection
# this process opens: a store opened anew (a flow run's, a recommender rebuilt because the
# playbooks changed) reads through the same cache. With a session per connection each new
# store read the vector index from disk again (1M rows, by hand: a vector search 93 ms p50
# with a new store per query, 18 ms sharing one cache).
# LanceDB's default bounds: 6 GiB of index, 1 GiB of metadata (1M runs' indexes: ~0.5 GiB).
_SESSION = lancedb.Session()


def schema(dim: int = 384) -> pa.Schema:
    return pa.schema(
        [
            pa.field("run_id", pa.string(), nullable=False),
            pa.field("wpk_id", pa.string()),
            pa.field("status", pa.string()),
            pa.field("resource", pa.string()),  # namespace/service the run acted on
            pa.field("symptoms", pa.string()),  # catalogue tags of its incident, comma-separated
            pa.field("summary", pa.string()),
            pa.field("content_hash", pa.string()),
            pa.field("model", pa.string()),
            pa.field(VECTOR_COLUMN, pa.list_(pa.float32(), dim)),
            pa.field("created_at", pa.timestamp("us", tz="UTC")),
            pa.field("updated_at", pa.timestamp("us", tz="UTC")),
            # Where the run came from and whether that was confirmed (neuralops.runs); null in
            # rows written before these columns existed: unverified, counted for nothing.
            pa.field("provenance", pa.string()),
            pa.field("verified", pa.bool_()),
        ]
    )


def vouched_filter(trusted: Iterable[str] = ()) -> str:
    """A LanceDB filter for runs that count as evidence: verified, or from a trusted writer."""
    writers = sorted(set(trusted))
    if not writers:
        return "(verified = true)"
    return f"(verified = true OR provenance IN ({', '.join(sql_str(w) for w in writers)}))"


def reported_filter(trusted: Iterable[str] = ()) -> str:
    """The complement of ``vouched_filter``: runs shown as "reported", weighing nothing
    (nulls included: rows written before provenance was stored)."""
    writers = sorted(set(trusted))
    unverified = "(verified IS NULL OR verified = false)"
    if not writers:
        return unverified
    listed = ", ".join(sql_str(w) for w in writers)
    return f"({unverified} AND (provenance IS NULL OR provenance NOT IN ({listed})))"


def is_vouched(row: Mapping[str, Any], trusted: Iterable[str] = ()) -> bool:
    """``vouched_filter`` for one row already read."""
    return bool(row.get("verified")) or row.get("provenance") in set(trusted)


def index_config(rows: int) -> IvfHnswSq:
    """IVF_HNSW_SQ sized for ``rows``: one partition (an HNSW graph) per ~8k rows."""
    return IvfHnswSq(distance_type="cosine", num_partitions=max(1, rows // ROWS_PER_PARTITION))


def search_params(query: Any, k: int = 10) -> Any:
    """Probe 20 partitions, 64 candidates per graph walk (bench: recall@10 ~0.97); the walk
    must keep at least ``k`` candidates (HNSW refuses ef < k)."""
    return query.nprobes(NPROBES).ef(max(EF, k))


def is_remote(uri: str) -> bool:
    return uri.startswith(REMOTE_SCHEMES)


def _check_uri(uri: str) -> str:
    if not uri:
        raise ConfigError("LANCEDB_URI is empty: use a directory or s3://bucket/path")
    if "://" in uri and not (is_remote(uri) or uri.startswith("file://")):
        scheme = uri.split("://", 1)[0]
        raise ConfigError(
            f"LANCEDB_URI scheme '{scheme}' is not supported: use a directory, "
            "s3://bucket/path, gs://bucket/path or az://container/path"
        )
    return uri


class VectorStore:
    def __init__(
        self,
        uri: str,
        table: str = "runs",
        dim: int = 384,
        storage_options: Mapping[str, str] | None = None,
        read_latest: bool = False,
    ) -> None:
        """``read_latest``: every read sees the latest committed version, other processes'
        writes included (LanceDB checks at each read, ~1 ms at 1M rows), so a long-lived
        process can hold the store; otherwise a store reads the version it first opened,
        plus its own writes."""
        self.uri = _check_uri(uri)
        self.read_latest = read_latest
        self.table_name = table
        self.dim = dim
        self.schema = schema(dim)
        self._storage_options = dict(storage_options or {})
        self._db: Any = None  # connected on first use: an object store may be slow to answer
        self._table: Any = None
        self._index_seen: dict[str, tuple[bool, float]] = {}

    @contextlib.contextmanager
    def _remote_errors(self, action: str) -> Iterator[None]:
        """An object store that does not answer is ``Unavailable``; local errors stay as is."""
        try:
            yield
        except (OSError, RuntimeError, ValueError) as exc:
            if not is_remote(self.uri):
                raise
            raise Unavailable(f"could not {action} the vector store at {self.uri}: {exc}") from exc

    def connect(self) -> Any:
        """The LanceDB connection (other tables live next to the runs, e.g. the catalogue)."""
        if self._db is None:
            with self._remote_errors("open"):
                options = self._storage_options or None
                self._db = lancedb.connect(
                    self.uri,
                    storage_options=options,
                    session=_SESSION,
                    read_consistency_interval=timedelta(0) if self.read_latest else None,
                )
        return self._db

    def _open(self, create: bool = False) -> Any:
        if self._table is not None:
            return self._table
        db = self.connect()
        with self._remote_errors("open"):
            try:
                table = db.open_table(self.table_name)
            except ValueError:  # "Table ... was not found" (table_exists is not in this API)
                if not create:
                    return None
                table = db.create_table(self.table_name, schema=self.schema, exist_ok=True)
        missing = [f for f in self.schema if f.name not in table.schema.names]
        if missing:  # a table written before these columns existed (new rows fill them)
            with self._remote_errors("migrate"):
                table.add_columns(pa.schema(missing))
        # merge_insert on run_id then detects concurrent inserts of the same run. A writer
        # racing on a new table can make this commit conflict (with the table's creation or
        # another writer's key): read the table again and retry until the key is there.
        for attempt in range(5):
            if _has_primary_key(table):
                break
            with self._remote_errors("migrate"):
                try:
                    table.set_unenforced_primary_key(KEY)
                except (OSError, RuntimeError, ValueError):
                    if attempt == 4:
                        raise
                    table = db.open_table(self.table_name)
        stored = table.schema.field(VECTOR_COLUMN).type
        if stored != self.schema.field(VECTOR_COLUMN).type:
            raise ConfigError(
                f"vector store table '{self.table_name}' at {self.uri} holds {stored} vectors, "
                f"not {self.dim}-d: point LANCEDB_URI elsewhere or drop the table to re-embed"
            )
        self._table = table
        return table

    def count(self, where: str | None = None) -> int:
        """Rows stored, or rows matching ``where`` (answered from the scalar indexes where
        the filter's columns have one)."""
        table = self._open()
        if table is None:
            return 0
        with self._remote_errors("read"):
            return table.count_rows(where)

    def version(self) -> int | None:
        """The table version this store reads (None: no table yet); any write changes it."""
        table = self._open()
        return None if table is None else table.version

    def upsert(self, rows: Sequence[Mapping[str, Any]] | pa.Table) -> int:
        """Insert new runs and replace stored ones (``merge_insert`` on run_id)."""
        data = rows if isinstance(rows, pa.Table) else self._to_arrow(rows)
        if data.num_rows == 0:
            return 0
        data = data.select(self.schema.names).cast(self.schema)
        table = self._open(create=True)
        with self._remote_errors("write"):
            result = (
                table.merge_insert(KEY)
                .when_matched_update_all()
                .when_not_matched_insert_all()
                .execute(data)
            )
        return result.num_inserted_rows + result.num_updated_rows

    def _to_arrow(self, rows: Sequence[Mapping[str, Any]]) -> pa.Table:
        columns: dict[str, list[Any]] = {name: [] for name in self.schema.names}
        vectors = np.empty((len(rows), self.dim), dtype=np.float32)
        for i, row in enumerate(rows):
            if not row.get(KEY):
                raise InvalidInput(f"vector row {i}: run_id is missing")
            vector = np.asarray(row.get(VECTOR_COLUMN), dtype=np.float32)
            if vector.shape != (self.dim,):
                raise InvalidInput(
                    f"vector row {i} (run {row[KEY]}): vector has shape {vector.shape}, "
                    f"expected ({self.dim},)"
                )
            vectors[i] = vector
            for name in self.schema.names:
                if name == VECTOR_COLUMN:
                    continue
                value = row.get(name)
                columns[name].append(
                    _timestamp(value) if name in ("created_at", "updated_at") else value
                )
        arrays = [
            pa.FixedSizeListArray.from_arrays(pa.array(vectors.reshape(-1)), self.dim)
            if name == VECTOR_COLUMN
            else pa.array(columns[name], type=self.schema.field(name).type)
            for name in self.schema.names
        ]
        return pa.Table.from_arrays(arrays, schema=self.schema)

    def fingerprints(self, run_ids: Sequence[str]) -> dict[str, tuple[Any, ...]]:
        """run_id -> (content_hash, model, provenance, verified) for the given runs that are
        stored."""
        table = self._open()
        if table is None or not run_ids:
            return {}
        found: dict[str, tuple[Any, ...]] = {}
        unique = list(dict.fromkeys(run_ids))
        columns = ["run_id", "content_hash", "model", "provenance", "verified"]
        for start in range(0, len(unique), _IN_CHUNK):
            chunk = unique[start : start + _IN_CHUNK]
            where = f"run_id IN ({', '.join(sql_str(r) for r in chunk)})"
            with self._remote_errors("read"):
                hits = table.search().where(where).select(columns).limit(len(chunk)).to_arrow()
            for row in hits.to_pylist():
                found[row["run_id"]] = tuple(row[name] for name in columns[1:])
        return found

    def _columns(self, with_vectors: bool, columns: Sequence[str] | None = None) -> list[str]:
        # Every column is read back by a random-access take per hit: callers on the hot path
        # name the few they use (the recommender's run search at 1M rows, by hand: ~31 ->
        # ~24 ms p50).
        names = list(columns) if columns is not None else list(self.schema.names)
        return [n for n in names if n != VECTOR_COLUMN] + ([VECTOR_COLUMN] if with_vectors else [])

    def search(
        self,
        vector: np.ndarray,
        k: int = 10,
        where: str | None = None,
        with_vectors: bool = False,
        exact: bool = False,
        columns: Sequence[str] | None = None,
    ) -> list[dict]:
        """The ``k`` nearest runs by cosine distance, each with ``_distance`` (0 = same) and
        ``columns`` (default: all but the vector). ``exact`` skips the ANN index: for a
        filter that leaves few rows, scanning them is exact and cheaper than walking the
        index for matches."""
        query_vector = np.asarray(vector, dtype=np.float32).reshape(-1)
        if query_vector.shape != (self.dim,):
            raise InvalidInput(f"query vector has {query_vector.size} dims, expected {self.dim}")
        table = self._open()
        if table is None:
            return []
        query = (
            table.search(query_vector)
            .distance_type("cosine")
            .limit(k)
            .select([*self._columns(with_vectors, columns), "_distance"])
        )
        if where:
            query = query.where(where, prefilter=True)
        if exact:
            query = query.bypass_vector_index()
        elif self._indexed(table, "vector"):
            query = search_params(query, k)
        with self._remote_errors("query"):
            return query.to_list()

    def text_search(
        self,
        text: str,
        k: int = 10,
        where: str | None = None,
        with_vectors: bool = False,
        columns: Sequence[str] | None = None,
    ) -> list[dict]:
        """The ``k`` runs whose summaries best match ``text`` (BM25), each with ``_score`` and
        ``columns`` (default: all but the vector)."""
        table = self._open()
        if table is None or not text.strip():
            return []
        if not self._indexed(table, "FTS"):  # tables written before FTS existed
            self._create_text_index(table)
        query = (
            table.search(text, query_type="fts")
            .limit(k)
            .select([*self._columns(with_vectors, columns), "_score"])
        )
        if where:
            query = query.where(where, prefilter=True)
        with self._remote_errors("query"):
            return query.to_list()

    def rows(self, where: str, columns: Sequence[str], limit: int = 100) -> list[dict]:
        """Rows matching a filter (no ranking), at most ``limit``."""
        table = self._open()
        if table is None:
            return []
        with self._remote_errors("query"):
            return table.search().where(where).select(list(columns)).limit(limit).to_list()

    def prewarm(self) -> list[str]:
        """Load the vector and full-text indexes into the process's cache (``_SESSION``), so
        the first searches do not each read index partitions from disk (1M rows: ~0.8 s once;
        the first hundred vector searches' p99 164 ms cold, 17 ms warm). For long-lived
        processes (the API); returns the indexes warmed."""
        table = self._open()
        if table is None:
            return []
        warmed = []
        with self._remote_errors("read"):
            for kind in ("vector", "FTS"):
                name = self._index_name(table, kind)
                if name is not None:
                    table.prewarm_index(name)
                    warmed.append(name)
        return warmed

    def _indexed(self, table: Any, kind: str) -> bool:
        """Whether ``table`` has that index, looked up at most every INDEX_CHECK_S seconds
        (listing indexes costs a few ms per query; another process may add one meanwhile)."""
        now = time.monotonic()
        known = self._index_seen.get(kind)
        if known is None or now - known[1] > INDEX_CHECK_S:
            known = (self._index_name(table, kind) is not None, now)
            self._index_seen[kind] = known
        return known[0]

    def _index_name(self, table: Any, kind: str = "vector") -> str | None:
        column = {
            "vector": VECTOR_COLUMN,
            "FTS": TEXT_COLUMN,
            "BTREE": "resource",
            "BTREE_TIME": "created_at",
            **{f"BITMAP_{c}": c for c in BITMAP_COLUMNS},
        }[kind]
        with self._remote_errors("read"):
            for index in table.list_indices():
                if column in index.columns:
                    return index.name
        return None

    def _create_text_index(self, table: Any) -> None:
        # Stemmed, lower-cased English words; ids and numbers stay whole tokens.
        with self._remote_errors("index"):
            table.create_index(TEXT_COLUMN, config=FTS(), replace=True)
        self._index_seen["FTS"] = (True, time.monotonic())

    def ensure_index(
        self, min_rows: int = INDEX_MIN_ROWS, fold_fraction: float = FOLD_FRACTION
    ) -> bool:
        """Build the ANN index once the table has ``min_rows``; keep it current after that.

        Returns True when it (re)built the index. Rows not yet in the index are folded in
        incrementally (``optimize``) once they exceed ``fold_fraction`` of the table (until
        then searches scan them exactly); once the table has doubled past what the index was
        trained on, the index is re-trained so its partitions still fit the data.
        """
        table = self._open()
        if table is None:
            return False
        # The full-text index exists from the first row: BM25 needs corpus statistics, and
        # rows added since it was built are searched unindexed until ``optimize`` folds them in.
        if self._index_name(table, "FTS") is None:
            self._create_text_index(table)
        rows = self.count()
        if rows < min_rows:
            return False
        self._index_seen.clear()  # indexes change below
        name = self._index_name(table)
        with self._remote_errors("index"):
            # Scalar indexes for the recommender's filters: recent failures on one resource
            # (resource + time) and history before an incident (time): ~55 ms -> ~6 ms at 1M.
            if self._index_name(table, "BTREE") is None:
                table.create_index("resource", config=BTree())
            if self._index_name(table, "BTREE_TIME") is None:
                table.create_index("created_at", config=BTree())
            for column in BITMAP_COLUMNS:
                if self._index_name(table, f"BITMAP_{column}") is None:
                    table.create_index(column, config=Bitmap())
            if name is not None:
                stats = table.index_stats(name)
                if stats is None or stats.num_unindexed_rows == 0:
                    return False
                if rows < RETRAIN_GROWTH * stats.num_indexed_rows:
                    if stats.num_unindexed_rows >= fold_fraction * rows:
                        table.optimize()
                    return False
            table.create_index(VECTOR_COLUMN, config=index_config(rows), replace=True)
        return True


def _has_primary_key(table: Any) -> bool:
    metadata = table.schema.field(KEY).metadata or {}
    return any(key.startswith(_PRIMARY_KEY_META) for key in metadata)


def sql_str(value: str) -> str:
    """A string literal for a LanceDB filter (quotes doubled)."""
    return "'" + str(value).replace("'", "''") + "'"


def sql_timestamp(moment: datetime) -> str:
    """A UTC timestamp literal for a LanceDB filter."""
    return f"TIMESTAMP '{moment.astimezone(UTC):%Y-%m-%d %H:%M:%S.%f}'"


def _timestamp(value: Any) -> datetime | None:
    if value is None or value == "":
        return None
    if isinstance(value, datetime):
        moment = value
    else:
        try:
            moment = datetime.fromisoformat(str(value))
        except ValueError:
            raise InvalidInput(f"timestamp {value!r} is not ISO 8601") from None
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def store_from_settings(
    settings: Any, table: str = "runs", dim: int = 384, read_latest: bool = False
) -> VectorStore:
    """The store at ``settings.vector_uri``; an S3 endpoint URL (MinIO, moto) is passed on."""
    options: dict[str, str] = {}
    endpoint = getattr(settings, "s3_endpoint_url", None)
    uri = settings.vector_uri
    if endpoint and uri.startswith("s3"):
        options["aws_endpoint"] = endpoint
        if endpoint.startswith("http://"):
            options["allow_http"] = "true"
    return VectorStore(
        uri, table=table, dim=dim, storage_options=options or None, read_latest=read_latest
    )
