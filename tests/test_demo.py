"""Demo history fits every catalogue playbook and seeds idempotently."""

from __future__ import annotations

import re
from datetime import UTC, datetime

from sqlalchemy.engine import URL

from neuralops import registry, runs
from neuralops.demo import demo_history

NOW = datetime(2026, 11, 23, tzinfo=UTC)


def test_every_playbook_gets_runs_whose_parameters_fit_its_manifest() -> None:
    manifests = registry.load_manifests([registry.catalogue_dir()])
    history = demo_history(manifests, runs_per_playbook=5, now=NOW)
    by_id = {m.id: m for m in manifests}
    assert {r.wpk_id for r in history} == set(by_id)
    for run in history:
        for param in by_id[run.wpk_id].parameters:
            value = run.inputs["parameters"][param.name]
            if param.pattern and isinstance(value, str):
                assert re.fullmatch(param.pattern, value), (run.wpk_id, param.name, value)
        assert run.inputs["alert"]["symptom"] in by_id[run.wpk_id].symptoms
        assert run.created_at <= NOW


def test_history_is_deterministic_and_mixed() -> None:
    manifests = registry.load_manifests([registry.catalogue_dir()])
    first = demo_history(manifests, runs_per_playbook=5, now=NOW)
    assert first == demo_history(manifests, runs_per_playbook=5, now=NOW)
    assert {r.status for r in first} >= {"succeeded", "failed"}


def test_seeding_twice_does_not_duplicate(database_url: URL) -> None:
    manifests = registry.load_manifests([registry.catalogue_dir()])
    history = demo_history(manifests, runs_per_playbook=2, now=NOW)
    runs.log_runs(history)
    runs.log_runs(history)
    assert sum(p.run_count for p in registry.list_playbooks()) == 0  # not registered yet
    registry.add_playbooks(manifests)
    assert sum(p.run_count for p in registry.list_playbooks()) == len(history)
