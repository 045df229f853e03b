"""HTTP API: the run logger, run history per workflow, the registry, signals and ad-hoc
analysis, playbook recommendations, health and metrics."""

from __future__ import annotations

import logging
import threading
import time
import uuid
from datetime import datetime
from typing import Annotated, Any

from fastapi import Body, FastAPI, HTTPException, Path, Query, Request, Response, status
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Histogram,
    generate_latest,
)
from prometheus_client.core import CounterMetricFamily
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    model_validator,
)
from sqlalchemy import text
from sqlalchemy.engine import URL
from sqlalchemy.exc import OperationalError

from neuralops import __version__, clusters, registry, runs, signals
from neuralops.db import get_engine
from neuralops.errors import ConfigError, Conflict, InvalidInput, NotFound, Unavailable
from neuralops.incident import Incident
from neuralops.recommend import (
    MAX_TOP,
    Recommender,
    RecommendResult,
    incident_from_signal,
    recommender_from_settings,
)
from neuralops.registry import registered_manifests
from neuralops.settings import get_settings
from neuralops.sources import source_from_settings
from neuralops.vectorstore import store_from_settings

logger = logging.getLogger("neuralops.api")

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


class RecommendRequest(BaseModel):
    """What to recommend for: a recorded signal or an incident, not both."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [
                {"signal_id": "5f29b1e2-9bb5-4016-8919-175230f7ee84", "top": 3},
                {
                    "incident": {
                        "alert": "KubePodOOMKilled",
                        "summary": "payments-api pods OOMKilled 12 times in 15m",
                        "labels": {"namespace": "payments", "service": "payments-api"},
                    }
                },
            ]
        },
    )

    signal_id: uuid.UUID | None = Field(
        None, description="A recorded signal (GET /signals): its rule, hint and labels."
    )
    incident: Incident | None = Field(
        None, description="An incident described by hand: alert, summary, labels, symptoms."
    )
    top: int = Field(5, ge=1, le=MAX_TOP, description="How many playbooks, best first.")

    @model_validator(mode="after")
    def _exactly_one(self) -> RecommendRequest:
        if (self.signal_id is None) == (self.incident is None):
            raise ValueError("give exactly one of signal_id or incident")
        return self


class _Recommenders:
    """The embedding model, loaded once per app (seconds); the recommender around it is
    rebuilt per request (milliseconds), so newly vectorized runs and newly registered
    playbooks count at once: a LanceDB table opened once never sees other writers' rows."""

    def __init__(self, settings: Any, url: URL) -> None:
        self.settings, self.url = settings, url
        self._embedder: Any = None
        self._lock = threading.Lock()

    def get(self) -> Recommender:
        with self._lock:
            if self._embedder is None:
                # Raises ConfigError (no playbooks) before loading anything.
                built, warning = recommender_from_settings(self.settings, url=self.url)
                if warning:
                    logger.warning(warning)
                getattr(built.embedder, "model", None)  # MiniLM loads lazily: here, once
                self._embedder = built.embedder
                return built
        manifests = registered_manifests(url=self.url)
        if not manifests:  # the registry was emptied since: the same ConfigError
            recommender_from_settings(self.settings, url=self.url)
        return Recommender(store_from_settings(self.settings), self._embedder, manifests)


class BodyLimit:
    """413 for a request body over ``max_bytes``, whether it declares its length or streams
    it in chunks without one. The body is read here (at most ``max_bytes``) and replayed to
    the app, so nothing downstream ever sees an oversized one."""

    def __init__(self, app: Any, max_bytes: int) -> None:
        self.app, self.max_bytes = app, max_bytes

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        length = dict(scope["headers"]).get(b"content-length", b"")
        if length.isdigit() and int(length) > self.max_bytes:
            await self._refuse(scope, receive, send, int(length))
            return
        chunks, size, more = [], 0, True
        while more:
            message = await receive()
            if message["type"] != "http.request":  # the client went away
                await self.app(scope, _replay([message], receive), send)
                return
            chunks.append(message.get("body", b""))
            size += len(chunks[-1])
            if size > self.max_bytes:
                await self._refuse(scope, receive, send, None)
                return
            more = message.get("more_body", False)
        body = {"type": "http.request", "body": b"".join(chunks), "more_body": False}
        await self.app(scope, _replay([body], receive), send)

    async def _refuse(self, scope: dict, receive: Any, send: Any, length: int | None) -> None:
        size = f"of {length} bytes" if length is not None else "(streamed)"
        response = JSONResponse(
            {"detail": f"request body {size} exceeds the limit of {self.max_bytes} bytes"},
            status_code=status.HTTP_413_CONTENT_TOO_LARGE,
            headers={"Connection": "close"},
        )
        await response(scope, receive, send)


def _replay(messages: list[dict], receive: Any) -> Any:
    async def replayed() -> dict:
        return messages.pop(0) if messages else await receive()

    return replayed


class RunLogged(BaseModel):
    run_id: str


class Health(BaseModel):
    status: str
    version: str
    database: str


