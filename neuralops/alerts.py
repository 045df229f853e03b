"""Alertmanager's webhook: firing alerts become signals (deduplicated), resolved ones close them.

Alertmanager POSTs a group of alerts (webhook payload version 4) on each notification and
again every ``group_interval``/``repeat_interval`` while they fire, so intake is idempotent:

- a firing alert's identity is its label set (``fingerprint("alertmanager", labels)``, the
  same function detection uses; Alertmanager's own ``fingerprint`` is a hash of the same
  labels). No open signal with that fingerprint: a new signal (``rule`` = the alertname,
  verbatim; ``method`` = ``alertmanager``; ``hint`` = summary — description; ``query`` = the
  expression in the rule's ``generatorURL``). An open one: the same signal, ``last_seen_at``
  moves (a re-send is not a new occurrence). A firing re-send of an alert whose signal has
  already closed (same ``startsAt``) changes nothing.
- a resolved alert closes its open signal (``resolved_at`` = its ``endsAt``); resolving one
  already closed, or never seen, changes nothing.

Pure core: no FastAPI here (:mod:`neuralops.api_alerts` serves it).
"""

from __future__ import annotations

import inspect
import uuid
from datetime import UTC, datetime
from typing import Any, Literal
from urllib.parse import parse_qs, urlsplit

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, field_validator
from sqlalchemy.engine import URL

from neuralops.db import session_scope
from neuralops.db.models import InsightSignal, utcnow
from neuralops.incident_model import Incident
from neuralops.recommend import RecommendResult
from neuralops.runs import NoNulStr
from neuralops.signals import (
    SignalIn,
    _latest_by_fingerprint,
    _lock_fingerprints,
    fingerprint,
)

SOURCE = "alertmanager"
MAX_ALERTS = 1000  # per webhook call (Alertmanager's max_alerts, when set, is lower)
MAX_LABELS = 100
MAX_VALUE = 4096
HINT_CHARS = 2000

LabelMap = dict[NoNulStr, NoNulStr]


def _bounded(value: dict[str, str], what: str) -> dict[str, str]:
    if len(value) > MAX_LABELS:
        raise ValueError(f"{len(value)} {what}; at most {MAX_LABELS}")
    for key, text in value.items():
        if len(key) > 256 or len(text) > MAX_VALUE:
            raise ValueError(f"{what[:-1]} {key[:60]!r} is too long (names 256, values 4096)")
    return value


class AlertmanagerAlert(BaseModel):
    """One alert of the group (Alertmanager's ``alerts[]``)."""

    model_config = ConfigDict(extra="ignore", populate_by_name=True)

    status: Literal["firing", "resolved"]
    labels: LabelMap = Field(description="The alert's labels; alertname is required.")
    annotations: LabelMap = Field(default_factory=dict)
    starts_at: AwareDatetime = Field(alias="startsAt")
    ends_at: AwareDatetime | None = Field(None, alias="endsAt")
    generator_url: str = Field("", alias="generatorURL", max_length=MAX_VALUE)
    fingerprint: str = Field("", max_length=64, description="Alertmanager's own (for reference).")

    @field_validator("labels")
    @classmethod
    def _has_alertname(cls, labels: dict[str, str]) -> dict[str, str]:
        _bounded(labels, "labels")
        if not labels.get("alertname", "").strip():
            raise ValueError("needs an alertname label (Alertmanager always sends one)")
        return labels

    @field_validator("annotations")
    @classmethod
    def _bounded_annotations(cls, annotations: dict[str, str]) -> dict[str, str]:
        return _bounded(annotations, "annotations")

    @property
    def alertname(self) -> str:
        return self.labels["alertname"].strip()

    def resolved_time(self) -> datetime:
        """``endsAt`` when Alertmanager set one (a firing alert carries year 1), else now."""
        if self.ends_at is not None and self.ends_at.year > 1:
            return self.ends_at.astimezone(UTC)
        return utcnow()

    def hint(self) -> str:
        summary = self.annotations.get("summary", "").strip()
        description = self.annotations.get("description", "").strip()
        text = " — ".join(t for t in (summary, description) if t) or self.alertname
        return text[:HINT_CHARS]

    def query(self) -> str:
        """The rule's expression, from Prometheus' generatorURL (``?g0.expr=...``)."""
        try:
            found = parse_qs(urlsplit(self.generator_url).query).get("g0.expr", [""])
        except ValueError:
            return ""
        return found[0][:10_000]

    def incident(self) -> Incident:
        """What the recommender is asked: the alert name, summary and description, labels."""
        summary = self.annotations.get("summary", "").strip()
        description = self.annotations.get("description", "").strip()
        text = " ".join(t for t in (summary, description) if t)[:2000] or None
        labels = {k: v for k, v in sorted(self.labels.items()) if k != "alertname"}
        return Incident(
            alert=self.alertname[:200],
            summary=text,
            labels=dict(list(labels.items())[:50]),
        )


