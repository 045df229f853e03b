"""prefect.yaml stays deployable: every entrypoint loads and its parameters fit the flow."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from prefect.flows import load_flow_from_entrypoint

ROOT = Path(__file__).resolve().parents[1]
DEPLOYMENTS = yaml.safe_load((ROOT / "prefect.yaml").read_text())["deployments"]


@pytest.mark.parametrize("deployment", DEPLOYMENTS, ids=lambda d: d["name"])
def test_entrypoint_loads_and_accepts_its_parameters(
    deployment: dict, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(ROOT)
    flow = load_flow_from_entrypoint(deployment["entrypoint"])
    fixed = deployment.get("parameters", {})
    # Parameters a trigger fills from its event are templates: their names must exist.
    templated = {k for t in deployment.get("triggers", []) for k in t.get("parameters", {})}
    accepted = set(flow.parameters.properties)
    assert templated <= accepted, templated - accepted
    required = set(flow.parameters.required or [])
    if required - set(fixed) <= templated and templated:
        assert required <= set(fixed) | templated
    else:
        flow.validate_parameters(fixed)
    assert deployment["work_pool"]["name"]


def test_every_flow_records_its_runs() -> None:
    for deployment in DEPLOYMENTS:
        flow = load_flow_from_entrypoint(str(ROOT / deployment["entrypoint"]))
        assert flow.on_completion_hooks and flow.on_failure_hooks and flow.on_crashed_hooks


def test_remediate_is_triggered_by_actionable_signal_events() -> None:
    from prefect.events.schemas.deployment_triggers import DeploymentTriggerTypes
    from prefect.events.schemas.events import Resource
    from pydantic import TypeAdapter

    from tasks.detection import SIGNAL_EVENT

    [remediate] = [d for d in DEPLOYMENTS if d["name"] == "remediate"]
    [trigger] = [
        TypeAdapter(DeploymentTriggerTypes).validate_python(t) for t in remediate["triggers"]
    ]
    assert trigger.expect == {SIGNAL_EVENT}
    assert trigger.parameters == {"signal_id": "{{ event.payload.id }}"}
    # The resource of an event emitted by detection matches only when it is actionable.
    resource = {"prefect.resource.id": "neuralops.signal.1234", "neuralops.rule": "oom-kills"}
    assert trigger.match.matches(Resource({**resource, "neuralops.remediate": "true"}))
    assert not trigger.match.matches(Resource({**resource, "neuralops.remediate": "false"}))


def test_signal_events_say_whether_they_reach_the_remediation_threshold(monkeypatch) -> None:
    import uuid
    from datetime import UTC, datetime

    from neuralops.settings import get_settings
    from neuralops.signals import Signal
    from tasks import detection

    sent: list[dict] = []
    monkeypatch.setattr(detection, "emit_event", lambda **event: sent.append(event))
    monkeypatch.setenv("NEURALOPS_REMEDIATE_MIN_SCORE", "0.999")
    get_settings.cache_clear()
    now = datetime.now(UTC)
    common = dict(
        rule="oom-kills",
        query="q",
        labels={},
        z=9.0,
        value=1.0,
        method="ensemble",
        hint="h",
        window_start=now,
        window_end=now,
        fingerprint="f",
        occurrences=1,
        last_seen_at=now,
        created_at=now,
    )
    signals = [Signal(id=uuid.uuid4(), score=s, **common) for s in (0.998, 0.9995)]
    detection.emit_signal_events.fn(signals)
    get_settings.cache_clear()
    assert [e["resource"]["neuralops.remediate"] for e in sent] == ["false", "true"]
    assert sent[1]["payload"]["id"] == str(signals[1].id)


def test_deployments_and_their_automations_say_what_they_do() -> None:
    """The UI lists automations by name: not `remediate__automation_1` with no description."""
    from prefect.events.schemas.deployment_triggers import DeploymentTriggerTypes
    from pydantic import TypeAdapter

    names = set()
    for deployment in DEPLOYMENTS:
        assert len(deployment["description"]) > 60, deployment["name"]
        for raw in deployment.get("triggers", []):
            trigger = TypeAdapter(DeploymentTriggerTypes).validate_python(raw)
            assert trigger.name and "__automation" not in trigger.name
            assert len(trigger.description) > 60, trigger.name
            names.add(trigger.name)
    assert "remediate actionable anomaly signals" in names
    assert len(names) == sum(len(d.get("triggers", [])) for d in DEPLOYMENTS)


def test_watch_clusters_runs_are_few_and_easy_to_filter() -> None:
    [watch] = [d for d in DEPLOYMENTS if d["name"] == "watch-clusters"]
    assert "background" in watch["tags"]
    assert all(s["interval"] >= 60 for s in watch["schedules"])


@pytest.mark.parametrize("name", ["analyze", "recommend"])
def test_ad_hoc_run_forms_have_titles_and_help(name: str, monkeypatch) -> None:
    """Prefect builds the run form from the flow's signature: each field titled and
    explained, none offered as type "None"."""
    monkeypatch.chdir(ROOT)
    [deployment] = [d for d in DEPLOYMENTS if d["name"] == name]
    flow = load_flow_from_entrypoint(deployment["entrypoint"])
    for key, field in flow.parameters.model_dump()["properties"].items():
        assert field["title"] != key and field["description"], key
        assert "anyOf" not in field, key
    assert not flow.parameters.required  # a Quick run needs nothing filled in


def test_analyze_quick_run_reads_something_the_demo_has() -> None:
    from flows.detection import DEMO_QUERY, analyze

    [deployment] = [d for d in DEPLOYMENTS if d["name"] == "analyze"]
    query = deployment.get("parameters", {}).get("query", DEMO_QUERY)
    assert query == DEMO_QUERY == analyze.parameters.model_dump()["properties"]["query"]["default"]
    assert "container_memory_working_set_bytes" in query and 'namespace="payments"' in query
