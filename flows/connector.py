"""Connector flows: a cluster's heartbeat, and the control plane's watch over all clusters."""

from __future__ import annotations

from prefect import flow

from neuralops.clusters import HEARTBEAT_INTERVAL_S, MISSED_HEARTBEATS
from neuralops.errors import ConfigError
from neuralops.hooks import run_logger_hooks
from neuralops.settings import get_settings
from tasks import clusters as cluster_tasks


@flow(name="heartbeat", log_prints=False, **run_logger_hooks())
def heartbeat(cluster: str | None = None) -> dict[str, str | None]:
    """Record a heartbeat for the cluster this runs in (``cluster``, else NEURALOPS_CLUSTER).
    Deployed on each cluster's own work pool, every 30 s."""
    name = cluster or get_settings().cluster
    if not name:
        raise ConfigError("heartbeat: pass cluster=<name> or set NEURALOPS_CLUSTER")
    state = cluster_tasks.record_heartbeat(name)
    return {
        "cluster": state.name,
        "status": state.status,
        "last_heartbeat": state.last_heartbeat.isoformat() if state.last_heartbeat else None,
    }


@flow(name="watch-clusters", log_prints=False, **run_logger_hooks())
def watch_clusters(
    interval_s: float = HEARTBEAT_INTERVAL_S, missed: int = MISSED_HEARTBEATS
) -> list[str]:
    """Mark clusters silent for ``missed`` heartbeat intervals unreachable and emit a
    ``neuralops.cluster.unreachable`` event for each; returns their names."""
    changed = cluster_tasks.mark_unreachable(interval_s, missed)
    cluster_tasks.emit_unreachable_events(changed)
    return changed
