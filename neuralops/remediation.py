"""The remediation steps, without Prefect: suggest → dry-run → decide → approve → execute →
verify. The ``remediate`` flow (flows/remediate.py) drives them, pausing for approval.

Every step reads the incident from the database and moves it through the state machine
(``neuralops.incidents``), which writes the audit entry in the same transaction, so the flow
can stop at any point (a crash, a suspend) and resume from the incident's state.

Safety by construction:
- nothing runs unsigned: the signature is enforced at dry-run and again right before
  execution, against the pinned public key (``cosign_enforcer``);
- nothing runs unchecked: the rendered steps pass the policy checks and a server-side
  dry-run (the mock cluster's, locally) or the incident ends ``dry_run_failed``; on a
  registered cluster the server-side dry-run is the connector's, right before it applies;
- nothing reaches a cluster but a signed trigger: an incident naming a registered, healthy
  cluster is executed by that cluster's connector (flow ``execute-playbook``, deployment
  ``execute-playbook/cluster-<name>``), sent an ``ExecutionTrigger`` signed here;
- nothing runs unapproved: unless the safety decision is ``auto``, only a valid approval
  token for this incident, naming the approver and carrying org-admin, moves it on;
- nothing runs but what was approved: the dry-run records a plan digest (manifest SHA-256,
  version, rendered steps, parameters, cluster; ``policy.plan_digest``), the approval (or
  the auto decision) binds to it, and execution re-renders from the registered manifest and
  refuses (``execute.refused``, the incident ``failed``) when the digest differs: a playbook
  re-registered after the dry-run never runs under an approval given for the old one;
- nothing goes unrecorded: each step is an audit entry; the execution is logged as a run,
  its status set by the verified outcome, so the recommender learns from what worked.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Collection, Mapping
from datetime import UTC, datetime, timedelta
from typing import Any, Literal

from pydantic import BaseModel, Field, SecretStr
from sqlalchemy import or_
from sqlalchemy.engine import URL

from neuralops import approval, incidents, policy, runs, safety
from neuralops.cosign_enforcer import SignatureRejected, enforce_registered
from neuralops.db import session_scope
from neuralops.db.models import WorkflowRun
from neuralops.errors import InvalidInput
from neuralops.incident_model import Incident, resource_of, run_resource
from neuralops.manifest import Manifest
from neuralops.mock_cluster import RUNTIME, MockCluster
from neuralops.recommend import Recommender, incident_from_signal
from neuralops.signals import find_anomalies, get_signal, range_end
from neuralops.triggers import SignedTrigger, new_trigger, sign_trigger

ACTOR = "neuralops:remediate"
CONNECTOR_DRY_RUN = "server-side dry-run: in the connector at execution"

# Sends a signed trigger to the named cluster's connector and waits: the connector's answer
# ({ok, stage, results, pre_state, post_state}) or, when its run failed or refused the
# trigger, {ok: False, error: <why>}.
Dispatch = Callable[[str, SignedTrigger], Mapping[str, Any]]


def connector_runtime(cluster: str) -> str:
    return f"connector:{cluster}"


DIGEST_PATTERN = r"^[0-9a-f]{64}$"


class ApprovalDecision(BaseModel):
    """What the approver enters (the Resume form and `neuralops approve`)."""

    decision: Literal["approve", "reject"] = Field(
        title="Decision", description="Approve runs the playbook; reject ends the incident."
    )
    approver: str = Field(
        min_length=1,
        max_length=200,
        title="Approver id",
        description="Your id at the identity provider: must equal the token's subject.",
    )
    token: SecretStr = Field(  # secret: never shown in logs, errors or the run's parameters
        min_length=1,
        title="Approval token",
        description="A JWT from the identity provider for this incident, with the org-admin "
        "role (docs/policies/approval_workflow.md).",
    )
    comment: str = Field(
        "", max_length=2000, title="Comment", description="Why: kept in the audit trail."
    )
    plan_digest: str | None = Field(
        None,
        pattern=DIGEST_PATTERN,
        title="Plan digest",
        description="The plan digest you reviewed (the dry-run's, shown above): the approval "
        "is refused if the incident's plan is not this one. Execution runs only this plan.",
    )

    def as_input(self) -> dict[str, Any]:
        """The decision as ``resume_flow_run`` run input (the token revealed for transport)."""
        return self.model_dump() | {"token": self.token.get_secret_value()}


def suggest(
    recommender: Recommender,
    *,
    signal_id: str | None = None,
    incident: Incident | None = None,
    playbook_id: str | None = None,
    parameters: Mapping[str, Any] | None = None,
    cluster: str | None = None,
    flow_run_id: uuid.UUID | None = None,
    url: URL | None = None,
) -> incidents.IncidentOut:
    """Create the incident with its recommendations and the playbook to run (the given one,
    else the best recommendation). With nothing to run the incident ends ``dry_run_failed``
    with the recommender's reason: nothing is ever picked at random."""
    if (signal_id is None) == (incident is None):
        raise InvalidInput("give exactly one of signal_id and incident")
    signal = get_signal(signal_id, url=url) if signal_id else None
    if signal is not None and (handling := incidents.open_for_signal(signal.id, url=url)):
        raise incidents.AlreadyOpen(handling)  # checked again, atomically, on insert
    asked = incident_from_signal(signal) if signal else incident
    result = recommender.recommend(asked, top=5)
    recommendations = [r.model_dump(mode="json") for r in result.recommendations]
    catalogue = recommender.catalogue

    def registered(pid: str | None) -> Manifest | None:
        return catalogue.manifests[catalogue.index[pid]] if pid in catalogue.index else None

    # Runbooks are guidance for a person, never executed: the best remediation runs.
    runnable = [
        r["playbook_id"] for r in recommendations if not _is_runbook(registered(r["playbook_id"]))
    ]
    chosen = playbook_id or (runnable[0] if runnable else None)
    manifest = registered(chosen)
    if chosen and manifest is None:
        raise InvalidInput(f"playbook '{chosen}' is not registered: `neuralops playbook list`")
    resolved: dict[str, Any] = {}
    problem = None
    if manifest is not None and manifest.is_runbook:
        problem = str(policy.GuidanceOnly(manifest))
        manifest = None
    elif chosen is None and recommendations:
        guides = ", ".join(r["playbook_id"] for r in recommendations)
        problem = f"no playbook to run: only runbooks (guidance, never executed) match: {guides}"
    given = dict(parameters or {})
    if manifest is not None and any(p.name == "run_id" for p in manifest.parameters):
        given.setdefault("run_id", uuid.uuid4().hex[:8])  # suffixes Job names: unique per run
    if manifest is not None:
        given = {**precedent_parameters(manifest, asked, url=url), **given}
        try:
            # No fallback to the manifest's examples: an example names some other object,
            # and a remediation must act on this incident's. Missing ones fail the dry-run.
            resolved = policy.resolve_parameters(manifest, given, asked.labels, use_examples=False)
        except InvalidInput as exc:
            problem = str(exc)
    created = incidents.create(
        signal_id=signal.id if signal else None,
        playbook_id=chosen,
        recommendations=recommendations,
        parameters=resolved,
        # Only an explicit cluster: a `cluster` label in Prometheus often names something else
        # (a database cluster, a scrape job's cluster).
        cluster=cluster,
        actor=ACTOR,
        url=url,
    )
    if flow_run_id is not None:
        incidents.attach_flow_run(created.id, flow_run_id, url=url)
    if chosen is None or problem:
        reason = problem or f"no playbook to run: {result.reason}"
        return incidents.transition(
            created.id,
            "dry_run_failed",
            actor=ACTOR,
            payload={"reason": reason},
            dry_run={"ok": False, "reason": reason, "violations": []},
            url=url,
        )
    return incidents.get(created.id, url=url)


