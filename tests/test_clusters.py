"""Clusters (issue 7): registration against a real OpenBao, heartbeats, reachability, the
CLI, the API and the watch flow against a real Prefect server."""

from __future__ import annotations

import json
import logging
import time
import uuid
from datetime import UTC, datetime, timedelta

import hvac
import hvac.exceptions
import pytest
from conftest import api_headers
from fastapi.testclient import TestClient
from sqlalchemy import select
from sqlalchemy.engine import URL
from typer.testing import CliRunner

from neuralops import clusters
from neuralops.db import session_scope
from neuralops.db.models import AuditLog, Cluster
from neuralops.errors import InvalidInput, NotFound, Unavailable
from neuralops.local_prometheus import free_port
from neuralops.settings import get_settings


def _name() -> str:
    return f"edge-{uuid.uuid4().hex[:8]}"


def _closed_port() -> int:
    return free_port()  # bound and released: nothing listens there


@pytest.fixture
def vault(openbao: tuple[str, str], monkeypatch: pytest.MonkeyPatch) -> tuple[str, str]:
    """The OpenBao dev server as NeuralOps' Vault (its root token as NeuralOps' own)."""
    addr, root = openbao
    monkeypatch.setenv("VAULT_ADDR", addr)
    monkeypatch.setenv("VAULT_TOKEN", root)
    get_settings.cache_clear()
    return addr, root


def _child_token(addr: str, root: str) -> str:
    """A registration token as an operator would hand one out."""
    client = hvac.Client(url=addr, token=root)
    return client.auth.token.create(policies=["default"], ttl="10m")["auth"]["client_token"]


def _stored(addr: str, root: str, name: str) -> dict:
    client = hvac.Client(url=addr, token=root)
    return client.secrets.kv.v2.read_secret_version(
        path=clusters.kv_path(name), mount_point="secret", raise_on_deleted_version=False
    )["data"]["data"]


def _row_text(url: URL, name: str) -> str:
    with session_scope(url) as session:
        row = session.get(Cluster, name)
        assert row is not None
        return repr({c.name: getattr(row, c.name) for c in Cluster.__table__.columns})


def _audit(url: URL, action: str | None = None) -> list[AuditLog]:
    with session_scope(url) as session:
        query = select(AuditLog).order_by(AuditLog.seq)
        if action:
            query = query.where(AuditLog.action == action)
        return list(session.scalars(query).all())


# --- registration against the real OpenBao ---------------------------------------------------


def test_register_exchanges_the_token_and_stores_only_a_reference(
    vault, database_url: URL, caplog: pytest.LogCaptureFixture
) -> None:
    addr, root = vault
    caplog.set_level(logging.DEBUG)
    token, name = _child_token(addr, root), _name()
    cluster = clusters.register(
        name,
        vault_token=token,
        labels={"env": "prod", "region": "eu-west-1"},
        prometheus_url="http://prometheus.monitoring:9090/",
        settings=get_settings(),
    )
    assert cluster.name == name and cluster.work_pool == f"cluster-{name}"
    assert cluster.status == "pending" and cluster.last_heartbeat is None
    assert cluster.labels == {"env": "prod", "region": "eu-west-1"}
    assert cluster.prometheus_url == "http://prometheus.monitoring:9090"
    assert cluster.credential_id == f"vault:secret/neuralops/clusters/{name}?version=1"

    # the cluster's own credential: a different, working token with the cluster's policy
    stored = _stored(addr, root, name)
    assert stored["token"] != token
    own = hvac.Client(url=addr, token=stored["token"]).auth.token.lookup_self()["data"]
    assert f"neuralops-cluster-{name}" in own["policies"]
    assert own["meta"]["cluster"] == name
    assert own["orphan"] is True  # outlives the operator token that created it

    # the registering token is nowhere: row, audit, logs, the returned model
    row = _row_text(database_url, name)
    assert token not in row and stored["token"] not in row
    [entry] = _audit(database_url, "cluster.registered")
    assert entry.subject == f"cluster:{name}"
    assert entry.payload["rotated"] is False
    everything = json.dumps([e.payload for e in _audit(database_url)])
    assert token not in everything and stored["token"] not in everything
    assert token not in caplog.text and stored["token"] not in caplog.text
    assert token not in cluster.model_dump_json()
    assert [c.name for c in clusters.list_clusters()] == [name]

    # the heartbeat key: returned once, in Vault for the connector, only its SHA-256 here
    key = cluster.heartbeat_key.get_secret_value()
    assert len(key) >= 43 and stored["heartbeat_key"] == key
    assert key not in repr(cluster) and cluster.model_dump_json().count(key) == 1
    with session_scope(database_url) as session:
        assert session.get(Cluster, name).heartbeat_key_sha256 == clusters.key_digest(key)
    assert key not in row and key not in everything and key not in caplog.text
    assert entry.payload["heartbeat_key_sha256"] == clusters.key_digest(key)