class AlertmanagerWebhook(BaseModel):
    """Alertmanager's webhook payload (``version: "4"``), as its docs describe it. Unknown
    fields are ignored, so a newer Alertmanager that adds one is still accepted."""

    model_config = ConfigDict(
        extra="ignore",
        populate_by_name=True,
        json_schema_extra={
            "examples": [
                {
                    "version": "4",
                    "groupKey": '{}:{alertname="KubePodCrashLooping"}',
                    "truncatedAlerts": 0,
                    "status": "firing",
                    "receiver": "neuralops",
                    "groupLabels": {"alertname": "KubePodCrashLooping"},
                    "commonLabels": {"alertname": "KubePodCrashLooping", "severity": "warning"},
                    "commonAnnotations": {},
                    "externalURL": "http://alertmanager:9093",
                    "alerts": [
                        {
                            "status": "firing",
                            "labels": {
                                "alertname": "KubePodCrashLooping",
                                "namespace": "payments",
                                "pod": "payments-api-7d4b9c6f5-x2x9k",
                                "severity": "warning",
                            },
                            "annotations": {
                                "summary": "Pod is crash looping.",
                                "description": "Pod payments/payments-api-7d4b9c6f5-x2x9k is "
                                "in waiting state (reason: CrashLoopBackOff).",
                            },
                            "startsAt": "2026-12-06T10:00:00Z",
                            "endsAt": "0001-01-01T00:00:00Z",
                            "generatorURL": "http://prometheus:9090/graph?g0.expr=...",
                            "fingerprint": "a1b2c3d4e5f60718",
                        }
                    ],
                }
            ]
        },
    )

    version: Literal["4"] = Field(
        description='The webhook payload version; Alertmanager sends "4".'
    )
    group_key: str = Field(alias="groupKey", max_length=MAX_VALUE)
    truncated_alerts: int = Field(0, alias="truncatedAlerts", ge=0)
    status: Literal["firing", "resolved"]
    receiver: str = Field(max_length=256)
    group_labels: LabelMap = Field(default_factory=dict, alias="groupLabels")
    common_labels: LabelMap = Field(default_factory=dict, alias="commonLabels")
    common_annotations: LabelMap = Field(default_factory=dict, alias="commonAnnotations")
    external_url: str = Field("", alias="externalURL", max_length=MAX_VALUE)
    alerts: list[AlertmanagerAlert] = Field(min_length=1, max_length=MAX_ALERTS)


Action = Literal["opened", "repeated", "closed", "already_closed", "not_open"]


class AlertOutcome(BaseModel):
    """What one alert did: its signal, and for a firing alert its recommendation."""

    alertname: str
    status: Literal["firing", "resolved"]
    action: Action = Field(
        description="opened: a new signal; repeated: the open signal (a re-send); closed: its "
        "signal resolved now; already_closed / not_open: nothing to close."
    )
    signal_id: uuid.UUID | None
    fingerprint: str
    recommendation: RecommendResult | None = Field(
        None, description="The recommendation (as POST /recommend answers) for a firing alert."
    )