def _is_runbook(manifest: Manifest | None) -> bool:
    return manifest is not None and manifest.is_runbook


def precedent_parameters(
    manifest: Manifest,
    incident: Incident,
    *,
    scan: int = 500,
    url: URL | None = None,
    trusted: Collection[str] | None = None,
    now: datetime | None = None,
) -> dict[str, Any]:
    """The parameters of the latest succeeded run of this playbook on this incident's own
    resource (namespace/workload), among its ``scan`` newest vouched-for runs: what worked
    here before, for the values labels cannot give (a container name, a memory limit). Never
    from another resource, whose values name other objects; labels still win. Empty without
    one.

    Only runs NeuralOps can vouch for count: verified ones (its own executions, flow runs the
    Prefect API confirmed) and those of ``trusted`` writers (default: the
    ``NEURALOPS_TRUSTED_WRITERS`` setting); never a run dated in the future, which would
    otherwise stay "latest" for as long as its date lies ahead."""
    resource = resource_of(incident.labels)
    if resource is None:
        return {}
    if trusted is None:
        from neuralops.settings import get_settings

        trusted = get_settings().trusted
    vouched = WorkflowRun.verified.is_(True)
    if trusted:
        vouched = or_(vouched, WorkflowRun.provenance.in_(sorted(trusted)))
    query = (
        runs.newest_runs(manifest.id, WorkflowRun.inputs, WorkflowRun.status)
        .where(vouched, WorkflowRun.status == "succeeded")
        .where(WorkflowRun.created_at <= (now or datetime.now(UTC)))
        .limit(scan)
    )
    with session_scope(url) as session:
        for inputs, status in session.execute(query):
            if status == "succeeded" and run_resource({"inputs": inputs}) == resource:
                params = inputs.get("parameters") or {}
                declared = {p.name: p for p in manifest.parameters}
                # A value today's manifest would refuse (a pattern added since, an image no
                # longer allowed) is left out, as a bad label is: it must not sink the dry-run.
                return {
                    k: v
                    for k, v in params.items()
                    if k in declared
                    and k not in incident.labels
                    and policy.value_problem(manifest, declared[k], v) is None
                }
    return {}