def test_register_again_updates_labels_and_rotates_the_credential(vault, sqlite_url: URL) -> None:
    addr, root = vault
    name = _name()
    first = clusters.register(name, vault_token=_child_token(addr, root), labels={"env": "dev"})
    old = _stored(addr, root, name)["token"]
    clusters.heartbeat(name)
    second = clusters.register(name, vault_token=_child_token(addr, root), labels={"env": "prod"})
    assert second.labels == {"env": "prod"}
    assert second.registered_at == first.registered_at
    assert second.status == "healthy"  # a re-registration does not reset the heartbeat state
    assert second.credential_id != first.credential_id
    new = _stored(addr, root, name)["token"]
    assert new != old
    with pytest.raises(hvac.exceptions.Forbidden):  # the previous credential is revoked
        hvac.Client(url=addr, token=old).auth.token.lookup_self()
    hvac.Client(url=addr, token=new).auth.token.lookup_self()
    entries = _audit(sqlite_url, "cluster.registered")
    assert [e.payload["rotated"] for e in entries] == [False, True]
    # the heartbeat key rotates too: the old one moves nothing any more
    old_key, new_key = (r.heartbeat_key.get_secret_value() for r in (first, second))
    assert old_key != new_key and _stored(addr, root, name)["heartbeat_key"] == new_key
    with pytest.raises(clusters.HeartbeatRefused) as refused:
        clusters.authenticated_heartbeat(name, old_key)
    assert refused.value.status == 403
    assert clusters.authenticated_heartbeat(name, new_key).status == "healthy"


@pytest.mark.parametrize("kind", ["invalid", "revoked"])
def test_a_refused_token_registers_nothing_and_is_not_echoed(
    vault, sqlite_url: URL, kind: str, caplog: pytest.LogCaptureFixture
) -> None:
    addr, root = vault
    caplog.set_level(logging.DEBUG)
    if kind == "invalid":
        token = "s.this-token-does-not-exist-" + uuid.uuid4().hex
    else:
        token = _child_token(addr, root)
        hvac.Client(url=addr, token=root).auth.token.revoke(token)
    name = _name()
    with pytest.raises(clusters.TokenRefused) as refused:
        clusters.register(name, vault_token=token, labels={})
    assert "the Vault token was refused" in str(refused.value)
    assert isinstance(refused.value, InvalidInput)
    assert [p.field for p in refused.value.problems] == ["vault_token"]
    assert token not in str(refused.value) and token not in caplog.text
    assert clusters.list_clusters() == []
    assert _audit(sqlite_url, "cluster.registered") == []
    with pytest.raises(hvac.exceptions.InvalidPath):  # no credential was issued
        _stored(addr, root, name)


