"""Metrics from a connected cluster: detecting in the cluster and detecting on forwarded
samples give the same signals; the flows forward them as events and the control plane
records them."""

from __future__ import annotations

import math
import time
from pathlib import Path

import numpy as np
import pytest
from sqlalchemy.engine import URL

from neuralops import signals, streaming
from neuralops.errors import InvalidInput
from neuralops.settings import get_settings
from neuralops.sources import SeriesBatch

STEP = 60.0
END = 1_800_000_000.0


def spiky(n_series: int = 5, n: int = 150) -> SeriesBatch:
    rng = np.random.default_rng(3)
    values = 0.2 + rng.normal(0, 0.004, (n_series, n))
    values[1, -3:] += [0.2, 0.25, 0.3]  # one series spikes now
    values[2, 10:20] = np.nan  # a gap
    labels = [{"service": f"svc-{i}", streaming.CLUSTER_LABEL: "edge-1"} for i in range(n_series)]
    return SeriesBatch("q", labels, END - STEP * np.arange(n)[::-1], values)


def rule() -> signals.Rule:
    return signals.Rule(name="latency", query="q", title="p99 latency", recent="5m")


def test_samples_round_trip_and_give_the_same_signals_as_detecting_in_the_cluster():
    batches = {"latency": spiky()}
    payloads = streaming.to_payloads(batches, max_series=2)
    assert len(payloads) == 3 and all(len(p["labels"]) <= 2 for p in payloads)
    assert payloads[1]["values"][0][10] is None  # NaN travels as null
    joined = streaming.from_payloads(payloads)
    assert joined["latency"].labels == batches["latency"].labels
    np.testing.assert_array_equal(joined["latency"].values, batches["latency"].values)
    in_cluster = streaming.detect_batches([rule()], batches)
    forwarded = streaming.detect_batches([rule()], joined)
    assert [s.fingerprint for s in in_cluster] == [s.fingerprint for s in forwarded]
    assert len(in_cluster) == 1 and in_cluster[0].labels["service"] == "svc-1"


def test_malformed_sample_batches_are_refused():
    with pytest.raises(InvalidInput, match="sample batch 0: malformed"):
        streaming.from_payloads([{"rule": "x", "labels": [{}], "timestamps": [1, 2]}])


# --- the flows, with a real Prometheus as the cluster's own ----------------------------------


@pytest.fixture
def cluster_env(live_prometheus, prefect_server, sqlite_url: URL, monkeypatch, tmp_path: Path):
    monkeypatch.setenv("PROM_URL", live_prometheus.url)
    monkeypatch.setenv("NEURALOPS_CLUSTER", "edge-1")
    recent = math.ceil((time.time() - live_prometheus.spike.timestamp) / 60) + 5
    rules = tmp_path / "rules.yaml"
    rules.write_text(
        "rules:\n  - name: latency-p99\n    query: http_request_duration_seconds_p99\n"
        f"    lookback: 3h\n    step: 1m\n    recent: {recent}m\n"
    )
    monkeypatch.setenv("NEURALOPS_RULES_FILE", str(rules))
    get_settings.cache_clear()
    yield rules
    get_settings.cache_clear()


def cluster_events(name: str, timeout_s: float = 15.0) -> list:
    from prefect.client.orchestration import get_client
    from prefect.events.filters import EventFilter, EventNameFilter

    deadline = time.monotonic() + timeout_s
    with get_client(sync_client=True) as client:
        while True:
            found = client.read_events(
                EventFilter(event=EventNameFilter(name=[name])), limit=50
            ).events
            if found or time.monotonic() > deadline:
                return found
            time.sleep(0.5)


@pytest.mark.slow
def test_signals_mode_forwards_only_signals_and_the_control_plane_records_them(cluster_env):
    from flows.connector import (
        SAMPLES_EVENT,
        SIGNALS_EVENT,
        ingest_samples,
        ingest_signals,
        stream_metrics,
    )

    sent = stream_metrics(mode="signals")
    assert sent == {"cluster": "edge-1", "mode": "signals", "signals": 1, "events": 1}
    [event] = cluster_events(SIGNALS_EVENT)
    assert event.resource.id == "neuralops.cluster.edge-1"
    assert set(event.payload) == {"cluster", "signals"}  # no samples left the cluster
    recorded = ingest_signals(cluster="edge-1", signals_found=event.payload["signals"])
    assert recorded == {"received": 1, "new_signals": 1}
    [signal] = signals.list_signals()
    assert signal.labels[streaming.CLUSTER_LABEL] == "edge-1"
    assert signal.labels["service"] == "api"

    shipped = stream_metrics(mode="samples")
    assert shipped["mode"] == "samples" and shipped["series"] == 3
    batches = [b for e in cluster_events(SAMPLES_EVENT) for b in e.payload["batches"]]
    again = ingest_samples(cluster="edge-1", batches=batches)
    assert again == {"received": 1, "new_signals": 0}  # the same anomaly: deduplicated
    with pytest.raises(InvalidInput, match="not labelled with cluster edge-2"):
        ingest_signals(cluster="edge-2", signals_found=event.payload["signals"])
