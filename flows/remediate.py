"""The remediate flow: suggest → dry-run → approval in the Prefect UI → execute → verify.

The incident in the database is the flow's state: each step moves it on (and writes its
audit entry), and a flow that restarts — resumed after a suspend, or re-run — picks up from
the incident's state instead of repeating steps. Started by the deployment trigger on
``neuralops.signal.detected`` events marked actionable (prefect.yaml), or ad hoc.

Approval: run from a deployment, the flow *suspends* (no worker is held while a human
decides); run in-process it *pauses*. Either way it waits for an ``ApprovalDecision``
typed in the run page's Resume form. The form shows the plan it approves (playbook, version,
plan digest, steps) and carries that digest; the approval binds to it and execution refuses
any other plan. A token that does not prove an org-admin approver for this incident, or a
digest that is not the incident's, leaves the run waiting (a new pause, with the reason as
an artifact and an ``approval.refused`` audit entry) until the approval deadline, when the
incident expires.
"""

from __future__ import annotations

import time
from datetime import UTC, datetime
from typing import Any

from prefect import flow, get_run_logger
from prefect.artifacts import create_markdown_artifact, create_table_artifact
from prefect.concurrency.sync import concurrency
from prefect.context import get_run_context
from prefect.exceptions import FlowPauseTimeout

from neuralops import incidents, remediation
from neuralops.hooks import run_logger_hooks
from neuralops.remediation import ApprovalDecision
from neuralops.settings import get_settings
from tasks.remediate import (
    APPROVAL_KEY,
    check_approval,
    decide,
    dry_run,
    ensure_cluster_limit,
    execute,
    fired_approvals,
    pause_for_approval,
    repair_resume_form,
    resume_form,
    stored_decision,
    suggest,
    suspend_for_approval,
    verify_outcome,
)

POLL_S = 2  # how often a paused run asks the server whether it was resumed


@flow(name="remediate", log_prints=False, persist_result=True, **run_logger_hooks())
def remediate(
    signal_id: str | None = None,
    playbook_id: str | None = None,
    incident: dict[str, Any] | None = None,
    parameters: dict[str, Any] | None = None,
    cluster: str | None = None,
    fail_steps: list[str] | None = None,
    approval_block: str | None = None,
    vault_block: str | None = None,
) -> dict[str, Any]:
    """Remediate a signal (``signal_id``) or an incident payload: the recommended playbook,
    or ``playbook_id``, with ``parameters`` overriding those read from the labels. Runs on
    the local runtime (the mock cluster) unless ``cluster`` names a registered cluster.
    ``fail_steps`` (tests and drills) makes those steps fail in the mock cluster.
    ``approval_block`` / ``vault_block`` name the NeuralOps Approval Keys / Vault blocks to
    use instead of the environment's settings."""
    settings = get_settings()
    flow_run = get_run_context().flow_run
    current = incidents.find_by_flow_run(flow_run.id)
    if current is None:
        try:
            current = suggest(signal_id, incident, playbook_id, parameters, cluster, flow_run.id)
        except incidents.AlreadyOpen as duplicate:
            return _already_handled(duplicate.incident)
        _publish_incident(current)
    if current.state == "suggested":
        current = dry_run(current.id, fail_steps, vault_block)
        _publish_dry_run(current)
    if current.state == "dry_run_passed":
        current = decide(current.id)
        _publish_decision(current)
    if current.state == "awaiting_approval":
        current = _wait_for_approval(
            current, from_deployment=flow_run.deployment_id is not None, block=approval_block
        )
    if current.state == "approved":
        limit = f"remediate-cluster-{current.cluster or 'local'}"
        ensure_cluster_limit(limit, settings.max_remediations_per_cluster)
        with concurrency(limit, occupy=1):
            current = execute(current.id, fail_steps, vault_block)
    if current.state == "executing":  # a previous attempt died mid-execution
        current = incidents.transition(
            current.id,
            "failed",
            actor=remediation.ACTOR,
            payload={"reason": "the execution was interrupted; check the cluster by hand"},
        )
    if current.state in ("succeeded", "failed") and current.run_id and current.outcome is None:
        if current.state == "succeeded" and settings.settle_s:
            time.sleep(settings.settle_s)  # let the change take effect before re-checking
        current = verify_outcome(current.id)
    _publish_result(current)
    return {
        "incident_id": str(current.id),
        "state": current.state,
        "playbook_id": current.playbook_id,
        "outcome": current.outcome,
        "run_id": current.run_id,
    }


