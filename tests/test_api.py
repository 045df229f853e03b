"""The HTTP API against both databases, through FastAPI's test client."""

from __future__ import annotations

import socket
import time
import uuid
from datetime import UTC, datetime, timedelta

import httpx
import pytest
from conftest import api_headers, api_token, serve_api
from fastapi.testclient import TestClient
from sqlalchemy.engine import URL

from neuralops import api_auth, registry
from neuralops.api import create_app
from neuralops.errors import ConfigError
from neuralops.settings import get_settings


@pytest.fixture
def client(database_url: URL) -> TestClient:
    registry.add_playbooks(registry.load_manifests([registry.catalogue_dir()]))
    return TestClient(create_app(database_url), headers=api_headers())


def _run(run_id: str, **fields) -> dict:
    return {
        "wpk_id": "restart-deployment",
        "run_id": run_id,
        "status": "succeeded",
        "duration_ms": 1500,
        **fields,
    }


def test_post_runs_then_page_through_them(client: TestClient) -> None:
    base = datetime(2026, 11, 20, tzinfo=UTC)
    for n in range(7):
        created = (base + timedelta(minutes=n)).isoformat()
        response = client.post("/runs", json=_run(f"r-{n}", created_at=created))
        assert response.status_code == 201, response.text
        assert response.json() == {"run_id": f"r-{n}"}

    page = client.get("/workflows/restart-deployment/runs", params={"limit": 3}).json()
    assert [r["run_id"] for r in page["items"]] == ["r-6", "r-5", "r-4"]
    assert set(page["items"][0]) == {"run_id", "status", "duration_ms", "created_at"}
    assert (page["total"], page["pages"], page["page"], page["next_page"]) == (7, 3, 1, 2)
    last = client.get("/workflows/restart-deployment/runs?limit=3&page=3").json()
    assert [r["run_id"] for r in last["items"]] == ["r-0"]
    assert last["next_page"] is None


def test_workflow_includes_latest_run_id(client: TestClient) -> None:
    client.post("/runs", json=_run("r-latest"))
    body = client.get("/workflows/restart-deployment").json()
    assert (body["kind"], body["latest_run_id"], body["run_count"]) == ("playbook", "r-latest", 1)


def test_posting_the_same_run_twice_updates(client: TestClient) -> None:
    client.post("/runs", json=_run("r-1", status="running", duration_ms=0))
    client.post("/runs", json=_run("r-1", status="failed", duration_ms=9))
    [item] = client.get("/workflows/restart-deployment/runs").json()["items"]
    assert (item["status"], item["duration_ms"]) == ("failed", 9)


@pytest.mark.parametrize(
    ("payload", "field"),
    [
        (_run("r-1", status="exploded"), ["body", "status"]),
        (_run("r-1", duration_ms=-5), ["body", "duration_ms"]),
        ({"run_id": "r-1", "status": "failed", "duration_ms": 1}, ["body", "wpk_id"]),
    ],
)
def test_invalid_run_is_422_naming_the_field(client: TestClient, payload, field) -> None:
    response = client.post("/runs", json=payload)
    assert response.status_code == 422
    assert field in [error["loc"] for error in response.json()["detail"]]
    assert client.get("/workflows/restart-deployment").json()["run_count"] == 0


@pytest.mark.parametrize(
    ("query", "field"), [("limit=0", "limit"), ("limit=501", "limit"), ("page=0", "page")]
)
def test_bad_paging_is_422_naming_the_parameter(client: TestClient, query: str, field) -> None:
    response = client.get(f"/workflows/restart-deployment/runs?{query}")
    assert response.status_code == 422
    assert ["query", field] in [error["loc"] for error in response.json()["detail"]]


@pytest.mark.parametrize("path", ["/workflows/nope", "/workflows/nope/runs"])
def test_unknown_workflow_is_404(client: TestClient, path: str) -> None:
    response = client.get(path)
    assert response.status_code == 404
    assert "nope" in response.json()["detail"]


def test_oversized_body_is_413(client: TestClient) -> None:
    response = client.post(
        "/runs",
        content=b"{" + b" " * (3 * 1024 * 1024) + b"}",
        headers={"content-type": "application/json"},
    )
    assert response.status_code == 413


def test_healthz_reports_the_database(client: TestClient) -> None:
    assert client.get("/healthz").json()["database"] == "ok"


def test_healthz_is_503_when_the_database_is_down(sqlite_url: URL, tmp_path) -> None:
    unreachable = URL.create(
        "postgresql+psycopg", username="nobody", host="127.0.0.1", port=1, database="x"
    )
    response = TestClient(create_app(unreachable)).get("/healthz")  # open: no token
    assert response.status_code == 503
    assert response.json()["database"] == "unreachable"


