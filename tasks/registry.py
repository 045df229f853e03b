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
