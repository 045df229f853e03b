"""Safety mode: manual by default, auto only when the playbook and every breaker allow it."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy.engine import URL

from neuralops import incidents, registry
from neuralops.manifest import Manifest, load_manifest_file, parse_manifest
from neuralops.safety import ModeDecision, decide_mode
from neuralops.settings import Settings

AUTO = "requeue-failed-job"  # safety.mode auto, allowed_roles [sre, org-admin]
MANUAL = "scale-up-deployment"


def _manifest(playbook_id: str) -> Manifest:
    return load_manifest_file(registry.catalogue_dir() / f"{playbook_id}.yaml")


def _settings(**overrides) -> Settings:
    return Settings(**{"storm_max_incidents": 10, "storm_max_failures": 3, **overrides})


def _incident(url: URL, playbook_id: str = AUTO, end: str | None = None) -> None:
    incident = incidents.create(
        signal_id=None,
        playbook_id=playbook_id,
        recommendations=[],
        parameters={},
        actor="test",
        url=url,
    )
    if end is None:
        return
    for state in ("dry_run_passed", "approved", "executing", end):
        incidents.transition(incident.id, state, actor="test", url=url)


def test_manual_is_the_default(database_url: URL) -> None:
    decision = decide_mode(_manifest(MANUAL), settings=_settings(), url=database_url)
    assert decision == ModeDecision(mode="manual", reasons=[f"playbook {MANUAL} is manual"])


def test_auto_when_the_playbook_allows_it(database_url: URL) -> None:
    decision = decide_mode(_manifest(AUTO), settings=_settings(), url=database_url)
    assert decision.mode == "auto"
    assert "org-admin" in decision.reason


def test_auto_needs_org_admin(database_url: URL) -> None:
    data = _manifest(AUTO).model_dump(mode="json")
    data["safety"]["allowed_roles"] = ["sre"]
    decision = decide_mode(parse_manifest(data), settings=_settings(), url=database_url)
    assert decision.mode == "manual"
    assert decision.reasons == [
        f"playbook {AUTO} asks for auto, but auto mode needs org-admin in allowed_roles "
        "(it has sre)"
    ]


def test_the_kill_switch_forces_manual(database_url: URL, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NEURALOPS_KILL_SWITCH", "true")
    decision = decide_mode(_manifest(AUTO), settings=Settings(), url=database_url)
    assert decision == ModeDecision(
        mode="manual", reasons=["kill switch is on (NEURALOPS_KILL_SWITCH)"]
    )


def test_an_incident_storm_forces_manual(database_url: URL) -> None:
    for _ in range(3):
        _incident(database_url, playbook_id="restart-deployment")
    settings = _settings(storm_max_incidents=2, storm_window_s=900)
    decision = decide_mode(_manifest(AUTO), settings=settings, url=database_url)
    assert decision.mode == "manual"
    [reason] = decision.reasons
    assert "incident storm: 3 incidents in the last 15 min" in reason
    assert "limit of 2" in reason
    # At the limit, or once the window has passed, the breaker is off again.
    assert (
        decide_mode(
            _manifest(AUTO), settings=_settings(storm_max_incidents=3), url=database_url
        ).mode
        == "auto"
    )
    later = datetime.now(UTC) + timedelta(seconds=901)
    assert decide_mode(_manifest(AUTO), settings=settings, url=database_url, now=later).mode == (
        "auto"
    )


def test_consecutive_failures_force_manual(database_url: URL) -> None:
    settings = _settings(storm_max_failures=3)
    _incident(database_url, end="failed")
    _incident(database_url, end="failed")
    _incident(database_url)  # not executed: does not count either way
    assert decide_mode(_manifest(AUTO), settings=settings, url=database_url).mode == "auto"
    _incident(database_url, playbook_id="restart-deployment", end="failed")  # another playbook
    assert decide_mode(_manifest(AUTO), settings=settings, url=database_url).mode == "auto"
    _incident(database_url, end="failed")
    decision = decide_mode(_manifest(AUTO), settings=settings, url=database_url)
    assert decision.mode == "manual"
    assert decision.reasons == [
        f"playbook {AUTO} failed its last 3 executions in a row (NEURALOPS_STORM_MAX_FAILURES=3)"
    ]
    _incident(database_url, end="succeeded")  # one success resets the streak
    assert decide_mode(_manifest(AUTO), settings=settings, url=database_url).mode == "auto"


def test_every_reason_is_listed(database_url: URL) -> None:
    for _ in range(2):
        _incident(database_url, playbook_id=MANUAL, end="failed")
    settings = _settings(kill_switch=True, storm_max_incidents=1, storm_max_failures=2)
    decision = decide_mode(_manifest(MANUAL), settings=settings, url=database_url)
    assert decision.mode == "manual"
    assert len(decision.reasons) == 4
    assert decision.reasons[0] == f"playbook {MANUAL} is manual"
    assert decision.reasons[1] == "kill switch is on (NEURALOPS_KILL_SWITCH)"
    assert decision.reasons[2].startswith("incident storm: 2 incidents")
    assert decision.reasons[3].startswith(f"playbook {MANUAL} failed its last 2 executions")
    assert decision.reason == "; ".join(decision.reasons)
