"""Remediation tasks: each a thin wrapper over one step of neuralops.remediation."""

from __future__ import annotations

import time
import uuid
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

from prefect import task
from prefect.cache_policies import NO_CACHE
from prefect.client.orchestration import get_client
from prefect.input.run_input import Keyset, RunInput

from neuralops import incidents, remediation
from neuralops.approval import keys_from_settings
from neuralops.incident_model import Incident
from neuralops.mock_cluster import MockCluster
from neuralops.recommend import recommender_from_settings
from neuralops.settings import get_settings
from neuralops.signing import signer_from_settings, trusted_public_key
from neuralops.triggers import DEFAULT_LIFETIME, SignedTrigger
from tasks import IO_RETRIES

CONNECTOR_FLOW = "execute-playbook"
# How long the control plane waits for a connector's run: the trigger's lifetime (after it
# the connector refuses it as expired) plus time for the steps (a `wait` step polls up to
# 300 s by default).
CONNECTOR_TIMEOUT_S = DEFAULT_LIFETIME.total_seconds() + 600
CONNECTOR_POLL_S = 2.0
# How long an incident may sit in `executing` before housekeeping ends it `failed`: longer
# than a live remediate run waits for its connector (which then gives up by itself), so only
# runs whose process died are ended this way.
EXECUTING_DEADLINE_S = CONNECTOR_TIMEOUT_S + 300


def connector_deployment(cluster: str) -> str:
    """The cluster connector's execute-playbook deployment: ``execute-playbook/cluster-<name>``
    on the cluster's own work pool ``cluster-<name>``."""
    return f"{CONNECTOR_FLOW}/cluster-{cluster}"


def dispatch_to_connector(
    cluster: str, signed: SignedTrigger, *, timeout_s: float | None = None
) -> Mapping[str, Any]:
    """Run the signed trigger on the cluster's connector (``run_deployment``) and wait for
    it: the connector's result, or ``{"ok": False, "error": ...}`` when its run failed (a
    refused trigger fails the run with the reason), crashed or did not finish in time."""
    from prefect.deployments import run_deployment

    name = connector_deployment(cluster)
    try:
        flow_run = run_deployment(
            name,
            parameters={"trigger": signed.model_dump(mode="json")},
            timeout=CONNECTOR_TIMEOUT_S if timeout_s is None else timeout_s,
            poll_interval=CONNECTOR_POLL_S,
            tags=[f"cluster:{cluster}", f"incident:{signed.trigger.incident_id}"],
        )
    except Exception as exc:  # no such deployment, API unreachable
        return {"ok": False, "error": f"could not start {name}: {type(exc).__name__}: {exc}"}
    state = flow_run.state
    where = {"flow_run_id": str(flow_run.id)}
    if state is None or not state.is_final():
        _cancel(flow_run.id)
        return where | {
            "ok": False,
            "error": f"{name} (flow run {flow_run.id}) did not finish in time "
            f"(state {state.name if state else 'unknown'}); cancelled: check the cluster",
        }
    if not state.is_completed():
        return where | {
            "ok": False,
            "error": f"{name} (flow run {flow_run.id}) {state.name}: {state.message or ''}",
        }
    try:
        answer = state.result(raise_on_failure=True)
    except Exception as exc:
        return where | {
            "ok": False,
            "error": f"{name} finished but its result cannot be read: {type(exc).__name__}",
        }
    if not isinstance(answer, Mapping):
        return where | {"ok": False, "error": f"{name} answered {type(answer).__name__}"}
    return {**answer, **where}


def _cancel(flow_run_id: uuid.UUID) -> None:
    """Best effort: a run that has not accepted its trigger yet must not run it later."""
    from prefect.states import Cancelling

    try:
        with get_client(sync_client=True) as client:
            client.set_flow_run_state(flow_run_id, Cancelling(), force=True)
    except Exception:  # the trigger expires anyway
        pass


def flow_run_ended(flow_run_id: uuid.UUID) -> str | None:
    """The final state of a flow run ("Crashed: <message>"), or None while it is not final
    (running, paused, cancelling) or cannot be read (the API unreachable: ask again later)."""
    from prefect.exceptions import ObjectNotFound

    try:
        with get_client(sync_client=True) as client:
            run = client.read_flow_run(flow_run_id)
    except ObjectNotFound:
        return "deleted from Prefect"
    except Exception:
        return None
    state = run.state
    if state is None or not state.is_final():
        return None
    return f"{state.name}: {state.message}" if state.message else state.name


