"""Prefect flow-run hook that records every flow run in workflow_runs.

NeuralOps attaches it to all of its own flows, so the system records its own history.
Attach it to your own flows the same way::

    from prefect import flow
    from neuralops.hooks import run_logger_hooks

    @flow(**run_logger_hooks())            # or run_logger_hooks(wpk_id="my-playbook")
    def nightly_backup(): ...

The hook never fails the flow: a run that cannot be recorded is logged as a warning. A run
that ends ``Completed`` under the name ``Skipped`` did nothing (``watch-clusters`` with no
cluster registered, every 30 s) and is not recorded.

Runs it records have provenance ``prefect``; they are ``verified`` when the Prefect API, asked
for the flow run by its id, knows it as a run of the same flow (and so they teach the
recommender). A run the API cannot confirm (unreachable, unknown id) is still recorded,
unverified.
"""

from __future__ import annotations

import logging
import re
import time
from datetime import UTC, datetime
from typing import Any

from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId
from prefect.client.schemas.objects import FlowRun, StateType, TaskRun
from prefect.client.schemas.sorting import TaskRunSort

from neuralops.runs import PREFECT, RunIn, log_run
from neuralops.settings import get_settings

logger = logging.getLogger("neuralops.hooks")

STATUS_BY_STATE = {
    StateType.COMPLETED: "succeeded",
    StateType.FAILED: "failed",
    StateType.CRASHED: "crashed",
    StateType.CANCELLED: "cancelled",
    StateType.CANCELLING: "cancelled",
}
# Parameters are stored as run inputs; values under these names never are.
SECRET_NAME = re.compile(r"token|password|passwd|secret|api[_-]?key|credential|private", re.I)
MASK = "<REDACTED>"
MAX_MESSAGE = 2000
MAX_NODE_LOGS = 200  # the API's page limit
TASK_RUN_WAIT_S = 3.0  # a flow without tasks waits this long once, in its final hook
SKIPPED = "Skipped"  # a flow that ends Completed under this name did nothing: not recorded


def run_logger_hooks(wpk_id: str | None = None) -> dict[str, list]:
    """Keyword arguments for ``@flow`` that record each run (completed, failed, crashed)."""

    def hook(flow: Any, flow_run: FlowRun, state: Any) -> None:
        if state.is_completed() and state.name == SKIPPED:
            return  # it did nothing (watch-clusters with no cluster): not history
        record_flow_run(flow, flow_run, state, wpk_id=wpk_id)

    return {"on_completion": [hook], "on_failure": [hook], "on_crashed": [hook]}


def record_flow_run(
    flow: Any, flow_run: FlowRun, state: Any, *, wpk_id: str | None = None
) -> str | None:
    """Log one finished flow run; returns its run_id, or None if it could not be recorded."""
    try:
        run = flow_run_to_run(flow, flow_run, state, wpk_id=wpk_id)
        return log_run(run, provenance=PREFECT, verified=confirmed_by_api(flow_run))
    except Exception:  # the hook must never turn a successful flow into a failed one
        logger.warning("could not record flow run %s in workflow_runs", flow_run.id, exc_info=True)
        return None


def confirmed_by_api(flow_run: FlowRun) -> bool:
    """Whether the Prefect API knows this flow run: read by its id, it exists and is a run of
    the same flow (and deployment, where it has one)."""
    try:
        with get_client(sync_client=True) as client:
            known = client.read_flow_run(flow_run.id)
    except Exception:  # not found, or the API is unreachable: recorded, unverified
        logger.info("flow run %s not confirmed by the Prefect API", flow_run.id, exc_info=True)
        return False
    return (
        known.id == flow_run.id
        and known.flow_id == flow_run.flow_id
        and known.deployment_id == flow_run.deployment_id
    )


def flow_run_to_run(flow: Any, flow_run: FlowRun, state: Any, *, wpk_id: str | None) -> RunIn:
    started = flow_run.start_time or flow_run.expected_start_time or datetime.now(UTC)
    ended = state.timestamp or datetime.now(UTC)
    parameters = dict(flow_run.parameters or {})
    outputs: dict[str, Any] = {"state": state.name}
    if state.message:
        outputs["message"] = state.message[:MAX_MESSAGE]
    return RunIn(
        wpk_id=wpk_id or parameters.get("playbook_id") or flow.name,
        run_id=str(flow_run.id),
        status=STATUS_BY_STATE.get(state.type, "failed"),
        duration_ms=max(0, int((ended - started).total_seconds() * 1000)),
        inputs=mask_secrets(parameters),
        outputs=outputs,
        node_logs=_task_run_logs(flow_run),
        cluster=parameters.get("cluster") or get_settings().cluster,
        flow_run_id=flow_run.id,
        created_at=started,
    )


def mask_secrets(value: Any) -> Any:
    """Replace values whose key names a secret, at any depth."""
    if isinstance(value, dict):
        return {
            key: MASK if SECRET_NAME.search(str(key)) else mask_secrets(item)
            for key, item in value.items()
        }
    if isinstance(value, list):
        return [mask_secrets(item) for item in value]
    return value


def _task_run_logs(flow_run: FlowRun) -> list[dict[str, Any]]:
    """One node log per task run, read from the Prefect API (best effort)."""
    try:
        task_runs = _settled_task_runs(flow_run)
    except Exception:
        logger.debug("task runs of %s not readable", flow_run.id, exc_info=True)
        return []
    never = datetime.min.replace(tzinfo=UTC)
    logs = []
    for task_run in sorted(task_runs, key=lambda tr: tr.start_time or never):
        state = task_run.state
        logs.append(
            {
                "name": task_run.name,
                "status": state.name if state else "Unknown",
                "duration_ms": int(task_run.total_run_time.total_seconds() * 1000),
                "started_at": task_run.start_time,
                "message": (state.message or "")[:MAX_MESSAGE] if state else None,
            }
        )
    return logs


def _settled_task_runs(flow_run: FlowRun) -> list[TaskRun]:
    """Prefect 3 reports task runs to the server through events, so the last ones can land a
    moment after the flow ends: poll until they are all final and stop changing (bounded)."""
    deadline = time.monotonic() + TASK_RUN_WAIT_S
    previous: list[tuple] | None = None
    with get_client(sync_client=True) as client:
        while True:
            task_runs = client.read_task_runs(
                flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run.id])),
                sort=TaskRunSort.EXPECTED_START_TIME_ASC,  # the sync client sends null if unset
                limit=MAX_NODE_LOGS,
            )
            seen = sorted((str(tr.id), str(tr.state_type)) for tr in task_runs)
            final = all(tr.state is not None and tr.state.is_final() for tr in task_runs)
            if (task_runs and final and seen == previous) or time.monotonic() > deadline:
                return task_runs
            previous = seen
            time.sleep(0.2)