def _wait_for_approval(
    current: incidents.IncidentOut, *, from_deployment: bool, block: str | None
) -> incidents.IncidentOut:
    """Pause (or suspend) until a valid decision arrives or the deadline passes.

    One pause per attempt, keyed ``approval-0``, ``approval-1``, ...: the attempt number is
    read from Prefect itself (the pause keys this run has fired), never from a count another
    process can change (a refusal by ``neuralops approve`` writes an audit entry too). A
    suspended run replays from the top when resumed: the decision stored at its latest pause
    is checked first; refused, the run pauses at the next key, with the same form."""
    logger = get_run_logger()
    form = approval_form(current)
    flow_run_id = get_run_context().flow_run.id
    fired = fired_approvals(flow_run_id)
    attempt = fired[-1] + 1 if fired else 0
    unchecked = f"{APPROVAL_KEY}{fired[-1]}" if fired else None  # resumed from it: replaying
    while current.state == "awaiting_approval":
        remaining = (current.expires_at - datetime.now(UTC)).total_seconds()
        if remaining <= 0:
            return remediation.expire(current.id)
        if unchecked is not None:
            key, unchecked = unchecked, None
            decision = stored_decision(flow_run_id, key, form)
            if decision is None:
                logger.warning("the pause %s was resumed without a decision: waiting again", key)
                continue
        else:
            key, attempt = f"{APPROVAL_KEY}{attempt}", attempt + 1
            logger.info(
                "waiting for approval of incident %s (%s; attempt %s)",
                current.id,
                current.mode_reason,
                key,
            )
            try:
                if from_deployment:
                    decision = suspend_for_approval(key=key, timeout=int(remaining) + 1, form=form)
                else:
                    # Survives a Prefect server outage longer than the client's own retries.
                    decision = pause_for_approval(
                        key=key, timeout=int(remaining) + 1, poll_interval=POLL_S, form=form
                    )
            except FlowPauseTimeout:
                return remediation.expire(current.id)
        current, refusal = check_approval(current.id, decision, block)
        if refusal:
            logger.warning(
                "approval of incident %s refused (%s): %s; waiting again until %s UTC",
                current.id,
                key,
                refusal,
                f"{current.expires_at:%Y-%m-%d %H:%M}",
            )
            create_markdown_artifact(
                key=REFUSED_ARTIFACT,
                markdown=refusal_markdown(current, refusal, via="the Resume form"),
                description=f"Incident {current.id}: the last approval attempt was refused",
            )
    return current


REFUSED_ARTIFACT = "approval-refused"  # one key: the run page shows the latest refusal


def refusal_markdown(current: incidents.IncidentOut, refusal: str, *, via: str) -> str:
    """The artifact a refused approval leaves on the run: why, until when, how to retry."""
    return "\n".join(
        [
            "### Approval refused",
            "",
            f"An approval of incident `{current.id}` given through {via} was refused "
            f"at {datetime.now(UTC):%Y-%m-%d %H:%M:%S} UTC:",
            "",
            f"> {refusal}",
            "",
            "Nothing was executed. The run is waiting again with the same plan "
            f"(plan digest `{current.plan_digest or 'none'}`) until "
            f"**{current.expires_at:%Y-%m-%d %H:%M} UTC**; after that the incident expires.",
            "",
            "To retry: press **Resume** on this run with a token from the identity provider "
            "for this incident (org-admin role, your id as its subject), or from a terminal "
            "(in the NeuralOps checkout, or with `neuralops` on PATH where it is installed):",
            "",
            "```",
            f".venv/bin/neuralops approve {current.id} --approver <your id> --token <JWT>",
            f"neuralops approve {current.id} --approver <your id> --token <JWT>",
            "```",
        ]
    )


def repair_approval_form(current: incidents.IncidentOut) -> list[str]:
    """Re-create the Resume form of the incident's waiting run if Prefect lost it (the form
    is saved in a separate call after the pause; a server restart in between left the run
    unresumable: "Run input schema not found"). The input keys written, usually none."""
    if current.state != "awaiting_approval" or current.flow_run_id is None:
        return []
    return repair_resume_form(current.flow_run_id, approval_form(current))


