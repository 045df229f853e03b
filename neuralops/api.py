"""HTTP API: the run logger, run history per workflow, the registry, signals and ad-hoc
analysis, playbook recommendations, health and metrics.

Every operation but ``GET /healthz`` and ``GET /metrics`` needs a bearer token with the
operation's scope, or (``PUT /healthz``) the cluster's heartbeat key: see
:mod:`neuralops.api_auth`."""

from __future__ import annotations

import asyncio
import logging
import threading
import time
import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Annotated, Any

from fastapi import (
    Body,
    Depends,
    FastAPI,
    HTTPException,
    Path,
    Query,
    Request,
    Response,
    Security,
    status,
)
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi.routing import APIRoute
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Histogram,
    generate_latest,
)
from prometheus_client.core import CounterMetricFamily
from pydantic import (
    AfterValidator,
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
from starlette.concurrency import run_in_threadpool

from neuralops import __version__, api_auth, clusters, probe, registry, runs, signals
from neuralops.api_auth import ApiPrincipal, AuthRefused
from neuralops.db import get_engine
from neuralops.errors import ConfigError, Conflict, InvalidInput, NotFound, Unavailable
from neuralops.incident_model import Incident
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


def _in_utc(value: datetime) -> datetime:
    """A time that has a UTC equivalent: ``0001-01-01T00:00:00+14:00`` has none (it is before
    year 1 in UTC), and comparing it with stored times would fail deep in the driver."""
    value = value if value.tzinfo else value.replace(tzinfo=UTC)  # naive means UTC
    try:
        return value.astimezone(UTC)
    except OverflowError:
        raise ValueError(
            "out of range: the time must fall between the years 1 and 9999 in UTC"
        ) from None


UtcDatetime = Annotated[datetime, AfterValidator(_in_utc)]
HEARTBEAT_REALM = "neuralops-heartbeat"
# GET /signals?rule=: a detection rule's name (lower-case, signals.RULE_NAME_PATTERN) or an
# alert's name as POST /alerts stores it, verbatim (Prometheus alert names are
# [a-zA-Z_][a-zA-Z0-9_]*, e.g. KubePodCrashLooping). Matched exactly; anything else is a 422.
RULE_FILTER_PATTERN = rf"^(?:{signals.RULE_NAME_PATTERN[1:-1]}|[a-zA-Z_][a-zA-Z0-9_]{{0,127}})$"


def auth_responses(scope: str | None = None) -> dict[int | str, dict[str, Any]]:
    """The 401 (and, for a scope, 403) an authenticated operation documents."""
    found: dict[int | str, dict[str, Any]] = {
        401: {"description": "No credential, or a bad one (the reason in `detail`)."}
    }
    if scope:
        found[403] = {"description": f"The token lacks the scope `{scope}`."}
    return found


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


def _trusted_writers() -> frozenset[str]:
    return frozenset(get_settings().trusted)


class _Recommenders:
    """The app's recommender, built at the first request (loading the model takes seconds)
    and held: its store reads the latest version at every search, so runs the hourly
    vectorize adds count at once, and the indexes are loaded into the process's LanceDB
    cache before the first search. Another is built around the same model and store when
    the registered playbooks or the trusted writers (the current settings') change. Built
    per request, opening the store and indexing the catalogue cost ~20 ms of every request
    at 1M runs (reports/recommend.md)."""

    def __init__(self, settings: Any, url: URL) -> None:
        self.settings, self.url = settings, url
        self._held: Recommender | None = None
        self._lock = threading.Lock()

    def get(self) -> Recommender:
        manifests = sorted(registered_manifests(url=self.url), key=lambda m: m.id)
        with self._lock:
            held = self._held
            if held is None:
                # Raises ConfigError (no playbooks) before loading anything.
                held, warning = recommender_from_settings(
                    self.settings, url=self.url, read_latest=True
                )
                if warning:
                    logger.warning(warning)
                getattr(held.embedder, "model", None)  # MiniLM loads lazily: here, once
                held.store.prewarm()
            elif not manifests:  # the registry was emptied since: the same ConfigError
                recommender_from_settings(self.settings, url=self.url)
            elif manifests != held.catalogue.manifests or held.trusted != _trusted_writers():
                held = Recommender(held.store, held.embedder, manifests, trusted=_trusted_writers())
            self._held = held
            return held


class BodyLimit:
    """413 for a request body over ``max_bytes``, whether it declares its length or streams
    it in chunks without one; 408 (and the connection closed) for a body that has not
    arrived whole within ``timeout_s``, so a slow or unfinished body holds neither a
    connection nor its buffered bytes for longer. The body is read here (at most
    ``max_bytes``) and replayed to the app, so nothing downstream ever sees an oversized one."""

    def __init__(self, app: Any, max_bytes: int, timeout_s: float = 30.0) -> None:
        self.app, self.max_bytes, self.timeout_s = app, max_bytes, timeout_s

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        length = dict(scope["headers"]).get(b"content-length", b"")
        if length.isdigit() and int(length) > self.max_bytes:
            await self._refuse(scope, receive, send, int(length))
            return
        chunks: list[bytes] = []
        try:
            async with asyncio.timeout(self.timeout_s):
                outcome = await self._read(receive, chunks)
        except TimeoutError:
            chunks.clear()  # the partial body goes now, not when the client gives up
            await self._too_slow(scope, receive, send)
            return
        if outcome == "too_large":
            await self._refuse(scope, receive, send, None)
            return
        if isinstance(outcome, dict):  # the client went away
            await self.app(scope, _replay([outcome], receive), send)
            return
        body = {"type": "http.request", "body": b"".join(chunks), "more_body": False}
        await self.app(scope, _replay([body], receive), send)

    async def _read(self, receive: Any, chunks: list[bytes]) -> str | dict:
        size, more = 0, True
        while more:
            message = await receive()
            if message["type"] != "http.request":
                return message
            chunks.append(message.get("body", b""))
            size += len(chunks[-1])
            if size > self.max_bytes:
                chunks.clear()
                return "too_large"
            more = message.get("more_body", False)
        return "complete"

    async def _too_slow(self, scope: dict, receive: Any, send: Any) -> None:
        response = JSONResponse(
            {"detail": f"the request body did not arrive within {self.timeout_s:g} s"},
            status_code=status.HTTP_408_REQUEST_TIMEOUT,
            headers={"Connection": "close"},
        )
        await response(scope, receive, send)

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


def uvicorn_options(settings: Any) -> dict[str, Any]:
    """What ``neuralops api`` (and the tests' server) give uvicorn: a cap on connections and
    requests at once (beyond it, 503) and how long an idle keep-alive connection stays."""
    return {
        "limit_concurrency": settings.api_max_concurrency,
        "timeout_keep_alive": settings.api_keep_alive_s,
    }


API_BEARER = HTTPBearer(
    auto_error=False,
    scheme_name="ApiToken",
    description="A JWT from the identity provider (locally, DEV ONLY: `neuralops token "
    "issue-dev --scope ...`) with the operation's scope: "
    + "; ".join(f"`{name}`: {what}" for name, what in api_auth.SCOPES.items()),
)
HEARTBEAT_BEARER = HTTPBearer(
    auto_error=False,
    scheme_name="HeartbeatKey",
    description="The cluster's heartbeat key, issued when it registered.",
)


def authorized(scope: str) -> Callable[..., ApiPrincipal]:
    """A dependency: the principal of the request's bearer token, if it holds ``scope``
    (else ``AuthRefused``: 401 or 403). The keys are the app's (``app.state.api_keys``).
    :class:`AuthenticatedRoute` runs it before the body is read; the token is verified once
    a request."""
    if scope not in api_auth.SCOPES:
        raise ValueError(f"unknown scope {scope!r}")

    def check(request: Request) -> ApiPrincipal:
        found = getattr(request.state, "api_principal", None)
        if found is None:
            token = api_auth.bearer_token(request.headers.get("authorization"))
            found = api_auth.verify_api_token(token, keys=request.app.state.api_keys)
            request.state.api_principal = found
        return api_auth.require_scope(found, scope)

    def principal(
        request: Request,
        _: Annotated[HTTPAuthorizationCredentials | None, Security(API_BEARER)],
    ) -> ApiPrincipal:  # the HTTPBearer parameter puts the scheme in the OpenAPI document
        return check(request)

    principal.authenticate = check  # type: ignore[attr-defined]
    return principal


def _heartbeat_key(request: Request) -> str:
    key = api_auth.bearer_token(request.headers.get("authorization"))
    if not key:
        raise clusters.HeartbeatRefused(
            401,
            "missing",
            "no heartbeat key: send `Authorization: Bearer <key>`, the key issued when the "
            "cluster registered",
        )
    return key


def heartbeat_key(
    request: Request,
    _: Annotated[HTTPAuthorizationCredentials | None, Security(HEARTBEAT_BEARER)],
) -> str:
    """A dependency: the heartbeat key the request presents (else 401)."""
    return _heartbeat_key(request)


heartbeat_key.authenticate = _heartbeat_key  # type: ignore[attr-defined]


class AuthenticatedRoute(APIRoute):
    """A route that checks its credential before FastAPI reads the body: a request without
    a good one is a 401 (or 403) whatever its body, never a 400 or 422 that would tell an
    anonymous caller about the operation. The checks are the route's dependencies that carry
    an ``authenticate(request)`` function (:func:`authorized`, :func:`heartbeat_key`)."""

    def get_route_handler(self) -> Callable[[Request], Any]:
        handle = super().get_route_handler()
        checks = [
            d.call.authenticate
            for d in self.dependant.dependencies
            if callable(getattr(d.call, "authenticate", None))
        ]
        if not checks:
            return handle

        async def authenticate_first(request: Request) -> Response:
            for check in checks:
                await run_in_threadpool(check, request)  # a JWKS fetch may block
            return await handle(request)

        return authenticate_first


def create_app(database_url: URL | None = None) -> FastAPI:
    """The ASGI app; ``database_url`` overrides the settings (tests, embedding)."""
    settings = get_settings()
    url = database_url or settings.database_url
    keys = api_auth.keys_from_settings(settings)  # ConfigError now, not at the first request

    app = FastAPI(
        title="NeuralOps API",
        version=__version__,
        description=(
            "Run history, the playbook registry, anomaly signals and ad-hoc analysis, and the "
            "health of a NeuralOps installation."
        ),
    )
    app.state.api_keys = keys
    app.router.route_class = AuthenticatedRoute  # before any route is added

    @app.middleware("http")
    async def measure(request: Request, call_next):
        started = time.perf_counter()
        response = await call_next(request)
        route = getattr(request.scope.get("route"), "path", "unmatched")
        HTTP_REQUESTS.labels(request.method, route, str(response.status_code)).inc()
        HTTP_LATENCY.labels(request.method, route).observe(time.perf_counter() - started)
        return response

    app.add_middleware(  # outermost
        BodyLimit, max_bytes=settings.api_max_body_bytes, timeout_s=settings.api_body_timeout_s
    )

    @app.exception_handler(AuthRefused)
    async def unauthorized(_: Request, exc: AuthRefused) -> JSONResponse:
        if exc.status == 401:
            logger.info("API request refused (%s)", exc.reason)  # never the token
        return JSONResponse(
            {"detail": exc.message},
            status_code=exc.status,
            headers={"WWW-Authenticate": exc.www_authenticate()},
        )

    @app.exception_handler(clusters.HeartbeatRefused)
    async def heartbeat_refused(_: Request, exc: clusters.HeartbeatRefused) -> JSONResponse:
        challenge = f'Bearer realm="{HEARTBEAT_REALM}"'
        if exc.reason != "missing":
            challenge += ', error="invalid_token"'
        return JSONResponse(
            {"detail": str(exc)}, status_code=exc.status, headers={"WWW-Authenticate": challenge}
        )

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

    @app.post(
        "/runs",
        status_code=201,
        response_model=RunLogged,
        tags=["runs"],
        responses=auth_responses("runs:write"),
    )
    def post_run(
        run: runs.RunIn, principal: Annotated[ApiPrincipal, Depends(authorized("runs:write"))]
    ) -> RunLogged:
        """Log a run (the run logger; scope `runs:write`). Its provenance is
        `api:<the token's subject>`."""
        run_id = runs.log_run(run, url=url, provenance=f"api:{principal.subject}")
        RUNS_LOGGED.labels(run.status).inc()
        return RunLogged(run_id=run_id)

    reads_runs = [Depends(authorized("runs:read"))]

    @app.get(
        "/workflows/{workflow_id}",
        response_model=registry.WorkflowInfo,
        tags=["workflows"],
        dependencies=reads_runs,
        responses=auth_responses("runs:read"),
    )
    def get_workflow(workflow_id: WorkflowId) -> registry.WorkflowInfo:
        return registry.describe_workflow(workflow_id, url=url)

    @app.get(
        "/workflows/{workflow_id}/runs",
        response_model=runs.RunPage,
        tags=["workflows"],
        dependencies=reads_runs,
        responses=auth_responses("runs:read"),
    )
    def get_workflow_runs(
        workflow_id: WorkflowId,
        limit: Annotated[int, Query(ge=1, le=500)] = 50,
        page: Annotated[int, Query(ge=1, le=1_000_000)] = 1,
    ) -> runs.RunPage:
        """The workflow's runs, newest first, a page at a time."""
        return runs.list_runs(workflow_id, limit=limit, page=page, url=url)

    @app.get(
        "/playbooks",
        response_model=list[registry.WorkflowInfo],
        tags=["workflows"],
        dependencies=reads_runs,
        responses=auth_responses("runs:read"),
    )
    def list_playbooks() -> list[registry.WorkflowInfo]:
        return registry.list_playbooks(url=url)

    @app.post(
        "/analyze",
        response_model=signals.AnalyzeResult,
        tags=["signals"],
        dependencies=[Depends(authorized("signals:write"))],
        responses=auth_responses("signals:write"),
    )
    def post_analyze(request: signals.AnalyzeRequest) -> signals.AnalyzeResult:
        """Score a query now and explain it; records a signal when it is anomalous (scope
        `signals:write`: a recorded signal can start a remediation). The query comes as
        `query` or `prom_query` (one of them). `score`, `method` and `hint` are the default
        method's; `zscore` and `ewma` the z-score and EWMA detectors' own readings of the
        same series. 503 when the metric source does not answer."""
        source = source_from_settings(settings)
        try:
            return signals.analyze(request, source, url=url)
        finally:
            source.close()

    @app.post(
        "/probe",
        response_model=probe.ProbeResult,
        tags=["signals"],
        dependencies=[Depends(authorized("signals:write"))],
        responses=auth_responses("signals:write"),
    )
    def post_probe(request: probe.ProbeRequest) -> probe.ProbeResult:
        """Score the query's last N points (`last_points`, default 120 at a `step` of 1m)
        and create a signal (rule `probe`, deduplicated) when the score reaches `threshold`;
        `signal_id` is null below it (scope `signals:write`). The same analysis as
        `POST /analyze`. 503 when the metric source does not answer."""
        source = source_from_settings(settings)
        try:
            return probe.probe(request, source, url=url)
        finally:
            source.close()

    reads_signals = [Depends(authorized("signals:read"))]

    @app.get(
        "/signals",
        response_model=list[signals.Signal],
        tags=["signals"],
        dependencies=reads_signals,
        responses=auth_responses("signals:read"),
    )
    def get_signals(
        since: Annotated[
            UtcDatetime | None,
            Query(description="ISO-8601 (naive means UTC); newer signals only."),
        ] = None,
        rule: Annotated[
            str | None,
            Query(
                pattern=RULE_FILTER_PATTERN,
                description="Only this rule, exactly: a detection rule (oom-kill) or an "
                "alert's name (KubePodCrashLooping).",
            ),
        ] = None,
        limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    ) -> list[signals.Signal]:
        """Recorded signals, newest first."""
        return signals.list_signals(since=since, rule=rule, limit=limit, url=url)

    @app.get(
        "/signals/{signal_id}",
        response_model=signals.Signal,
        tags=["signals"],
        dependencies=reads_signals,
        responses=auth_responses("signals:read"),
    )
    def get_signal(signal_id: uuid.UUID) -> signals.Signal:
        return signals.get_signal(signal_id, url=url)

    recommenders = _Recommenders(settings, url)

    @app.post(
        "/recommend",
        response_model=RecommendResult,
        tags=["recommend"],
        dependencies=[Depends(authorized("recommend"))],
        responses={
            **auth_responses("recommend"),
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

    from neuralops.api_alerts import alerts_router  # it imports this module

    app.include_router(alerts_router(url, recommenders))

    administers_clusters = [Depends(authorized("clusters:admin"))]

    @app.get(
        "/clusters",
        response_model=list[clusters.ClusterOut],
        tags=["clusters"],
        dependencies=administers_clusters,
        responses=auth_responses("clusters:admin"),
    )
    def get_clusters() -> list[clusters.ClusterOut]:
        """Registered clusters: labels, work pool, last heartbeat and status."""
        return clusters.list_clusters(url=url)

    @app.post(
        "/register",
        status_code=201,
        response_model=clusters.Registered,
        tags=["clusters"],
        dependencies=administers_clusters,
        responses={
            **auth_responses("clusters:admin"),
            401: {
                "description": "No API token or a bad one, or Vault refused the registration "
                "token (invalid, expired or revoked)."
            },
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
    def post_register(raw: Annotated[dict[str, Any], Body()]) -> clusters.Registered:
        """Register a cluster (again: labels updated, credential and heartbeat key rotated;
        scope `clusters:admin`). The Vault token is exchanged for the cluster's own credential
        in Vault and never stored or echoed. The answer holds the cluster's heartbeat key
        (for `PUT /healthz`), shown this once."""
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
        responses={
            401: {"description": "No heartbeat key."},
            403: {"description": "Not this cluster's heartbeat key (or no such cluster)."},
        },
    )
    def put_healthz(
        body: ClusterHeartbeat, key: Annotated[str, Depends(heartbeat_key)]
    ) -> clusters.ClusterOut:
        """A connector's heartbeat (for connectors that run outside Prefect), authorized by
        the cluster's own heartbeat key (`Authorization: Bearer <key>`): it moves that
        cluster only."""
        return clusters.authenticated_heartbeat(body.cluster, key, url=url)

    return app
