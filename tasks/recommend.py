"""Recommendation tasks: the incident a signal describes, and the ranked playbooks for one."""

from __future__ import annotations

from typing import Any

from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE
from pydantic import ValidationError

from neuralops import signals
from neuralops.errors import InvalidInput
from neuralops.incident_model import Incident
from neuralops.recommend import RecommendResult, incident_from_signal, recommender_from_settings
from tasks import IO_RETRIES


def as_incident(incident: dict[str, Any] | Incident) -> Incident:
    """An incident from a flow parameter; a bad one is ``InvalidInput`` naming the field."""
    if isinstance(incident, Incident):
        return incident
    try:
        return Incident.model_validate(incident)
    except ValidationError as exc:
        raise InvalidInput.from_validation(exc, "incident") from exc


@task(name="signal-incident", cache_policy=NO_CACHE, **IO_RETRIES)
def signal_incident(signal_id: str) -> Incident:
    """The stored signal as an incident (its rule, hint and labels); unknown ids are NotFound,
    never retried."""
    return incident_from_signal(signals.get_signal(signal_id))


@task(name="recommend-playbooks", cache_policy=NO_CACHE, **IO_RETRIES)
def recommend_incident(incident: dict[str, Any] | Incident, top: int = 5) -> RecommendResult:
    """The ``top`` registered playbooks for ``incident``, best first, or none and the reason.
    An unreachable vector store or database is retried; a bad incident or an empty registry
    is not. A fallback to the hashing embedder is logged as a warning."""
    incident = as_incident(incident)
    recommender, warning = recommender_from_settings()
    if warning:
        get_run_logger().warning(warning)
    return recommender.recommend(incident, top=top)


def as_text_incident(text: str) -> Incident:
    """An incident described in words (the run form's free text); ``InvalidInput`` if empty."""
    try:
        return Incident.from_text(text)
    except ValidationError as exc:
        raise InvalidInput.from_validation(exc, "incident_text") from exc
