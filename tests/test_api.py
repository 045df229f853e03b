"""The HTTP API against both databases, through FastAPI's test client."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from fastapi.testclient import TestClient
from sqlalchemy.engine import URL

from neuralops import registry
from neuralops.api import create_app


@pytest.fixture
def client(database_url: URL) -> TestClient:
    registry.add_playbooks(registry.load_manifests([registry.catalogue_dir()]))
    return TestClient(create_app(database_url))


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
    response = TestClient(create_app(unreachable)).get("/healthz")
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