def approval_form(current: incidents.IncidentOut) -> type[ApprovalDecision]:
    """The Resume form: an ``ApprovalDecision`` whose description is the plan it approves
    (playbook, version, plan digest, steps) and whose plan digest is filled in with it. The
    same for every attempt of an incident, so it can be re-created to repair a lost one."""
    from pydantic import Field, create_model

    base = resume_form(ApprovalDecision)
    field = ApprovalDecision.model_fields["plan_digest"]
    choice = ApprovalDecision.model_fields["decision"]
    form = create_model(
        base.__name__,
        __base__=base,
        # The plan in the Decision field's help: the UI (3.8.8) shrinks the description above
        # the form to a small scrolled box when the window is not tall, hiding the plan there.
        decision=(
            choice.annotation,
            Field(title=choice.title, description=decision_help(current)),
        ),
        plan_digest=(
            str | None,
            Field(
                current.plan_digest,
                pattern=remediation.DIGEST_PATTERN,
                title=field.title,
                description=field.description,
            ),
        ),
    )
    form._description = approval_description(current)  # what Prefect shows above the form
    return form


def decision_help(current: incidents.IncidentOut) -> str:
    """The Decision field's help: the action an approval lets run and the plan digest it
    binds to, in a few lines (the whole plan is in the description above the form)."""
    record = current.dry_run or {}
    changes = [_short_change(c) for c in record.get("changes") or []]
    what = "which changes:" if changes else f"{len(record.get('steps') or [])} steps (above)."
    return "\n".join(
        [
            f"**approve** runs this plan only (plan digest `{(current.plan_digest or '-')[:12]}…`,"
            f" the field below): {current.playbook_id} {record.get('version', '?')} on "
            f"{current.cluster or 'the local runtime (mock cluster)'}, {what}",
            "",
            *(f"- {c}" for c in changes),
            *([""] if changes else []),
            "**reject** ends the incident: nothing runs.",
        ]
    )


def _short_change(change: str) -> str:
    """A dry-run change (object: field path: old → new, as the dry-run artifact lists it) in a
    few words for a form field: the object, the path's last parts, **old → new**."""
    parts = [p.strip("` ") for p in change.split(": ", 2)]
    if len(parts) < 3:
        return change.replace("`", "")
    obj, path, values = parts
    tail = path.split(".")
    field = path if len(tail) <= 4 else "…" + ".".join(tail[-4:])
    return f"{obj} {field}: **{values.replace('`', '')}**"


def approval_description(current: incidents.IncidentOut) -> str:
    """Markdown above the Resume form: exactly what an approval lets run."""
    record = current.dry_run or {}
    return "\n".join(
        [
            f"### Approve incident {current.id}",
            "",
            f"Runs `{current.playbook_id}` {record.get('version', '?')}, plan digest "
            f"`{(current.plan_digest or 'none')[:12]}…`. The approval is for this plan only: "
            "if the registered playbook changes before execution (a new version, other "
            "steps), execution is refused.",
            "",
            "```",
            *remediation.plan_lines(current),
            "```",
        ]
    )


def _already_handled(other: incidents.IncidentOut) -> dict[str, Any]:
    """A second run for a signal (an event delivered twice, an ad-hoc run): nothing to do."""
    get_run_logger().warning(
        "signal %s is already being remediated by incident %s (%s): nothing done",
        other.signal_id,
        other.id,
        other.state,
    )
    create_markdown_artifact(
        key="remediation-duplicate",
        markdown=f"## Nothing done\n\nSignal `{other.signal_id}` is already being remediated "
        f"by incident `{other.id}` ({other.state}), flow run `{other.flow_run_id or '-'}`: "
        "one remediation per signal at a time.",
        description=f"Incident {other.id} already handles this signal",
    )
    return {
        "incident_id": str(other.id),
        "state": "duplicate",
        "playbook_id": other.playbook_id,
        "outcome": None,
        "run_id": None,
    }