APPROVAL_KEY = "approval-"  # pause keys approval-0, approval-1, ...: one per attempt
# Resume forms this process wrote or found (flow run, input key): Prefect's own save right
# after the pause finds them here and sends nothing.
_FORMS_SAVED: set[tuple[uuid.UUID, str]] = set()


class ResumeForm(RunInput):
    """A Resume form whose ``save`` is idempotent: the schema and description are written
    once per key (an existing one is kept), so NeuralOps can write the form *before* proposing
    the pause and repair a lost one at any time, and Prefect's own save after the pause never
    fails on a form that is already there."""

    @classmethod
    def save(cls, keyset: Keyset, flow_run_id: uuid.UUID | None = None) -> None:  # type: ignore[override]
        from prefect.context import FlowRunContext

        if flow_run_id is None:
            context = FlowRunContext.get()
            if context is None or context.flow_run is None:
                raise RuntimeError("a Resume form is saved for a flow run: give flow_run_id")
            flow_run_id = context.flow_run.id
        save_resume_form(cls, keyset, flow_run_id)


def resume_form(model: type) -> type[ResumeForm]:
    """``model`` (a pydantic model, e.g. ``ApprovalDecision``) as a ``ResumeForm``."""
    if isinstance(model, type) and issubclass(model, ResumeForm):
        return model
    name = model.__name__ if issubclass(model, RunInput) else f"{model.__name__}RunInput"
    return type(name, (ResumeForm, model), {})  # type: ignore[return-value]


def save_resume_form(
    form: type[RunInput], keyset: Keyset, flow_run_id: uuid.UUID, *, recheck: bool = False
) -> list[str]:
    """Write the form's schema (and description) under ``keyset`` where missing; the names
    written ("schema", "description"). Without ``recheck``, keys this process already wrote or
    found are not asked for again."""
    import orjson
    from prefect._internal.pydantic.v2_schema import create_v2_schema
    from prefect.exceptions import PrefectHTTPStatusError

    description = form._description if isinstance(form._description, str) else None
    values = {"schema": lambda: create_v2_schema(form.__name__, model_base=form)}
    if description:
        values["description"] = lambda: description
    written = []
    with get_client(sync_client=True) as client:
        for name, value in values.items():
            key = keyset[name]
            if not recheck and (flow_run_id, key) in _FORMS_SAVED:
                continue
            try:
                client.read_flow_run_input(flow_run_id, key)
            except PrefectHTTPStatusError as exc:
                if exc.response.status_code != 404:
                    raise
                try:
                    client.create_flow_run_input(
                        flow_run_id, key, value=orjson.dumps(value()).decode()
                    )
                    written.append(name)
                except PrefectHTTPStatusError as conflict:  # written meanwhile: kept
                    if conflict.response.status_code != 409:
                        raise
            _FORMS_SAVED.add((flow_run_id, key))
    return written


def fired_approvals(flow_run_id: uuid.UUID) -> list[int]:
    """The approval attempts (N of pause key ``approval-N``) this flow run has paused or
    suspended at, in order, read from Prefect (the run's ``empirical_policy.pause_keys``):
    a count no other process can shift."""
    with get_client(sync_client=True) as client:
        keys = client.read_flow_run(flow_run_id).empirical_policy.pause_keys or set()
    numbers = [k.removeprefix(APPROVAL_KEY) for k in keys if k.startswith(APPROVAL_KEY)]
    return sorted(int(n) for n in numbers if n.isdigit())


def stored_decision(flow_run_id: uuid.UUID, key: str, form: type) -> Any | None:
    """The decision a resume stored for the pause ``key`` (suspended or paused), validated by
    ``form``; None when that pause was resumed without one."""
    from prefect.exceptions import PrefectHTTPStatusError
    from prefect.input.run_input import keyset_from_base_key

    with get_client(sync_client=True) as client:
        for state in ("suspended", "paused"):
            try:
                value = client.read_flow_run_input(
                    flow_run_id, keyset_from_base_key(f"{state}-{key}")["response"]
                )
            except PrefectHTTPStatusError as exc:
                if exc.response.status_code != 404:
                    raise
                continue
            return form.model_validate_json(value)
    return None


def repair_resume_form(flow_run_id: uuid.UUID, form: type) -> list[str]:
    """If the run is Paused/Suspended waiting for input whose Resume form (schema) is missing
    (the pause's separate save lost to a Prefect server restart: Prefect then refuses every
    resume with "Run input schema not found"), write it again from ``form``. Returns the
    input keys written; nothing when the run is not waiting or its form is there."""
    from prefect.exceptions import ObjectNotFound

    try:
        with get_client(sync_client=True) as client:
            state = client.read_flow_run(flow_run_id).state
    except ObjectNotFound:
        return []
    keyset = state.state_details.run_input_keyset if state is not None else None
    if state is None or not state.is_paused() or not keyset:
        return []
    written = save_resume_form(resume_form(form), keyset, flow_run_id, recheck=True)
    return [keyset[name] for name in written]