def test_vault_unreachable_is_unavailable(monkeypatch: pytest.MonkeyPatch, sqlite_url) -> None:
    monkeypatch.setenv("VAULT_ADDR", f"http://127.0.0.1:{_closed_port()}")
    monkeypatch.setenv("VAULT_TOKEN", "operator-token")
    get_settings.cache_clear()
    with pytest.raises(Unavailable, match="unreachable") as down:
        clusters.register("edge-1", vault_token="some-registration-token", labels={})
    assert "some-registration-token" not in str(down.value)
    assert "operator-token" not in str(down.value)
    assert clusters.list_clusters() == []


@pytest.mark.parametrize("name", ["Edge-1", "-edge", "edge-", "a" * 41, "edge_1", ""])
def test_bad_names_are_refused_before_vault(name: str, sqlite_url: URL) -> None:
    with pytest.raises(InvalidInput, match="name"):
        clusters.register(name, vault_token="unused", labels={})


def test_bad_labels_and_prometheus_url_are_refused(sqlite_url: URL) -> None:
    with pytest.raises(InvalidInput, match="labels"):
        clusters.register("edge-1", vault_token="unused", labels={"bad key!": "x"})
    with pytest.raises(InvalidInput, match="prometheus_url"):
        clusters.register("edge-1", vault_token="unused", prometheus_url="prometheus:9090")


# --- heartbeats and reachability --------------------------------------------------------------


def _add_cluster(name: str, **values) -> None:
    with session_scope() as session:
        session.add(Cluster(name=name, work_pool=clusters.work_pool_name(name), **values))


def test_heartbeat_makes_a_cluster_healthy(database_url: URL) -> None:
    _add_cluster("edge-1")
    at = datetime(2030, 1, 1, 12, 0, tzinfo=UTC)
    beat = clusters.heartbeat("edge-1", at=at)
    assert (beat.status, beat.last_heartbeat) == ("healthy", at)
    assert clusters.get_cluster("edge-1").status == "healthy"
    with pytest.raises(NotFound, match="not registered"):
        clusters.heartbeat("edge-9")
    with pytest.raises(NotFound):
        clusters.get_cluster("edge-9")


def test_a_heartbeat_through_the_api_needs_that_clusters_own_key(database_url: URL) -> None:
    t0 = datetime(2030, 1, 1, 12, 0, tzinfo=UTC)
    key_a, key_b = clusters.new_heartbeat_key(), clusters.new_heartbeat_key()
    for name, key in (("edge-a", key_a), ("edge-b", key_b)):
        _add_cluster(
            name,
            status="unreachable",
            last_heartbeat=t0,
            heartbeat_key_sha256=clusters.key_digest(key),
        )
    _add_cluster("edge-old", status="unreachable", last_heartbeat=t0)  # registered before keys
    later = t0 + timedelta(minutes=5)
    refusals = [
        ("edge-b", None, 401, "missing"),
        ("edge-b", "", 401, "missing"),
        ("edge-b", key_a, 403, "wrong_key"),  # A's key never moves B
        ("edge-b", key_b + "x", 403, "wrong_key"),
        ("edge-nope", key_b, 403, "wrong_key"),  # an unknown cluster answers the same
        ("edge-old", key_a, 403, "no_key"),
    ]
    for name, key, status, reason in refusals:
        with pytest.raises(clusters.HeartbeatRefused) as refused:
            clusters.authenticated_heartbeat(name, key, at=later)
        assert (refused.value.status, refused.value.reason) == (status, reason), (name, key)
        assert key_a not in str(refused.value) and key_b not in str(refused.value)
    # nothing moved, nothing audited
    assert {c.name: (c.status, c.last_heartbeat) for c in clusters.list_clusters()} == {
        n: ("unreachable", t0) for n in ("edge-a", "edge-b", "edge-old")
    }
    assert _audit(database_url, "cluster.recovered") == []
    beat = clusters.authenticated_heartbeat("edge-b", key_b, at=later)
    assert (beat.status, beat.last_heartbeat) == ("healthy", later)
    assert clusters.get_cluster("edge-a").status == "unreachable"
    [entry] = _audit(database_url, "cluster.recovered")
    assert entry.subject == "cluster:edge-b"


