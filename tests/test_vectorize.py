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
    assert {m for _, m in store.fingerprints([r["run_id"] for r in records]).values()} == {
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