def _publish_incident(current: incidents.IncidentOut) -> None:
    """What the operator decides from: the incident, its signal with the metric around it,
    the recommendation (each justification whole) and the similar past runs."""
    from neuralops import evidence

    rows = [
        {
            "rank": i,
            "playbook": r["playbook_id"],
            "score": round(r["score"], 3),
            "success rate": "-" if r["success_rate"] is None else f"{r['success_rate']:.0%}",
            "similar runs": r["similar_runs"],
            "safety": r["safety_mode"],
            "justification": r["justification"],
        }
        for i, r in enumerate(current.recommendations, start=1)
    ]
    create_table_artifact(
        key="remediation-recommendation",
        table=rows or [{"result": "no recommendation"}],
        description=f"Incident {current.id}: the ranked playbooks and why (each justification "
        "in full: the remediation-incident artifact)",
    )
    signal, around = _signal_evidence(current)
    past = [
        f"| {e['run_id']} | {r['playbook_id']} | {e['status']} | {e['similarity']:.2f} | "
        f"{e.get('resource') or '-'} | {e.get('provenance') or '-'}"
        f"{'' if e.get('counted', True) else ' (reported: not counted)'} |"
        for r in current.recommendations[:3]
        for e in r["evidence"]
    ]
    params = "\n".join(f"| `{k}` | `{v}` |" for k, v in (current.parameters or {}).items())
    create_markdown_artifact(
        key="remediation-incident",
        markdown="\n".join(
            [
                f"## Incident {current.id}",
                "",
                *([f"> {signal.hint}", ""] if signal is not None else []),
                f"**Playbook:** `{current.playbook_id or 'none'}`  ",
                f"**Signal:** `{current.signal_id or '-'}`  ",
                f"**Cluster:** {current.cluster or 'local runtime (mock cluster)'}",
                "",
                *evidence.signal_markdown(signal, around),
                "",
                *evidence.recommendation_markdown(current.recommendations),
                "",
                "### Parameters",
                "",
                "| parameter | value |",
                "| --- | --- |",
                params or "| - | - |",
                "",
                "### Evidence: similar past runs",
                "",
                "| run | playbook | outcome | similarity | resource | source |",
                "| --- | --- | --- | ---: | --- | --- |",
                *(past or ["| - | - | - | - | - | - |"]),
            ]
        ),
        description=f"Incident {current.id}: the signal, the metric around it, the "
        "recommendation and what was done before",
    )


def _signal_evidence(current: incidents.IncidentOut) -> tuple[Any, Any]:
    """(the incident's signal, its series around the incident), or (None, None) without a
    signal. Never fails the run: a source that does not answer is shown as the reason."""
    from neuralops import evidence, signals

    if current.signal_id is None:
        return None, None
    try:
        signal = signals.get_signal(current.signal_id)
    except Exception as exc:  # the artifact is evidence, not a step: never fail the run
        get_run_logger().warning("signal %s not readable: %s", current.signal_id, exc)
        return None, None
    around = evidence.signal_series(signal, get_settings())
    if around.missing:
        get_run_logger().info("series of signal %s not available: %s", signal.id, around.missing)
    return signal, around


def _publish_dry_run(current: incidents.IncidentOut) -> None:
    """The dry-run: every check with its verdict, what changes against the objects' current
    state, the diff."""
    from neuralops import evidence

    create_markdown_artifact(
        key="remediation-dry-run",
        markdown=evidence.dry_run_markdown(
            current.dry_run or {}, current.plan_digest, current.playbook_id
        ),
        description=f"Incident {current.id}: dry-run verdict, policy checks and the diff "
        "against the current state",
    )


def _publish_decision(current: incidents.IncidentOut) -> None:
    """Why the remediation waits for a person (manual mode, kill switch, storm breaker...),
    or why policy let it run: the safety decision's reasons and every gate's state."""
    from neuralops import evidence

    reasons = [r for r in (current.mode_reason or "").split("; ") if r]
    create_markdown_artifact(
        key="remediation-approval",
        markdown=evidence.approval_reasons_markdown(
            current.mode,
            reasons,
            expires_at=current.expires_at,
            plan_lines=remediation.plan_lines(current),
        ),
        description=f"Incident {current.id}: why it waits for approval"
        if current.mode != "auto"
        else f"Incident {current.id}: approved by policy (auto mode)",
    )


def _publish_result(current: incidents.IncidentOut) -> None:
    from neuralops import audit

    trail = audit.recent(subject=f"incident:{current.id}", limit=100)
    create_table_artifact(
        key="remediation-audit",
        table=[
            {
                "seq": e.seq,
                "at": f"{e.created_at:%Y-%m-%d %H:%M:%S}",
                "actor": e.actor,
                "action": e.action,
                "hash": e.hash[:16],
            }
            for e in reversed(trail)
        ]
        or [{"result": "no audit entries"}],
        description=f"Incident {current.id}: its audit entries, oldest first (hash-chained; "
        "neuralops audit verify checks the whole chain)",
    )
    create_markdown_artifact(
        key="remediation-result",
        markdown="\n".join(
            [
                f"## Incident {current.id}: {current.state}",
                "",
                f"- playbook: `{current.playbook_id or '-'}`",
                f"- mode: {current.mode or '-'} ({current.mode_reason or 'n/a'})",
                f"- approver: {current.approver or '-'}",
                f"- execution run: `{current.run_id or '-'}`",
                f"- outcome: {current.outcome or '-'}",
            ]
        ),
        description=f"Incident {current.id}: how it ended (audit trail: neuralops audit list "
        f"--subject incident:{current.id})",
    )