def test_metrics_count_requests(client: TestClient) -> None:
    client.get("/workflows/restart-deployment")
    text = client.get("/metrics").text
    assert (
        'neuralops_http_requests_total{method="GET",route="/workflows/{workflow_id}",status="200"}'
        in text
    )


def test_playbooks_lists_the_registry(client: TestClient) -> None:
    ids = [p["id"] for p in client.get("/playbooks").json()]
    assert "restart-deployment" in ids and ids == sorted(ids)


def test_openapi_documents_the_run_logger(client: TestClient) -> None:
    spec = client.get("/openapi.json").json()
    assert "/runs" in spec["paths"] and "/workflows/{workflow_id}/runs" in spec["paths"]


# --- authentication (issue 15) -----------------------------------------------------------------

# Each operation, a request that reaches it, and the scope it needs.
SCOPED = [
    ("POST", "/runs", "runs:write"),
    ("GET", "/workflows/restart-deployment", "runs:read"),
    ("GET", "/workflows/restart-deployment/runs", "runs:read"),
    ("GET", "/playbooks", "runs:read"),
    ("GET", "/signals", "signals:read"),
    ("GET", f"/signals/{uuid.UUID(int=1)}", "signals:read"),
    ("POST", "/analyze", "signals:write"),
    ("POST", "/probe", "signals:write"),
    ("POST", "/recommend", "recommend"),
    ("POST", "/alerts", "alerts:write"),
    ("GET", "/clusters", "clusters:admin"),
    ("POST", "/register", "clusters:admin"),
]


def test_scopes_cover_every_authenticated_operation(client: TestClient) -> None:
    spec = client.get("/openapi.json").json()
    operations = {(m.upper(), p) for p, ops in spec["paths"].items() for m in ops}
    concrete = {(m, p.replace("restart-deployment", "{workflow_id}")) for m, p, _ in SCOPED}
    concrete = {
        (m, "/signals/{signal_id}" if p.startswith("/signals/") else p) for m, p in concrete
    }
    open_ = {("GET", "/healthz"), ("GET", "/metrics"), ("PUT", "/healthz")}
    assert operations == concrete | open_
    assert set(api_auth.SCOPES) == {scope for _, _, scope in SCOPED}


@pytest.mark.parametrize(("method", "path", "scope"), SCOPED)
def test_no_token_is_401_and_a_token_without_the_scope_is_403(
    sqlite_url: URL, method: str, path: str, scope: str
) -> None:
    app = create_app(sqlite_url)
    anonymous = TestClient(app).request(method, path, json={})
    assert anonymous.status_code == 401
    assert anonymous.headers["www-authenticate"] == 'Bearer realm="neuralops-api"'
    assert "Bearer" in anonymous.json()["detail"] and "\n" not in anonymous.json()["detail"]

    others = [s for s in api_auth.SCOPES if s != scope]
    token = api_token(*others)
    headers = {"Authorization": f"Bearer {token}"}
    refused = TestClient(app).request(method, path, json={}, headers=headers)
    assert refused.status_code == 403
    assert f"'{scope}'" in refused.json()["detail"] and token not in refused.text
    assert f'scope="{scope}"' in refused.headers["www-authenticate"]

    allowed = TestClient(app, headers=api_headers(scope)).request(method, path, json={})
    assert allowed.status_code not in (401, 403), allowed.text


def test_a_bad_token_is_401_with_a_one_line_reason_and_never_echoed(sqlite_url: URL) -> None:
    client = TestClient(create_app(sqlite_url))
    garbage = "eyJhbGciOiJFUzI1NiJ9.not-a-payload.sig"
    for header in (f"Bearer {garbage}", "Bearer", f"Basic {garbage}", garbage):
        response = client.get("/signals", headers={"Authorization": header})
        assert response.status_code == 401, header
        detail = response.json()["detail"]
        assert isinstance(detail, str) and "\n" not in detail and garbage not in response.text
        assert "Traceback" not in response.text
    bad = client.get("/signals", headers={"Authorization": f"Bearer {garbage}"})
    assert bad.headers["www-authenticate"].endswith('error="invalid_token"')


def test_the_subject_is_the_runs_provenance(client: TestClient, database_url: URL) -> None:
    from neuralops.db import session_scope
    from neuralops.db.models import WorkflowRun

    headers = api_headers("runs:write", subject="ci-logger@example.com")
    assert client.post("/runs", json=_run("r-who"), headers=headers).status_code == 201
    with session_scope(database_url) as session:
        row = session.query(WorkflowRun).filter_by(run_id="r-who").one()
        assert row.provenance == "api:ci-logger@example.com"