def dry_run(
    incident_id: uuid.UUID | str,
    *,
    public_key_pem: bytes,
    runtime: MockCluster,
    url: URL | None = None,
) -> incidents.IncidentOut:
    """Signature, rendering, policy checks and the server-side dry-run; records the result
    and the pre-state. Any failure ends the incident ``dry_run_failed``."""
    current = incidents.get(incident_id, url=url)
    if current.cluster and (problem := _cluster_problem(current.cluster, url)):
        return _dry_run_failed(current.id, problem, {"cluster": current.cluster}, url)
    try:
        manifest = enforce_registered(current.playbook_id, public_key_pem, url=url)
    except SignatureRejected as exc:
        return _dry_run_failed(current.id, f"signature: {exc}", {"signature": exc.reason}, url)
    try:
        rendered = policy.render(manifest, current.parameters or {})
    except policy.GuidanceOnly as exc:  # a runbook: never executed
        return _dry_run_failed(current.id, str(exc), {"kind": "runbook"}, url)
    except InvalidInput as exc:
        return _dry_run_failed(current.id, f"parameters: {exc}", {}, url)
    # What an approval binds to and execution re-checks: manifest, version, steps, parameters.
    digest = policy.plan_digest(manifest, rendered, current.cluster)
    violations = policy.check(manifest, rendered)
    if current.cluster:
        # The control plane cannot reach into the cluster: its connector dry-runs every step
        # against its API server right before applying, and applies nothing if one fails.
        pre_state: dict[str, Any] = {}
        server = []
    else:
        pre_state = runtime.snapshot(rendered.steps)
        server = runtime.execute(rendered.steps, dry_run=True)
    server_failed = [r for r in server if r.status != "Completed"]
    result = {
        "ok": not violations and not server_failed,
        "playbook": manifest.id,
        "version": manifest.version,
        "sha256": manifest.sha256(),
        "plan_digest": digest,
        "signature": "verified",
        "runtime": connector_runtime(current.cluster) if current.cluster else RUNTIME,
        "cluster": current.cluster,
        "parameters": rendered.parameters,
        "steps": [s.model_dump(mode="json") for s in rendered.steps],
        "violations": [v.model_dump(mode="json") for v in violations],
        "server_dry_run": [r.model_dump(mode="json") for r in server],
        "diff": policy.diff(rendered, pre_state),
        # Field by field against the objects' current state (`512Mi → 2Gi`), for the approver.
        "changes": policy.changes(rendered, pre_state),
    }
    if current.cluster:
        result["server_dry_run_note"] = CONNECTOR_DRY_RUN
    if not result["ok"]:
        reasons = [v.message for v in violations] + [
            f"{r.name}: {r.message}" for r in server_failed
        ]
        result["reason"] = "; ".join(reasons)
    return incidents.transition(
        current.id,
        "dry_run_passed" if result["ok"] else "dry_run_failed",
        actor=ACTOR,
        payload={k: result[k] for k in ("ok", "playbook", "version", "sha256", "violations")},
        dry_run=result,
        pre_state=pre_state,
        plan_digest=digest,
        url=url,
    )


def _cluster_problem(name: str, url: URL | None) -> str | None:
    """Why a remediation cannot run on the named cluster, or None. A cluster runs playbooks
    only through its own connector (work pool ``cluster-<name>``), once registered and
    healthy; until then nothing is executed there, and never on the local runtime instead."""
    from neuralops.db import session_scope
    from neuralops.db.models import Cluster

    with session_scope(url) as session:
        row = session.get(Cluster, name)
        if row is None:
            return (
                f"cluster {name!r} is not registered (a cluster joins through its connector); "
                "leave the cluster out to run on the local runtime"
            )
        if row.status != "healthy":
            return f"cluster {name!r} is {row.status}: its connector must be healthy to run this"
    return None


def _dry_run_failed(
    incident_id: uuid.UUID, reason: str, extra: dict[str, Any], url: URL | None
) -> incidents.IncidentOut:
    return incidents.transition(
        incident_id,
        "dry_run_failed",
        actor=ACTOR,
        payload={"reason": reason, **extra},
        dry_run={"ok": False, "reason": reason, "violations": [], **extra},
        url=url,
    )


