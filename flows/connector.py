"""Connector flows: a cluster's heartbeat, the execution of signed triggers and the metrics
stream in the cluster; the control plane's watch over all clusters and the ingestion of
what clusters forward."""

from __future__ import annotations

from datetime import timedelta
from typing import Any, Literal

from prefect import flow, get_run_logger, task
from prefect.cache_policies import NO_CACHE
from prefect.events import emit_event
from prefect.states import Completed

from neuralops import clusters as clusters_core
from neuralops import db, signals, streaming
from neuralops.clusters import HEARTBEAT_INTERVAL_S, MISSED_HEARTBEATS
from neuralops.errors import ConfigError, InvalidInput
from neuralops.hooks import SKIPPED, run_logger_hooks
from neuralops.policy import RenderedStep
from neuralops.settings import get_settings
from neuralops.sources import SeriesBatch
from tasks import IO_RETRIES
from tasks import clusters as cluster_tasks
from tasks.detection import emit_signal_events, metric_source, record_signals


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
) -> Any:
    """Record the heartbeats of the clusters' Prefect workers, then mark clusters silent for
    ``missed`` intervals unreachable and emit a ``neuralops.cluster.unreachable`` event for
    each; returns their names. With no cluster registered it does nothing (one query): no
    task runs, no event, and the run ends ``Completed`` named ``Skipped``, which the run
    history does not record."""
    if not clusters_core.list_clusters():
        return Completed(name=SKIPPED, message="no cluster registered: nothing to watch", data=[])
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
    # The connector keeps its nonces and audit entries in its own database (SQLite in the
    # pod's data dir unless configured otherwise): bring its schema up first (idempotent).
    db.upgrade()
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


SIGNALS_EVENT = "neuralops.cluster.signals"
SAMPLES_EVENT = "neuralops.cluster.samples"


@flow(name="stream-metrics", log_prints=False, **run_logger_hooks())
def stream_metrics(
    mode: Literal["signals", "samples"] = "signals",
    rules_file: str | None = None,
    prometheus_block: str | None = None,
) -> dict[str, Any]:
    """In the cluster (NEURALOPS_CLUSTER): query its own Prometheus with the detection rules
    and forward, as Prefect events, either only the signals found here (``signals``: raw
    metrics never leave the cluster) or the series in batches (``samples``). The control
    plane's ingest deployments pick the events up."""
    cluster = get_settings().cluster
    if not cluster:
        raise ConfigError("stream-metrics: NEURALOPS_CLUSTER (the cluster this runs in) is unset")
    rules = signals.load_rules(rules_file or get_settings().rules_file)
    batches = query_cluster(rules, cluster, prometheus_block)
    resource = {"prefect.resource.id": f"neuralops.cluster.{cluster}", "neuralops.cluster": cluster}
    if mode == "signals":
        found = streaming.detect_batches(rules, batches)
        emit_event(
            event=SIGNALS_EVENT,
            resource=resource,
            payload={"cluster": cluster, "signals": [s.model_dump(mode="json") for s in found]},
        )
        return {"cluster": cluster, "mode": mode, "signals": len(found), "events": 1}
    payloads = streaming.to_payloads(batches)
    for payload in payloads:
        emit_event(
            event=SAMPLES_EVENT,
            resource=resource,
            payload={"cluster": cluster, "batches": [payload]},
        )
    series = sum(len(p["labels"]) for p in payloads)
    return {"cluster": cluster, "mode": mode, "series": series, "events": len(payloads)}


@task(name="query-cluster", cache_policy=NO_CACHE, **IO_RETRIES)
def query_cluster(
    rules: list[signals.Rule], cluster: str, prometheus_block: str | None
) -> dict[str, SeriesBatch]:
    source = metric_source(prometheus_block)
    try:
        return streaming.query_rules(rules, source, cluster)
    finally:
        source.close()


@flow(name="ingest-signals", log_prints=False, **run_logger_hooks())
def ingest_signals(cluster: str, signals_found: list[dict[str, Any]]) -> dict[str, int]:
    """Control plane: record the signals a cluster found (deduplicated like detection's) and
    emit their events, so remediation triggers as for any other signal."""
    candidates = [signals.SignalIn.model_validate(s) for s in signals_found]
    return _record(cluster, candidates)


@flow(name="ingest-samples", log_prints=False, **run_logger_hooks())
def ingest_samples(cluster: str, batches: list[dict[str, Any]], rules_file: str | None = None):
    """Control plane: run the detection rules on a cluster's forwarded series."""
    rules = signals.load_rules(rules_file or get_settings().rules_file)
    candidates = streaming.detect_batches(rules, streaming.from_payloads(batches))
    return _record(cluster, candidates)


def _record(cluster: str, candidates: list[signals.SignalIn]) -> dict[str, int]:
    for candidate in candidates:
        if candidate.labels.get(streaming.CLUSTER_LABEL) != cluster:
            raise InvalidInput(
                f"a signal of rule {candidate.rule} is not labelled with cluster {cluster}"
            )
    rules = signals.load_rules(get_settings().rules_file)
    cooldowns = {rule.name: rule.cooldown for rule in rules}
    for candidate in candidates:
        cooldowns.setdefault(candidate.rule, timedelta(minutes=30))
    recorded = record_signals(candidates, cooldowns)
    new = [r.signal for r in recorded if r.new]
    emit_signal_events(new)
    return {"received": len(candidates), "new_signals": len(new)}
