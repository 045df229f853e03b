"""The Prefect side of `neuralops run`: the `seed-demo` flow, and the calls that set up the
work pool and blocks, start detection and find the remediation waiting for approval.

`neuralops run` (neuralops/cli.py) starts the processes (neuralops/localstack.py) and calls
these in order; every one of them is idempotent, so a second run reuses what exists.
"""

from __future__ import annotations

import time
from datetime import UTC, datetime
from typing import Any

from prefect import flow, task
from prefect.artifacts import create_table_artifact
from prefect.cache_policies import NO_CACHE
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import (
    DeploymentFilter,
    DeploymentFilterName,
    FlowRunFilter,
    FlowRunFilterExpectedStartTime,
    FlowRunFilterState,
    FlowRunFilterStateType,
)
from prefect.client.schemas.objects import FlowRun, State, StateType
from prefect.client.schemas.sorting import FlowRunSort
from prefect.deployments import run_deployment

from flows.bootstrap import bootstrap
from flows.vectorize import vectorize
from neuralops import demo
from neuralops.hooks import run_logger_hooks
from neuralops.settings import get_settings
from tasks import IO_RETRIES
from tasks.clusters import ensure_work_pool

LOCAL_POOL = "neuralops-local"  # prefect.yaml's pool for every control-plane deployment
DEMO_PROMETHEUS_BLOCK = "demo-prometheus"
TERMINAL = {StateType.COMPLETED, StateType.FAILED, StateType.CRASHED, StateType.CANCELLED}


@task(name="sign-playbooks", cache_policy=NO_CACHE, **IO_RETRIES)
def sign_playbooks() -> list[str]:
    return demo.sign_unsigned(get_settings())


@flow(name="seed-demo", log_prints=False, **run_logger_hooks())
def seed_demo(runs_per_playbook: int = 24) -> dict[str, Any]:
    """The demo's data: the catalogue and its run history (bootstrap), every playbook signed,
    and the history embedded into LanceDB (vectorize), so a recommendation has evidence."""
    registered = bootstrap(seed_demo=True, runs_per_playbook=runs_per_playbook)
    signed = sign_playbooks()
    vectors = vectorize()
    summary = {
        "playbooks": registered["playbooks"],
        "runs_seeded": registered["runs_seeded"],
        "signed": len(signed),
        "vectors_written": vectors["written"],
        "vectors_unchanged": vectors["unchanged"],
    }
    create_table_artifact(
        key="seed-demo",
        table=[{"step": k, "count": v} for k, v in summary.items()],
        description="What `neuralops run` seeded for the demo",
    )
    return summary


def ensure_local_pool() -> bool:
    """The process pool every prefect.yaml deployment runs on; True when created now."""
    return ensure_work_pool(
        LOCAL_POOL,
        description="NeuralOps control plane: detect, recommend, remediate, housekeeping, ...",
    )


def save_prometheus_block(url: str) -> str:
    """The demo Prometheus as a NeuralOps Prometheus block (visible and editable in the UI)."""
    from blocks.prometheus import PrometheusConnection

    PrometheusConnection(url=url).save(DEMO_PROMETHEUS_BLOCK, overwrite=True)
    return DEMO_PROMETHEUS_BLOCK


def run_detection() -> State:
    """Run the `detect` flow here, now: its signal's event triggers the `remediate`
    deployment on the workers. (The `detect` deployment's concurrency limit would cancel a
    run started while a scheduled one holds the slot, or while a crashed one's lease lasts.)"""
    from flows.detection import detect

    return detect(return_state=True)


def start_remediation(signal_id: str) -> FlowRun:
    """Start the `remediate` deployment for a signal (when no trigger started one)."""
    return run_deployment(
        "remediate/remediate",
        parameters={"signal_id": signal_id},
        timeout=0,
        tags=["neuralops-run"],
    )


def remediation_runs(*states: StateType, since: datetime | None = None) -> list[FlowRun]:
    """Runs of the `remediate` deployment (in ``states``, if given), newest first."""
    return deployment_runs("remediate", *states, since=since)


def deployment_runs(
    deployment: str, *states: StateType, since: datetime | None = None
) -> list[FlowRun]:
    """Runs of a deployment (in ``states``, if given), newest first."""
    flow_runs = FlowRunFilter()
    if states:
        flow_runs.state = FlowRunFilterState(type=FlowRunFilterStateType(any_=list(states)))
    if since is not None:
        flow_runs.expected_start_time = FlowRunFilterExpectedStartTime(after_=since)
    with get_client(sync_client=True) as client:
        return client.read_flow_runs(
            flow_run_filter=flow_runs,
            deployment_filter=DeploymentFilter(name=DeploymentFilterName(any_=[deployment])),
            sort=FlowRunSort.EXPECTED_START_TIME_DESC,
            limit=20,
            offset=0,
        )


def wait_for_paused_remediation(
    since: datetime, *, timeout_s: float = 300.0, progress: Any = None
) -> FlowRun | None:
    """The remediation the detection's event started, once it waits for approval (Paused).
    None when no run started since ``since`` (nothing new was detected); raises when one
    started but ended without pausing (its state says why)."""
    deadline = time.monotonic() + timeout_s
    grace = time.monotonic() + 45  # the trigger starts a run 0.4-3 s after the event
    while time.monotonic() < deadline:
        paused = remediation_runs(StateType.PAUSED, since=since)
        if paused:
            return paused[0]
        started = remediation_runs(since=since)
        for run in started:
            if run.state is not None and run.state.type in TERMINAL:
                raise RuntimeError(
                    f"remediation run {run.name} ended {run.state.name} without waiting for "
                    f"approval: {run.state.message or 'see its logs in the UI'}"
                )
        if not started and time.monotonic() > grace:
            return None
        if progress is not None:
            progress(started[0].state.name if started and started[0].state else "waiting")
        time.sleep(2.0)
    raise TimeoutError(f"no remediation paused for approval within {timeout_s:.0f} s")


def now() -> datetime:
    return datetime.now(UTC)
