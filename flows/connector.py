"""Connector flows: a cluster's heartbeat, the execution of signed triggers in the cluster,
and the control plane's watch over all clusters."""

from __future__ import annotations

from typing import Any

from prefect import flow, get_run_logger

from neuralops.clusters import HEARTBEAT_INTERVAL_S, MISSED_HEARTBEATS
from neuralops.errors import ConfigError
from neuralops.hooks import run_logger_hooks
from neuralops.policy import RenderedStep
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
    """Record the heartbeats of the clusters' Prefect workers, then mark clusters silent for
    ``missed`` intervals unreachable and emit a ``neuralops.cluster.unreachable`` event for
    each; returns their names."""
    cluster_tasks.record_worker_heartbeats(interval_s, missed)
    changed = cluster_tasks.mark_unreachable(interval_s, missed)
    cluster_tasks.emit_unreachable_events(changed)
    return changed


@flow(name="execute-playbook", log_prints=False, persist_result=True, **run_logger_hooks())
def execute_playbook(trigger: dict[str, Any]) -> dict[str, Any]:
    """Run a signed execution trigger in the cluster this worker serves (NEURALOPS_CLUSTER).

    Deployed as ``execute-playbook/cluster-<name>`` on the cluster's own pool. The trigger is
    verified first (signature with the pinned key, lifetime, expiry, this cluster, unused
    nonce): a refusal raises, so the run fails with the reason (audited ``trigger.refused``).
    Then the rendered steps go through the Kubernetes API: a server-side dry-run of them all,
    and only if every step passed, the real calls. Returns ``ok``, ``stage`` (``dry_run`` when
    the dry-run stopped it, else ``apply``), the step ``results`` and the targets'
    ``pre_state`` and ``post_state``."""
    cluster = get_settings().cluster
    if not cluster:
        raise ConfigError("execute-playbook: NEURALOPS_CLUSTER (the cluster this runs in) is unset")
    accepted = cluster_tasks.accept_trigger(trigger, cluster)
    logger = get_run_logger()
    logger.info(
        "trigger accepted: incident %s, playbook %s, %d steps",
        accepted.incident_id,
        accepted.playbook_id,
        len(accepted.steps),
    )
    steps = [RenderedStep.model_validate(step) for step in accepted.steps]
    pre_state = cluster_tasks.snapshot(steps)
    dry = cluster_tasks.apply_steps(steps, dry_run=True)
    outcome: dict[str, Any] = {
        "cluster": cluster,
        "incident_id": str(accepted.incident_id),
        "playbook_id": accepted.playbook_id,
        "nonce": accepted.nonce,
        "pre_state": pre_state,
    }
    if any(r["status"] != "Completed" for r in dry):
        logger.warning("server-side dry-run failed: nothing applied")
        return outcome | {"ok": False, "stage": "dry_run", "results": dry, "post_state": pre_state}
    results = cluster_tasks.apply_steps(steps)
    post_state = cluster_tasks.snapshot(steps)
    ok = all(r["status"] == "Completed" for r in results)
    return outcome | {"ok": ok, "stage": "apply", "results": results, "post_state": post_state}