def test_three_missed_intervals_make_a_cluster_unreachable(database_url: URL) -> None:
    t0 = datetime(2030, 1, 1, 12, 0, tzinfo=UTC)
    _add_cluster("edge-1")
    _add_cluster("edge-2")
    _add_cluster("never-seen")  # pending: no heartbeat yet, left alone
    _add_cluster("off", status="disabled", last_heartbeat=t0 - timedelta(hours=1))
    clusters.heartbeat("edge-1", at=t0)
    clusters.heartbeat("edge-2", at=t0 + timedelta(seconds=60))
    assert clusters.mark_unreachable(now=t0 + timedelta(seconds=89)) == []
    assert clusters.mark_unreachable(now=t0 + timedelta(seconds=91)) == ["edge-1"]
    assert clusters.mark_unreachable(now=t0 + timedelta(seconds=92)) == []  # once
    states = {c.name: c.status for c in clusters.list_clusters()}
    assert states == {
        "edge-1": "unreachable",
        "edge-2": "healthy",
        "never-seen": "pending",
        "off": "disabled",
    }
    [entry] = _audit(database_url, "cluster.unreachable")
    assert entry.subject == "cluster:edge-1" and entry.payload["missed"] == 3
    assert entry.payload["silent_s"] == 91
    # a heartbeat brings it back, audited
    assert clusters.heartbeat("edge-1", at=t0 + timedelta(seconds=95)).status == "healthy"
    assert len(_audit(database_url, "cluster.recovered")) == 1
    with pytest.raises(InvalidInput):
        clusters.mark_unreachable(interval_s=0)


# --- CLI --------------------------------------------------------------------------------------


def test_cli_clusters_list(sqlite_url: URL) -> None:
    from neuralops.cli import app

    runner = CliRunner()
    empty = runner.invoke(app, ["clusters", "list"])
    assert empty.exit_code == 0 and "no clusters registered" in empty.output
    _add_cluster("edge-1", labels={"env": "prod"})
    clusters.heartbeat("edge-1")
    listed = runner.invoke(app, ["clusters", "list", "--json"])
    assert listed.exit_code == 0, listed.output
    [row] = json.loads(listed.stdout)
    assert row["name"] == "edge-1" and row["work_pool"] == "cluster-edge-1"
    assert row["status"] == "healthy" and row["labels"] == {"env": "prod"}
    assert row["last_heartbeat"]
    table = runner.invoke(app, ["clusters", "list"])
    assert table.exit_code == 0
    assert "edge-1" in table.output and "healthy" in table.output and "env=prod" in table.output


def test_cli_clusters_register(vault, sqlite_url: URL) -> None:
    from neuralops.cli import app

    addr, root = vault
    token, name = _child_token(addr, root), _name()
    result = CliRunner().invoke(
        app,
        ["clusters", "register", name, "--vault-token", token, "--label", "env=prod"],
    )
    assert result.exit_code == 0, result.output
    assert f"cluster {name} registered" in result.output
    assert f"work pool cluster-{name}" in result.output
    assert token not in result.output
    assert clusters.get_cluster(name).labels == {"env": "prod"}
    key = _stored(addr, root, name)["heartbeat_key"]
    assert f"HEARTBEAT_KEY={key}" in result.output  # shown once, to the registrant
    assert clusters.authenticated_heartbeat(name, key).status == "healthy"
    bad = CliRunner().invoke(app, ["clusters", "register", name, "--vault-token", "nope"])
    assert bad.exit_code != 0 and isinstance(bad.exception, clusters.TokenRefused)


# --- API --------------------------------------------------------------------------------------


