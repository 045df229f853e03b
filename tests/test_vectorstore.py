"""VectorStore on a LanceDB directory under tmp_path."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest

from neuralops import vectorstore
from neuralops.errors import ConfigError, InvalidInput, Unavailable
from neuralops.vectorstore import VectorStore, store_from_settings

DIM = 384


def unit(seed: int, dim: int = DIM) -> np.ndarray:
    v = np.random.default_rng(seed).normal(size=dim).astype(np.float32)
    return v / np.linalg.norm(v)


def row(run_id: str, seed: int, summary: str = "s", model: str = "m@1", **extra):
    return {
        "run_id": run_id,
        "wpk_id": "restart-deployment",
        "status": "failed",
        "summary": summary,
        "content_hash": f"h-{summary}",
        "model": model,
        "vector": unit(seed),
        "created_at": "2024-05-01T10:00:00Z",
        "updated_at": "2024-05-01T10:00:12+00:00",
        **extra,
    }


@pytest.fixture
def store(tmp_path) -> VectorStore:
    return VectorStore(str(tmp_path / "lancedb"))


def test_empty_store(store):
    assert store.count() == 0
    assert store.fingerprints(["a"]) == {}
    assert store.search(unit(1)) == []
    assert store.ensure_index(min_rows=1) is False
    assert store.upsert([]) == 0


def test_upsert_twice_never_duplicates_and_update_replaces(store):
    rows = [row(f"r{i}", i) for i in range(5)]
    assert store.upsert(rows) == 5
    assert store.upsert(rows) == 5
    assert store.count() == 5
    store.upsert([row("r2", 99, summary="new"), row("r5", 5)])
    assert store.count() == 6
    assert store.fingerprints(["r2", "r0", "missing"]) == {
        "r2": ("h-new", "m@1", None, None),  # (content hash, model, provenance, verified)
        "r0": ("h-s", "m@1", None, None),
    }
    hit = store.search(unit(99), k=1)[0]
    assert hit["run_id"] == "r2" and hit["summary"] == "new"
    assert hit["_distance"] == pytest.approx(0, abs=1e-5)
    assert "vector" not in hit


def test_upsert_accepts_arrow_and_quotes_ids(store):
    table = store._to_arrow([row("it's", 1)])
    assert isinstance(table, pa.Table)
    assert store.upsert(table) == 1
    assert store.fingerprints(["it's"]) == {"it's": ("h-s", "m@1", None, None)}


def test_search_returns_nearest_first_and_filters(store):
    store.upsert([row(f"r{i}", i, status="failed" if i % 2 else "succeeded") for i in range(20)])
    query = unit(7) + 0.1 * unit(100)
    hits = store.search(query, k=3)
    assert hits[0]["run_id"] == "r7"
    distances = [h["_distance"] for h in hits]
    assert distances == sorted(distances)
    only = store.search(unit(8), k=5, where="status = 'failed'")
    assert only and all(h["status"] == "failed" for h in only)


def test_count_with_a_filter_columns_exact_search_and_version(store):
    assert store.version() is None and store.count("status = 'failed'") == 0
    store.upsert(
        [
            row(f"r{i}", i, summary="disk full", status="failed" if i % 2 else "succeeded")
            for i in range(20)
        ]
    )
    first = store.version()
    assert store.count() == 20 and store.count("status = 'failed'") == 10
    hits = store.search(unit(7), k=3, columns=["run_id", "status"])
    assert set(hits[0]) == {"run_id", "status", "_distance"} and hits[0]["run_id"] == "r7"
    with_vector = store.text_search("disk", k=1, with_vectors=True, columns=["run_id"])
    assert set(with_vector[0]) == {"run_id", "vector", "_score"}
    # Exact: every row the filter keeps, nearest first, whether or not an index exists.
    store.ensure_index(min_rows=1)
    exact = store.search(unit(7), k=10, where="status = 'failed'", exact=True)
    assert [h["run_id"] for h in exact][:1] == ["r7"] and len(exact) == 10
    assert [h["_distance"] for h in exact] == sorted(h["_distance"] for h in exact)
    store.upsert([row("r20", 20)])
    assert store.version() != first


def test_bad_rows_are_refused(store):
    with pytest.raises(InvalidInput, match="shape"):
        store.upsert([{**row("r", 1), "vector": [0.1, 0.2]}])
    with pytest.raises(InvalidInput, match="run_id"):
        store.upsert([{**row("r", 1), "run_id": ""}])
    with pytest.raises(InvalidInput, match="dims"):
        store.search(np.zeros(3))


def test_dimension_mismatch_is_a_config_error(tmp_path):
    VectorStore(str(tmp_path)).upsert([row("r", 1)])
    with pytest.raises(ConfigError, match="384"):
        VectorStore(str(tmp_path), dim=16).count()


def test_uri_validation_and_object_storage_pass_through(tmp_path):
    with pytest.raises(ConfigError, match="LANCEDB_URI"):
        VectorStore("ftp://host/path")

    class FakeSettings:
        vector_uri = "s3://bucket/vectors"
        s3_endpoint_url = "http://127.0.0.1:9000"

    store = store_from_settings(FakeSettings())
    assert store.uri == "s3://bucket/vectors"
    assert store._storage_options == {"aws_endpoint": "http://127.0.0.1:9000", "allow_http": "true"}


def test_ensure_index_only_above_threshold_and_once(store):
    store.upsert([row(f"r{i}", i) for i in range(300)])
    assert store.ensure_index(min_rows=301) is False
    assert store.ensure_index(min_rows=300) is True
    assert store.ensure_index(min_rows=300) is False  # already current
    # A few new rows wait outside the index (under FOLD_FRACTION of the table); searches
    # still find them, and once they pass the fraction they are folded in without a rebuild.
    store.upsert([row(f"n{i}", 1000 + i) for i in range(10)])
    assert store.ensure_index(min_rows=300) is False
    assert store.search(unit(1005), k=1)[0]["run_id"] == "n5"
    assert _unindexed(store) == 10
    assert store.ensure_index(min_rows=300, fold_fraction=0.01) is False
    assert _unindexed(store) == 0
    assert store.search(unit(1005), k=1)[0]["run_id"] == "n5"
    # Doubling the table re-trains the index.
    store.upsert([row(f"m{i}", 2000 + i) for i in range(400)])
    assert store.ensure_index(min_rows=300) is True
    assert store.count() == 710


def _unindexed(store) -> int:
    table = store._open()
    return table.index_stats(store._index_name(table)).num_unindexed_rows


def test_unreachable_object_store_is_unavailable(monkeypatch, tmp_path):
    def refuse(*args, **kwargs):
        raise OSError("connection refused")

    monkeypatch.setattr(vectorstore.lancedb, "connect", refuse)
    with pytest.raises(Unavailable, match="s3://bucket/vectors"):
        VectorStore("s3://bucket/vectors").count()
    with pytest.raises(OSError):  # a local directory's errors are not about the network
        VectorStore(str(tmp_path)).count()


def test_indexed_search_returns_more_neighbours_than_the_graph_walk_default(store):
    store.upsert([row(f"r{i}", i) for i in range(400)])
    assert store.ensure_index(min_rows=300) is True
    hits = store.search(unit(5), k=vectorstore.EF + 36)
    assert len(hits) == vectorstore.EF + 36 and hits[0]["run_id"] == "r5"


def test_prewarm_fills_a_cache_every_store_of_the_process_shares(tmp_path, monkeypatch):
    sessions = []
    connect = vectorstore.lancedb.connect

    def recording(*args, **kwargs):
        sessions.append(kwargs.get("session"))
        return connect(*args, **kwargs)

    monkeypatch.setattr(vectorstore.lancedb, "connect", recording)
    first = VectorStore(str(tmp_path / "lancedb"))
    assert first.prewarm() == []  # no table yet
    first.upsert([row(f"r{i}", i, summary=f"disk pressure on node {i}") for i in range(300)])
    assert first.ensure_index(min_rows=300) is True
    cache = vectorstore._SESSION
    before = cache.size_bytes
    assert sorted(first.prewarm()) == ["summary_idx", "vector_idx"]
    assert cache.size_bytes > before
    # A store opened anew (as the API does per request) reads through that same cache.
    again = VectorStore(str(tmp_path / "lancedb"))
    assert again.search(unit(5), k=1)[0]["run_id"] == "r5"
    assert again.text_search("node 7", k=1)[0]["run_id"] == "r7"
    assert sessions == [cache, cache]