def publish_on_run(
    flow_run_id: uuid.UUID, *, key: str, markdown: str, description: str, warning: str
) -> bool:
    """From outside the run (``neuralops approve``): a markdown artifact on the run's page and
    a WARNING line in its logs, as the run itself writes them. Best effort: False if the API
    refused or did not answer (the audit trail holds the event either way)."""
    from prefect.client.schemas.actions import ArtifactCreate, LogCreate

    try:
        with get_client(sync_client=True) as client:
            client.create_artifact(
                ArtifactCreate(
                    key=key,
                    type="markdown",
                    description=description,
                    data=markdown,
                    flow_run_id=flow_run_id,
                )
            )
            client.create_logs(
                [
                    LogCreate(
                        name="neuralops.approve",
                        level=30,
                        message=warning,
                        timestamp=datetime.now(UTC),
                        flow_run_id=flow_run_id,
                    )
                ]
            )
    except Exception:
        return False
    return True


def suspend_for_approval(*, key: str, timeout: int, form: type) -> Any:
    """``suspend_flow_run`` waiting for ``form``, its Resume form written *before* the run is
    suspended: Prefect writes it in a separate call after the state change, and a server
    restart between the two left a Suspended run nobody could resume."""
    from prefect import suspend_flow_run
    from prefect.context import get_run_context
    from prefect.input.run_input import keyset_from_base_key

    wanted = resume_form(form)
    run_id = get_run_context().flow_run.id
    save_resume_form(wanted, keyset_from_base_key(f"suspended-{key}"), run_id)
    return suspend_flow_run(wait_for_input=wanted, timeout=timeout, key=key)


def pause_for_approval(
    *, key: str, timeout: float, poll_interval: float, form: type | None = None
) -> remediation.ApprovalDecision:
    """``pause_flow_run`` waiting for an ``ApprovalDecision``, surviving a Prefect API outage.

    The Resume form is written before the pause (see ``suspend_for_approval``). While paused
    in-process, Prefect polls the API with a client that retries a refused connection only
    about a minute (5 retries, exponential back-off): the run would die with
    ``httpx.ConnectError`` and nobody be left to execute the approval. Here a transport error
    keeps the run waiting: it asks again every ``poll_interval`` until the run is resumed (the
    decision returned), the pause is redone (it never reached the server), or ``timeout``
    passes (``FlowPauseTimeout``, as ``pause_flow_run``). ``form``: the Resume form's model
    (an ``ApprovalDecision`` described by its plan), else ``ApprovalDecision``."""
    import httpx
    from prefect import get_run_logger, pause_flow_run
    from prefect.context import get_run_context
    from prefect.exceptions import FlowPauseTimeout
    from prefect.input.run_input import keyset_from_base_key

    deadline = time.monotonic() + timeout
    run_input = resume_form(form or remediation.ApprovalDecision)
    run_id = get_run_context().flow_run.id
    keyset = keyset_from_base_key(f"paused-{key}")
    try:
        save_resume_form(run_input, keyset, run_id)
        return pause_flow_run(
            wait_for_input=run_input,
            timeout=max(1, int(timeout)),
            poll_interval=int(poll_interval),
            key=key,
        )
    except httpx.TransportError as exc:
        get_run_logger().warning(
            "the Prefect API did not answer while waiting for approval (%s): still waiting", exc
        )
    while time.monotonic() < deadline:
        time.sleep(poll_interval)
        try:
            with get_client(sync_client=True) as client:
                run = client.read_flow_run(run_id)
            if run.state is not None and run.state.is_paused():
                # the outage may have cut the pause short of saving its form
                save_resume_form(run_input, keyset, run_id, recheck=True)
                continue
        except httpx.TransportError:
            continue
        if run.state is not None and run.state.is_running():
            if key in (run.empirical_policy.pause_keys or set()):  # resumed meanwhile
                return run_input.load(keyset, flow_run_id=run_id)
            return pause_for_approval(  # the pause never reached the server: pause now
                key=key,
                timeout=deadline - time.monotonic(),
                poll_interval=poll_interval,
                form=form,
            )
        state = run.state.name if run.state else "no state"
        raise RuntimeError(f"flow run {run_id} is {state} while waiting for approval")
    raise FlowPauseTimeout("Flow run was paused and never resumed.")