def test_api_register_list_and_heartbeat(vault, sqlite_url: URL) -> None:
    from neuralops.api import create_app

    addr, root = vault
    app = create_app(sqlite_url)
    api = TestClient(app, headers=api_headers("clusters:admin"))
    token, name = _child_token(addr, root), _name()
    body = {"name": name, "vault_token": token, "labels": {"env": "prod"}}
    # the Vault token alone is not enough: the API token must carry clusters:admin
    assert TestClient(app).post("/register", json=body).status_code == 401
    no_scope = TestClient(app, headers=api_headers("runs:write", "recommend"))
    forbidden = no_scope.post("/register", json=body)
    assert forbidden.status_code == 403 and "clusters:admin" in forbidden.json()["detail"]
    assert no_scope.get("/clusters").status_code == 403
    assert clusters.list_clusters() == []
    created = api.post("/register", json=body)
    assert created.status_code == 201, created.text
    assert created.json()["name"] == name and created.json()["status"] == "pending"
    assert token not in created.text
    key = created.json()["heartbeat_key"]
    assert key == _stored(addr, root, name)["heartbeat_key"]

    refused = api.post("/register", json={"name": name, "vault_token": "s.bogus-token-xyz"})
    assert refused.status_code == 401
    assert "the Vault token was refused" in refused.json()["detail"]
    assert "s.bogus-token-xyz" not in refused.text

    for body in (
        {"name": "Not_A_Name", "vault_token": token},
        {"vault_token": token},  # no name: FastAPI's own 422 would echo the whole body
        {"name": name, "vault_token": token, "extra": 1},
    ):
        bad = api.post("/register", json=body)
        assert bad.status_code == 422, bad.text
        assert token not in bad.text

    connector = TestClient(app)  # it has the heartbeat key, not an API token
    no_key = connector.put("/healthz", json={"cluster": name})
    assert no_key.status_code == 401 and no_key.headers["www-authenticate"].startswith("Bearer")
    assert clusters.get_cluster(name).status == "pending"
    bearer = {"Authorization": f"Bearer {key}"}
    beat = connector.put("/healthz", json={"cluster": name}, headers=bearer)
    assert beat.status_code == 200 and beat.json()["status"] == "healthy"
    unknown = connector.put("/healthz", json={"cluster": "edge-unknown"}, headers=bearer)
    assert unknown.status_code == 403 and key not in unknown.text
    bad_name = connector.put("/healthz", json={"cluster": "Bad Name"}, headers=bearer)
    assert bad_name.status_code == 422
    # an API token, whatever its scopes, is not a heartbeat key
    assert api.put("/healthz", json={"cluster": name}).status_code == 403
    [listed] = api.get("/clusters").json()
    assert listed["name"] == name and listed["status"] == "healthy"
    assert listed["labels"] == {"env": "prod"} and listed["work_pool"] == f"cluster-{name}"
    assert api.get("/healthz").status_code == 200  # the existing GET is untouched


def test_api_register_with_vault_down_is_503(monkeypatch: pytest.MonkeyPatch, sqlite_url) -> None:
    from neuralops.api import create_app

    monkeypatch.setenv("VAULT_ADDR", f"http://127.0.0.1:{_closed_port()}")
    monkeypatch.setenv("VAULT_TOKEN", "operator-token")
    get_settings.cache_clear()
    api = TestClient(create_app(sqlite_url), headers=api_headers("clusters:admin"))
    down = api.post("/register", json={"name": "edge-1", "vault_token": "tok-123"})
    assert down.status_code == 503 and "tok-123" not in down.text


# --- Prefect: the flows, events and work pools ------------------------------------------------


def _unreachable_events(name: str, timeout_s: float = 15.0) -> list:
    from prefect.client.orchestration import get_client
    from prefect.events.filters import EventFilter, EventNameFilter, EventResourceFilter

    from tasks.clusters import UNREACHABLE_EVENT

    deadline = time.monotonic() + timeout_s
    with get_client(sync_client=True) as client:
        while True:
            wanted = EventFilter(
                event=EventNameFilter(name=[UNREACHABLE_EVENT]),
                resource=EventResourceFilter(id=[f"neuralops.cluster.{name}"]),
            )
            found = client.read_events(wanted, limit=50).events
            if found or time.monotonic() > deadline:
                return found
            time.sleep(0.5)