def test_openapi_declares_the_bearer_schemes(client: TestClient) -> None:
    spec = client.get("/openapi.json").json()
    schemes = spec["components"]["securitySchemes"]
    assert schemes["ApiToken"] == {**schemes["ApiToken"], "type": "http", "scheme": "bearer"}
    assert "runs:write" in schemes["ApiToken"]["description"]
    assert spec["paths"]["/runs"]["post"]["security"] == [{"ApiToken": []}]
    assert spec["paths"]["/healthz"]["put"]["security"] == [{"HeartbeatKey": []}]
    assert "security" not in spec["paths"]["/healthz"]["get"]
    assert "security" not in spec["paths"]["/metrics"]["get"]


@pytest.mark.parametrize(
    "since", ["0001-01-01T00:00:00+14:00", "9999-12-31T23:59:59-14:00", "not-a-time"]
)
def test_a_since_with_no_utc_equivalent_is_422_naming_it(client: TestClient, since: str) -> None:
    response = client.get("/signals", params={"since": since})
    assert response.status_code == 422, response.text
    assert ["query", "since"] in [e["loc"] for e in response.json()["detail"]]


def test_extreme_but_valid_since_answers(client: TestClient) -> None:
    for since in ("0001-01-01T00:00:00Z", "0001-01-01T00:00:00-01:00", "9999-12-31T00:00:00"):
        assert client.get("/signals", params={"since": since}).status_code == 200, since


def test_signals_filter_by_an_alert_name_as_posted_to_alerts(client: TestClient) -> None:
    """POST /alerts stores the alertname verbatim as the rule (KubePodCrashLooping): ?rule=
    takes it as well as a detection rule's lower-case name, and matches exactly."""
    from neuralops import signals

    base = datetime(2026, 11, 23, 12, 0, tzinfo=UTC)
    for rule, method in (("KubePodCrashLooping", "alertmanager"), ("oom-kill", "zscore")):
        signals.record_signals(
            [
                signals.SignalIn(
                    rule=rule,
                    query="q",
                    labels={"pod": "p"},
                    value=1.0,
                    score=0.9,
                    z=None,
                    method=method,
                    hint="h",
                    window_start=base,
                    window_end=base + timedelta(minutes=1),
                    fingerprint=signals.fingerprint(rule, {"pod": "p"}),
                )
            ],
            {},
        )
    for rule in ("KubePodCrashLooping", "oom-kill"):
        response = client.get("/signals", params={"rule": rule})
        assert response.status_code == 200, response.text
        assert [s["rule"] for s in response.json()] == [rule]
    assert client.get("/signals", params={"rule": "kubepodcrashlooping"}).json() == []
    for bad in ("Kube-Pod", "two words", "[bold]", "x" * 129):
        response = client.get("/signals", params={"rule": bad})
        assert response.status_code == 422, bad
        assert ["query", "rule"] in [e["loc"] for e in response.json()["detail"]]


# --- the server's limits: body read deadline, concurrency cap ----------------------------------


def _partial_post(base: str, declared: int = 2_000_000) -> socket.socket:
    """A POST /runs whose body never finishes: headers, then 12 of ``declared`` bytes."""
    host, port = base.removeprefix("http://").split(":")
    sock = socket.create_connection((host, int(port)), timeout=15)
    head = (
        f"POST /runs HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\n"
        f"Authorization: Bearer {api_token('runs:write')}\r\n"
        f"Content-Length: {declared}\r\n\r\n"
    )
    sock.sendall(head.encode() + b'{"wpk_id": "')
    return sock


def _until_closed(sock: socket.socket) -> bytes:
    data = b""
    while chunk := sock.recv(65536):
        data += chunk
    sock.close()
    return data


