"""The run-logger hook records real Prefect flow runs (against a Prefect test server)."""

from __future__ import annotations

import uuid

import pytest
from prefect import flow, task
from sqlalchemy.engine import URL

from neuralops import registry, runs
from neuralops.hooks import mask_secrets, run_logger_hooks

pytestmark = pytest.mark.slow


@task
def add(a: int, b: int) -> int:
    return a + b


@flow(name="hooked-sum", **run_logger_hooks())
def hooked_sum(a: int, b: int, api_token: str = "tok-123") -> int:
    return add(add(a, b), 1)


@flow(name="hooked-failure", **run_logger_hooks(wpk_id="restart-deployment"))
def hooked_failure() -> None:
    add(1, 2)
    raise RuntimeError("rollout did not complete")


def _record(flow_run_id: uuid.UUID):
    return runs.get_run(str(flow_run_id))


def test_successful_flow_run_is_recorded(prefect_server, database_url: URL) -> None:
    state = hooked_sum(2, 3, return_state=True)
    assert state.result() == 6
    row = _record(state.state_details.flow_run_id)
    assert (row.wpk_id, row.status) == ("hooked-sum", "succeeded")
    assert row.flow_run_id == state.state_details.flow_run_id
    assert row.inputs == {"a": 2, "b": 3, "api_token": "<REDACTED>"}
    # The Prefect API confirmed the flow run: a verified run of provenance prefect.
    assert (row.provenance, row.verified) == ("prefect", True)
    assert len(row.node_logs) == 2
    assert all(log["name"].startswith("add-") for log in row.node_logs)
    assert {log["status"] for log in row.node_logs} == {"Completed"}


def test_failed_flow_run_is_recorded_under_its_playbook(prefect_server, database_url: URL) -> None:
    registry.add_playbooks(registry.load_manifests([registry.catalogue_dir()]))
    state = hooked_failure(return_state=True)
    assert state.is_failed()
    run_id = str(state.state_details.flow_run_id)
    row = runs.get_run(run_id)
    assert (row.wpk_id, row.status) == ("restart-deployment", "failed")
    assert "rollout did not complete" in row.outputs["message"]
    assert registry.describe_workflow("restart-deployment").latest_run_id == run_id


def test_a_flow_run_the_api_does_not_know_is_recorded_unverified(
    prefect_server, database_url: URL
) -> None:
    """Someone calling the hook with a made-up flow run (or the API unreachable): the run is
    recorded, as prefect, but unverified, so it teaches nothing."""
    from datetime import UTC, datetime

    from prefect.client.schemas.objects import FlowRun
    from prefect.states import Completed

    from neuralops.hooks import record_flow_run

    made_up = FlowRun(id=uuid.uuid4(), flow_id=uuid.uuid4(), name="made-up")
    made_up.start_time = datetime.now(UTC)
    state = Completed()
    assert record_flow_run(hooked_sum, made_up, state) == str(made_up.id)
    row = _record(made_up.id)
    assert (row.provenance, row.verified, row.status) == ("prefect", False, "succeeded")
    # Recorded once; the same report again changes nothing, a different one is refused.
    assert record_flow_run(hooked_sum, made_up, state) == str(made_up.id)


def test_bootstrap_flow_registers_seeds_and_records_itself(
    prefect_server, database_url: URL
) -> None:
    from flows.bootstrap import bootstrap

    state = bootstrap(runs_per_playbook=2, return_state=True)
    summary = state.result()
    assert summary["added"] == summary["playbooks"] >= 15
    assert summary["runs_seeded"] > 0
    again = bootstrap(runs_per_playbook=2)
    assert (again["unchanged"], again["added"]) == (summary["playbooks"], 0)
    assert again["runs_seeded"] == summary["runs_seeded"]  # same ids: updated, not duplicated
    total = sum(p.run_count for p in registry.list_playbooks())
    assert total == summary["runs_seeded"]
    seeded = runs.get_run(runs.list_runs("restart-deployment", limit=1).items[0].run_id)
    assert (seeded.provenance, seeded.verified) == ("seed", False)  # synthetic: trusted or not
    assert runs.list_runs("bootstrap").total == 2  # both bootstrap runs recorded by the hook
    from prefect.client.orchestration import get_client

    with get_client(sync_client=True) as client:  # the blocks an operator edits in the UI
        for slug in ("neuralops-prometheus", "neuralops-vault", "neuralops-audit-sink"):
            assert client.read_block_type_by_slug(slug).name.startswith("NeuralOps")


def test_mask_secrets_reaches_nested_values() -> None:
    masked = mask_secrets({"db": {"password": "p", "host": "h"}, "items": [{"api_key": "k"}]})
    assert masked == {
        "db": {"password": "<REDACTED>", "host": "h"},
        "items": [{"api_key": "<REDACTED>"}],
    }
