"""Faults in Prefect itself (issue 9, point 1), each against the REAL component killed or
restarted mid-run:

(a) the connector's worker (a real ``prefect worker start`` on the cluster's process pool,
    running ``execute-playbook`` against a FAKE Kubernetes API server whose Deployment never
    finishes rolling out, so the playbook sits in its ``wait`` step) or the remediate run
    itself is killed while the incident is ``executing``: the incident must end ``failed``
    with a reason (by the remediate run, or by ``housekeeping`` when that run died too),
    never stay ``executing`` silently;
(b) a Prefect server of the test's own (``prefect server start``, SQLite in its own
    PREFECT_HOME, so a restart keeps its database) is killed and restarted while a remediate
    run waits for approval, paused in-process or suspended from a deployment: the run must
    still be resumable with a valid token and complete.

Figures (seconds until the incident ended, server downtime survived) are printed as
``MEASURED ...`` lines (``pytest -s -n0``); nothing asserts on them.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import psutil
import pytest
from conftest import ENV_NAMES, deployment_exists, free_port, wait_until
from fake_kube import FakeKubeAPI, FakeKubeServer
from prefect import flow
from test_connector_execution import PARAMETERS, _worker_online, payments_api, write_kubeconfig
from test_remediate_flow import (
    OOM_PARAMETERS,
    decision,
    flow_state,
    lose_resume_form,
    paused_incident,
    resume,
    start,
)

from neuralops import audit, db, incidents, remediation, runs
from neuralops.db import session_scope
from neuralops.db.models import Cluster
from neuralops.settings import get_settings

pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]
REPO = Path(__file__).resolve().parents[1]
CLUSTER = "fault-a"
POOL = f"cluster-{CLUSTER}"
PREFECT = (sys.executable, "-m", "prefect")
# A served deployment looks for its scheduled runs (the first, and a resumed one) every
# PREFECT_RUNNER_POLL_FREQUENCY seconds, 10 by default: 1 here, as the workers' 1 s.
RUNNER_POLL_S = "1"
DEPLOYMENT_KEY = ("apps/v1", "deployments", "payments", "payments-api")


def measured(what: str, value: Any) -> None:
    print(f"MEASURED {what}: {value}", flush=True)


def _flow_run(flow_run_id: uuid.UUID):
    from prefect.client.orchestration import get_client

    with get_client(sync_client=True) as client:
        return client.read_flow_run(flow_run_id)


def _connector_runs() -> list[Any]:
    """The execute-playbook runs of this module's cluster, newest first."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterTags
    from prefect.client.schemas.sorting import FlowRunSort

    with get_client(sync_client=True) as client:
        return client.read_flow_runs(
            flow_run_filter=FlowRunFilter(tags=FlowRunFilterTags(all_=[f"cluster:{CLUSTER}"])),
            sort=FlowRunSort.START_TIME_DESC,
            limit=20,
        )


def _running_connector_run(incident_id: uuid.UUID) -> Any:
    """The connector's run of the incident once it is Running with a process id."""
    for run in _connector_runs():
        mine = f"incident:{incident_id}" in run.tags
        if mine and run.state and run.state.is_running() and run.infrastructure_pid:
            return run
    return None


def _pid(infrastructure_pid: str) -> int:
    return int(str(infrastructure_pid).rsplit(":", 1)[-1])


def _applied(fake: FakeKubeAPI) -> bool:
    """The real (not dry-run) patch reached the API server: the playbook is mid-execution."""
    return any(not m.dry_run for m in fake.mutations())


def _finish_rollout(fake: FakeKubeAPI) -> None:
    """Play the Deployment controller once, so a connector still waiting can finish."""
    with fake.lock:
        fake.settle = True
        if DEPLOYMENT_KEY in fake.objects:
            fake._settle(DEPLOYMENT_KEY)
        fake.settle = False


def _failed_entry(incident_id: uuid.UUID) -> dict[str, Any]:
    [entry] = [
        e
        for e in audit.recent(subject=incidents.subject(incident_id))
        if e.action == "incident.failed"
    ]
    return entry.payload


# --- (a) the worker killed during execute-playbook ------------------------------------------


