"""Run-history tasks."""

from __future__ import annotations

from prefect import task
from prefect.cache_policies import NO_CACHE

from neuralops import registry, runs
from neuralops.demo import demo_history
from tasks import IO_RETRIES


@task(name="seed-demo-history", cache_policy=NO_CACHE, **IO_RETRIES)
def seed_demo_history(runs_per_playbook: int) -> int:
    """Log the demo history of the shipped catalogue in one batch, as provenance ``seed``
    (synthetic: it teaches only where ``seed`` is a trusted writer, as `neuralops run` sets);
    a re-run keeps the runs already there (a finished run is immutable)."""
    manifests = registry.load_manifests([registry.catalogue_dir()])
    history = demo_history(manifests, runs_per_playbook=runs_per_playbook)
    return len(runs.log_runs(history, provenance=runs.SEED, keep_existing=True))