def decide(
    incident_id: uuid.UUID | str, *, settings: Any, url: URL | None = None
) -> incidents.IncidentOut:
    """Auto-approve where policy allows it, else wait for approval until the deadline. Either
    way the decision is for the plan the dry-run checked (its digest is in the audit entry);
    a playbook re-registered since the dry-run is never auto-approved."""
    current = incidents.get(incident_id, url=url)
    manifest = enforce_manifest(current.playbook_id, url=url)
    decision = safety.decide_mode(manifest, settings=settings, url=url)
    checked = (current.dry_run or {}).get("sha256")
    if decision.mode == "auto" and (current.plan_digest is None or checked != manifest.sha256()):
        changed = (
            f"playbook {manifest.id} changed since the dry-run (now version {manifest.version}): "
            "execution will refuse any plan but the one the dry-run checked"
            if current.plan_digest is not None
            else "the dry-run recorded no plan digest"
        )
        decision = decision.model_copy(update={"mode": "manual", "reasons": [changed]})
    reasons = "; ".join(decision.reasons)
    if decision.mode == "auto":
        return incidents.transition(
            current.id,
            "approved",
            actor="policy",
            payload={
                "mode": "auto",
                "reasons": decision.reasons,
                "plan_digest": current.plan_digest,
            },
            mode="auto",
            mode_reason=reasons,
            approver="policy:auto",
            approved_at=datetime.now(UTC),
            url=url,
        )
    return incidents.transition(
        current.id,
        "awaiting_approval",
        actor=ACTOR,
        payload={"mode": "manual", "reasons": decision.reasons, "plan_digest": current.plan_digest},
        mode="manual",
        mode_reason=reasons,
        expires_at=datetime.now(UTC) + timedelta(seconds=settings.approval_timeout_s),
        url=url,
    )


def enforce_manifest(playbook_id: str | None, *, url: URL | None = None) -> Any:
    """The registered manifest (no signature check: use only after the dry-run passed)."""
    from neuralops.manifest import Manifest
    from neuralops.registry import get_playbook

    if not playbook_id:
        raise InvalidInput("the incident has no playbook")
    return Manifest.model_validate(get_playbook(playbook_id, url=url).manifest)


def check_token(
    incident_id: uuid.UUID,
    decision: ApprovalDecision,
    *,
    keys: approval.ApprovalKeys,
    via: str | None = None,
    url: URL | None = None,
) -> tuple[approval.ApprovalClaims | None, str | None]:
    """(claims, None) when the token proves an org-admin approver for this incident; else
    (None, why), after an ``approval.refused`` audit entry (the token's fingerprint only)."""
    try:
        claims = approval.verify_approval_token(
            decision.token.get_secret_value(),
            incident_id=str(incident_id),
            approver=decision.approver,
            keys=keys,
        )
    except approval.ApprovalRefused as exc:
        payload = exc.audit_payload() | ({"via": via} if via else {})
        incidents.note(
            incident_id,
            "approval.refused",
            actor=decision.approver or "unknown",
            payload=payload,
            url=url,
        )
        return None, str(exc)
    return claims, None


PLAN_CHANGED = "the plan changed since you reviewed it"


def check_plan(
    current: incidents.IncidentOut,
    decision: ApprovalDecision,
    *,
    via: str | None = None,
    url: URL | None = None,
) -> str | None:
    """None when an approval may bind to the incident's plan; else why not, after an
    ``approval.refused`` audit entry naming both digests. An approval that carries the digest
    its approver reviewed must carry this incident's; one without a plan is never approved."""
    if decision.decision != "approve":
        return None  # a rejection of any plan is safe
    reviewed, planned = decision.plan_digest, current.plan_digest
    if planned is not None and reviewed in (None, planned):
        return None
    reason = (
        f"{PLAN_CHANGED}: you reviewed plan {reviewed[:12]}, the incident's is "
        f"{planned[:12]}; review the dry-run again"
        if planned is not None and reviewed is not None
        else "the incident has no plan digest from its dry-run: nothing can bind an approval"
    )
    payload = {
        "reason": "plan_changed" if planned is not None else "no_plan",
        "message": reason,
        "reviewed_digest": reviewed,
        "plan_digest": planned,
    } | ({"via": via} if via else {})
    incidents.note(
        current.id,
        "approval.refused",
        actor=decision.approver or "unknown",
        payload=payload,
        url=url,
    )
    return reason


