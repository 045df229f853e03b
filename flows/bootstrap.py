"""Bootstrap: register the playbook catalogue and seed demo run history."""

from __future__ import annotations

from prefect import flow
from prefect.artifacts import create_table_artifact

from neuralops import registry
from neuralops.hooks import run_logger_hooks
from tasks.registry import register_block_types, register_playbooks
from tasks.runs import seed_demo_history


@flow(name="bootstrap", log_prints=False, **run_logger_hooks())
def bootstrap(seed_demo: bool = True, runs_per_playbook: int = 24) -> dict[str, int]:
    """Register the shipped catalogue (idempotent) and, for the demo, seed its run history."""
    register_block_types()
    changes = register_playbooks()
    seeded = seed_demo_history(runs_per_playbook) if seed_demo else 0
    playbooks = registry.list_playbooks()
    create_table_artifact(
        key="playbook-registry",
        table=[
            {
                "playbook": p.id,
                "version": p.version,
                "safety": p.safety_mode,
                "runs": p.run_count,
                "latest run": p.latest_run_id or "",
            }
            for p in playbooks
        ],
        description="Playbooks in the registry after bootstrap",
    )
    summary = {change.value: 0 for change in registry.Change}
    for result in changes:
        summary[result.change.value] += 1
    return {**summary, "playbooks": len(playbooks), "runs_seeded": seeded}
