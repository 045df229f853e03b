"""vectorize_records: skip unchanged runs, embed each distinct text once, re-embed on change."""

from __future__ import annotations

import json

import pytest

from neuralops.embedding import HashingEmbedder, content_hash, incident_text, run_summary
from neuralops.errors import ConfigError, InvalidInput
from neuralops.vectorize import VectorizeResult, read_jsonl, vectorize_records
from neuralops.vectorstore import VectorStore


class CountingEmbedder(HashingEmbedder):
    """A real hashing embedder that remembers what it was asked to embed."""

    def __init__(self, version: str = "hashing-v1") -> None:
        super().__init__()
        self.version = version
        self.calls: list[list[str]] = []

    def embed(self, texts):
        self.calls.append(list(texts))
        return super().embed(texts)

    @property
    def texts(self) -> list[str]:
        return [t for call in self.calls for t in call]


def rec(i: int, alert: str = "KubePodCrashLooping", error: str | None = None) -> dict:
    return {
        "run_id": f"run-{i}",
        "wpk_id": "restart-deployment",
        "status": "failed",
        "duration_ms": 1000,
        "inputs": {"incident": {"alert": alert, "labels": {"namespace": "payments"}}},
        "outputs": {"error": error or f"error number {i}"},
        "node_logs": [],
        "created_at": "2024-05-01T10:00:00Z",
        "updated_at": "2024-05-01T10:00:01Z",
    }


@pytest.fixture
def store(tmp_path) -> VectorStore:
    return VectorStore(str(tmp_path / "lancedb"))


def test_first_run_writes_all_second_run_skips_all(store):
    records = [rec(i, alert=f"Alert{i}") for i in range(10)]
    done: list[int] = []
    first = vectorize_records(
        records, store, CountingEmbedder(), batch_size=4, progress=done.append
    )
    assert first == VectorizeResult(
        read=10, written=10, skipped=0, embedded_texts=10, model="hashing@hashing-v1", warning=None
    )
    assert done == [4, 8, 10]
    embedder = CountingEmbedder()
    second = vectorize_records(records, store, embedder, batch_size=4)
    assert (second.read, second.written, second.skipped, second.embedded_texts) == (10, 0, 10, 0)
    assert embedder.calls == []
    assert store.count() == 10


def test_changed_summary_rewrites_only_that_run(store):
    records = [rec(i, alert=f"Alert{i}") for i in range(6)]
    vectorize_records(records, store, CountingEmbedder())
    records[3] = rec(3, alert="Alert3", error="a different failure")
    embedder = CountingEmbedder()
    result = vectorize_records(records, store, embedder)
    assert (result.written, result.skipped, result.embedded_texts) == (1, 5, 1)
    # The vector is the incident's; the stored summary and its hash are the new ones.
    assert (
        embedder.texts == [incident_text(records[3])] == ["alert Alert3; labels namespace=payments"]
    )
    assert store.fingerprints(["run-3"])["run-3"][0] == content_hash(run_summary(records[3]))
    assert store.count() == 6


def test_a_run_without_an_incident_embeds_its_summary(store):
    record = {**rec(1), "inputs": {"parameters": {"namespace": "payments"}}}
    embedder = CountingEmbedder()
    vectorize_records([record], store, embedder)
    assert embedder.texts == [run_summary(record)]


def test_changed_model_re_embeds_everything(store):
    records = [rec(i, alert=f"Alert{i}") for i in range(6)]
    vectorize_records(records, store, CountingEmbedder())
    embedder = CountingEmbedder(version="hashing-v2")
    result = vectorize_records(records, store, embedder)
    assert (result.written, result.skipped, result.embedded_texts) == (6, 0, 6)
    assert result.model == "hashing@hashing-v2"
    assert {f[1] for f in store.fingerprints([r["run_id"] for r in records]).values()} == {
        "hashing@hashing-v2"
    }
    assert store.count() == 6


def test_duplicate_texts_are_embedded_once_within_and_across_batches(store):
    # 12 runs, 2 distinct incidents: the ids and errors differ, the incidents do not.
    records = [rec(i, alert="KubePodCrashLooping" if i % 2 else "OOMKilled") for i in range(12)]
    embedder = CountingEmbedder()
    result = vectorize_records(records, store, embedder, batch_size=5)
    assert (result.written, result.embedded_texts) == (12, 2)
    assert len(embedder.texts) == 2 == len(set(embedder.texts))
    assert store.count() == 12


def test_repeated_run_in_one_batch_keeps_the_last(store):
    result = vectorize_records([rec(1), rec(1, error="later")], store, CountingEmbedder())
    assert store.count() == 1 and result.written == 1
    assert store.search(HashingEmbedder().embed([incident_text(rec(1))])[0], k=1)[0][
        "summary"
    ].endswith("error: later")


