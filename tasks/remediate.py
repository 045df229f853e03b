"""Remediation tasks: each a thin wrapper over one step of neuralops.remediation."""

from __future__ import annotations

import uuid
from typing import Any

from prefect import task
from prefect.cache_policies import NO_CACHE
from prefect.client.orchestration import get_client

from neuralops import incidents, remediation
from neuralops.approval import keys_from_settings
from neuralops.incident import Incident
from neuralops.mock_cluster import MockCluster
from neuralops.recommend import recommender_from_settings
from neuralops.settings import get_settings
from neuralops.signing import trusted_public_key
from tasks import IO_RETRIES


def public_key(vault_block: str | None) -> bytes:
    """The pinned key playbook signatures must verify against: the PEM pinned in the
    settings, else the named Vault block's transit key, else the settings' Vault or dev key."""
    settings = get_settings()
    if vault_block and not settings.signing_public_key:
        from blocks.vault import VaultConnection

        return VaultConnection.load(vault_block).signer().public_key_pem(create=False)
    return trusted_public_key(settings)


def approval_keys(approval_block: str | None) -> Any:
    """The identity provider's keys: the named block (roles claim, algorithms... editable in
    the UI), else the settings."""
    if approval_block:
        from blocks.approval import ApprovalKeysBlock

        return ApprovalKeysBlock.load(approval_block).keys()
    return keys_from_settings(get_settings())


def runtime(fail_steps: list[str] | None = None) -> MockCluster:
    """The local runtime: the mock cluster under the data dir (no Kubernetes can run here)."""
    return MockCluster(get_settings().data_dir / "mock-cluster.json", fail_steps=fail_steps or [])


@task(name="suggest", cache_policy=NO_CACHE, **IO_RETRIES)
def suggest(
    signal_id: str | None,
    incident: dict[str, Any] | None,
    playbook_id: str | None,
    parameters: dict[str, Any] | None,
    cluster: str | None,
    flow_run_id: uuid.UUID | None,
) -> incidents.IncidentOut:
    """Create the incident with the recommendations and the playbook to run."""
    recommender, _ = recommender_from_settings()
    return remediation.suggest(
        recommender,
        signal_id=signal_id,
        incident=Incident.model_validate(incident) if incident else None,
        playbook_id=playbook_id,
        parameters=parameters,
        cluster=cluster,
        flow_run_id=flow_run_id,
    )


@task(name="dry-run", cache_policy=NO_CACHE, **IO_RETRIES)
def dry_run(
    incident_id: uuid.UUID, fail_steps: list[str] | None = None, vault_block: str | None = None
) -> incidents.IncidentOut:
    """Signature, policy checks and the server-side dry-run."""
    return remediation.dry_run(
        incident_id, public_key_pem=public_key(vault_block), runtime=runtime(fail_steps)
    )


@task(name="decide", cache_policy=NO_CACHE, **IO_RETRIES)
def decide(incident_id: uuid.UUID) -> incidents.IncidentOut:
    """Auto-approve where the safety policy allows, else wait for approval."""
    return remediation.decide(incident_id, settings=get_settings())


@task(name="check-approval", cache_policy=NO_CACHE, **IO_RETRIES)
def check_approval(
    incident_id: uuid.UUID,
    decision: remediation.ApprovalDecision,
    approval_block: str | None = None,
) -> tuple[incidents.IncidentOut, str | None]:
    """Apply the approver's decision if the token proves it; else the refusal."""
    return remediation.apply_decision(incident_id, decision, keys=approval_keys(approval_block))


@task(name="execute", cache_policy=NO_CACHE)  # never retried: a step may have half-applied
def execute(
    incident_id: uuid.UUID, fail_steps: list[str] | None = None, vault_block: str | None = None
) -> incidents.IncidentOut:
    return remediation.execute(
        incident_id, public_key_pem=public_key(vault_block), runtime=runtime(fail_steps)
    )


@task(name="verify-outcome", cache_policy=NO_CACHE, **IO_RETRIES)
def verify_outcome(incident_id: uuid.UUID) -> incidents.IncidentOut:
    """Re-check the signal after the settle time; record resolved / not resolved."""
    return remediation.verify_outcome(incident_id, settings=get_settings())


@task(name="cluster-limit", cache_policy=NO_CACHE, **IO_RETRIES)
def ensure_cluster_limit(name: str, limit: int) -> None:
    """The global concurrency limit that caps remediations per cluster (created or resized)."""
    with get_client(sync_client=True) as client:
        client.upsert_global_concurrency_limit_by_name(name=name, limit=limit)
