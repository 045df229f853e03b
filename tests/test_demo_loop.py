"""The pieces of `neuralops run` that need no Prefect server: the demo incident in metrics
(replay and real Prometheus agree), parameters from what worked before on the same resource,
signing only what needs it, and the process supervisor's Ctrl-C behaviour."""

from __future__ import annotations

import os
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

import polars as pl
import pytest
from conftest import skip_or_fail
from sqlalchemy.engine import URL

from neuralops import db, demo, registry, runs, signals
from neuralops.incident_model import Incident
from neuralops.localstack import Stack, StackError
from neuralops.remediation import precedent_parameters
from neuralops.settings import get_settings
from neuralops.sources import ReplaySource

NOW = datetime(2026, 11, 23, 12, 0, tzinfo=UTC)
THRESHOLD = 0.9999  # the default NEURALOPS_REMEDIATE_MIN_SCORE


def detect(source, rules: list[signals.Rule]) -> dict[str, list[signals.SignalIn]]:
    end = source.now()
    by_name = {rule.name: rule for rule in rules}
    batches = {
        rule.name: source.query_range(
            rule.query,
            signals.range_end(end, rule.step) - rule.lookback,
            signals.range_end(end, rule.step),
            rule.step,
        )
        for rule in rules
    }
    return {
        rule.name: signals.find_anomalies(
            rule, batches[rule.name], [(by_name[r], batches[r]) for r in rule.related]
        )
        for rule in rules
    }


def replay_file(tmp_path: Path) -> Path:
    series = demo.recorded_metrics(demo.incident_metrics(NOW))
    path = tmp_path / "metrics.parquet"
    pl.concat(
        [
            pl.DataFrame(
                {"timestamp": s.timestamps, "value": s.values, "__name__": s.name}
            ).with_columns(**{k: pl.lit(v) for k, v in s.labels.items()})
            for s in series
        ],
        how="diagonal",
    ).write_parquet(path)
    return path


def test_the_demo_replay_holds_one_actionable_incident(tmp_path: Path) -> None:
    rules = signals.load_rules(Path(demo.__file__).with_name("rules") / "demo-replay.yaml")
    found = detect(ReplaySource(replay_file(tmp_path)), rules)
    actionable = [s for hits in found.values() for s in hits if s.score >= THRESHOLD]
    assert [(s.rule, s.labels["pod"]) for s in actionable] == [("oom-kills", demo.OOM_POD["pod"])]
    assert actionable[0].labels["symptom"] == "oom-killed"
    # The restarts move too, but after four earlier restarts of the same container
    # (demo.EARLIER_RESTARTS) they stay under the threshold: one incident, one remediation.
    assert all(s.score < THRESHOLD for s in found["pod-restarts"])
    quiet = {p["pod"] for p in demo.QUIET_PODS}
    assert not any(s.labels["pod"] in quiet for hits in found.values() for s in hits)


@pytest.mark.slow
def test_prometheus_with_the_shipped_rules_sees_the_same_incident(tmp_path: Path) -> None:
    from neuralops.local_prometheus import (
        LocalPrometheus,
        PrometheusNotInstalled,
        write_openmetrics,
    )
    from neuralops.sources import PrometheusSource

    now = datetime.now(UTC)
    try:
        server = LocalPrometheus(tmp_path / "prometheus")
    except PrometheusNotInstalled as exc:
        skip_or_fail(str(exc))
    write_openmetrics(demo.incident_metrics(now), tmp_path / "history.om")
    server.backfill(tmp_path / "history.om")
    with server:
        source = PrometheusSource(server.url)
        found = detect(source, signals.load_rules(signals.default_rules_path()))
        source.close()
    actionable = [s for hits in found.values() for s in hits if s.score >= THRESHOLD]
    assert [(s.rule, s.labels["pod"]) for s in actionable] == [("oom-kills", demo.OOM_POD["pod"])]


def oom_incident() -> Incident:
    return Incident(alert="oom-kills", labels={**demo.OOM_POD, "symptom": "oom-killed"})