def test_refuses_missing_run_id_and_dimension_mismatch(store, tmp_path):
    with pytest.raises(InvalidInput, match="record 2: run_id"):
        vectorize_records([rec(1), {"wpk_id": "x"}], store, CountingEmbedder())
    with pytest.raises(ConfigError, match="384"):
        vectorize_records(
            [rec(1)], VectorStore(str(tmp_path / "small"), dim=16), CountingEmbedder()
        )


def test_read_jsonl_streams_and_names_the_bad_line(tmp_path):
    path = tmp_path / "runs.jsonl"
    path.write_text(json.dumps(rec(1)) + "\n\n" + json.dumps(rec(2)) + "\n{not json\n")
    reader = read_jsonl(path)
    assert next(reader)["run_id"] == "run-1"
    assert next(reader)["run_id"] == "run-2"
    with pytest.raises(InvalidInput, match=r"runs.jsonl line 4: not valid JSON"):
        next(reader)
    path.write_text("[1, 2]\n")
    with pytest.raises(InvalidInput, match="line 1: expected a JSON object"):
        list(read_jsonl(path))
    with pytest.raises(InvalidInput, match="no such file"):
        list(read_jsonl(tmp_path / "absent.jsonl"))


# --- provenance, quarantine, one writer at a time (issue 15) --------------------------------


def test_provenance_and_verification_are_stored_and_a_change_rewrites(store):
    records = [
        {**rec(1), "provenance": "neuralops", "verified": True},
        {**rec(2), "provenance": "api:ci-bot", "verified": False},
        rec(3),  # exported before provenance existed
    ]
    vectorize_records(records, store, CountingEmbedder())
    stored = store.fingerprints(["run-1", "run-2", "run-3"])
    assert {k: v[2:] for k, v in stored.items()} == {
        "run-1": ("neuralops", True),
        "run-2": ("api:ci-bot", False),
        "run-3": ("unknown", False),
    }
    records[1] = {**records[1], "provenance": "prefect", "verified": True}
    result = vectorize_records(records, store, CountingEmbedder())
    assert (result.written, result.skipped) == (1, 2)
    assert store.fingerprints(["run-2"])["run-2"][2:] == ("prefect", True)


def test_a_table_written_before_provenance_gains_the_columns_and_the_key(tmp_path):
    import lancedb
    import pyarrow as pa

    from neuralops.vectorstore import schema

    old = pa.schema([f for f in schema() if f.name not in ("provenance", "verified")])
    db = lancedb.connect(str(tmp_path / "old"))
    table = db.create_table("runs", schema=old)
    row = {name: None for name in old.names} | {
        "run_id": "run-1",
        "vector": [0.0] * 384,
        "content_hash": "x",
        "model": "m",
    }
    table.add(pa.Table.from_pylist([row], schema=old))
    store = VectorStore(str(tmp_path / "old"))
    assert store.fingerprints(["run-1"]) == {"run-1": ("x", "m", None, None)}  # unverified
    reopened = lancedb.connect(str(tmp_path / "old")).open_table("runs")
    assert {"provenance", "verified"} <= set(reopened.schema.names)
    assert any(
        k.startswith(b"lance-schema:unenforced-primary-key")
        for k in reopened.schema.field("run_id").metadata
    )
    result = vectorize_records(
        [{**rec(1), "provenance": "neuralops", "verified": True}], store, CountingEmbedder()
    )
    assert result.written == 1 and store.count() == 1


def test_a_record_with_unencodable_text_is_quarantined_and_the_rest_goes_on(store):
    records = [rec(1), {**rec(2), "outputs": {"error": "bad \ud800 text"}}, rec(3)]
    records.append({**rec(4), "inputs": {"incident": {"\udfff": "key"}}})
    result = vectorize_records(records, store, CountingEmbedder())
    assert (result.read, result.written) == (4, 2)
    assert [(q.run_id, q.reason) for q in result.quarantined] == [
        ("run-2", "outputs.error: text that cannot be encoded (a lone surrogate)"),
        ("run-4", "inputs.incident: a key that cannot be encoded (a lone surrogate)"),
    ]
    assert "\ud800" not in str(result.quarantined[0])
    assert store.count() == 2


def test_read_jsonl_can_quarantine_bad_lines_instead(tmp_path):
    from neuralops.vectorize import Quarantined

    path = tmp_path / "runs.jsonl"
    path.write_bytes(
        json.dumps(rec(1)).encode()
        + b"\n{not json\n[1]\n"
        + json.dumps(rec(2)).encode()
        + b'\n{"run_id": "run-3", "outputs": {"error": "\xff\xfe"}}\n'
    )
    quarantine: list[Quarantined] = []
    records = list(read_jsonl(path, quarantine))
    assert [r["run_id"] for r in records] == ["run-1", "run-2", "run-3"]
    assert [q.run_id for q in quarantine] == ["line 2", "line 3"]
    assert quarantine[0].reason.startswith("not valid JSON")
    # run-3's bytes are not UTF-8: vectorize quarantines it by run_id
    result = vectorize_records(records, VectorStore(str(tmp_path / "s")), CountingEmbedder())
    assert [q.run_id for q in result.quarantined] == ["run-3"]


