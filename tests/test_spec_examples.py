"""The specification's literal examples, run as a new user would paste them (issue 20).

* the ``log_run`` one-liner, verbatim, in a shell whose environment holds only PATH (the
  venv's ``python`` first), HOME and NEURALOPS_DATA_DIR (a fresh, empty directory), plus
  POSTGRES_DSN on PostgreSQL;
* the ``POST /analyze`` bodies (``prom_query``, and ``query``) and the ``POST /probe`` body,
  sent byte for byte to a real API server (uvicorn) over a real Prometheus. The one thing
  added is the ``Authorization: Bearer`` header, which the specification leaves implicit:
  every operation but GET /healthz and /metrics needs a token (issue 15).

Each on SQLite and on PostgreSQL.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from conftest import api_headers, serve_api
from fastapi.testclient import TestClient
from sqlalchemy.engine import URL

from neuralops import runs, signals
from neuralops.api import create_app
from neuralops.errors import InvalidInput
from neuralops.local_prometheus import DemoPrometheus, demo_prometheus
from neuralops.settings import get_settings

# Verbatim from the specification.
LOG_RUN_ONE_LINER = (
    """python -c "from neuralops.runs import log_run; print(log_run({'wpk_id':'test','run_id':"""
    """'r1','inputs':{},'outputs':{'text':'ok'},'status':'completed','node_logs':[],"""
    """'duration_ms':123}))\""""
)
SPIKED = 'http_request_duration_seconds_p99{service=\\"api\\"}'  # as written inside JSON
QUIET = 'http_request_duration_seconds_p99{service=\\"db\\"}'
ANALYZE_PROM_QUERY = (
    '{"prom_query": "' + SPIKED + '", "lookback": "1h", "labels": {"team": "payments"}}'
)
ANALYZE_QUERY = '{"query": "' + SPIKED + '", "lookback": "1h"}'
PROBE = '{"query": "' + SPIKED + '", "threshold": 0.99}'
PROBE_QUIET = '{"query": "' + QUIET + '", "threshold": 0.99}'


def test_the_one_liners_text_is_the_specifications() -> None:
    assert LOG_RUN_ONE_LINER == (
        "python -c \"from neuralops.runs import log_run; print(log_run({'wpk_id':'test',"
        "'run_id':'r1','inputs':{},'outputs':{'text':'ok'},'status':'completed',"
        "'node_logs':[],'duration_ms':123}))\""
    )


# --- the log_run one-liner ------------------------------------------------------------------