def test_an_unfinished_body_is_answered_408_and_closed_within_the_timeout(
    sqlite_url: URL, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("NEURALOPS_API_BODY_TIMEOUT_S", "1")
    get_settings.cache_clear()
    with serve_api(create_app(sqlite_url)) as base:
        sock = _partial_post(base)
        started = time.monotonic()
        answer = _until_closed(sock)  # returns only once the server closes the connection
        took = time.monotonic() - started
        assert answer.startswith(b"HTTP/1.1 408"), answer[:200]
        assert b"did not arrive within 1 s" in answer
        assert 0.8 < took < 5, took
        # a whole body still goes through
        ok = httpx.post(f"{base}/runs", json=_run("r-fast"), headers=api_headers("runs:write"))
        assert ok.status_code == 201, ok.text


def test_connections_beyond_the_cap_are_503_until_the_slow_ones_time_out(
    sqlite_url: URL, monkeypatch: pytest.MonkeyPatch
) -> None:
    """uvicorn's limit_concurrency counts the connection asking too: a cap of 3 serves 2."""
    monkeypatch.setenv("NEURALOPS_API_MAX_CONCURRENCY", "3")
    monkeypatch.setenv("NEURALOPS_API_BODY_TIMEOUT_S", "2")
    get_settings.cache_clear()
    with serve_api(create_app(sqlite_url)) as base:
        held = []
        for _ in range(2):
            held.append(_partial_post(base))
            time.sleep(0.2)  # admitted, its body awaited
        for sock in held:  # both still waiting on their bodies
            sock.settimeout(0.2)
            with pytest.raises(TimeoutError):
                sock.recv(1)
            sock.settimeout(15)
        turned_away = httpx.get(f"{base}/signals", headers=api_headers("signals:read"))
        assert turned_away.status_code == 503
        answers = [_until_closed(sock) for sock in held]  # each ends with the deadline
        assert all(a.startswith(b"HTTP/1.1 408") for a in answers), answers
        again = httpx.get(f"{base}/signals", headers=api_headers("signals:read"))
        assert again.status_code == 200


# --- api_auth's pure functions ------------------------------------------------------------------


def test_scopes_come_from_scope_and_scp() -> None:
    assert api_auth.scopes_of({"scope": "runs:write  recommend"}) == {"runs:write", "recommend"}
    assert api_auth.scopes_of({"scp": ["signals:read", 7]}) == {"signals:read"}
    assert api_auth.scopes_of({"scope": "a", "scp": "b c"}) == {"a", "b", "c"}
    assert api_auth.scopes_of({"scope": 5}) == frozenset()


@pytest.mark.parametrize(
    ("header", "token"),
    [
        ("Bearer abc", "abc"),
        ("bearer  abc ", "abc"),
        ("Basic abc", None),
        ("Bearer", None),
        (None, None),
    ],
)
def test_bearer_token(header: str | None, token: str | None) -> None:
    assert api_auth.bearer_token(header) == token


@pytest.mark.parametrize(
    ("host", "loopback"),
    [
        ("127.0.0.1", True),
        ("127.5.0.1", True),
        ("::1", True),
        ("[::1]", True),
        ("localhost", True),
        ("0.0.0.0", False),
        ("::", False),
        ("10.0.0.7", False),
        ("api.example.com", False),
    ],
)
def test_only_loopback_without_configured_auth(host: str, loopback: bool, tmp_path) -> None:
    settings = get_settings()
    assert api_auth.is_loopback(host) is loopback
    if loopback:
        api_auth.check_bind_host(host, settings)
    else:
        with pytest.raises(ConfigError, match="NEURALOPS_API_PUBLIC_KEY"):
            api_auth.check_bind_host(host, settings)
    pem = tmp_path / "idp.pem"
    pem.write_text("unused")
    api_auth.check_bind_host(host, settings.model_copy(update={"api_public_key": pem}))


def test_verify_api_token_gives_the_principal() -> None:
    settings = get_settings()
    keys = api_auth.keys_from_settings(settings)
    token = api_token("runs:write", "recommend", subject="svc@example.com")
    principal = api_auth.verify_api_token(token, keys=keys)
    assert principal.subject == "svc@example.com" and principal.dev
    assert principal.scopes == {"runs:write", "recommend"}
    assert api_auth.require_scope(principal, "recommend") is principal
    with pytest.raises(api_auth.AuthRefused) as refused:
        api_auth.require_scope(principal, "clusters:admin")
    assert refused.value.status == 403 and refused.value.scope == "clusters:admin"
    with pytest.raises(api_auth.AuthRefused) as missing:
        api_auth.verify_api_token(None, keys=keys)
    assert (missing.value.status, missing.value.reason) == (401, "missing")


def test_configured_keys_replace_the_dev_key(tmp_path, monkeypatch: pytest.MonkeyPatch) -> None:
    from neuralops.approval import dev_keypair

    _, other_public = dev_keypair(tmp_path / "idp")  # another key pair, as an IdP's
    monkeypatch.setenv("NEURALOPS_API_PUBLIC_KEY", str(other_public))
    monkeypatch.setenv("NEURALOPS_API_ISSUER", "https://idp.example")
    get_settings.cache_clear()
    keys = api_auth.keys_from_settings(get_settings())
    assert not keys.dev and keys.issuer == "https://idp.example"
    assert keys.audience == "neuralops-api"
    with pytest.raises(api_auth.AuthRefused, match="bad_signature"):
        api_auth.verify_api_token(api_token("runs:read"), keys=keys)  # the dev key's
    monkeypatch.setenv("NEURALOPS_API_PUBLIC_KEY", str(tmp_path / "missing.pem"))
    get_settings.cache_clear()
    with pytest.raises(ConfigError, match="NEURALOPS_API_PUBLIC_KEY"):
        create_app()
    monkeypatch.setenv("NEURALOPS_API_JWKS_URL", "https://idp.example/jwks")
    get_settings.cache_clear()
    with pytest.raises(ConfigError, match="not both"):
        api_auth.keys_from_settings(get_settings())