def run(run_id: str, status: str, days: int, deployment: str, limit: str) -> dict:
    return {
        "wpk_id": "raise-memory-limit",
        "run_id": run_id,
        "status": status,
        "duration_ms": 1000,
        "inputs": {
            "parameters": {
                "namespace": "payments",
                "deployment": deployment,
                "container": deployment,
                "memory_limit": limit,
            },
            "alert": {"alertname": "OomKilled", "namespace": "payments"},
        },
        "created_at": NOW - timedelta(days=days),
    }


def test_parameters_come_from_what_worked_on_the_same_resource(database_url: URL) -> None:
    registry.add_playbooks(registry.load_manifests([registry.catalogue_dir()]))
    manifest = registry.load_manifests([registry.catalogue_dir() / "raise-memory-limit.yaml"])[0]
    assert precedent_parameters(manifest, oom_incident()) == {}  # no history: nothing made up
    runs.log_runs(
        [
            run("here-old", "succeeded", 40, "payments-api", "1536Mi"),
            run("here-new", "succeeded", 10, "payments-api", "2Gi"),
            run("here-failed", "failed", 2, "payments-api", "8Gi"),  # failed: not a precedent
            run("elsewhere", "succeeded", 1, "ledger", "4Gi"),  # another workload's values
        ],
        provenance=runs.NEURALOPS,  # NeuralOps' own executions: verified
        verified=True,
    )
    # Newer, but nobody vouches for them: a run posted by an API writer, and an unverified
    # library call.
    runs.log_run(run("posted", "succeeded", 1, "payments-api", "64Gi"), provenance="api:mallory")
    runs.log_run(run("local", "succeeded", 1, "payments-api", "32Gi"))
    assert precedent_parameters(manifest, oom_incident()) == {
        "deployment": "payments-api",
        "container": "payments-api",
        "memory_limit": "2Gi",
    }
    # What the incident's own labels say is never taken from history.
    labelled = Incident(alert="oom-kills", labels={**demo.OOM_POD, "container": "sidecar"})
    assert "container" not in precedent_parameters(manifest, labelled)
    no_resource = Incident(alert="oom-kills", summary="something is OOM killed")
    assert precedent_parameters(manifest, no_resource) == {}


def test_signing_only_what_does_not_verify(
    sqlite_url: URL, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("NEURALOPS_DATA_DIR", str(tmp_path / "data"))
    get_settings.cache_clear()
    db.upgrade()
    registry.add_playbooks(registry.load_manifests([registry.catalogue_dir()]))
    first = demo.sign_unsigned(get_settings())
    assert len(first) == len(registry.list_playbooks()) > 0
    assert demo.sign_unsigned(get_settings()) == []  # a second run signs nothing
    get_settings.cache_clear()


def test_the_stack_stops_its_children_newest_first_and_reports_a_death(tmp_path: Path) -> None:
    sleeper = [sys.executable, "-c", "import time; time.sleep(600)"]
    with Stack(tmp_path / "logs") as stack:
        first = stack.start("first", sleeper, {})
        second = stack.start("second", sleeper, {})
        crasher = stack.start("crasher", [sys.executable, "-c", "print('boom'); exit(3)"], {})
        crasher.process.wait(timeout=30)
        with pytest.raises(StackError, match=r"(?s)crasher exited with code 3.*boom"):
            stack.check()
        assert stack.stop() == ["second", "first"]
    assert not first.alive() and not second.alive()


def test_children_run_in_their_own_process_group(tmp_path: Path) -> None:
    """Ctrl-C in a terminal signals the foreground process group: the children, each in its
    own session, are not hit mid-write; `neuralops run` stops them in order instead."""
    with Stack(tmp_path / "logs") as stack:
        child = stack.start("child", [sys.executable, "-c", "import time; time.sleep(600)"], {})
        assert os.getpgid(child.pid) == child.pid != os.getpgid(0)
    assert not child.alive()
