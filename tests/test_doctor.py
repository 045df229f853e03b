"""neuralops doctor: configured, reachable or missing, and what each gap blocks."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from sqlalchemy.engine import URL
from typer.testing import CliRunner

from neuralops.cli import app
from neuralops.doctor import Status, diagnose
from neuralops.settings import get_settings


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture
def answering_endpoint() -> Iterator[str]:
    """A local HTTP endpoint that answers 200 to anything: enough to prove reachability."""

    class Ok(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(200)
            self.end_headers()

        def log_message(self, *args) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Ok)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_port}"
    server.shutdown()


def _by_name(report) -> dict:
    return {c.name: c for c in report.components}


def test_embedded_defaults(sqlite_url: URL) -> None:
    report = _by_name(diagnose(get_settings()))
    assert report["database"].status is Status.embedded
    assert "schema up to date" in report["database"].detail
    assert report["prometheus"].status is Status.embedded
    assert report["vault"].status is Status.embedded and "dev" in report["vault"].detail
    assert report["prometheus"].blocks == []


def test_unreachable_component_lists_what_it_blocks(
    sqlite_url: URL, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PROM_URL", f"http://127.0.0.1:{_closed_port()}")
    get_settings.cache_clear()
    report = diagnose(get_settings())
    prometheus = _by_name(report)["prometheus"]
    assert (prometheus.status, prometheus.reachable) == (Status.unreachable, False)
    assert any("anomaly detection" in b for b in prometheus.blocks)
    assert report.ok is False


def test_reachable_component_is_ok(
    sqlite_url: URL, monkeypatch: pytest.MonkeyPatch, answering_endpoint: str
) -> None:
    monkeypatch.setenv("VAULT_ADDR", answering_endpoint)
    get_settings.cache_clear()
    vault = _by_name(diagnose(get_settings()))["vault"]
    assert (vault.status, vault.reachable, vault.blocks) == (Status.ok, True, [])


def test_unmigrated_database_says_how_to_fix(tmp_path: Path) -> None:
    database = _by_name(diagnose(get_settings()))["database"]
    assert "run `neuralops db upgrade`" in database.detail


def test_cli_writes_the_json_report(
    sqlite_url: URL, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("PROM_URL", f"http://127.0.0.1:{_closed_port()}")
    get_settings.cache_clear()
    target = tmp_path / "reports" / "prereqs.json"
    result = CliRunner().invoke(app, ["doctor", "--json-out", str(target)])
    assert result.exit_code == 1  # something configured is unreachable
    report = json.loads(target.read_text())
    statuses = {c["name"]: c["status"] for c in report["components"]}
    assert statuses["prometheus"] == "unreachable" and statuses["database"] == "embedded"
    assert set(statuses) >= {"database", "prometheus", "vault", "s3", "vector_store", "prefect"}


# --- the running stack (<data dir>/stack.json, written by `make run`) -------------------------


def _stack(data_dir: Path, api: str, prometheus: str, pid: int | None = None) -> None:
    from neuralops import stack

    stack.write(
        data_dir,
        stack.StackInfo(
            pid=pid or os.getpid(),
            hostname=socket.gethostname(),
            started_at=datetime.now(UTC),
            data_dir=data_dir,
            project_root=Path.cwd(),
            prefect_api_url=f"{api}/api",
            prefect_ui_url=api,
            prometheus_url=prometheus,
        ),
    )


def test_doctor_reports_the_running_stack_and_each_address(
    sqlite_url: URL, answering_endpoint: str
) -> None:
    assert _by_name(diagnose(get_settings()))["stack"].status is Status.missing  # no stack.json
    closed = f"http://127.0.0.1:{_closed_port()}"
    _stack(get_settings().data_dir, answering_endpoint, closed)
    found = _by_name(diagnose(get_settings()))["stack"]
    assert found.status is Status.unreachable and "running since" in found.detail
    assert f"Prefect API {answering_endpoint}/api reachable" in found.detail
    assert f"Prometheus {closed} UNREACHABLE" in found.detail

    _stack(get_settings().data_dir, answering_endpoint, answering_endpoint)
    assert _by_name(diagnose(get_settings()))["stack"].status is Status.ok


def test_doctor_reports_a_stale_stack(sqlite_url: URL, answering_endpoint: str) -> None:
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    _stack(get_settings().data_dir, answering_endpoint, answering_endpoint, pid=gone.pid)
    found = _by_name(diagnose(get_settings()))["stack"]
    assert found.status is Status.unreachable and found.detail.startswith("stale:")
    assert "make run" in found.detail


def test_cli_doctor_checks_the_stacks_prefect_api(
    sqlite_url: URL, answering_endpoint: str, tmp_path: Path
) -> None:
    """In a terminal without PREFECT_API_URL, doctor checks the Prefect API stack.json names."""
    _stack(get_settings().data_dir, answering_endpoint, answering_endpoint)
    target = tmp_path / "prereqs.json"
    env = {
        "PATH": os.environ["PATH"],
        "HOME": str(tmp_path),
        "NEURALOPS_DATA_DIR": str(get_settings().data_dir),
    }
    result = subprocess.run(
        [str(Path(sys.executable).with_name("neuralops")), "doctor", "--json-out", str(target)],
        env=env | {"COLUMNS": "200"},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert "using the running stack's Prefect API" in result.stderr
    components = {c["name"]: c for c in json.loads(target.read_text())["components"]}
    assert components["prefect"]["status"] == "ok"
    assert components["prefect"]["detail"].startswith(f"{answering_endpoint}/api")
    assert components["stack"]["status"] == "ok"
    assert "running since" in components["stack"]["detail"]