class Worker:
    """A real Prefect process worker for the cluster's pool, in its own process group."""

    def __init__(self, env: dict[str, str], log: Path) -> None:
        self.env, self.log_path = env, log
        self.process: subprocess.Popen | None = None

    def start(self) -> None:
        log = self.log_path.open("ab")
        self.process = subprocess.Popen(
            [*PREFECT, "worker", "start", "--pool", POOL, "--type", "process"],
            cwd=REPO,
            env=self.env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        log.close()
        wait_until(lambda: _worker_online(POOL), timeout=180, what="the connector worker")

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def kill(self, *, group: bool) -> None:
        """SIGKILL the worker (``group``: and every process it started)."""
        assert self.process is not None
        if group:
            os.killpg(self.process.pid, signal.SIGKILL)
        else:
            os.kill(self.process.pid, signal.SIGKILL)
        self.process.wait(30)

    def stop(self) -> None:
        if self.alive():
            assert self.process is not None
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait(10)


@pytest.fixture(scope="module")
def connector(
    prefect_server: None, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[dict[str, Any]]:
    """One cluster: a fake API server that never finishes a rollout, a work pool with the
    ``execute-playbook`` deployment, a real worker; one data dir holding the signed
    catalogue, the demo signals and the dev approval key pair."""
    from prefect.settings import PREFECT_API_URL

    from flows.connector import execute_playbook
    from neuralops.approval import dev_keypair
    from neuralops.demo import demo_signals
    from neuralops.registry import add_playbooks, catalogue_dir, load_manifests
    from neuralops.signals import record_signals
    from neuralops.signing import LocalKeySigner, dev_key_path, sign_playbook
    from tasks.clusters import ensure_work_pool

    home = tmp_path_factory.mktemp("faults-connector")
    data_dir = home / "data"
    saved = os.environ.get("NEURALOPS_DATA_DIR")
    os.environ["NEURALOPS_DATA_DIR"] = str(data_dir)
    get_settings.cache_clear()
    settings = get_settings()
    db.upgrade(settings.database_url)
    signer = LocalKeySigner(dev_key_path(settings))
    manifests = load_manifests([catalogue_dir()])
    add_playbooks(manifests)
    for manifest in manifests:
        sign_playbook(manifest.id, signer)
    candidates, cooldowns = demo_signals(datetime.now(UTC))
    found = {r.signal.rule: r.signal for r in record_signals(candidates, cooldowns)}
    private, _ = dev_keypair(settings.data_dir)
    now = datetime.now(UTC)
    with session_scope(settings.database_url) as session:
        session.add(
            Cluster(
                name=CLUSTER,
                work_pool=POOL,
                registered_at=now,
                last_heartbeat=now,
                status="healthy",
                labels={},
            )
        )
    server = FakeKubeServer(FakeKubeAPI(settle=False))
    fake = server.__enter__()
    ensure_work_pool(POOL)
    execute_playbook.to_deployment(
        name=POOL, work_pool_name=POOL, job_variables={"working_dir": str(REPO)}
    ).apply()
    base_env = {k: v for k, v in os.environ.items() if k not in ENV_NAMES}
    env = base_env | {
        "PREFECT_API_URL": PREFECT_API_URL.value(),
        "PREFECT_HOME": str(home / "prefect"),
        "PREFECT_WORKER_QUERY_SECONDS": "1",
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "NEURALOPS_CLUSTER": CLUSTER,
        "NEURALOPS_KUBECONFIG": str(write_kubeconfig(home / "kubeconfig", fake.url)),
        "NEURALOPS_DATA_DIR": str(data_dir),
        "PYTHONPATH": str(REPO),
    }
    worker = Worker(env, home / "worker.log")
    try:
        wait_until(lambda: deployment_exists(f"execute-playbook/{POOL}"))
        worker.start()
        yield {
            "data_dir": data_dir,
            "fake": fake,
            "worker": worker,
            "signals": found,
            "private_key": private,
            "home": home,
        }
    finally:
        _finish_rollout(fake)
        worker.stop()
        server.__exit__(None, None, None)
        if saved is None:
            os.environ.pop("NEURALOPS_DATA_DIR", None)
        else:
            os.environ["NEURALOPS_DATA_DIR"] = saved
        get_settings.cache_clear()
        db.dispose_engines()


@pytest.fixture
def cluster(connector: dict[str, Any], monkeypatch: pytest.MonkeyPatch) -> Iterator[dict]:
    """The test process on the connector's data dir; the fake cluster holds payments-api,
    whose rollout never completes; a worker serves the pool."""
    monkeypatch.setenv("NEURALOPS_DATA_DIR", str(connector["data_dir"]))
    monkeypatch.setenv("NEURALOPS_EMBEDDER", "hashing")
    monkeypatch.setenv("NEURALOPS_SETTLE_S", "0")
    get_settings.cache_clear()
    fake = connector["fake"]
    with fake.lock:
        fake.objects.clear()
        fake.requests.clear()
        fake.settle = False
    fake.put(payments_api())
    if not connector["worker"].alive():  # a previous test killed it
        connector["worker"].start()
    yield connector
    _finish_rollout(fake)  # a connector run still waiting finishes instead of polling on
    get_settings.cache_clear()
    db.dispose_engines()


def _approve_and_wait_for_execution(world: dict[str, Any], flow_run_id=None) -> tuple[Any, Any]:
    """Approve the waiting incident; return it and its connector run once that run is in
    the playbook's ``wait`` step (the real patch applied, the rollout never completing)."""
    current = paused_incident()
    assert current.cluster == CLUSTER
    resume(current.flow_run_id, decision(world, current.id))
    run = wait_until(
        lambda: _running_connector_run(current.id), timeout=180, what="the connector's run"
    )
    wait_until(lambda: _applied(world["fake"]), timeout=120, what="the real patch")
    assert incidents.get(current.id).state == "executing"
    return current, run


def test_connector_run_process_killed_mid_playbook_fails_the_incident(cluster):
    """SIGKILL the flow-run process of execute-playbook (the worker lives): the worker marks
    the run Crashed, the remediate run sees it and ends the incident failed, with the reason."""
    thread, box = start(
        signal_id=str(cluster["signals"]["oom-kills"].id), parameters=PARAMETERS, cluster=CLUSTER
    )
    current, run = _approve_and_wait_for_execution(cluster)
    os.kill(_pid(run.infrastructure_pid), signal.SIGKILL)
    killed = time.monotonic()
    thread.join(300)
    assert not thread.is_alive(), "the remediate run never finished"
    assert "error" not in box, box.get("error")
    ended = time.monotonic() - killed
    assert box["result"]["state"] == "failed"
    assert _flow_run(run.id).state.type.value == "CRASHED"
    final = incidents.get(current.id)
    assert final.state == "failed" and final.outcome == "not_resolved"
    reason = _failed_entry(current.id)["reason"]
    assert "Crashed" in reason and str(run.id) in reason
    assert runs.get_run(final.run_id).status == "failed"
    assert cluster["worker"].alive()
    assert audit.verify().ok
    measured("a1 connector process killed -> incident failed (s)", round(ended, 1))


def test_connector_worker_killed_alone_the_run_crashes_when_its_step_ends(cluster):
    """SIGKILL only the worker, mid-playbook (the patch applied, the rollout being waited
    for): its flow-run process lives on, orphaned, and keeps waiting; once the step ends
    (the rollout completes) it aborts before reporting ("Execution was aborted by Python
    system exit call", Crashed), so the remediate run ends the incident failed with that
    reason although the change was applied: check the cluster by hand, as the reason says."""
    thread, box = start(
        signal_id=str(cluster["signals"]["oom-kills"].id), parameters=PARAMETERS, cluster=CLUSTER
    )
    current, run = _approve_and_wait_for_execution(cluster)
    orphan = psutil.Process(_pid(run.infrastructure_pid))
    cluster["worker"].kill(group=False)
    killed = time.monotonic()
    try:
        time.sleep(10)  # the worker gone, the playbook's wait step goes on
        assert orphan.is_running() and orphan.status() != psutil.STATUS_ZOMBIE
        assert _flow_run(run.id).state.is_running()
        assert incidents.get(current.id).state == "executing"
        _finish_rollout(cluster["fake"])
        thread.join(300)
    finally:
        if orphan.is_running():
            orphan.kill()
    assert not thread.is_alive(), "the remediate run never finished"
    assert "error" not in box, box.get("error")
    ended = time.monotonic() - killed
    connector_state = _flow_run(run.id).state
    assert connector_state.type.value == "CRASHED"
    assert memory_limit_applied(cluster["fake"])  # the change did reach the cluster
    final = incidents.get(current.id)
    assert final.state == "failed" and box["result"]["state"] == "failed"
    reason = _failed_entry(current.id)["reason"]
    assert "Crashed" in reason and str(run.id) in reason
    measured("a2 worker killed alone -> incident failed (s, incl. 10 s wait)", round(ended, 1))
    measured("a2 connector run state", f"{connector_state.name}: {connector_state.message}")


def memory_limit_applied(fake: FakeKubeAPI) -> bool:
    obj = fake.object(*DEPLOYMENT_KEY)
    container = obj["spec"]["template"]["spec"]["containers"][0]
    return container["resources"]["limits"]["memory"] == PARAMETERS["memory_limit"]


def test_connector_worker_and_run_killed_mid_playbook_fails_the_incident(cluster, monkeypatch):
    """SIGKILL the worker and its flow-run process (the machine lost): the run stays Running
    in Prefect for ever, so the remediate run gives up after the connector timeout (shortened
    here from 900 s), cancels the run and ends the incident failed with the reason."""
    import tasks.remediate

    monkeypatch.setattr(tasks.remediate, "CONNECTOR_TIMEOUT_S", 60)
    thread, box = start(
        signal_id=str(cluster["signals"]["oom-kills"].id), parameters=PARAMETERS, cluster=CLUSTER
    )
    current, run = _approve_and_wait_for_execution(cluster)
    pid = _pid(run.infrastructure_pid)
    cluster["worker"].kill(group=True)
    if psutil.pid_exists(pid):
        os.kill(pid, signal.SIGKILL)
    killed = time.monotonic()
    thread.join(300)
    assert not thread.is_alive(), "the remediate run never finished"
    assert "error" not in box, box.get("error")
    ended = time.monotonic() - killed
    assert _flow_run(run.id).state.type.value in ("CANCELLING", "CANCELLED")
    final = incidents.get(current.id)
    assert final.state == "failed"
    reason = _failed_entry(current.id)["reason"]
    assert "did not finish in time" in reason and "cancelled" in reason
    measured("a3 worker+process killed -> incident failed (s, timeout 60 s)", round(ended, 1))
    # The orphaned run is not left Running: it was sent to Cancelling (the server's
    # cancellation cleanup marks it Cancelled after PREFECT's 300 s cancelling timeout).


def test_remediate_run_killed_mid_execution_is_ended_by_housekeeping(cluster):
    """The remediate run itself dies while executing (served as a deployment, its process
    SIGKILLed while the connector runs the playbook): its runner marks it Crashed and
    nothing would ever move the incident on; housekeeping ends it failed with the reason."""
    from prefect.deployments import run_deployment
    from prefect.settings import PREFECT_API_URL

    from flows.housekeeping import housekeeping

    env = {**os.environ, "PREFECT_API_URL": PREFECT_API_URL.value(), "PYTHONPATH": str(REPO)}
    env["PREFECT_RUNNER_POLL_FREQUENCY"] = RUNNER_POLL_S
    served = subprocess.Popen(
        [sys.executable, "-c", "from flows.remediate import remediate; remediate.serve(name='f')"],
        cwd=REPO,
        env=env,
        stdout=(cluster["home"] / "serve-remediate.log").open("ab"),
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        wait_until(lambda: deployment_exists("remediate/f"), timeout=120, what="the deployment")
        flow_run = run_deployment(
            "remediate/f",
            parameters={
                "signal_id": str(cluster["signals"]["oom-kills"].id),
                "parameters": PARAMETERS,
                "cluster": CLUSTER,
            },
            timeout=0,
        )
        wait_until(
            lambda: _flow_run(flow_run.id).state.name == "Suspended", timeout=180, what="suspend"
        )
        current, _ = _approve_and_wait_for_execution(cluster)
        assert current.flow_run_id == flow_run.id
        child = wait_until(lambda: _process_of(served.pid, flow_run.id), what="its process")
        child.kill()
        killed = time.monotonic()
        wait_until(
            lambda: _flow_run(flow_run.id).state.type.value == "CRASHED",
            timeout=120,
            what="the runner to mark the run Crashed",
        )
        assert incidents.get(current.id).state == "executing"  # stuck: nobody else moves it
        result = housekeeping()
        ended = time.monotonic() - killed
        assert [i["incident_id"] for i in result["interrupted"]] == [str(current.id)]
        final = incidents.get(current.id)
        assert final.state == "failed"
        entry = _failed_entry(current.id)
        assert entry["interrupted"] is True and entry["flow_run_state"].startswith("Crashed")
        assert f"remediate flow run {flow_run.id} ended (Crashed" in entry["reason"]
        assert "check the cluster by hand" in entry["reason"]
        assert housekeeping()["interrupted"] == []  # ended once
        assert audit.verify().ok
        measured(
            "a4 remediate run killed -> Crashed -> housekeeping failed it (s)", round(ended, 1)
        )
    finally:
        os.killpg(served.pid, signal.SIGTERM)
        served.wait(30)


def _process_of(runner_pid: int, flow_run_id: uuid.UUID) -> psutil.Process | None:
    """The runner's process executing the flow run: a multiprocessing spawn child (the
    runner runs one flow run at a time here; the first attempt's process ended at suspend)."""
    found = []
    for child in psutil.Process(runner_pid).children(recursive=True):
        try:
            if "spawn_main" in " ".join(child.cmdline()):
                found.append(child)
        except psutil.Error:
            continue
    return found[0] if len(found) == 1 else None


def test_housekeeping_ends_executions_whose_run_ended_or_went_silent(sqlite_url):
    """The decision alone: a run in a final state ends its incident at once; a run still
    Running in Prefect (its process vanished) only once the incident is past the deadline."""
    made = [
        incidents.create(
            signal_id=None, playbook_id="p", recommendations=[], parameters={}, actor="t"
        )
        for _ in range(2)
    ]
    crashed, silent = uuid.uuid4(), uuid.uuid4()
    for incident, run in zip(made, (crashed, silent), strict=True):
        incidents.attach_flow_run(incident.id, run)
        for state in ("dry_run_passed", "approved", "executing"):
            incidents.transition(incident.id, state, actor="t")

    def run_ended(flow_run_id: uuid.UUID) -> str | None:
        return "Crashed: exited with status -9" if flow_run_id == crashed else None

    deadline = timedelta(minutes=20)
    ended = remediation.end_interrupted(run_ended, deadline=deadline)
    assert [i for i, _ in ended] == [made[0].id]
    assert incidents.get(made[1].id).state == "executing"  # Running, within the deadline
    later = datetime.now(UTC) + deadline + timedelta(seconds=1)
    ended = remediation.end_interrupted(run_ended, deadline=deadline, now=later)
    assert [i for i, _ in ended] == [made[1].id]
    assert "still executing after 1200 s" in ended[0][1]
    assert all(incidents.get(i.id).state == "failed" for i in made)
    assert remediation.end_interrupted(run_ended, deadline=deadline, now=later) == []


# --- (b) the Prefect server restarted while a run waits for approval ------------------------


class PrefectServer:
    """``prefect server start`` on a free port with its own PREFECT_HOME (SQLite there), so
    a restart keeps the database."""

    def __init__(self, home: Path) -> None:
        self.home, self.port = home, free_port()
        self.url = f"http://127.0.0.1:{self.port}/api"
        self.process: subprocess.Popen | None = None

    def start(self, timeout: float = 180) -> float:
        """Start and wait until healthy; returns the seconds it took."""
        began = time.monotonic()
        env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
        env |= {
            "PREFECT_HOME": str(self.home),
            "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
            "PREFECT_SERVER_UI_ENABLED": "false",
        }
        log = (self.home / "server.log").open("ab")
        self.process = subprocess.Popen(
            [*PREFECT, "server", "start", "--host", "127.0.0.1", "--port", str(self.port)],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        log.close()
        wait_until(self.healthy, timeout=timeout, what="the Prefect server")
        return time.monotonic() - began

    def healthy(self) -> bool:
        assert self.process is not None
        if self.process.poll() is not None:
            raise AssertionError(f"the server exited: {(self.home / 'server.log').read_text()}")
        try:
            return httpx.get(f"{self.url}/health", timeout=2).status_code == 200
        except httpx.HTTPError:
            return False

    def kill(self) -> None:
        """SIGKILL the server and everything it started (a crash, not a clean stop)."""
        assert self.process is not None
        os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait(30)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait(10)


@pytest.fixture
def own_server(tmp_path: Path) -> Iterator[PrefectServer]:
    """A Prefect server of this test's own; the test process (its threads included) talks to
    it, whatever session server other tests share."""
    import prefect.context
    from prefect.settings import PREFECT_API_URL, temporary_settings

    home = tmp_path / "prefect-home"
    home.mkdir()
    server = PrefectServer(home)
    measured("b fresh server start (s)", round(server.start(), 1))
    try:
        with (
            temporary_settings(updates={PREFECT_API_URL: server.url}),
            prefect.context._temporary_global_settings_context(
                prefect.context.get_settings_context()
            ),
        ):
            try:
                yield server
            finally:
                _drain_prefect_clients()
    finally:
        server.stop()


def _drain_prefect_clients() -> None:
    """Send the logs and events a run left queued while the server is still this test's:
    queued after the settings are gone, they would start an ephemeral server at exit."""
    from prefect.events.worker import EventsWorker
    from prefect.logging.handlers import APILogWorker

    for service in (APILogWorker, EventsWorker):
        with contextlib.suppress(Exception):  # best effort: the test's outcome is decided
            service.drain_all(timeout=30)


@pytest.fixture
def approvals(signed_catalogue, monkeypatch):
    monkeypatch.setenv("NEURALOPS_EMBEDDER", "hashing")
    monkeypatch.setenv("NEURALOPS_SETTLE_S", "0")
    get_settings.cache_clear()
    return signed_catalogue


OUTAGE_S = 15
# The Prefect client retries a refused connection PREFECT_CLIENT_MAX_RETRIES times (5) with
# exponential back-off (2, 4, 8, 16, 32 s, +-PREFECT_CLIENT_RETRY_JITTER_FACTOR 20 %): about a
# minute, so an outage must last 100 s to outlast the defaults. The tests of an outage longer
# than the client's retries lower them to 2 (2 + 4 s, 7.2 s at most) and keep the server down
# LONG_OUTAGE_S: the same situation, the retries exhausted with time to spare, in a third of
# the time; each also checks the run's log for the warning written when the retries ran out.
SHORT_CLIENT_RETRIES = 2
LONG_OUTAGE_S = 25


@pytest.fixture
def short_client_retries(own_server: PrefectServer) -> Iterator[list[str]]:
    """The test process (the paused run's thread included) retries a request
    ``SHORT_CLIENT_RETRIES`` times, on the test's own server as with ``own_server``; yields
    the WARNING lines flow runs log meanwhile (caught in the process: those written while
    the server is down never reach it)."""
    import logging

    import prefect.context
    from prefect.settings import PREFECT_CLIENT_MAX_RETRIES, temporary_settings

    class Warnings(logging.Handler):
        def __init__(self) -> None:
            super().__init__(logging.WARNING)
            self.lines: list[str] = []

        def emit(self, record: logging.LogRecord) -> None:
            self.lines.append(record.getMessage())

    caught = Warnings()
    logger = logging.getLogger("prefect.flow_runs")
    logger.addHandler(caught)
    try:
        with (
            temporary_settings(updates={PREFECT_CLIENT_MAX_RETRIES: SHORT_CLIENT_RETRIES}),
            prefect.context._temporary_global_settings_context(
                prefect.context.get_settings_context()
            ),
        ):
            yield caught.lines
    finally:
        logger.removeHandler(caught)


def _gave_up_retrying(warnings: list[str]) -> bool:
    """The paused run logged that the API did not answer past the client's retries."""
    return any("did not answer while waiting for approval" in line for line in warnings)


def _outage(server: PrefectServer, seconds: float = OUTAGE_S) -> float:
    """Kill the server, keep it down ``seconds``, restart it: the seconds it did not answer."""
    server.kill()
    down = time.monotonic()
    time.sleep(seconds)
    restart = server.start()
    measured("b server restart until healthy (s)", round(restart, 1))
    return time.monotonic() - down


def _form_saved(flow_run_id: uuid.UUID) -> bool:
    """The paused run has saved its input schema (the Resume form): it is now polling."""
    from prefect.client.orchestration import get_client
    from prefect.input.run_input import keyset_from_paused_state

    with get_client(sync_client=True) as client:
        state = client.read_flow_run(flow_run_id).state
        if state is None or not state.is_paused():
            return False
        try:
            client.read_flow_run_input(flow_run_id, keyset_from_paused_state(state)["schema"])
        except Exception:
            return False
    return True


def test_inprocess_pause_survives_a_prefect_server_restart(own_server, approvals):
    """A run paused in-process polls the server every 2 s; the server is killed, stays down
    15 s and restarts on the same database: the Prefect client retries the poll (5 retries,
    exponential back-off: about a minute), the run is still Paused, and resumed with a
    valid token it executes and completes."""
    thread, box = start(
        signal_id=str(approvals["signals"]["oom-kills"].id), parameters=OOM_PARAMETERS
    )
    current = paused_incident()
    wait_until(lambda: _form_saved(current.flow_run_id), what="the run to pause")
    downtime = _outage(own_server)
    assert thread.is_alive(), f"the paused run died during the outage: {box.get('error')!r}"
    assert flow_state(current.flow_run_id) == "PAUSED"
    assert incidents.get(current.id).state == "awaiting_approval"
    resume(current.flow_run_id, decision(approvals, current.id))
    thread.join(120)
    assert "error" not in box, box.get("error")
    assert box["result"]["state"] == "succeeded"
    assert flow_state(current.flow_run_id) == "COMPLETED"
    assert incidents.get(current.id).approver == "ana"
    measured("b1 in-process pause: server downtime survived (s)", round(downtime, 1))


def test_inprocess_pause_survives_an_outage_longer_than_the_client_retries(
    own_server, short_client_retries, approvals
):
    """As above with the server down longer than the Prefect client's retries (lowered to
    ``SHORT_CLIENT_RETRIES``, so ``LONG_OUTAGE_S`` outlasts them as 100 s outlasts the
    defaults): only the flow itself asking again keeps the paused run alive."""
    thread, box = start(
        signal_id=str(approvals["signals"]["oom-kills"].id), parameters=OOM_PARAMETERS
    )
    current = paused_incident()
    wait_until(lambda: _form_saved(current.flow_run_id), what="the run to pause")
    downtime = _outage(own_server, LONG_OUTAGE_S)
    measured("b1-long server downtime (s)", round(downtime, 1))
    try:
        resume(current.flow_run_id, decision(approvals, current.id))
    finally:
        thread.join(120)
        outcome = box.get("result", {}).get("state") or repr(box.get("error"))
        measured("b1-long outcome", f"{outcome}; run {flow_state(current.flow_run_id)}")
    assert box.get("result", {}).get("state") == "succeeded", box.get("error")
    assert _gave_up_retrying(short_client_retries), short_client_retries


@flow(name="fault-pause-probe", persist_result=False)
def pause_probe() -> str:
    """Waits for approval the way the remediate flow should: tasks.remediate.pause_for_approval."""
    from tasks.remediate import pause_for_approval

    return pause_for_approval(key="approval-0", timeout=900, poll_interval=2).approver


def _paused_probe_run() -> uuid.UUID | None:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowFilter, FlowFilterName

    with get_client(sync_client=True) as client:
        found = client.read_flow_runs(
            flow_filter=FlowFilter(name=FlowFilterName(any_=["fault-pause-probe"])), limit=5
        )
    return next((r.id for r in found if r.state and r.state.is_paused()), None)


def test_pause_for_approval_survives_an_outage_longer_than_the_client_retries(
    own_server, short_client_retries
):
    """The fix for the test above, proven on a minimal flow: paused through
    ``tasks.remediate.pause_for_approval``, a run outlives the server down longer than the
    client's retries (``SHORT_CLIENT_RETRIES``, ``LONG_OUTAGE_S``), and resumed with the
    decision after the restart, it gets the decision."""
    box: dict[str, Any] = {}

    def run() -> None:
        try:
            box["result"] = pause_probe()
        except BaseException as exc:  # surfaced by the test
            box["error"] = exc

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    flow_run_id = wait_until(_paused_probe_run, timeout=120, what="the probe to pause")
    wait_until(lambda: _form_saved(flow_run_id), what="its Resume form")
    downtime = _outage(own_server, LONG_OUTAGE_S)
    assert thread.is_alive(), f"the paused run died during the outage: {box.get('error')!r}"
    from prefect import resume_flow_run

    wait_until(lambda: flow_state(flow_run_id) == "PAUSED", what="the run still paused")
    resume_flow_run(
        flow_run_id,
        run_input={"decision": "approve", "approver": "ana", "token": "t", "comment": ""},
    )
    thread.join(120)
    assert box.get("result") == "ana", box.get("error")
    assert _gave_up_retrying(short_client_retries), short_client_retries
    measured("b1-fix pause_for_approval: server downtime survived (s)", round(downtime, 1))


def test_suspended_run_survives_a_prefect_server_restart(own_server, approvals):
    """Served as a deployment, the run suspends (no process holds it); the server is killed,
    stays down 15 s and restarts on the same database: the run is still Suspended, and
    resumed with a valid token it runs again from the top and completes.

    Prefect saves a pause's Resume form (its input schema) in a separate call after the state
    change, so a restart between the two once left a Suspended run that every resume refused
    ("Run input schema not found"). NeuralOps writes the form before suspending (so it is
    there as soon as the run is Suspended), and here the form is deleted before the outage,
    as such a restart would leave it: resuming is refused until housekeeping (scheduled, no
    operator action) re-creates it; then the UI's resume works."""
    from prefect import resume_flow_run
    from prefect.deployments import run_deployment

    from flows.housekeeping import housekeeping

    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    env |= {
        "PREFECT_API_URL": own_server.url,
        "PYTHONPATH": str(REPO),
        "PREFECT_RUNNER_POLL_FREQUENCY": RUNNER_POLL_S,
    }
    log_path = own_server.home / "serve.log"

    def serve() -> subprocess.Popen:
        return subprocess.Popen(
            [
                sys.executable,
                "-c",
                "from flows.remediate import remediate; remediate.serve(name='r')",
            ],
            cwd=REPO,
            env=env,
            stdout=log_path.open("ab"),
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    served = serve()
    try:
        wait_until(lambda: deployment_exists("remediate/r"), timeout=120, what="the deployment")
        flow_run = run_deployment(
            "remediate/r",
            parameters={
                "signal_id": str(approvals["signals"]["oom-kills"].id),
                "parameters": OOM_PARAMETERS,
            },
            timeout=0,
        )
        current = wait_until(
            lambda: incidents.find_by_flow_run(flow_run.id), timeout=120, what="the incident"
        )
        wait_until(
            lambda: _flow_run(flow_run.id).state.name == "Suspended", timeout=180, what="suspend"
        )
        assert _form_saved(flow_run.id)  # written before the suspend: no window to lose it
        lose_resume_form(flow_run.id)  # what a restart between suspend and save left
        downtime = _outage(own_server)
        assert _flow_run(flow_run.id).state.name == "Suspended"
        assert incidents.get(current.id).state == "awaiting_approval"
        runner_survived = served.poll() is None
        measured("b2 serve process survived the outage", runner_survived)
        if not runner_survived:  # as a supervisor would: start it again
            served = serve()
        valid = decision(approvals, current.id).as_input()
        with pytest.raises(RuntimeError, match="Run input schema not found"):
            resume_flow_run(flow_run.id, run_input=valid)  # the failure, reproduced
        assert housekeeping()["repaired"] == [str(current.id)]
        assert _form_saved(flow_run.id)
        assert housekeeping()["repaired"] == []  # repaired once
        resume_flow_run(flow_run.id, run_input=valid)  # as the UI's Resume button does
        wait_until(lambda: flow_state(flow_run.id) == "COMPLETED", timeout=180, what="completion")
        final = incidents.get(current.id)
        assert final.state == "succeeded" and final.approver == "ana"
        measured("b2 suspended run: server downtime survived (s)", round(downtime, 1))
    finally:
        os.killpg(served.pid, signal.SIGTERM)
        served.wait(30)