def _paste(command: str, cwd: Path, env: dict[str, str]) -> subprocess.CompletedProcess:
    """``command`` in a shell, as typed: ``python`` is the venv's, found on PATH."""
    path = f"{Path(sys.executable).parent}:/usr/bin:/bin"
    return subprocess.run(
        command,
        shell=True,
        cwd=cwd,  # not the repository: the installed package answers
        env={"PATH": path, "HOME": str(cwd), **env},
        capture_output=True,
        text=True,
        timeout=120,
    )


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_log_run_one_liner_prints_the_run_id_and_stores_completed_as_succeeded(
    backend: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    data_dir = tmp_path / "fresh"  # empty: no database yet on SQLite
    env = {"NEURALOPS_DATA_DIR": str(data_dir)}
    if backend == "postgresql":
        url: URL = request.getfixturevalue("postgresql_url")
        env["POSTGRES_DSN"] = url.render_as_string(hide_password=False)
    else:
        url = URL.create("sqlite+pysqlite", database=str(data_dir / "neuralops.db"))

    first = _paste(LOG_RUN_ONE_LINER, tmp_path, env)
    assert (first.returncode, first.stdout) == (0, "r1\n"), first.stderr
    assert "Traceback" not in first.stderr
    again = _paste(LOG_RUN_ONE_LINER, tmp_path, env)  # the same finished run: idempotent
    assert (again.returncode, again.stdout) == (0, "r1\n"), again.stderr

    row = runs.get_run("r1", url=url)
    assert (row.wpk_id, row.status, row.duration_ms) == ("test", "succeeded", 123)
    assert (row.outputs, row.node_logs) == ({"text": "ok"}, [])
    assert (row.provenance, row.verified) == ("local", False)  # a direct library call


def test_an_unknown_status_still_names_the_allowed_values() -> None:
    run = {"wpk_id": "test", "run_id": "r2", "status": "done", "duration_ms": 1}
    with pytest.raises(InvalidInput) as refused:
        runs.log_run(run)
    message = str(refused.value)
    assert message.startswith("run: status: Input should be")
    assert all(f"'{s}'" in message for s in (*runs.RUN_STATUSES, "completed"))
    # the model the run-logger hook builds accepts the synonym too
    assert runs.RunIn.model_validate({**run, "status": "completed"}).status == "succeeded"


# --- the HTTP examples, against a real server and a real Prometheus ---------------------------


@pytest.fixture
def spiked_now(
    prometheus_installed: None, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[DemoPrometheus]:
    """The demo history, its samples running on for an hour as a scraping Prometheus's
    would, with the latency spike starting at this minute: inside the 5 minutes that analyze
    and probe judge by default for the next 4 minutes or more (the test takes seconds). Per
    test, so the spike is recent whenever the test runs."""
    hour = 3600
    with demo_prometheus(
        tmp_path_factory.mktemp("spec-prometheus"), end_offset_s=-hour, spike_before_end_s=hour
    ) as demo:
        yield demo


@pytest.fixture
def server(
    spiked_now: DemoPrometheus, database_url: URL, monkeypatch: pytest.MonkeyPatch
) -> Iterator[str]:
    monkeypatch.setenv("PROM_URL", spiked_now.url)
    get_settings.cache_clear()
    with serve_api(create_app(database_url)) as base:
        yield base


def _post(base: str, path: str, body: str, *scopes: str) -> httpx.Response:
    """``curl -X POST <base><path> -H 'Content-Type: application/json' -d '<body>'``, plus
    the bearer token the specification leaves implicit."""
    headers = {"Content-Type": "application/json", **api_headers(*scopes)}
    return httpx.post(f"{base}{path}", content=body.encode(), headers=headers, timeout=60)


def _reading(value: dict) -> None:
    assert set(value) == {"z", "score", "at"}
    assert isinstance(value["z"], float) and 0.0 <= value["score"] <= 1.0


def test_analyze_and_probe_examples_as_written(server: str) -> None:
    # POST /analyze {prom_query, lookback, labels}
    response = _post(server, "/analyze", ANALYZE_PROM_QUERY, "signals:write")
    assert response.status_code == 200, response.text
    spec = response.json()
    assert isinstance(spec["score"], float) and isinstance(spec["hint"], str) and spec["hint"]
    assert isinstance(spec["method"], str)  # the default method's, whatever it is
    _reading(spec["zscore"])
    _reading(spec["ewma"])
    assert spec["zscore"]["z"] > 10 and spec["ewma"]["z"] > 10  # the spike, +1.5 s
    assert spec["labels"] == {
        "__name__": "http_request_duration_seconds_p99",
        "service": "api",
        "team": "payments",
    }
    assert spec["signal_id"] and spec["new_signal"], "the spike is no longer recent?"

    # the same with {query, lookback}: the same series, so the same signal (deduplicated)
    response = _post(server, "/analyze", ANALYZE_QUERY, "signals:write")
    assert response.status_code == 200, response.text
    plain = response.json()
    assert (plain["signal_id"], plain["new_signal"]) == (spec["signal_id"], False)
    assert plain["zscore"]["at"] == spec["zscore"]["at"] and plain["ewma"]["z"] > 10

    # both names at once is a 422 naming them; nothing recorded
    both = json.dumps({"query": "up", "prom_query": "up"})
    refused = _post(server, "/analyze", both, "signals:write")
    assert refused.status_code == 422
    assert "exactly one of query or prom_query" in refused.text

    # POST /probe {query, threshold}: a signal of its own (rule probe), deduplicated
    response = _post(server, "/probe", PROBE, "signals:write")
    assert response.status_code == 200, response.text
    probe = response.json()
    assert probe["score"] >= 0.99 and probe["signal_id"] and probe["new_signal"]
    assert (probe["threshold"], probe["last_points"], probe["step"]) == (0.99, 120, "1m")
    _reading(probe["zscore"])
    _reading(probe["ewma"])
    repeat = _post(server, "/probe", PROBE, "signals:write").json()
    assert (repeat["signal_id"], repeat["new_signal"]) == (probe["signal_id"], False)
    signal = signals.get_signal(probe["signal_id"])
    assert (signal.rule, signal.labels["service"], signal.occurrences) == ("probe", "api", 1)

    quiet = _post(server, "/probe", PROBE_QUIET, "signals:write").json()
    assert quiet["signal_id"] is None and quiet["score"] < 0.99 and quiet["series"] == 1

    too_high = _post(server, "/probe", '{"query": "up", "threshold": 3}', "signals:write")
    assert too_high.status_code == 422
    assert ["body", "threshold"] in [e["loc"] for e in too_high.json()["detail"]]
    assert _post(server, "/probe", PROBE, "signals:read").status_code == 403

    listed = httpx.get(
        f"{server}/signals", headers=api_headers("signals:read"), params={"limit": 10}
    ).json()
    assert sorted(s["rule"] for s in listed) == ["adhoc", "probe"]  # nothing from the 422s


def test_runs_accept_completed_over_http_and_refuse_other_words(api_server: str) -> None:
    run = {"wpk_id": "test", "run_id": "r1", "status": "completed", "duration_ms": 123}
    created = _post(api_server, "/runs", json.dumps(run), "runs:write")
    assert (created.status_code, created.json()) == (201, {"run_id": "r1"})
    page = httpx.get(f"{api_server}/workflows/test/runs", headers=api_headers("runs:read"))
    assert [(r["run_id"], r["status"]) for r in page.json()["items"]] == [("r1", "succeeded")]

    refused = _post(api_server, "/runs", json.dumps({**run, "status": "done"}), "runs:write")
    assert refused.status_code == 422
    [error] = refused.json()["detail"]
    assert error["loc"] == ["body", "status"] and "'succeeded'" in error["msg"]
    assert "'completed'" in error["msg"]


def test_openapi_shows_the_specified_fields(sqlite_url: URL) -> None:
    spec = TestClient(create_app(sqlite_url)).get("/openapi.json").json()
    schemas = spec["components"]["schemas"]
    analyze = schemas["AnalyzeRequest"]["properties"]
    assert {"query", "prom_query", "lookback", "labels"} <= set(analyze)
    result = schemas["AnalyzeResult"]["properties"]
    assert {"score", "method", "hint", "zscore", "ewma"} <= set(result)
    assert {"query", "threshold", "last_points", "step"} <= set(
        schemas["ProbeRequest"]["properties"]
    )
    assert "signal_id" in schemas["ProbeResult"]["properties"]
    assert spec["paths"]["/probe"]["post"]["security"] == [{"ApiToken": []}]
    status = schemas["RunIn"]["properties"]["status"]
    assert "completed" in status["enum"] and "succeeded" in status["enum"]
