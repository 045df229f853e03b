"""The recommend flow: which playbooks fix this incident (a stored signal, or one described)."""

from __future__ import annotations

from typing import Any

from prefect import flow
from prefect.artifacts import create_markdown_artifact, create_table_artifact

from neuralops.errors import InvalidInput
from neuralops.hooks import run_logger_hooks
from neuralops.recommend import MAX_TOP, RecommendResult
from tasks.recommend import as_incident, recommend_incident, signal_incident

ARTIFACT_KEY = "recommendation"


@flow(name="recommend", log_prints=False, **run_logger_hooks())
def recommend(
    signal_id: str | None = None, incident: dict[str, Any] | None = None, top: int = 5
) -> dict[str, Any]:
    """Rank the registered playbooks for one incident: a recorded signal (``signal_id``) or an
    incident described by hand (``incident``: alert, summary, labels, symptoms). Exactly one
    of the two. Publishes the ranking as the table artifact ``recommendation`` (or, when no
    playbook fits, a markdown artifact saying why) and returns it as JSON."""
    if (signal_id is None) == (incident is None):
        raise InvalidInput(
            "give exactly one of signal_id (a recorded signal) or incident "
            "({alert, summary, labels, symptoms})"
        )
    if not 1 <= top <= MAX_TOP:
        raise InvalidInput(f"top must be between 1 and {MAX_TOP}, not {top}")
    subject = signal_incident(signal_id) if signal_id is not None else as_incident(incident)
    result = recommend_incident(subject, top)
    publish(result, signal_id)
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