def plan_lines(current: incidents.IncidentOut) -> list[str]:
    """What an approver approves, in a few lines: playbook, version, manifest, digest, cluster
    and each rendered step (for the Resume form and ``neuralops approve``)."""
    record = current.dry_run or {}
    lines = [
        f"playbook: {current.playbook_id} version {record.get('version', '?')} "
        f"(manifest sha256 {str(record.get('sha256', '?'))[:16]}...)",
        f"plan digest: {current.plan_digest or '(none recorded)'}",
        f"runs on: {current.cluster or 'the local runtime (mock cluster)'}",
        "parameters: "
        + (", ".join(f"{k}={v}" for k, v in sorted((current.parameters or {}).items())) or "-"),
        "steps:",
    ]
    for number, step in enumerate(record.get("steps") or [], 1):
        target = step.get("target") or {}
        body = step.get("manifest") or {}
        if target:
            where = f"{target['namespace']}/" if target.get("namespace") else ""
            what = f"{target.get('kind')} {where}{target.get('name')}"
        else:
            meta = body.get("metadata") or {}
            where = f"{meta['namespace']}/" if meta.get("namespace") else ""
            what = f"{body.get('kind', 'object')} {where}{meta.get('name', '?')}"
        lines.append(f"  {number}. {step.get('name')} ({step.get('action')} {what})")
    return lines


def apply_decision(
    incident_id: uuid.UUID | str,
    decision: ApprovalDecision,
    *,
    keys: approval.ApprovalKeys,
    url: URL | None = None,
) -> tuple[incidents.IncidentOut, str | None]:
    """(incident, refusal). A token that does not prove an org-admin approver for this
    incident, or an approval for another plan than the incident's (``check_plan``), changes
    nothing but an ``approval.refused`` audit entry; the run keeps waiting. The decision's
    audit entry records the plan digest it was given for."""
    current = incidents.get(incident_id, url=url)
    claims, refusal = check_token(current.id, decision, keys=keys, url=url)
    if claims is None:
        return current, refusal
    if refusal := check_plan(current, decision, url=url):
        return current, refusal
    payload = {
        "decision": decision.decision,
        "comment": decision.comment,
        "plan_digest": current.plan_digest,
        "reviewed_digest": decision.plan_digest,
        **claims.audit_payload(),  # the token's fingerprint, never the token
    }
    if decision.decision == "reject":
        return incidents.transition(
            current.id, "rejected", actor=claims.approver, payload=payload, url=url
        ), None
    return incidents.transition(
        current.id,
        "approved",
        actor=claims.approver,
        payload=payload,
        approver=claims.approver,
        approved_at=datetime.now(UTC),
        url=url,
    ), None


def expire(incident_id: uuid.UUID | str, *, url: URL | None = None) -> incidents.IncidentOut:
    return incidents.transition(
        incident_id, "expired", actor=ACTOR, payload={"reason": "approval timed out"}, url=url
    )


def execute(
    incident_id: uuid.UUID | str,
    *,
    public_key_pem: bytes,
    runtime: MockCluster,
    url: URL | None = None,
    signer: Any = None,
    dispatch: Dispatch | None = None,
    trigger_lifetime: timedelta | None = None,
) -> incidents.IncidentOut:
    """Run the approved playbook (its signature checked again first), record the post-state
    and log the execution as a run. An incident naming a cluster runs through that cluster's
    connector: a trigger signed with ``signer`` is sent with ``dispatch``."""
    current = incidents.get(incident_id, url=url)
    if current.state != "approved":
        raise InvalidInput(f"incident {current.id} is {current.state}, not approved")
    if current.cluster:
        return _execute_on_cluster(
            current,
            public_key_pem=public_key_pem,
            signer=signer,
            dispatch=dispatch,
            trigger_lifetime=trigger_lifetime,
            url=url,
        )
    try:
        manifest = enforce_registered(current.playbook_id, public_key_pem, url=url)
    except SignatureRejected as exc:  # changed between dry-run and now: refuse
        incidents.transition(
            current.id, "executing", actor=ACTOR, payload={"runtime": RUNTIME}, url=url
        )
        return incidents.transition(
            current.id,
            "failed",
            actor=ACTOR,
            payload={"reason": f"signature: {exc}", "signature": exc.reason},
            url=url,
        )
    rendered, refusal = verify_plan(current, manifest)
    if rendered is None:
        return _refuse_execution(current, RUNTIME, refusal or {}, url)
    started = datetime.now(UTC)
    incidents.transition(
        current.id, "executing", actor=ACTOR, payload={"runtime": RUNTIME}, url=url
    )
    results = runtime.execute(rendered.steps)
    post_state = runtime.snapshot(rendered.steps)
    ok = all(r.status == "Completed" for r in results)
    run_id = f"remediate-{current.id}"
    log_execution(current, manifest.id, results, ok, started, run_id, outcome=None, url=url)
    return incidents.transition(
        current.id,
        "succeeded" if ok else "failed",
        actor=ACTOR,
        payload={"run_id": run_id, "steps": [r.model_dump(mode="json") for r in results]},
        post_state=post_state,
        run_id=run_id,
        url=url,
    )


