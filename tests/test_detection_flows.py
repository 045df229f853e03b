"""The detect and analyze flows against a real Prometheus and a real Prefect server.

The ``live_prometheus`` fixture holds hours of three services' p99 latency and request
counters, with an injected spike on service=api 15 minutes before the session started.
"""

from __future__ import annotations

import math
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path

import pytest
from conftest import rules_file
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import (
    FlowRunFilter,
    FlowRunFilterId,
)
from prefect.client.schemas.sorting import TaskRunSort
from prefect.events.filters import EventFilter, EventNameFilter, EventResourceFilter
from sqlalchemy.engine import URL

import flows.detection as detection_flows
from neuralops import signals
from neuralops.local_prometheus import LocalPrometheus, demo_history, write_openmetrics
from tasks.detection import SIGNAL_EVENT

pytestmark = pytest.mark.slow


def minutes_since(timestamp: float) -> int:
    """A `recent` span (minutes) reaching back past ``timestamp`` with 5 minutes to spare."""
    return math.ceil((time.time() - timestamp) / 60) + 5


@pytest.fixture
def prom_env(live_prometheus, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("PROM_URL", live_prometheus.url)
    signals_settings_reset()
    return live_prometheus


def signals_settings_reset() -> None:
    from neuralops.settings import get_settings

    get_settings.cache_clear()


def events_for(signal_id: uuid.UUID, timeout_s: float = 15.0) -> list:
    """The signal's events as the Prefect server stored them (events arrive asynchronously)."""
    deadline = time.monotonic() + timeout_s
    with get_client(sync_client=True) as client:
        while True:
            wanted = EventFilter(
                event=EventNameFilter(name=[SIGNAL_EVENT]),
                resource=EventResourceFilter(id=[f"neuralops.signal.{signal_id}"]),
            )
            found = client.read_events(wanted, limit=50).events  # the server's maximum
            if found or time.monotonic() > deadline:
                return found
            time.sleep(0.5)


def test_detect_signals_the_injected_spike_once_with_events_and_an_artifact(
    prefect_server, prom_env, database_url: URL, tmp_path: Path
) -> None:
    rules = rules_file(tmp_path, minutes_since(prom_env.spike.timestamp))
    first = detection_flows.detect(rules_file=str(rules))
    assert first["rules"] == 2 and first["series"] == 5
    assert first["new_signals"] == 1
    [signal] = signals.list_signals()
    assert (signal.rule, signal.labels) == (
        "latency-p99",
        {"__name__": "http_request_duration_seconds_p99", "service": "api", "severity": "page"},
    )
    assert signal.window_start.timestamp() == prom_env.spike.timestamp
    assert signal.value == pytest.approx(prom_env.spike.value, rel=1e-6)
    assert "p99 latency of service=api is " in signal.hint and "σ above" in signal.hint
    assert f"started {datetime.fromtimestamp(prom_env.spike.timestamp, UTC):%H:%M}" in signal.hint

    [event] = events_for(signal.id)
    assert event.payload["hint"] == signal.hint and event.payload["score"] == signal.score
    assert event.resource["neuralops.rule"] == "latency-p99"

    second = detection_flows.detect(rules_file=str(rules))
    assert (second["new_signals"], second["suppressed"]) == (0, 1)
    assert len(signals.list_signals()) == 1

    with get_client(sync_client=True) as client:
        # The sync client's read_artifacts sends null filters the server refuses.
        artifacts = client.request(
            "POST",
            "/artifacts/filter",
            json={"artifacts": {"key": {"any_": ["detect-signals"]}}, "sort": "CREATED_DESC"},
        ).json()
    # Newest first: this test's second run, then its first (other tests' runs come after).
    assert str(signal.id) in artifacts[1]["data"]
    assert "repeat (seen 1x)" in artifacts[0]["data"]


def test_analyze_flow_explains_the_spike_and_emits_its_event(
    prefect_server, prom_env, sqlite_url: URL
) -> None:
    recent = f"{minutes_since(prom_env.spike.timestamp)}m"
    result = detection_flows.analyze(
        query=prom_env.spike.selector, lookback="2h", step="1m", recent=recent
    )
    assert result["signal_id"] and result["new_signal"]
    assert result["z"] > 10 and result["labels"]["service"] == "api"
    assert len(events_for(uuid.UUID(result["signal_id"]))) == 1
    # What the run page shows: score, hint, the series and its last points.
    [shown, *_] = artifacts_by_key("analysis")
    assert shown["type"] == "markdown" and shown["data"].startswith("## Anomalous: ")
    assert result["hint"] in shown["data"] and f"{result['score']:.5f}" in shown["data"]
    assert result["signal_id"] in shown["data"] and "service=api" in shown["data"]
    assert len(result["points"]) == signals.RECENT_POINTS
    quiet = detection_flows.analyze(
        query='http_request_duration_seconds_p99{service="web"}', lookback="2h", step="1m"
    )
    assert quiet["signal_id"] is None and quiet["hint"].endswith("within the normal range")


def artifacts_by_key(key: str) -> list[dict]:
    with get_client(sync_client=True) as client:
        # The sync client's read_artifacts sends null filters the server refuses.
        return client.request(
            "POST",
            "/artifacts/filter",
            json={"artifacts": {"key": {"any_": [key]}}, "sort": "CREATED_DESC"},
        ).json()


def test_analyze_with_its_defaults_shows_the_demo_series(
    prefect_server, sqlite_url: URL, tmp_path: Path, monkeypatch
) -> None:
    """The UI's Quick run of `analyze` on the demo stack's replay file: the default query
    finds payments-api's memory and the artifact shows the verdict and the recent points."""
    from test_evidence import replay

    monkeypatch.setenv("NEURALOPS_REPLAY_FILE", str(replay(tmp_path, datetime.now(UTC))))
    signals_settings_reset()
    result = detection_flows.analyze()
    assert result["series"] == 1 and result["labels"]["pod"].startswith("payments-api-")
    assert len(result["points"]) == signals.RECENT_POINTS
    [shown, *_] = artifacts_by_key("analysis")
    assert result["hint"] in shown["data"]
    assert "namespace=payments, pod=payments-api-" in shown["data"]
    last = result["points"][-1]
    assert f"{datetime.fromisoformat(last['at']):%H:%M:%S} | {last['value']:.4g} |" in shown["data"]


def test_prometheus_outage_is_retried_then_fails_without_partial_signals_and_the_next_run_catches_up(  # noqa: E501
    prefect_server, prometheus_installed, sqlite_url: URL, tmp_path: Path, monkeypatch
) -> None:
    history = demo_history(datetime.now(UTC), end_offset_s=-3600, spike_before_end_s=4500)
    server = LocalPrometheus(tmp_path / "prom")
    write_openmetrics(history, tmp_path / "history.om")
    server.backfill(tmp_path / "history.om")
    monkeypatch.setenv("PROM_URL", server.url)
    signals_settings_reset()
    # Same retries as production, without the waiting.
    fast = detection_flows.query_rule.with_options(retry_delay_seconds=0)
    monkeypatch.setattr(detection_flows, "query_rule", fast)
    rules = rules_file(tmp_path, minutes_since(history.spike.timestamp))

    # Prometheus is down: the first query fails through every retry, the run fails.
    state = detection_flows.detect(rules_file=str(rules), return_state=True)
    assert state.is_failed()
    assert f"Prometheus at {server.url} is unreachable" in state.message
    assert signals.list_signals() == []
    with get_client(sync_client=True) as client:
        task_runs = client.read_task_runs(
            flow_run_filter=FlowRunFilter(
                id=FlowRunFilterId(any_=[state.state_details.flow_run_id])
            ),
            sort=TaskRunSort.EXPECTED_START_TIME_ASC,
            limit=50,
        )
        attempts = [t.run_count for t in task_runs if t.name.startswith("query")]
    assert attempts and max(attempts) == 1 + fast.retries

    with server:  # back up: the next run covers the same span
        again = detection_flows.detect(rules_file=str(rules))
    assert again["new_signals"] == 1
    assert [s.labels["service"] for s in signals.list_signals()] == ["api"]


def test_a_prometheus_block_edited_in_the_ui_is_the_source_when_named(
    prefect_server, live_prometheus, sqlite_url: URL
) -> None:
    from blocks.prometheus import PrometheusConnection

    PrometheusConnection(url=live_prometheus.url, timeout_s=5).save("bench-prom", overwrite=True)
    assert PrometheusConnection.load("bench-prom").url == live_prometheus.url
    # No PROM_URL in the environment: only the block knows where Prometheus is.
    result = detection_flows.analyze(
        query=live_prometheus.spike.selector,
        lookback="2h",
        step="1m",
        recent=f"{minutes_since(live_prometheus.spike.timestamp)}m",
        prometheus_block="bench-prom",
    )
    assert result["signal_id"] and result["labels"]["service"] == "api"
    secret = PrometheusConnection(url=live_prometheus.url, token="s3cr3t-token")
    assert "s3cr3t-token" not in repr(secret) and "s3cr3t-token" not in str(secret.model_dump())
