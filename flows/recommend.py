"""The recommend flow: which playbooks fix this incident (a stored signal, or one described)."""

from __future__ import annotations

from typing import Any

from prefect import flow
from prefect.artifacts import create_markdown_artifact, create_table_artifact
from prefect.states import Failed

from flows.forms import param
from neuralops.errors import InvalidInput
from neuralops.hooks import run_logger_hooks
from neuralops.recommend import MAX_TOP, RecommendResult
from tasks.recommend import as_incident, as_text_incident, recommend_incident, signal_incident

ARTIFACT_KEY = "recommendation"


EMPTY_FORM = (
    "Nothing to recommend for: fill in one of Incident, in words (what is wrong and where, "
    "e.g. 'payments-api pods OOMKilled in namespace payments') or Signal id (a recorded "
    "signal: `neuralops signals list`, or the detect run's detect-signals artifact). "
    "Give exactly one of signal_id or incident."
)


@flow(name="recommend", log_prints=False, **run_logger_hooks())
def recommend(
    incident_text: str = param(
        "",
        "Incident, in words",
        "What is wrong and where, e.g. 'payments-api pods OOMKilled in namespace payments'. "
        "Leave empty when you give a signal id.",
    ),
    signal_id: str = param(
        "",
        "Signal id",
        "A recorded signal's id (neuralops signals list, or the detect-signals artifact). "
        "Leave empty when you describe the incident in words.",
    ),
    top: int = param(
        5, "How many playbooks", f"1 to {MAX_TOP}, best first.", minimum=1, maximum=MAX_TOP
    ),
    incident: dict[str, Any] = param(
        {},
        "Incident, as fields (advanced)",
        'Instead of the text: {alert, summary, labels, symptoms}, e.g. {"alert": '
        '"OOMKilled", "labels": {"namespace": "payments"}}.',
    ),
) -> Any:
    """Rank the registered playbooks for one incident: a recorded signal (``signal_id``), the
    incident in words (``incident_text``) or as fields (``incident``: alert, summary, labels,
    symptoms). Exactly one of them. Publishes the ranking as the table artifact
    ``recommendation`` (or, when no playbook fits, a markdown artifact saying why) and returns
    it as JSON. Nothing filled in (a Quick run) fails the run with what to fill in."""
    signal_id, incident_text = (signal_id or "").strip(), (incident_text or "").strip()
    given = [
        name
        for name, value in (
            ("signal_id", signal_id),
            ("incident_text", incident_text),
            ("incident", incident),
        )
        if value
    ]
    if not given:
        return Failed(message=EMPTY_FORM)
    if len(given) > 1:
        raise InvalidInput(
            "give exactly one of signal_id (a recorded signal), incident_text or incident "
            f"({{alert, summary, labels, symptoms}}), not {' and '.join(given)}"
        )
    if not 1 <= top <= MAX_TOP:
        raise InvalidInput(f"top must be between 1 and {MAX_TOP}, not {top}")
    if signal_id:
        subject = signal_incident(signal_id)
    elif incident_text:
        subject = as_text_incident(incident_text)
    else:
        subject = as_incident(incident)
    result = recommend_incident(subject, top)
    publish(result, signal_id or None)
    return result.model_dump(mode="json")


def publish(result: RecommendResult, signal_id: str | None = None) -> None:
    """The ranking as an artifact an on-call reads in the UI."""
    source = f"signal {signal_id}" if signal_id else "an incident given by hand"
    symptoms = ", ".join(result.symptoms) or "none known"
    about = (
        f"Playbooks for **{result.incident.title() or 'the incident'}** ({source}); "
        f"symptoms: {symptoms} ({result.symptom_source}); model {result.model}"
    )
    excluded = "".join(f"\n- not {e.playbook_id}: {e.reason}" for e in result.excluded)
    if not result.recommendations:
        create_markdown_artifact(
            key=ARTIFACT_KEY,
            markdown=f"**No playbook to recommend.** {result.reason}\n\n{about}{excluded}\n",
            description=f"No recommendation for {source}",
        )
        return
    create_table_artifact(
        key=ARTIFACT_KEY,
        table=[
            {
                "rank": rank,
                "playbook": r.playbook_id,
                "score": r.score,
                "success rate": r.success_rate,
                "similar runs": r.similar_runs,
                "safety mode": r.safety_mode,
                "justification": r.justification,
            }
            for rank, r in enumerate(result.recommendations, start=1)
        ],
        description=about + excluded,
    )