def approved_plan(current: incidents.IncidentOut) -> dict[str, Any]:
    """The plan the dry-run checked, from its record (for ``policy.plan_differences``)."""
    record = current.dry_run or {}
    return {
        "playbook": record.get("playbook"),
        "manifest_sha256": record.get("sha256"),
        "version": record.get("version"),
        "steps": record.get("steps"),
        "parameters": current.parameters or {},
        "cluster": current.cluster,
    }


def verify_plan(
    current: incidents.IncidentOut, manifest: Manifest
) -> tuple[policy.RenderedPlaybook | None, dict[str, Any] | None]:
    """(rendered, None) when the registered manifest, rendered with the incident's parameters
    for its cluster, is exactly the plan that was approved (same digest) and still passes the
    policy checks; else (None, why) naming both digests and what differs."""
    approved = current.plan_digest
    try:
        rendered = policy.render(manifest, current.parameters or {})
    except InvalidInput as exc:
        return None, {
            "reason": f"the registered playbook {manifest.id} {manifest.version} no longer "
            f"renders with the approved parameters: {exc}",
            "approved_digest": approved,
            "current_digest": None,
            "differs": policy.plan_differences(
                approved_plan(current), {"version": manifest.version}
            ),
        }
    now = policy.plan_of(manifest, rendered, current.cluster)
    digest = policy.digest_of_plan(now)
    if approved is None or digest != approved:
        differs = policy.plan_differences(approved_plan(current), now) or ["plan"]
        what = ", ".join(differs)
        return None, {
            "reason": (
                f"the plan changed since it was approved ({what} differ): approved "
                f"{approved[:12] if approved else '(none)'}, registered playbook {manifest.id} "
                f"{manifest.version} now gives {digest[:12]}; nothing was executed, start a new "
                "remediation to review the new plan"
            ),
            "approved_digest": approved,
            "current_digest": digest,
            "differs": differs,
            "approved_version": (current.dry_run or {}).get("version"),
            "current_version": manifest.version,
        }
    if violations := policy.check(manifest, rendered):
        return None, {
            "reason": "the approved plan no longer passes the policy checks: "
            + "; ".join(v.message for v in violations),
            "approved_digest": approved,
            "current_digest": digest,
            "differs": [],
            "violations": [v.model_dump(mode="json") for v in violations],
        }
    return rendered, None


def _refuse_execution(
    current: incidents.IncidentOut, runtime_name: str, refusal: dict[str, Any], url: URL | None
) -> incidents.IncidentOut:
    """An ``execute.refused`` audit entry, then the incident ``failed``: nothing ran."""
    incidents.note(current.id, "execute.refused", actor=ACTOR, payload=refusal, url=url)
    incidents.transition(
        current.id, "executing", actor=ACTOR, payload={"runtime": runtime_name}, url=url
    )
    return incidents.transition(
        current.id,
        "failed",
        actor=ACTOR,
        payload={"runtime": runtime_name, "refused": True, **refusal},
        url=url,
    )


