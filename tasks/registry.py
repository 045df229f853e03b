"""Registry tasks."""

from __future__ import annotations

from pathlib import Path

from prefect import task
from prefect.cache_policies import NO_CACHE

from neuralops import registry
from tasks import IO_RETRIES


@task(name="register-playbooks", cache_policy=NO_CACHE, **IO_RETRIES)
def register_playbooks(paths: list[Path] | None = None) -> list[registry.AddResult]:
    """Validate every manifest under ``paths`` (default: the shipped catalogue) and register
    them in one transaction."""
    manifests = registry.load_manifests(paths or [registry.catalogue_dir()])
    return registry.add_playbooks(manifests)


@task(name="register-block-types", cache_policy=NO_CACHE, **IO_RETRIES)
def register_block_types() -> list[str]:
    """Make the NeuralOps blocks (Prometheus, Vault, approval keys, audit sink) available in
    the UI's block catalogue, so an operator can create and edit them there."""
    from blocks.approval import ApprovalKeysBlock
    from blocks.audit import AuditSinkBlock
    from blocks.prometheus import PrometheusConnection
    from blocks.vault import VaultConnection

    kinds = (PrometheusConnection, VaultConnection, ApprovalKeysBlock, AuditSinkBlock)
    for kind in kinds:
        kind.register_type_and_schema()
    return [kind.get_block_type_name() for kind in kinds]