def public_key(vault_block: str | None) -> bytes:
    """The pinned key playbook signatures must verify against: the PEM pinned in the
    settings, else the named Vault block's transit key, else the settings' Vault or dev key."""
    settings = get_settings()
    if vault_block and not settings.signing_public_key:
        from blocks.vault import VaultConnection

        return VaultConnection.load(vault_block).signer().public_key_pem(create=False)
    return trusted_public_key(settings)


def approval_keys(approval_block: str | None) -> Any:
    """The identity provider's keys: the named block (roles claim, algorithms... editable in
    the UI), else the settings."""
    if approval_block:
        from blocks.approval import ApprovalKeysBlock

        return ApprovalKeysBlock.load(approval_block).keys()
    return keys_from_settings(get_settings())


def runtime(fail_steps: list[str] | None = None) -> MockCluster:
    """The local runtime: the mock cluster under the data dir (no Kubernetes can run here),
    starting with the demo's Deployments and their real specs (``demo.workloads``)."""
    from neuralops import demo

    return MockCluster(
        get_settings().data_dir / "mock-cluster.json",
        fail_steps=fail_steps or [],
        initial=demo.workloads(),
    )


@task(name="suggest", cache_policy=NO_CACHE, **IO_RETRIES)
def suggest(
    signal_id: str | None,
    incident: dict[str, Any] | None,
    playbook_id: str | None,
    parameters: dict[str, Any] | None,
    cluster: str | None,
    flow_run_id: uuid.UUID | None,
) -> incidents.IncidentOut:
    """Create the incident with the recommendations and the playbook to run."""
    recommender, _ = recommender_from_settings()
    return remediation.suggest(
        recommender,
        signal_id=signal_id,
        incident=Incident.model_validate(incident) if incident else None,
        playbook_id=playbook_id,
        parameters=parameters,
        cluster=cluster,
        flow_run_id=flow_run_id,
    )


@task(name="dry-run", cache_policy=NO_CACHE, **IO_RETRIES)
def dry_run(
    incident_id: uuid.UUID, fail_steps: list[str] | None = None, vault_block: str | None = None
) -> incidents.IncidentOut:
    """Signature, policy checks and the server-side dry-run."""
    return remediation.dry_run(
        incident_id, public_key_pem=public_key(vault_block), runtime=runtime(fail_steps)
    )


@task(name="decide", cache_policy=NO_CACHE, **IO_RETRIES)
def decide(incident_id: uuid.UUID) -> incidents.IncidentOut:
    """Auto-approve where the safety policy allows, else wait for approval."""
    return remediation.decide(incident_id, settings=get_settings())


@task(name="check-approval", cache_policy=NO_CACHE, **IO_RETRIES)
def check_approval(
    incident_id: uuid.UUID,
    decision: remediation.ApprovalDecision,
    approval_block: str | None = None,
) -> tuple[incidents.IncidentOut, str | None]:
    """Apply the approver's decision if the token proves it; else the refusal."""
    return remediation.apply_decision(incident_id, decision, keys=approval_keys(approval_block))


@task(name="execute", cache_policy=NO_CACHE)  # never retried: a step may have half-applied
def execute(
    incident_id: uuid.UUID, fail_steps: list[str] | None = None, vault_block: str | None = None
) -> incidents.IncidentOut:
    """Locally on the mock cluster; for an incident naming a cluster, through that cluster's
    connector (a trigger signed with the settings' signer, run by its deployment)."""
    settings = get_settings()
    cluster = incidents.get(incident_id).cluster
    return remediation.execute(
        incident_id,
        public_key_pem=public_key(vault_block),
        runtime=runtime(fail_steps),
        signer=signer_from_settings(settings) if cluster else None,
        dispatch=dispatch_to_connector,
    )


@task(name="verify-outcome", cache_policy=NO_CACHE, **IO_RETRIES)
def verify_outcome(incident_id: uuid.UUID) -> incidents.IncidentOut:
    """Re-check the signal after the settle time; record resolved / not resolved."""
    return remediation.verify_outcome(incident_id, settings=get_settings())


@task(name="cluster-limit", cache_policy=NO_CACHE, **IO_RETRIES)
def ensure_cluster_limit(name: str, limit: int) -> None:
    """The global concurrency limit that caps remediations per cluster (created or resized)."""
    with get_client(sync_client=True) as client:
        client.upsert_global_concurrency_limit_by_name(name=name, limit=limit)