def _execute_on_cluster(
    current: incidents.IncidentOut,
    *,
    public_key_pem: bytes,
    signer: Any,
    dispatch: Dispatch | None,
    trigger_lifetime: timedelta | None,
    url: URL | None,
) -> incidents.IncidentOut:
    """Sign a trigger for the incident's cluster and have its connector run it."""
    from neuralops.mock_cluster import StepResult

    cluster = str(current.cluster)
    runtime_name = connector_runtime(cluster)
    refusal: str | None = None
    extra: dict[str, Any] = {}
    manifest = None
    rendered = None
    try:
        manifest = enforce_registered(current.playbook_id, public_key_pem, url=url)
    except SignatureRejected as exc:  # changed between dry-run and now: refuse
        refusal, extra = f"signature: {exc}", {"signature": exc.reason}
    if manifest is not None:
        rendered, plan_refusal = verify_plan(current, manifest)
        if rendered is None:
            return _refuse_execution(current, runtime_name, plan_refusal or {}, url)
    if refusal is None and (problem := _cluster_problem(cluster, url)):
        refusal, extra = problem, {"cluster": cluster}
    if refusal is None and (signer is None or dispatch is None):
        refusal = f"cluster {cluster!r}: no signer or dispatcher to reach its connector"
    if refusal is not None or manifest is None or rendered is None:
        incidents.transition(
            current.id, "executing", actor=ACTOR, payload={"runtime": runtime_name}, url=url
        )
        return incidents.transition(
            current.id,
            "failed",
            actor=ACTOR,
            payload={"reason": refusal, **extra},
            url=url,
        )
    lifetime = {"lifetime": trigger_lifetime} if trigger_lifetime else {}
    signed = sign_trigger(
        new_trigger(
            cluster=cluster,
            incident_id=current.id,
            playbook_id=manifest.id,
            playbook_sha256=manifest.sha256(),
            parameters=rendered.parameters,
            steps=rendered.steps,
            **lifetime,
        ),
        signer,
    )
    started = datetime.now(UTC)
    incidents.transition(
        current.id,
        "executing",
        actor=ACTOR,
        payload={
            "runtime": runtime_name,
            "nonce": signed.trigger.nonce,
            "expires_at": signed.trigger.expires_at.isoformat(),
            "key_id": signed.key_id,
        },
        url=url,
    )
    answer = dict(dispatch(cluster, signed))
    results = [StepResult.model_validate(r) for r in answer.get("results") or []]
    ok = bool(answer.get("ok")) and bool(results)
    error = answer.get("error")
    if not ok and not error and answer.get("stage") == "dry_run":
        error = "the connector's server-side dry-run failed: nothing was applied"
    run_id = f"remediate-{current.id}"
    log_execution(
        current,
        manifest.id,
        results,
        ok,
        started,
        run_id,
        outcome=None,
        url=url,
        runtime_name=runtime_name,
        error=None if ok else error,
    )
    payload: dict[str, Any] = {
        "run_id": run_id,
        "runtime": runtime_name,
        "steps": [r.model_dump(mode="json") for r in results],
        "stage": answer.get("stage"),
        "connector_flow_run_id": answer.get("flow_run_id"),
    }
    if error:
        payload["reason"] = str(error)[:2000]
    fields: dict[str, Any] = {"run_id": run_id}
    for name in ("pre_state", "post_state"):  # the connector's snapshots of the targets
        if answer.get(name) is not None:
            fields[name] = answer[name]
    return incidents.transition(
        current.id,
        "succeeded" if ok else "failed",
        actor=ACTOR,
        payload=payload,
        url=url,
        **fields,
    )


def log_execution(
    current: incidents.IncidentOut,
    playbook_id: str,
    results: list[Any],
    ok: bool,
    started: datetime,
    run_id: str,
    *,
    outcome: str | None,
    url: URL | None = None,
    runtime_name: str = RUNTIME,
    error: str | None = None,
) -> None:
    """The execution as a run in workflow_runs: its status is the outcome where one was
    verified (an execution that did not resolve the signal failed), else the execution's."""
    signal = get_signal(current.signal_id, url=url) if current.signal_id else None
    incident = incident_from_signal(signal) if signal else None
    status = "succeeded" if ok and outcome != "not_resolved" else "failed"
    failed = next((r for r in results if r.status == "Failed"), None)
    outputs: dict[str, Any] = {
        "incident_id": str(current.id),
        "outcome": outcome,
        "runtime": runtime_name,
    }
    if failed:
        outputs["error"] = failed.message
    elif error:
        outputs["error"] = error
    elif outcome == "not_resolved":
        outputs["error"] = "the signal was still anomalous after the settle time"
    else:
        outputs["message"] = f"{playbook_id} completed"
    runs.log_run(
        runs.RunIn(
            wpk_id=playbook_id,
            run_id=run_id,
            status=status,
            duration_ms=int((datetime.now(UTC) - started).total_seconds() * 1000),
            inputs={
                "parameters": current.parameters or {},
                "alert": (
                    {"alertname": incident.alert, "summary": incident.summary, **incident.labels}
                    if incident
                    else {}
                ),
                "incident_id": str(current.id),
                "triggered_by": "remediate",
            },
            outputs=outputs,
            node_logs=[
                {
                    "name": r.name,
                    "status": r.status,
                    "duration_ms": r.duration_ms,
                    "message": r.message or None,
                }
                for r in results
            ],
            cluster=current.cluster,
            flow_run_id=current.flow_run_id,
            created_at=started,
        ),
        url=url,
        provenance=runs.NEURALOPS,  # NeuralOps performed it: verified, it teaches
        verified=True,
    )


def recheck(signal: Any, rule: Any, source: Any) -> tuple[str, dict[str, Any]]:
    """(outcome, evidence): is the signal's series still anomalous now? Its rule's query
    over the rule's lookback, scored the way detection scores it. The series is the one
    carrying the signal's labels (the rule's own labels aside)."""
    wanted = {k: v for k, v in signal.labels.items() if k not in rule.labels}

    def same(labels: Mapping[str, str]) -> bool:
        return all(labels.get(k) == v for k, v in wanted.items())

    end = range_end(source.now(), rule.step)
    batch = source.query_range(rule.query, end - rule.lookback, end, rule.step)
    if not any(same(labels) for labels in batch.labels):
        return "unverified", {"reason": f"the series of rule {rule.name} is gone from the source"}
    still = [s for s in find_anomalies(rule, batch) if same(s.labels)]
    if still:
        return "not_resolved", {"reason": "still anomalous", "hint": still[0].hint}
    return "resolved", {"reason": f"no anomaly within the last {rule.recent}", "at": str(end)}