def test_concurrent_upserts_never_duplicate_a_run(tmp_path):
    """Without the vectorize lock, writers racing on the same run_ids: the merge on run_id
    (the table's primary key) still leaves one row per run."""
    from concurrent.futures import ThreadPoolExecutor

    import numpy as np

    VectorStore(str(tmp_path / "s")).upsert([])  # nothing: the table is made on first write

    def write(seed: int) -> None:
        store = VectorStore(str(tmp_path / "s"))
        order = np.random.default_rng(seed).permutation(30)
        for start in range(0, 30, 10):
            rows = [
                {"run_id": f"r{n}", "vector": np.full(384, seed + 1, np.float32), "model": "m"}
                for n in sorted(order[start : start + 10])
            ]
            store.upsert(rows)

    with ThreadPoolExecutor(max_workers=3) as pool:
        list(pool.map(write, range(3)))
    store = VectorStore(str(tmp_path / "s"))
    ids = store.rows("run_id IS NOT NULL", ["run_id"], limit=1000)
    assert sorted(r["run_id"] for r in ids) == sorted(f"r{n}" for n in range(30))


def test_one_vectorize_at_a_time_per_store(tmp_path):
    from concurrent.futures import ThreadPoolExecutor

    from neuralops.errors import Conflict
    from neuralops.vectorize import vectorize_lock

    records = [rec(i, alert=f"Alert{i}") for i in range(40)]
    store = VectorStore(str(tmp_path / "s"))
    with vectorize_lock(store):
        with pytest.raises(Conflict, match=r"another vectorize is writing to the vector store"):
            vectorize_records(records, VectorStore(store.uri), CountingEmbedder(), lock_timeout_s=0)
        told: list[str] = []
        with pytest.raises(Conflict, match=r"held by process \d+\) after waiting 0.5 s"):
            vectorize_records(
                records,
                VectorStore(store.uri),
                CountingEmbedder(),
                lock_timeout_s=0.5,
                on_wait=told.append,
            )
        assert told and told[0].startswith("waiting for another vectorize of")
    assert store.count() == 0

    def run(_: int) -> VectorizeResult:
        return vectorize_records(records, VectorStore(store.uri), CountingEmbedder(), batch_size=7)

    with ThreadPoolExecutor(max_workers=2) as pool:
        results = list(pool.map(run, range(2)))
    # One embedded and wrote everything; the other waited, then found it all unchanged.
    assert sorted(r.written for r in results) == [0, 40]
    assert store.count() == 40


def test_a_remote_store_is_locked_in_the_run_history_database(database_url, tmp_path):
    """s3:// stores have no local directory to lock: PostgreSQL's advisory lock (or, with
    SQLite, a lock file beside the database) stands in. Nothing connects to the bucket."""
    from neuralops.errors import Conflict
    from neuralops.vectorize import vectorize_lock

    remote = VectorStore("s3://bucket/lancedb")
    with vectorize_lock(remote, url=database_url):
        same = VectorStore("s3://bucket/lancedb")
        with (
            pytest.raises(Conflict, match="s3://bucket/lancedb"),
            vectorize_lock(same, url=database_url, timeout_s=0),
        ):
            pass
        with vectorize_lock(VectorStore("s3://bucket/other"), url=database_url, timeout_s=0):
            pass  # another store: its own lock
    with vectorize_lock(VectorStore("s3://bucket/lancedb"), url=database_url, timeout_s=0):
        pass  # released


def test_two_vectorize_commands_at_once_leave_one_row_per_run(tmp_path):
    """The issue's case: two `neuralops etl vectorize` over the same runs at once. One waits
    for the other (it says so), and the store holds exactly one row per run_id."""
    import os
    import subprocess
    import sys

    path = tmp_path / "runs.jsonl"
    path.write_text("".join(json.dumps(rec(i, alert=f"Alert{i % 37}")) + "\n" for i in range(600)))
    env = {**os.environ, "NEURALOPS_LANCEDB_URI": str(tmp_path / "lancedb")}
    command = [sys.executable, "-m", "neuralops", "etl", "vectorize", "--in", str(path)]
    both = [
        subprocess.Popen(
            [*command, "--embedder", "hashing"],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(2)
    ]
    outputs = [p.communicate(timeout=300) for p in both]
    assert [p.returncode for p in both] == [0, 0], outputs
    written = sorted(int(out.split(" vectors written")[0].split()[-1]) for out, _ in outputs)
    assert written == [0, 600]  # the second found every run already there, unchanged
    store = VectorStore(str(tmp_path / "lancedb"))
    ids = [r["run_id"] for r in store.rows("run_id IS NOT NULL", ["run_id"], limit=10_000)]
    assert len(ids) == len(set(ids)) == store.count() == 600
