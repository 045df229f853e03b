"""HTTP API: the run logger, run history per workflow, the registry, health and metrics."""

from __future__ import annotations

import time
import uuid
from datetime import datetime
from typing import Annotated

from fastapi import FastAPI, Path, Query, Request, Response, status
from fastapi.responses import JSONResponse
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Histogram,
    generate_latest,
)
from prometheus_client.core import CounterMetricFamily
from pydantic import BaseModel
from sqlalchemy import text
from sqlalchemy.engine import URL
from sqlalchemy.exc import OperationalError

from neuralops import __version__, registry, runs, signals
from neuralops.db import get_engine
from neuralops.errors import Conflict, InvalidInput, NotFound, Unavailable
from neuralops.settings import get_settings
from neuralops.sources import source_from_settings

HTTP_REQUESTS = Counter(
    "neuralops_http_requests_total", "HTTP requests served", ["method", "route", "status"]
)
HTTP_LATENCY = Histogram(
    "neuralops_http_request_duration_seconds", "HTTP request latency", ["method", "route"]
)
RUNS_LOGGED = Counter("neuralops_runs_logged_total", "Runs logged through the API", ["status"])

WorkflowId = Annotated[
    str, Path(pattern=runs.ID_PATTERN, description="Playbook id or flow name", max_length=128)
]


class SignalCollector:
    """`neuralops_signals_total` and `neuralops_anomaly_total` by rule and method, read from
    insight_signals at scrape time, so signals written by any flow run or process count."""

    def __init__(self, url: URL) -> None:
        self.url = url

    def collect(self):
        stored = CounterMetricFamily(
            "neuralops_signals", "Signals recorded (after dedup)", labels=["rule", "method"]
        )
        seen = CounterMetricFamily(
            "neuralops_anomaly",
            "Anomalies found by detection, repeats folded into a signal included",
            labels=["rule", "method"],
        )
        try:
            counts = signals.signal_counts(url=self.url)
        except OperationalError:
            counts = []  # /healthz reports the database; the scrape still answers
        for rule, method, n_signals, n_anomalies in counts:
            stored.add_metric([rule, method], n_signals)
            seen.add_metric([rule, method], n_anomalies)
        yield stored
        yield seen


class RunLogged(BaseModel):
    run_id: str


class Health(BaseModel):
    status: str
    version: str
    database: str


