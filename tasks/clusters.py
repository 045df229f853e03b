"""Cluster tasks: heartbeats, reachability, events and work pools (thin over neuralops.clusters)."""

from __future__ import annotations

import os
from typing import Any

from prefect import task
from prefect.cache_policies import NO_CACHE
from prefect.events import emit_event

from neuralops import clusters, triggers
from neuralops.errors import NotFound
from neuralops.kube import KubernetesRuntime, runtime_from_kubeconfig
from neuralops.policy import RenderedStep
from neuralops.settings import get_settings
from neuralops.signing import trusted_public_key
from neuralops.triggers import ExecutionTrigger
from tasks import IO_RETRIES

UNREACHABLE_EVENT = "neuralops.cluster.unreachable"
WORK_POOL_TYPE = "process"


@task(name="record-heartbeat", cache_policy=NO_CACHE, **IO_RETRIES)
def record_heartbeat(cluster: str) -> clusters.ClusterOut:
    return clusters.heartbeat(cluster)


@task(name="worker-heartbeats", cache_policy=NO_CACHE, **IO_RETRIES)
def record_worker_heartbeats(
    interval_s: float = clusters.HEARTBEAT_INTERVAL_S, missed: int = clusters.MISSED_HEARTBEATS
) -> list[str]:
    """Clusters whose pool has a worker that heartbeated to the Prefect API recently become
    healthy: the worker in the cluster already heartbeats there, so nothing else has to
    leave the cluster. Returns their names."""
    from datetime import UTC, datetime, timedelta

    from prefect.client.orchestration import get_client
    from prefect.exceptions import ObjectNotFound, PrefectHTTPStatusError

    fresh = timedelta(seconds=interval_s * missed)
    now = datetime.now(UTC)
    alive = []
    with get_client(sync_client=True) as client:
        for cluster in clusters.list_clusters():
            try:
                # limit and offset explicit: the sync client sends nulls the server refuses
                workers = client.read_workers_for_work_pool(cluster.work_pool, offset=0, limit=100)
            except (ObjectNotFound, PrefectHTTPStatusError) as exc:
                if getattr(getattr(exc, "response", None), "status_code", 404) != 404:
                    raise
                continue  # the pool was never created: no worker yet
            beats = [w.last_heartbeat_time for w in workers if w.last_heartbeat_time]
            if beats and now - max(beats) <= fresh:
                clusters.heartbeat(cluster.name, at=max(beats))
                alive.append(cluster.name)
    return alive


@task(name="mark-unreachable", cache_policy=NO_CACHE, **IO_RETRIES)
def mark_unreachable(
    interval_s: float = clusters.HEARTBEAT_INTERVAL_S, missed: int = clusters.MISSED_HEARTBEATS
) -> list[str]:
    return clusters.mark_unreachable(interval_s=interval_s, missed=missed)


def emit_unreachable_events(names: list[str]) -> int:
    """One `neuralops.cluster.unreachable` event per cluster that just went silent, resource
    ``neuralops.cluster.<name>``, the cluster as its payload (automations can page on it)."""
    for name in names:
        try:
            payload = clusters.get_cluster(name).model_dump(mode="json")
        except NotFound:
            payload = {"name": name}
        emit_event(
            event=UNREACHABLE_EVENT,
            resource={
                "prefect.resource.id": f"neuralops.cluster.{name}",
                "prefect.resource.name": name,
                "neuralops.cluster": name,
                "neuralops.work-pool": clusters.work_pool_name(name),
            },
            payload=payload,
        )
    return len(names)


def ensure_work_pool(
    name: str, *, pool_type: str = WORK_POOL_TYPE, description: str | None = None
) -> bool:
    """Create the process work pool ``name`` unless it exists; True when it was created.
    Needs a reachable Prefect API (PREFECT_API_URL)."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import WorkPoolCreate
    from prefect.exceptions import ObjectAlreadyExists

    with get_client(sync_client=True) as client:
        try:
            client.create_work_pool(
                WorkPoolCreate(
                    name=name,
                    type=pool_type,
                    description=description
                    or f"NeuralOps connector pool for {name}: only that cluster's worker serves it",
                )
            )
        except ObjectAlreadyExists:
            return False
    return True


# --- execute-playbook: what a cluster's connector does with a signed trigger -----------------


@task(name="accept-trigger", cache_policy=NO_CACHE)  # never retried: acceptance uses the nonce
def accept_trigger(trigger: dict[str, Any], cluster: str) -> ExecutionTrigger:
    """Verify the signed trigger for this cluster (signature with the pinned key, lifetime,
    expiry, cluster, nonce) and record its nonce; ``TriggerRejected`` (audited) otherwise."""
    settings = get_settings()
    return triggers.accept_trigger(
        triggers.parse_signed(trigger),
        cluster=cluster,
        public_key_pem=trusted_public_key(settings),
    )


def kube_runtime() -> KubernetesRuntime:
    """The cluster's Kubernetes API: the kubeconfig at NEURALOPS_KUBECONFIG, else the
    in-cluster service account (the connector worker's)."""
    return runtime_from_kubeconfig(os.environ.get("NEURALOPS_KUBECONFIG") or None)


@task(name="snapshot", cache_policy=NO_CACHE, **IO_RETRIES)
def snapshot(steps: list[RenderedStep]) -> dict[str, Any]:
    return kube_runtime().snapshot(steps)


@task(name="apply-steps", cache_policy=NO_CACHE)  # never retried: a step may have half-applied
def apply_steps(steps: list[RenderedStep], dry_run: bool = False) -> list[dict[str, Any]]:
    """The steps through the Kubernetes API (``dry_run``: server-side dry-run only)."""
    return [r.model_dump(mode="json") for r in kube_runtime().execute(steps, dry_run=dry_run)]


STREAM_INTERVAL_S = 60


def ensure_connector_deployments(cluster: str, working_dir: str | None = None) -> list[str]:
    """The cluster's own deployments on its pool: ``execute-playbook/cluster-<name>`` (signed
    triggers) and ``stream-metrics/cluster-<name>`` (every minute). Needs the Prefect API."""
    from prefect.client.schemas.schedules import IntervalSchedule

    from flows.connector import execute_playbook, stream_metrics

    pool = clusters.work_pool_name(cluster)
    variables = {"working_dir": working_dir} if working_dir else {}
    ids = [
        execute_playbook.to_deployment(
            name=pool, work_pool_name=pool, job_variables=variables
        ).apply(),
        stream_metrics.to_deployment(
            name=pool,
            work_pool_name=pool,
            job_variables=variables,
            schedules=[IntervalSchedule(interval=STREAM_INTERVAL_S)],
        ).apply(),
    ]
    return [str(i) for i in ids]
