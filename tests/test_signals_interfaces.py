"""POST /analyze, GET /signals, /metrics, and `neuralops analyze | signals list | detect-file`,
against the real Prometheus of the ``live_prometheus`` fixture."""

from __future__ import annotations

import math
import re
import time
from pathlib import Path

import pytest
from conftest import api_headers
from fastapi.testclient import TestClient
from sqlalchemy.engine import URL
from typer.testing import CliRunner

from neuralops.api import create_app
from neuralops.cli import app
from neuralops.local_prometheus import free_port
from neuralops.settings import get_settings

runner = CliRunner()


@pytest.fixture
def prom(live_prometheus, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("PROM_URL", live_prometheus.url)
    get_settings.cache_clear()
    return live_prometheus


def recent(prom) -> str:
    return f"{math.ceil((time.time() - prom.spike.timestamp) / 60) + 5}m"


def test_api_analyze_finds_the_spike_lists_it_and_counts_it(prom, database_url: URL) -> None:
    client = TestClient(create_app(database_url), headers=api_headers())
    body = {"query": prom.spike.selector, "lookback": "2h", "step": "1m", "recent": recent(prom)}
    response = client.post("/analyze", json=body)
    assert response.status_code == 200, response.text
    result = response.json()
    assert result["signal_id"] and result["new_signal"] and result["z"] > 10
    # The default (combined) names the part that fired: far above the mean, or a shift up.
    assert "service=api" in result["hint"]
    assert re.search(r"\d+\.\dσ above its 2h baseline|level shifted by \+\d+\.\dσ", result["hint"])
    assert client.post("/analyze", json=body).json()["new_signal"] is False  # dedup

    listed = client.get("/signals", params={"rule": "adhoc", "limit": 5}).json()
    assert [s["id"] for s in listed] == [result["signal_id"]]
    assert listed[0]["occurrences"] == 1
    assert client.get(f"/signals/{result['signal_id']}").json()["hint"] == result["hint"]
    assert client.get("/signals", params={"since": "2999-01-01T00:00:00"}).json() == []

    metrics = client.get("/metrics").text
    assert 'neuralops_signals_total{method="combined",rule="adhoc"} 1.0' in metrics
    assert 'neuralops_anomaly_total{method="combined",rule="adhoc"} 1.0' in metrics


def test_api_analyze_a_quiet_series(prom, sqlite_url: URL) -> None:
    client = TestClient(create_app(sqlite_url), headers=api_headers())
    body = {"query": 'http_request_duration_seconds_p99{service="db"}', "lookback": "2h"}
    result = client.post("/analyze", json=body).json()
    assert result["signal_id"] is None and result["series"] == 1
    assert client.get("/signals").json() == []


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"query": ""}, "query"),
        ({"query": "up", "lookback": "soon"}, "lookback"),
        ({"query": "up", "method": "magic"}, "method"),
        ({"query": "up", "extra": 1}, "extra"),
    ],
)
def test_api_analyze_rejects_bad_requests_naming_the_field(
    prom, sqlite_url: URL, body: dict, field: str
) -> None:
    response = TestClient(create_app(sqlite_url), headers=api_headers()).post("/analyze", json=body)
    assert response.status_code == 422
    assert field in response.text


def test_api_analyze_bad_promql_is_422_and_a_down_prometheus_503(
    prom, sqlite_url: URL, monkeypatch: pytest.MonkeyPatch
) -> None:
    client = TestClient(create_app(sqlite_url), headers=api_headers())
    bad = client.post("/analyze", json={"query": "rate(up[5m]"})
    assert bad.status_code == 422 and "rate(up[5m]" in bad.text

    monkeypatch.setenv("PROM_URL", f"http://127.0.0.1:{free_port()}")
    get_settings.cache_clear()
    down = TestClient(create_app(sqlite_url), headers=api_headers()).post(
        "/analyze", json={"query": "up"}
    )
    assert down.status_code == 503 and "unreachable" in down.json()["detail"]
    assert client.get("/signals").json() == []


def test_cli_analyze_explains_the_spike_and_signals_list_shows_it(prom, sqlite_url: URL) -> None:
    result = runner.invoke(
        app,
        [
            "analyze",
            "--query",
            prom.spike.selector,
            "--lookback",
            "2h",
            "--recent",
            recent(prom),
            "--label",
            "team=sre",
        ],
    )
    assert result.exit_code == 0, result.output
    assert "anomalous" in result.output and "service=api" in result.output
    assert re.search(
        r"is \d+\.\dσ above its 2h baseline|level shifted by \+\d+\.\dσ", result.output
    )
    signal_id = re.search(r"new signal: ([0-9a-f-]{36})", result.output).group(1)

    listed = runner.invoke(app, ["signals", "list", "--since", "1h", "--json"])
    assert listed.exit_code == 0, listed.output
    assert signal_id in listed.output and '"team": "sre"' in listed.output
    empty = runner.invoke(app, ["signals", "list", "--rule", "nothing"])
    assert "no signals matching the filters" in empty.output


def test_cli_analyze_rejects_a_bad_label_and_duration(prom, sqlite_url: URL) -> None:
    bad_label = runner.invoke(app, ["analyze", "--query", "up", "--label", "novalue"])
    assert bad_label.exit_code == 2 and "KEY=VALUE" in bad_label.output
    bad_since = runner.invoke(app, ["signals", "list", "--since", "yesterday-ish"])
    assert bad_since.exit_code == 2 and "neither a duration" in bad_since.output


def test_cli_detect_file_scores_a_csv(tmp_path: Path) -> None:
    source = tmp_path / "in.csv"
    rows = ["timestamp,value"] + [
        f"2026-11-23 10:{m // 60:02d}:{m % 60:02d},{10 + (m % 7) * 0.1}" for m in range(300)
    ]
    rows[250] = "2026-11-23 10:04:09,95.0"  # a spike
    source.write_text("\n".join(rows) + "\n")
    result = runner.invoke(
        app, ["detect-file", str(source), str(tmp_path / "out.csv"), "--method", "robust"]
    )
    assert result.exit_code == 0, result.output
    assert "300 rows scored with robust" in result.output
    lines = (tmp_path / "out.csv").read_text().splitlines()
    assert lines[0] == "timestamp,value,anomaly_score" and len(lines) == 301
    scores = [float(line.rsplit(",", 1)[1]) for line in lines[1:]]
    assert scores.index(max(scores)) == 249
