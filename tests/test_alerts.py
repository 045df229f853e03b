"""POST /alerts: Alertmanager's webhook against a real API server (SQLite and PostgreSQL)."""

from __future__ import annotations

import copy
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from conftest import api_headers, serve_api
from sqlalchemy.engine import URL

from neuralops import registry, signals
from neuralops.runbooks import import_runbooks
from neuralops.settings import get_settings

RUNBOOKS = Path(__file__).parent / "data" / "runbooks"
CRASH_LOOP = {
    "status": "firing",
    "labels": {
        "alertname": "KubePodCrashLooping",
        "namespace": "payments",
        "pod": "payments-api-7d4b9c6f5-x2x9k",
        "container": "api",
        "severity": "warning",
    },
    "annotations": {
        # Worded unlike its runbook, and naming memory: the alias decides, not the words.
        "summary": "payments-api keeps restarting after memory climbs",
        "description": "Pod payments/payments-api-7d4b9c6f5-x2x9k (api) restarted 6 times in 10m.",
    },
    "startsAt": "2026-12-06T10:00:00Z",
    "endsAt": "0001-01-01T00:00:00Z",
    "generatorURL": "http://prometheus:9090/graph?g0.expr=rate%28kube_pod_container_status_restarts_total%5B5m%5D%29+%3E+0&g0.tab=1",
    "fingerprint": "5c1a4bd2e0f1a2b3",
}


def webhook(*alerts: dict, status: str = "firing") -> dict:
    return {
        "version": "4",
        "groupKey": '{}:{alertname="KubePodCrashLooping"}',
        "truncatedAlerts": 0,
        "status": status,
        "receiver": "neuralops",
        "groupLabels": {"alertname": "KubePodCrashLooping"},
        "commonLabels": {"alertname": "KubePodCrashLooping"},
        "commonAnnotations": {},
        "externalURL": "http://alertmanager:9093",
        "alerts": list(alerts),
    }


def resolved(alert: dict) -> dict:
    done = copy.deepcopy(alert)
    done |= {"status": "resolved", "endsAt": "2026-12-06T10:20:00Z"}
    return done


@pytest.fixture
def alerts_api(
    database_url: URL, monkeypatch: pytest.MonkeyPatch
) -> Iterator[tuple[str, dict[str, str]]]:
    monkeypatch.setenv("NEURALOPS_EMBEDDER", "hashing")  # not the subject; MiniLM loads slowly
    get_settings.cache_clear()  # sqlite_url read the settings before: read them again
    registry.add_playbooks(registry.load_manifests([registry.catalogue_dir()]))
    assert import_runbooks(RUNBOOKS, "https://runbooks.example.com").results
    from neuralops.api import create_app

    with serve_api(create_app(database_url)) as base:
        yield base, api_headers("alerts:write")


def post(base: str, headers: dict, body: dict) -> httpx.Response:
    return httpx.post(f"{base}/alerts", json=body, headers=headers, timeout=60)


def test_a_firing_alert_opens_a_signal_and_its_runbook_comes_first(alerts_api) -> None:
    base, headers = alerts_api
    response = post(base, headers, webhook(CRASH_LOOP))
    assert response.status_code == 200, response.text
    body = response.json()
    assert (body["received"], body["opened"]) == (1, 1)
    [outcome] = body["alerts"]
    assert outcome["action"] == "opened" and outcome["alertname"] == "KubePodCrashLooping"
    first = outcome["recommendation"]["recommendations"][0]
    assert first["playbook_id"] == "kube-pod-crash-looping"
    stored = signals.get_signal(outcome["signal_id"])
    assert (stored.rule, stored.method, stored.resolved_at) == (
        "KubePodCrashLooping",
        "alertmanager",
        None,
    )
    assert stored.labels["namespace"] == "payments" and "restarted 6 times" in stored.hint
    assert stored.query == "rate(kube_pod_container_status_restarts_total[5m]) > 0"


def test_alias_matching_ignores_case(alerts_api) -> None:
    base, headers = alerts_api
    shouting = copy.deepcopy(CRASH_LOOP)
    shouting["labels"]["alertname"] = "KUBEPODCRASHLOOPING"
    [outcome] = post(base, headers, webhook(shouting)).json()["alerts"]
    assert (
        outcome["recommendation"]["recommendations"][0]["playbook_id"] == "kube-pod-crash-looping"
    )


def test_resends_are_idempotent_and_resolved_closes(alerts_api) -> None:
    base, headers = alerts_api
    other = copy.deepcopy(CRASH_LOOP)
    other["labels"]["pod"] = "payments-api-7d4b9c6f5-q8w2z"
    first = post(base, headers, webhook(CRASH_LOOP, other)).json()
    assert first["opened"] == 2
    ids = [a["signal_id"] for a in first["alerts"]]
    assert len(set(ids)) == 2  # two label sets, two signals
    again = post(base, headers, webhook(CRASH_LOOP, other)).json()  # Alertmanager re-sends
    assert (again["opened"], again["repeated"]) == (0, 2)
    assert [a["signal_id"] for a in again["alerts"]] == ids
    closed = post(base, headers, webhook(resolved(CRASH_LOOP), status="resolved")).json()
    [outcome] = closed["alerts"]
    assert (outcome["action"], outcome["signal_id"], outcome["recommendation"]) == (
        "closed",
        ids[0],
        None,
    )
    stored = signals.get_signal(ids[0])
    assert stored.resolved_at is not None and stored.resolved_at.isoformat().startswith(
        "2026-12-06T10:20"
    )
    assert signals.get_signal(ids[1]).resolved_at is None  # the other pod still fires
    # The resolved notification again, and a late firing re-send of that episode: no change.
    assert post(base, headers, webhook(resolved(CRASH_LOOP))).json()["alerts"][0]["action"] == (
        "already_closed"
    )
    late = post(base, headers, webhook(CRASH_LOOP)).json()["alerts"][0]
    assert (late["action"], late["signal_id"]) == ("already_closed", ids[0])
    # It fires again later: a new episode, a new signal.
    anew = copy.deepcopy(CRASH_LOOP) | {"startsAt": "2026-12-06T11:00:00Z"}
    reopened = post(base, headers, webhook(anew)).json()["alerts"][0]
    assert reopened["action"] == "opened" and reopened["signal_id"] not in ids


def test_bad_payloads_and_missing_scope(alerts_api) -> None:
    base, headers = alerts_api
    no_name = copy.deepcopy(CRASH_LOOP)
    del no_name["labels"]["alertname"]
    response = post(base, headers, webhook(no_name))
    assert response.status_code == 422
    [problem] = response.json()["detail"]
    assert problem["loc"] == ["body", "alerts", 0, "labels"] and "alertname" in problem["msg"]
    wrong_version = webhook(CRASH_LOOP) | {"version": "3"}
    response = post(base, headers, wrong_version)
    assert response.status_code == 422 and response.json()["detail"][0]["loc"] == [
        "body",
        "version",
    ]
    assert post(base, headers, webhook()).status_code == 422  # no alerts
    assert post(base, api_headers("recommend"), webhook(CRASH_LOOP)).status_code == 403
    assert httpx.post(f"{base}/alerts", json=webhook(CRASH_LOOP)).status_code == 401