class AlertsReceived(BaseModel):
    received: int
    opened: int
    repeated: int
    closed: int
    alerts: list[AlertOutcome]


def alert_fingerprint(alert: AlertmanagerAlert) -> str:
    return fingerprint(SOURCE, alert.labels)


def record_alerts(
    alerts: list[AlertmanagerAlert], *, url: URL | None = None, now: datetime | None = None
) -> list[AlertOutcome]:
    """Open, refresh or close the signals of ``alerts`` in one transaction (all or none), in
    the order given; a later alert of the same label set sees what an earlier one did."""
    now = now or utcnow()
    fingerprints = sorted({alert_fingerprint(a) for a in alerts})
    outcomes: list[AlertOutcome] = []
    with session_scope(url) as session:
        _lock_fingerprints(session, fingerprints)
        latest = _latest_by_fingerprint(session, fingerprints)
        for alert in alerts:
            fp = alert_fingerprint(alert)
            stored = latest.get(fp)
            is_open = stored is not None and stored.resolved_at is None
            if alert.status == "resolved":
                if stored is not None and is_open:
                    stored.resolved_at = max(alert.resolved_time(), stored.window_start)
                    stored.window_end = stored.resolved_at
                    action: Action = "closed"
                else:
                    action = "already_closed" if stored is not None else "not_open"
            elif is_open and stored is not None:
                stored.last_seen_at = max(stored.last_seen_at, now)
                stored.window_end = stored.last_seen_at
                action = "repeated"
            elif stored is not None and stored.window_start == alert.starts_at.astimezone(UTC):
                action = "already_closed"  # a late re-send of the episode that has resolved
            else:
                stored = _new_signal(alert, fp, now)
                session.add(stored)
                session.flush()
                latest[fp] = stored
                action = "opened"
            outcomes.append(
                AlertOutcome(
                    alertname=alert.alertname,
                    status=alert.status,
                    action=action,
                    signal_id=stored.id if stored is not None else None,
                    fingerprint=fp,
                )
            )
    return outcomes


def _new_signal(alert: AlertmanagerAlert, fp: str, now: datetime) -> InsightSignal:
    started = alert.starts_at.astimezone(UTC)
    candidate = SignalIn(  # its validator redacts credentials in labels and hint
        rule=alert.alertname[:128],
        query=alert.query(),
        labels=dict(alert.labels),
        value=1.0,
        score=1.0,
        z=None,
        method=SOURCE,
        hint=alert.hint(),
        window_start=started,
        window_end=max(started, now),
        fingerprint=fp,
    )
    return InsightSignal(
        **candidate.model_dump(), last_seen_at=candidate.window_end, created_at=now
    )


def recommend_alert(recommender: Any, alert: AlertmanagerAlert, top: int) -> Any:
    """The recommendation for a firing alert; an exact alias match on its alertname ranks
    that playbook first (where the recommender takes ``alertname``)."""
    incident = alert.incident()
    parameters = inspect.signature(recommender.recommend).parameters
    if "alertname" in parameters:
        return recommender.recommend(incident, top=top, alertname=alert.alertname)
    return recommender.recommend(incident, top=top)


def receive(
    webhook: AlertmanagerWebhook,
    recommender: Any | None,
    *,
    top: int = 3,
    url: URL | None = None,
) -> AlertsReceived:
    """Record the webhook's alerts, then recommend for each firing one (the same text once).
    ``recommender`` None (no playbooks registered): signals are recorded, no recommendation."""
    outcomes = record_alerts(webhook.alerts, url=url)
    answers: dict[str, Any] = {}
    for alert, outcome in zip(webhook.alerts, outcomes, strict=True):
        if alert.status != "firing" or recommender is None:
            continue
        key = alert.incident().model_dump_json()
        if key not in answers:
            answers[key] = recommend_alert(recommender, alert, top)
        outcome.recommendation = answers[key]
    count = {a: sum(o.action == a for o in outcomes) for a in ("opened", "repeated", "closed")}
    return AlertsReceived(received=len(outcomes), alerts=outcomes, **count)