class ClusterRegistration(BaseModel):
    """A connector registering its cluster; the Vault token is checked, never stored."""

    model_config = ConfigDict(extra="forbid", hide_input_in_errors=True)

    name: str = Field(
        pattern=clusters.CLUSTER_NAME, description="DNS label, at most 40 characters."
    )
    vault_token: SecretStr = Field(description="Vault token proving the right to register.")
    labels: dict[str, runs.NoNulStr] = Field(default_factory=dict)  # PostgreSQL stores no NUL
    prometheus_url: runs.NoNulStr | None = Field(None, description="The cluster's own Prometheus.")


class ClusterHeartbeat(BaseModel):
    model_config = ConfigDict(extra="forbid")

    cluster: str = Field(pattern=clusters.CLUSTER_NAME, description="The registered cluster.")


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
    async def measure(request: Request, call_next):
        started = time.perf_counter()
        response = await call_next(request)
        route = getattr(request.scope.get("route"), "path", "unmatched")
        HTTP_REQUESTS.labels(request.method, route, str(response.status_code)).inc()
        HTTP_LATENCY.labels(request.method, route).observe(time.perf_counter() - started)
        return response

    app.add_middleware(BodyLimit, max_bytes=settings.api_max_body_bytes)  # outermost

    @app.exception_handler(RequestValidationError)
    async def unprocessable(_: Request, exc: RequestValidationError) -> JSONResponse:
        # FastAPI's own 422 echoes each bad input: megabytes of it for an oversized field,
        # a secret for a misplaced one, and a 500 for a NaN it cannot encode. Name the field.
        detail = [
            {"type": e.get("type"), "loc": list(e.get("loc", ())), "msg": e.get("msg")}
            for e in exc.errors()
        ]
        return JSONResponse({"detail": detail}, status_code=status.HTTP_422_UNPROCESSABLE_CONTENT)

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

    @app.exception_handler(ConfigError)
    async def misconfigured(_: Request, exc: ConfigError) -> JSONResponse:
        # Not the request's fault, and fixed on the server (e.g. register the playbooks).
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

    recommenders = _Recommenders(settings, url)

    @app.post(
        "/recommend",
        response_model=RecommendResult,
        tags=["recommend"],
        responses={
            200: {"description": "The ranked playbooks, or none and the reason."},
            404: {"description": "The signal does not exist."},
            422: {"description": "Neither or both of signal_id and incident, or an empty one."},
            503: {"description": "No playbooks are registered, or a store is unreachable."},
        },
    )
    def post_recommend(request: RecommendRequest) -> RecommendResult:
        """The registered playbooks that fit this incident, best first: score, success rate
        on similar past incidents, the runs that justify it, and its safety mode. Playbooks
        contraindicated for the incident's symptoms are listed in ``excluded``, never ranked;
        an empty list comes with the ``reason``."""
        if request.signal_id is not None:
            incident = incident_from_signal(signals.get_signal(request.signal_id, url=url))
        else:
            incident = request.incident
        return recommenders.get().recommend(incident, top=request.top)

    @app.get("/clusters", response_model=list[clusters.ClusterOut], tags=["clusters"])
    def get_clusters() -> list[clusters.ClusterOut]:
        """Registered clusters: labels, work pool, last heartbeat and status."""
        return clusters.list_clusters(url=url)

    @app.post(
        "/register",
        status_code=201,
        response_model=clusters.ClusterOut,
        tags=["clusters"],
        responses={
            401: {"description": "Vault refused the token (invalid, expired or revoked)."},
            422: {"description": "Bad name, labels or Prometheus URL."},
            503: {"description": "Vault unreachable, or NeuralOps' own Vault access is broken."},
        },
        openapi_extra={
            "requestBody": {
                "required": True,
                "content": {
                    "application/json": {"schema": ClusterRegistration.model_json_schema()}
                },
            }
        },
    )
    def post_register(raw: Annotated[dict[str, Any], Body()]) -> clusters.ClusterOut:
        """Register a cluster (again: labels updated, credential rotated). The token is
        exchanged for the cluster's own credential in Vault and never stored or echoed."""
        # Validated here, not by FastAPI, whose 422 would echo the body (the token with it).
        try:
            body = ClusterRegistration.model_validate(raw)
        except ValidationError as exc:
            raise InvalidInput.from_validation(exc, "register") from None
        try:
            return clusters.register(
                body.name,
                vault_token=body.vault_token.get_secret_value(),
                labels=body.labels,
                prometheus_url=body.prometheus_url,
                settings=settings,
                url=url,
                actor="api",
            )
        except clusters.TokenRefused as exc:
            raise HTTPException(
                status.HTTP_401_UNAUTHORIZED,
                detail=str(exc),
                headers={"WWW-Authenticate": "Vault"},
            ) from None

    @app.put(
        "/healthz",
        response_model=clusters.ClusterOut,
        tags=["clusters"],
        responses={404: {"description": "The cluster is not registered."}},
    )
    def put_healthz(body: ClusterHeartbeat) -> clusters.ClusterOut:
        """A connector's heartbeat (for connectors that run outside Prefect)."""
        return clusters.heartbeat(body.cluster, url=url)

    return app