def verify_outcome(
    incident_id: uuid.UUID | str, *, settings: Any, source: Any = None, url: URL | None = None
) -> incidents.IncidentOut:
    """Record whether the execution fixed what the signal showed, and set the logged run's
    status from it: the recommender learns from outcomes, not from exit codes."""
    from neuralops.errors import ConfigError
    from neuralops.signals import load_rules
    from neuralops.sources import source_from_settings

    current = incidents.get(incident_id, url=url)
    outcome, evidence = "unverified", {"reason": "no signal to re-check (an ad-hoc incident)"}
    if current.state == "failed":
        outcome, evidence = "not_resolved", {"reason": "the execution failed"}
    elif current.signal_id:
        signal = get_signal(current.signal_id, url=url)
        rule = next((r for r in load_rules(settings.rules_file) if r.name == signal.rule), None)
        if rule is None:
            evidence = {"reason": f"rule {signal.rule} is no longer in the rules file"}
        else:
            try:
                source = source or source_from_settings(settings)
            except ConfigError as exc:
                evidence = {"reason": f"no metric source to re-check: {exc}"}
            else:
                outcome, evidence = recheck(signal, rule, source)
    updated = incidents.record_outcome(current.id, outcome, actor=ACTOR, evidence=evidence, url=url)
    if current.run_id and outcome == "not_resolved" and current.state == "succeeded":
        # A finished run is immutable to every writer; NeuralOps corrects its own execution's
        # outcome through record_outcome (runs of provenance neuralops only).
        run = runs.get_run(current.run_id, url=url)
        runs.record_outcome(
            run.run_id,
            "failed",
            outputs={
                **run.outputs,
                "outcome": outcome,
                "error": "the signal was still anomalous after the settle time",
            },
            url=url,
        )
    return updated


def expire_overdue(*, now: datetime | None = None, url: URL | None = None) -> list[uuid.UUID]:
    """Expire incidents still awaiting approval past their deadline: a suspended run that
    nobody resumes holds no process that could notice its own timeout."""
    now = now or datetime.now(UTC)
    expired = []
    for waiting in incidents.list_incidents(state="awaiting_approval", limit=1000, url=url):
        if waiting.expires_at is not None and waiting.expires_at <= now:
            try:
                expire(waiting.id, url=url)
            except incidents.IllegalTransition:  # decided meanwhile
                continue
            expired.append(waiting.id)
    return expired


# Where housekeeping asks what became of an incident's remediate flow run: a short account
# of the run's final state ("Crashed: ...", "Failed: ...") once it can no longer move the
# incident on, else None (still running, paused, or unknown because the API is unreachable).
RunEnded = Callable[[uuid.UUID], str | None]


def end_interrupted(
    run_ended: RunEnded,
    *,
    deadline: timedelta,
    now: datetime | None = None,
    url: URL | None = None,
) -> list[tuple[uuid.UUID, str]]:
    """End incidents stuck in ``executing``: the process that was executing them died (its
    worker killed, the machine lost) and nothing else would ever move them on.

    An incident ends ``failed`` when its remediate flow run reached a final state (``Crashed``
    when its worker saw the process die) without finishing the execution, or when it has been
    ``executing`` longer than ``deadline`` (a run whose process vanished stays ``Running`` in
    Prefect for ever). ``deadline`` must exceed the longest a live run waits for its execution
    (the connector's timeout), so that only dead runs are ended. Returns (incident, reason)."""
    now = now or datetime.now(UTC)
    ended = []
    for stuck in incidents.list_incidents(state="executing", limit=1000, url=url):
        run = stuck.flow_run_id
        how = run_ended(run) if run is not None else None
        if how is not None:
            reason = f"the remediate flow run {run} ended ({how}) while executing"
        elif now - stuck.updated_at > deadline:
            reason = (
                f"still executing after {int(deadline.total_seconds())} s with no result from "
                f"its remediate flow run {run or '(none)'}"
            )
        else:
            continue
        reason += ": the playbook may be partly applied; check the cluster by hand"
        try:
            incidents.transition(
                stuck.id,
                "failed",
                actor=ACTOR,
                payload={"reason": reason, "interrupted": True, "flow_run_state": how},
                url=url,
            )
        except incidents.IllegalTransition:  # the run finished it meanwhile
            continue
        ended.append((stuck.id, reason))
    return ended