def create_app(database_url: URL | None = None) -> FastAPI:
    """The ASGI app; ``database_url`` overrides the settings (tests, embedding)."""
    settings = get_settings()
    url = database_url or settings.database_url
    app = FastAPI(
        title="NeuralOps API",
        version=__version__,
        description=(
            "Run history, the playbook registry, anomaly signals and ad-hoc analysis, and the "
            "health of a NeuralOps installation."
        ),
    )

    @app.middleware("http")
    async def limit_and_measure(request: Request, call_next):
        length = request.headers.get("content-length")
        if length and length.isdigit() and int(length) > settings.api_max_body_bytes:
            return JSONResponse(
                {"detail": f"body of {length} bytes exceeds {settings.api_max_body_bytes}"},
                status_code=status.HTTP_413_CONTENT_TOO_LARGE,
            )
        started = time.perf_counter()
        response = await call_next(request)
        route = getattr(request.scope.get("route"), "path", "unmatched")
        HTTP_REQUESTS.labels(request.method, route, str(response.status_code)).inc()
        HTTP_LATENCY.labels(request.method, route).observe(time.perf_counter() - started)
        return response

    @app.exception_handler(NotFound)
    async def not_found(_: Request, exc: NotFound) -> JSONResponse:
        return JSONResponse({"detail": str(exc)}, status_code=status.HTTP_404_NOT_FOUND)

    @app.exception_handler(InvalidInput)
    async def invalid(_: Request, exc: InvalidInput) -> JSONResponse:
        detail = [{"loc": p.field.split("."), "msg": p.message} for p in exc.problems]
        return JSONResponse(
            {"detail": detail or str(exc)}, status_code=status.HTTP_422_UNPROCESSABLE_CONTENT
        )

    @app.exception_handler(Conflict)
    async def conflict(_: Request, exc: Conflict) -> JSONResponse:
        return JSONResponse({"detail": str(exc)}, status_code=status.HTTP_409_CONFLICT)

    @app.exception_handler(Unavailable)
    async def upstream_down(_: Request, exc: Unavailable) -> JSONResponse:
        return JSONResponse({"detail": str(exc)}, status_code=status.HTTP_503_SERVICE_UNAVAILABLE)

    @app.exception_handler(OperationalError)
    async def database_down(_: Request, exc: OperationalError) -> JSONResponse:
        # Never echo the driver's message: it can carry the DSN.
        return JSONResponse(
            {"detail": "database unavailable; retry later"},
            status_code=status.HTTP_503_SERVICE_UNAVAILABLE,
        )

    @app.get("/healthz", response_model=Health, tags=["ops"])
    def healthz() -> Health | JSONResponse:
        try:
            with get_engine(url).connect() as conn:
                conn.execute(text("SELECT 1"))
        except OperationalError:
            body = Health(status="degraded", version=__version__, database="unreachable")
            return JSONResponse(body.model_dump(), status_code=503)
        return Health(status="ok", version=__version__, database="ok")

    signal_metrics = CollectorRegistry(auto_describe=False)
    signal_metrics.register(SignalCollector(url))

    @app.get("/metrics", tags=["ops"], response_class=Response)
    def metrics() -> Response:
        body = generate_latest() + generate_latest(signal_metrics)
        return Response(body, media_type=CONTENT_TYPE_LATEST)

    @app.post("/runs", status_code=201, response_model=RunLogged, tags=["runs"])
    def post_run(run: runs.RunIn) -> RunLogged:
        """Log a run (the run logger). Logging the same run_id again updates it."""
        run_id = runs.log_run(run, url=url)
        RUNS_LOGGED.labels(run.status).inc()
        return RunLogged(run_id=run_id)

    @app.get("/workflows/{workflow_id}", response_model=registry.WorkflowInfo, tags=["workflows"])
    def get_workflow(workflow_id: WorkflowId) -> registry.WorkflowInfo:
        return registry.describe_workflow(workflow_id, url=url)

    @app.get("/workflows/{workflow_id}/runs", response_model=runs.RunPage, tags=["workflows"])
    def get_workflow_runs(
        workflow_id: WorkflowId,
        limit: Annotated[int, Query(ge=1, le=500)] = 50,
        page: Annotated[int, Query(ge=1, le=1_000_000)] = 1,
    ) -> runs.RunPage:
        """The workflow's runs, newest first, a page at a time."""
        return runs.list_runs(workflow_id, limit=limit, page=page, url=url)

    @app.get("/playbooks", response_model=list[registry.WorkflowInfo], tags=["workflows"])
    def list_playbooks() -> list[registry.WorkflowInfo]:
        return registry.list_playbooks(url=url)

    @app.post("/analyze", response_model=signals.AnalyzeResult, tags=["signals"])
    def post_analyze(request: signals.AnalyzeRequest) -> signals.AnalyzeResult:
        """Score a query now and explain it; records a signal when it is anomalous.
        503 when the metric source does not answer."""
        source = source_from_settings(settings)
        try:
            return signals.analyze(request, source, url=url)
        finally:
            source.close()

    @app.get("/signals", response_model=list[signals.Signal], tags=["signals"])
    def get_signals(
        since: Annotated[
            datetime | None, Query(description="ISO-8601; newer signals only.")
        ] = None,
        rule: Annotated[str | None, Query(pattern=signals.RULE_NAME_PATTERN)] = None,
        limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    ) -> list[signals.Signal]:
        """Recorded signals, newest first."""
        return signals.list_signals(since=since, rule=rule, limit=limit, url=url)

    @app.get("/signals/{signal_id}", response_model=signals.Signal, tags=["signals"])
    def get_signal(signal_id: uuid.UUID) -> signals.Signal:
        return signals.get_signal(signal_id, url=url)

    return app
