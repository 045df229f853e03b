"""What the recommender is asked about: an incident, from a signal, an alert or free text.

An incident is an alert name, labels and a one-line summary — the same three things a run
logs in ``inputs.alert`` — plus the symptoms it shows, as catalogue tags (``oom-killed``,
``quota-exceeded``...). Symptoms decide which playbooks must not be used, so where they come
from matters:

- declared: ``symptoms`` given with the incident, or the ``symptom`` label (comma-separated)
  that a detection rule adds to its signals and an Alertmanager rule can carry;
- inferred: only when none is declared, from words in the alert name and summary
  ("OOMKilled", "no space left on device", "exceeded quota"...), see ``SYMPTOM_PATTERNS``.

The resource is what a remediation would act on, ``namespace/service``: the key for
"this playbook failed here recently".
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from neuralops.embedding import incident_fields, incident_parts

# Words that name a catalogue symptom in alert names, summaries and signal hints. Matched
# case-insensitively on the text with CamelCase split ("OOMKilled" -> "oom killed").
SYMPTOM_PATTERNS: dict[str, tuple[str, ...]] = {
    "oom-killed": (r"\boom ?kill", r"\bout of memory\b", r"\bexit code 137\b", r"\boom\b"),
    "memory-exhaustion": (r"\bmemory (limit|exhaust|pressure|working set|usage)",),
    "memory-leak": (r"\bmemory leak",),
    "cpu-throttling": (r"\bcpu throttl", r"\bthrottled\b"),
    "high-latency": (r"\blatency\b", r"\bp99\b", r"\bslow (response|request)s?\b"),
    "error-rate": (r"\b5xx\b", r"\berror (rate|ratio)\b"),
    "traffic-spike": (r"\btraffic spike\b", r"\brequest rate spike\b"),
    "hpa-at-max": (r"\bhpa\b", r"\bmax ?replicas\b"),
    "insufficient-replicas": (r"\binsufficient replicas\b", r"\breplicas? unavailable\b"),
    "crash-loop": (r"\bcrash ?loop", r"\bback-?off restarting\b"),
    "stuck-rollout": (r"\bstuck rollout\b", r"\bprogress deadline\b"),
    "bad-deploy": (r"\bbad deploy", r"\bregression after (the )?deploy"),
    "config-error": (r"\bconfig(uration)? error\b", r"\binvalid config"),
    "image-pull-error": (r"\bimage ?pull", r"\berr ?image ?pull\b"),
    "pod-pending": (r"\bpods? pending\b", r"\bunschedulable\b", r"\bfailed ?scheduling\b"),
    "quota-exceeded": (r"\bquota\b",),
    "volume-full": (r"\bvolume (usage|full)\b", r"\bvolume \S+ \d+% full\b", r"\bpvc\b.*\bfull\b"),
    "disk-full": (r"\bdisk full\b", r"\bno space left\b"),
    "node-disk-pressure": (r"\bdisk ?pressure\b",),
    "node-not-ready": (r"\bnot ?ready\b",),
    "replication-lag": (r"\breplication lag\b",),
    "primary-down": (r"\bprimary (is )?(down|unavailable)\b",),
    "connection-saturation": (
        r"\bconnection (slots|saturat|pool)",
        r"\btoo many connections\b",
    ),
    "lock-contention": (r"\block (contention|wait)", r"\bdeadlock"),
    "slow-queries": (r"\bslow quer", r"\bstatement timeout\b"),
    "long-running-queries": (r"\blong[- ]running quer",),
    "table-bloat": (r"\bbloat",),
    "backup-stale": (r"\bbackup (is )?(stale|missing|old)",),
    "certificate-expiry": (r"\bcert(ificate)? (expir|expired)",),
    "tls-errors": (r"\btls (error|handshake)", r"\bx509\b"),
    "job-failed": (r"\bjob failed\b", r"\bbackoff ?limit ?exceeded\b"),
    "hung-process": (r"\bhung\b", r"\bunresponsive\b"),
}
_COMPILED = {tag: [re.compile(p) for p in pats] for tag, pats in SYMPTOM_PATTERNS.items()}
_CAMEL = re.compile(r"(?<=[a-z0-9])(?=[A-Z])|(?<=[A-Z])(?=[A-Z][a-z])")
_TAG = re.compile(r"^[a-z0-9]+(-[a-z0-9]+)*$")
# Labels naming the workload, most specific last-resort first.
_WORKLOAD_LABELS = ("service", "deployment", "statefulset", "daemonset", "job", "app", "container")
_POD_SUFFIX = re.compile(r"-(?=[a-z]*\d)[a-z0-9]{6,10}-[a-z0-9]{5}$|-[a-z0-9]{5}$|-\d+$")


def infer_symptoms(text: str) -> list[str]:
    """Catalogue symptom tags named in free text, in ``SYMPTOM_PATTERNS`` order."""
    words = _CAMEL.sub(" ", text).lower().replace("_", " ")
    return [tag for tag, patterns in _COMPILED.items() if any(p.search(words) for p in patterns)]


def resource_of(labels: Mapping[str, Any]) -> str | None:
    """``namespace/workload`` from alert or signal labels; a pod name loses its suffix."""
    namespace = str(labels.get("namespace") or "").strip()
    workload = next((str(labels[k]) for k in _WORKLOAD_LABELS if labels.get(k)), "")
    if not workload and labels.get("pod"):
        workload = _POD_SUFFIX.sub("", str(labels["pod"]))
    if not namespace and not workload:
        return None
    return f"{namespace or '-'}/{workload or '-'}"


def run_resource(record: Mapping[str, Any]) -> str | None:
    """The resource a logged run acted on, from its alert labels or parameters."""
    inputs = record.get("inputs") if isinstance(record.get("inputs"), Mapping) else {}
    _, labels, _ = incident_fields(inputs)
    params = inputs.get("parameters") if isinstance(inputs.get("parameters"), Mapping) else {}
    merged = {**params, **{k: v for k, v in labels.items() if v}}
    if "service" not in merged and params.get("target"):
        merged["service"] = params["target"]
    return resource_of(merged)


def run_symptoms(record: Mapping[str, Any]) -> list[str]:
    """Symptom tags of the incident a logged run handled: its ``symptom`` label, else the
    ones its alert name and summary name."""
    inputs = record.get("inputs") if isinstance(record.get("inputs"), Mapping) else {}
    alert, labels, summary = incident_fields(inputs)
    declared = [t.strip() for t in str(labels.get("symptom") or "").split(",") if t.strip()]
    return declared or infer_symptoms(" ".join(filter(None, [alert, summary])))


class Incident(BaseModel):
    """An incident to recommend for: at least an alert name, a summary or labels."""

    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True)

    alert: str | None = Field(
        None, max_length=200, description="Alert name, e.g. KubePodOOMKilled or a rule name."
    )
    summary: str | None = Field(
        None, max_length=2000, description="One line saying what is wrong, as an on-call would."
    )
    labels: dict[str, str] = Field(
        default_factory=dict,
        max_length=50,
        description="Alert labels: namespace, service, pod, severity, symptom...",
    )
    symptoms: list[str] = Field(
        default_factory=list,
        max_length=20,
        description="Catalogue symptom tags (oom-killed, quota-exceeded...), if known.",
    )

    @field_validator("symptoms")
    @classmethod
    def _tags(cls, value: list[str]) -> list[str]:
        for tag in value:
            if not _TAG.match(tag):
                raise ValueError(f"symptom {tag!r} is not a tag like 'oom-killed'")
        return value

    @model_validator(mode="after")
    def _not_empty(self) -> Incident:
        if not (self.alert or self.summary or any(v.strip() for v in self.labels.values())):
            raise ValueError("the incident is empty: give an alert name, a summary or labels")
        return self

    @classmethod
    def from_text(cls, text: str) -> Incident:
        return cls(summary=text)

    @classmethod
    def from_run_inputs(cls, inputs: Mapping[str, Any]) -> Incident:
        """The incident a logged run was started for (``inputs.alert`` or ``inputs.incident``)."""
        alert, labels, summary = incident_fields(inputs)
        return cls(
            alert=alert,
            summary=summary,
            labels={str(k): str(v) for k, v in labels.items() if v is not None and k != "summary"},
        )

    @property
    def symptom_source(self) -> Literal["declared", "inferred", "none"]:
        if self.declared_symptoms():
            return "declared"
        return "inferred" if self.known_symptoms() else "none"

    def declared_symptoms(self) -> list[str]:
        labelled = [t.strip() for t in self.labels.get("symptom", "").split(",") if t.strip()]
        return list(dict.fromkeys([*self.symptoms, *labelled]))

    def known_symptoms(self) -> list[str]:
        """Declared symptoms, or failing those the ones the alert name and summary name."""
        return self.declared_symptoms() or infer_symptoms(
            " ".join(filter(None, [self.alert, self.summary]))
        )

    @property
    def resource(self) -> str | None:
        return resource_of(self.labels)

    def text(self) -> str:
        """What is embedded and searched: the incident part of a run summary."""
        return "; ".join(incident_parts(self.alert, self.labels, self.summary))

    def title(self) -> str:
        """Short name for justifications ("7 of 8 similar <title> incidents"): the alert name,
        else its symptoms, else the start of the summary, else "such"."""
        if self.alert:
            return self.alert
        if symptoms := self.known_symptoms():
            return "/".join(symptoms)
        summary = self.summary or ""
        if not summary:
            return "such"
        return summary if len(summary) <= 40 else summary[:39].rstrip() + "…"