@pytest.mark.slow
def test_watch_clusters_flow_emits_one_event_per_silent_cluster(
    prefect_server, sqlite_url: URL
) -> None:
    from flows.connector import heartbeat, watch_clusters

    name = _name()
    _add_cluster(name)
    assert heartbeat(cluster=name)["status"] == "healthy"
    assert watch_clusters() == []
    clusters.heartbeat(name, at=datetime.now(UTC) - timedelta(minutes=5))  # older: ignored
    with session_scope() as session:  # silence it: last heartbeat 5 minutes ago
        session.get(Cluster, name).last_heartbeat = datetime.now(UTC) - timedelta(minutes=5)
    assert watch_clusters() == [name]
    assert clusters.get_cluster(name).status == "unreachable"
    [event] = _unreachable_events(name)
    assert event.resource.id == f"neuralops.cluster.{name}"
    assert event.payload["status"] == "unreachable"
    assert watch_clusters() == []  # no second event for the same silence


@pytest.mark.slow
def test_watch_clusters_with_no_cluster_registered_does_nothing(
    prefect_server, sqlite_url: URL
) -> None:
    """Scheduled every minute on every stack: with no cluster it is one query, no task run,
    no event, a Completed run named Skipped that the run history does not record."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId
    from prefect.client.schemas.sorting import TaskRunSort

    from flows.connector import watch_clusters
    from neuralops import runs

    assert clusters.list_clusters() == []
    state = watch_clusters(return_state=True)
    assert state.is_completed() and state.name == "Skipped"
    assert state.message == "no cluster registered: nothing to watch"
    assert state.result() == []
    with get_client(sync_client=True) as client:
        task_runs = client.read_task_runs(
            flow_run_filter=FlowRunFilter(
                id=FlowRunFilterId(any_=[state.state_details.flow_run_id])
            ),
            sort=TaskRunSort.EXPECTED_START_TIME_ASC,
            limit=10,
        )
    assert task_runs == []
    with pytest.raises(NotFound):  # no run of it in the run history
        runs.list_runs("watch-clusters")


@pytest.mark.slow
def test_ensure_work_pool_creates_a_process_pool_once(prefect_server) -> None:
    from prefect.client.orchestration import get_client

    from tasks.clusters import ensure_work_pool

    pool = f"cluster-{_name()}"
    assert ensure_work_pool(pool) is True
    assert ensure_work_pool(pool) is False
    with get_client(sync_client=True) as client:
        assert client.read_work_pool(pool).type == "process"


@pytest.mark.slow
def test_a_real_worker_on_the_cluster_pool_makes_the_cluster_healthy(
    prefect_server, sqlite_url: URL
) -> None:
    """The worker's own heartbeat to the Prefect API is the cluster's: no other traffic
    has to leave the cluster."""
    import os
    import signal
    import subprocess
    import sys

    from prefect.settings import PREFECT_API_URL

    from flows.connector import watch_clusters
    from tasks.clusters import ensure_work_pool

    name = _name()
    _add_cluster(name, status="pending")
    ensure_work_pool(clusters.work_pool_name(name))
    worker = subprocess.Popen(
        [sys.executable, "-m", "prefect", "worker", "start", "--pool",
         clusters.work_pool_name(name), "--type", "process"],
        env={**os.environ, "PREFECT_API_URL": PREFECT_API_URL.value()},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 60
        while clusters.get_cluster(name).status != "healthy":
            assert time.monotonic() < deadline, "the worker never showed up"
            watch_clusters()
            time.sleep(1)
        assert clusters.get_cluster(name).last_heartbeat is not None
        assert name in [c.name for c in clusters.list_clusters() if c.status == "healthy"]
    finally:
        os.killpg(worker.pid, signal.SIGTERM)
        worker.wait(30)
