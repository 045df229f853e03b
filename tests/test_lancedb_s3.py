"""LanceDB on object storage: LANCEDB_URI=s3://... against a real S3 protocol server (moto's).

What an operator sets is what this test sets: LANCEDB_URI, NEURALOPS_S3_ENDPOINT_URL (for a
non-AWS store) and the standard AWS_* credential variables, which LanceDB's object store
reads from the environment itself (the settings pass only the endpoint).
"""

from __future__ import annotations

import uuid

import boto3
import numpy as np
import pytest

from neuralops.errors import Unavailable
from neuralops.settings import get_settings
from neuralops.vectorstore import store_from_settings

pytestmark = pytest.mark.slow

DIM = 384
AWS_ENV = {
    "AWS_ACCESS_KEY_ID": "AKIATESTINGFAKEKEY02",
    "AWS_SECRET_ACCESS_KEY": "testing-secret-lancedb-0123456789",
    "AWS_DEFAULT_REGION": "us-east-1",
}


@pytest.fixture
def bucket(moto_s3: str, monkeypatch: pytest.MonkeyPatch) -> str:
    """A fresh bucket; the environment holds the fake credentials and the endpoint."""
    for name, value in AWS_ENV.items():
        monkeypatch.setenv(name, value)
    for name in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("NEURALOPS_S3_ENDPOINT_URL", moto_s3)
    name = f"vectors-{uuid.uuid4().hex[:12]}"
    s3(moto_s3).create_bucket(Bucket=name)
    get_settings.cache_clear()
    return name


def s3(endpoint: str):
    return boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1")


def unit(seed: int) -> np.ndarray:
    v = np.random.default_rng(seed).normal(size=DIM).astype(np.float32)
    return v / np.linalg.norm(v)


def row(run_id: str, seed: int, status: str = "succeeded") -> dict:
    return {
        "run_id": run_id,
        "wpk_id": "restart-deployment",
        "status": status,
        "summary": f"alert KubePodCrashLooping; run {run_id}",
        "content_hash": f"h-{run_id}-{status}",
        "model": "m@1",
        "vector": unit(seed),
        "created_at": "2026-05-01T10:00:00Z",
        "updated_at": "2026-05-01T10:00:12+00:00",
    }


def test_the_vector_store_lives_in_an_s3_bucket(
    bucket: str, moto_s3: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("LANCEDB_URI", f"s3://{bucket}/neuralops/lancedb")
    get_settings.cache_clear()
    store = store_from_settings(get_settings())
    assert store.upsert([row(f"r{i}", i) for i in range(50)]) == 50
    assert store.upsert([row("r7", 7, status="failed")]) == 1  # merge on run_id, no duplicate
    store.ensure_index()  # the BM25 index is written to the bucket too

    # Another process (a fresh store) reads what this one wrote, from the bucket.
    again = store_from_settings(get_settings())
    assert again.count() == 50
    [hit] = again.search(unit(7), k=1)
    assert (hit["run_id"], hit["status"]) == ("r7", "failed")
    assert again.text_search("KubePodCrashLooping r12", k=1)[0]["run_id"] == "r12"
    assert again.fingerprints(["r7", "nope"]) == {"r7": ("h-r7-failed", "m@1", None, None)}

    keys = [
        o["Key"]
        for o in s3(moto_s3).list_objects_v2(Bucket=bucket)["Contents"]
        if o["Key"].startswith("neuralops/lancedb/runs.lance/")
    ]
    assert any("/data/" in k for k in keys) and any("/_versions/" in k for k in keys)


def test_a_missing_bucket_is_unavailable_and_no_secret_is_printed(
    bucket: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("LANCEDB_URI", f"s3://no-such-bucket-{uuid.uuid4().hex[:8]}/lancedb")
    get_settings.cache_clear()
    store = store_from_settings(get_settings())
    with pytest.raises(Unavailable) as caught:
        store.upsert([row("r1", 1)])
    assert AWS_ENV["AWS_SECRET_ACCESS_KEY"] not in str(caught.value)


def test_vectorizing_into_s3_is_one_at_a_time_and_keyed_on_run_id(
    bucket: str, database_url, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A remote store has no directory to lock: the run-history database holds the lock
    (PostgreSQL's advisory lock, or a lock file beside SQLite's database)."""
    from neuralops.embedding import HashingEmbedder
    from neuralops.errors import Conflict
    from neuralops.vectorize import vectorize_lock, vectorize_records

    monkeypatch.setenv("LANCEDB_URI", f"s3://{bucket}/lancedb")
    get_settings.cache_clear()
    records = [
        {
            "run_id": f"r{n}",
            "wpk_id": "restart-deployment",
            "status": "succeeded",
            "inputs": {"alert": {"alertname": "KubePodCrashLooping", "namespace": "shop"}},
            "created_at": "2026-05-01T10:00:00Z",
            "updated_at": "2026-05-01T10:00:00Z",
            "provenance": "neuralops",
            "verified": True,
        }
        for n in range(5)
    ]
    store = store_from_settings(get_settings())
    with (
        vectorize_lock(store, url=database_url),
        pytest.raises(Conflict, match=f"s3://{bucket}/lancedb"),
    ):
        vectorize_records(
            records,
            store_from_settings(get_settings()),
            HashingEmbedder(),
            lock_timeout_s=0,
            url=database_url,
        )
    assert vectorize_records(records, store, HashingEmbedder(), url=database_url).written == 5
    assert store.fingerprints(["r1"])["r1"][2:] == ("neuralops", True)
    metadata = store._open().schema.field("run_id").metadata
    assert any(key.startswith(b"lance-schema:unenforced-primary-key") for key in metadata)
