"""The remediate flow through a real Prefect server: suggest → dry-run → pause → resume with
input → execute, and the paths that must end safely."""

from __future__ import annotations

import json
import sys
import threading
import traceback
import uuid
from pathlib import Path

import pytest
from conftest import deployment_exists, wait_until

from neuralops import audit, incidents, runs
from neuralops.approval import issue_dev_token
from neuralops.remediation import ApprovalDecision
from neuralops.settings import get_settings

pytestmark = pytest.mark.slow
OOM_PARAMETERS = {"container": "api", "memory_limit": "2Gi"}
# A served deployment looks for its scheduled runs (the first, and a resumed one) every
# PREFECT_RUNNER_POLL_FREQUENCY seconds, 10 by default: 1 here.
RUNNER_POLL_S = "1"


@pytest.fixture
def world(signed_catalogue, monkeypatch, prefect_server):
    monkeypatch.setenv("NEURALOPS_EMBEDDER", "hashing")
    monkeypatch.setenv("NEURALOPS_SETTLE_S", "0")
    get_settings.cache_clear()
    return signed_catalogue


def start(**parameters) -> tuple[threading.Thread, dict]:
    """Run the flow in a thread (it pauses in-process) and return where its result lands."""
    from flows.remediate import remediate

    box: dict = {}

    def run() -> None:
        try:
            box["result"] = remediate(**parameters)
        except BaseException as exc:  # surfaced by the test
            box["error"] = exc

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread, box


# The flow ends seconds after it is resumed; under a loaded CI machine one Prefect API call
# once took the client's whole 60 s timeout, so wait well past that before calling it stuck.
FLOW_END_S = 240


def finished(thread: threading.Thread, box: dict) -> dict:
    """The flow's result once its thread ends; a flow still running names where it waits."""
    thread.join(FLOW_END_S)
    if thread.is_alive():
        frame = sys._current_frames().get(thread.ident)
        where = "".join(traceback.format_stack(frame)) if frame else "(no frame)"
        raise AssertionError(f"the flow did not end within {FLOW_END_S} s; it waits at:\n{where}")
    assert "error" not in box, box.get("error")
    return box["result"]


def paused_incident() -> incidents.IncidentOut:
    return wait_until(
        lambda: next(iter(incidents.list_incidents(state="awaiting_approval")), None),
        what="the incident to await approval",
    )


def flow_state(flow_run_id: uuid.UUID) -> str:
    from prefect.client.orchestration import get_client

    with get_client(sync_client=True) as client:
        return client.read_flow_run(flow_run_id).state.type.value


def resume(flow_run_id: uuid.UUID, decision: ApprovalDecision) -> None:
    from prefect import resume_flow_run

    wait_until(lambda: flow_state(flow_run_id) == "PAUSED", what="the run to pause")
    resume_flow_run(flow_run_id, run_input=decision.as_input())


def artifacts(flow_run_id: uuid.UUID) -> dict[str, dict]:
    from prefect.client.orchestration import get_client

    with get_client(sync_client=True) as client:
        found = client.request(
            "POST",
            "/artifacts/filter",
            json={
                "artifacts": {"flow_run_id": {"any_": [str(flow_run_id)]}},
                "sort": "CREATED_DESC",
            },
        ).json()
    return {a["key"]: a for a in reversed(found)}  # newest wins


def decision(world, incident_id, *, verdict="approve", roles=("org-admin",)) -> ApprovalDecision:
    token = issue_dev_token(
        incident_id=incident_id, approver="ana", roles=roles, private_key_path=world["private_key"]
    )
    return ApprovalDecision(decision=verdict, approver="ana", token=token, comment="go")


def test_approval_in_the_ui_form_resumes_and_executes(world):
    thread, box = start(signal_id=str(world["signals"]["oom-kills"].id), parameters=OOM_PARAMETERS)
    current = paused_incident()
    assert current.playbook_id == "raise-memory-limit" and current.flow_run_id is not None
    # The operator decides from artifacts on the run page.
    shown = artifacts(current.flow_run_id)
    assert {"remediation-incident", "remediation-recommendation", "remediation-dry-run"} <= set(
        shown
    )
    assert "## Dry-run passed" in shown["remediation-dry-run"]["data"]
    assert "2Gi" in shown["remediation-dry-run"]["data"]
    rows = json.loads(shown["remediation-recommendation"]["data"])
    assert rows[0]["playbook"] == "raise-memory-limit"

    # A token with the wrong role: the run keeps waiting, the refusal is audited and shown.
    resume(current.flow_run_id, decision(world, current.id, roles=("sre",)))
    wait_until(
        lambda: incidents.count_notes(current.id, "approval.refused") == 1, what="the refusal"
    )
    assert incidents.get(current.id).state == "awaiting_approval"
    wait_until(lambda: flow_state(current.flow_run_id) == "PAUSED", what="a second pause")
    assert "org-admin" in artifacts(current.flow_run_id)["approval-refused"]["data"]

    resume(current.flow_run_id, decision(world, current.id))
    result = finished(thread, box)
    assert result["state"] == "succeeded" and result["outcome"] == "unverified"
    final = incidents.get(current.id)
    assert final.approver == "ana" and final.post_state
    assert runs.get_run(final.run_id).status == "succeeded"
    assert "remediation-result" in artifacts(current.flow_run_id)
    assert audit.verify().ok


def _run_input(flow_run_id: uuid.UUID, key: str):
    from prefect.client.orchestration import get_client

    with get_client(sync_client=True) as client:
        return json.loads(client.read_flow_run_input(flow_run_id, key))


def test_the_form_shows_the_plan_and_an_approval_for_another_plan_keeps_the_run_waiting(world):
    thread, box = start(signal_id=str(world["signals"]["oom-kills"].id), parameters=OOM_PARAMETERS)
    current = paused_incident()
    wait_until(lambda: flow_state(current.flow_run_id) == "PAUSED", what="the run to pause")
    digest = current.plan_digest
    # Above the Resume form: the playbook, its version, the plan digest and the steps.
    description = _run_input(current.flow_run_id, "paused-approval-0-description")
    assert digest in description and "raise-memory-limit version 1.0.0" in description
    assert "patch-memory-limit (patch Deployment payments/payments-api)" in description
    schema = _run_input(current.flow_run_id, "paused-approval-0-schema")
    assert schema["properties"]["plan_digest"]["default"] == digest  # the form carries it
    assert digest in artifacts(current.flow_run_id)["remediation-dry-run"]["data"]

    stale = decision(world, current.id).model_copy(update={"plan_digest": "0" * 64})
    resume(current.flow_run_id, stale)
    wait_until(
        lambda: incidents.count_notes(current.id, "approval.refused") == 1, what="the refusal"
    )
    wait_until(lambda: flow_state(current.flow_run_id) == "PAUSED", what="a second pause")
    refused = artifacts(current.flow_run_id)["approval-refused"]["data"]
    assert "the plan changed since you reviewed it" in refused
    assert incidents.get(current.id).state == "awaiting_approval"

    resume(
        current.flow_run_id, decision(world, current.id).model_copy(update={"plan_digest": digest})
    )
    result = finished(thread, box)
    assert result["state"] == "succeeded"
    approved = [
        e
        for e in audit.recent(subject=incidents.subject(current.id))
        if e.action == "incident.approved"
    ]
    assert approved[0].payload["plan_digest"] == approved[0].payload["reviewed_digest"] == digest


def test_rejection_in_the_form_ends_the_incident_without_executing(world):
    thread, box = start(signal_id=str(world["signals"]["oom-kills"].id), parameters=OOM_PARAMETERS)
    current = paused_incident()
    resume(current.flow_run_id, decision(world, current.id, verdict="reject"))
    result = finished(thread, box)
    assert result["state"] == "rejected" and result["run_id"] is None
    assert not (get_settings().data_dir / "mock-cluster.json").exists()


def test_failed_dry_run_ends_the_run_without_pausing(world):
    # No parameters for the container and the memory limit: nothing is guessed.
    thread, box = start(signal_id=str(world["signals"]["oom-kills"].id))
    result = finished(thread, box)
    assert result["state"] == "dry_run_failed"
    incident = incidents.get(result["incident_id"])
    assert "container" in incident.dry_run["reason"]


def test_unanswered_approval_expires(world, monkeypatch):
    monkeypatch.setenv("NEURALOPS_APPROVAL_TIMEOUT_S", "3")
    get_settings.cache_clear()
    thread, box = start(signal_id=str(world["signals"]["oom-kills"].id), parameters=OOM_PARAMETERS)
    result = finished(thread, box)
    assert result["state"] == "expired"
    trail = [e.action for e in audit.recent(subject=incidents.subject(result["incident_id"]))]
    assert trail[0] == "incident.expired"


def test_the_form_has_titles_and_help():
    schema = ApprovalDecision.model_json_schema()["properties"]
    assert schema["decision"]["enum"] == ["approve", "reject"]
    for field in ("decision", "approver", "token", "comment", "plan_digest"):
        assert schema[field]["title"] and schema[field]["description"]


def test_housekeeping_expires_and_ships_the_audit_trail(world):
    from flows.housekeeping import housekeeping

    result = housekeeping()
    assert result["expired"] == [] and result["shipped"] > 0 and result["pending"] == 0
    archive = get_settings().audit_path
    assert audit.verify_archive(archive).ok
    assert housekeeping()["shipped"] == 0  # nothing new: nothing shipped twice


def test_an_approval_keys_block_chosen_in_the_ui_decides_which_tokens_count(world, tmp_path):
    """A Keycloak-style IdP (roles under realm_access.roles) configured as a block, not env."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    from blocks.approval import ApprovalKeysBlock

    idp = ec.generate_private_key(ec.SECP256R1())
    private = tmp_path / "idp.pem"
    private.write_bytes(
        idp.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    public = idp.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    ApprovalKeysBlock(
        public_key_pem=public.decode(), issuer="https://idp.test", roles_claim="realm_access.roles"
    ).save("idp-test", overwrite=True)

    thread, box = start(
        signal_id=str(world["signals"]["oom-kills"].id),
        parameters=OOM_PARAMETERS,
        approval_block="idp-test",
    )
    current = paused_incident()
    # The dev key's token is not the IdP's: refused.
    resume(current.flow_run_id, decision(world, current.id))
    wait_until(lambda: incidents.count_notes(current.id, "approval.refused") == 1, what="refusal")
    token = issue_dev_token(
        incident_id=current.id,
        approver="ana",
        roles=(),
        private_key_path=private,
        issuer="https://idp.test",
        extra_claims={"realm_access": {"roles": ["org-admin"]}},
    )
    resume(current.flow_run_id, ApprovalDecision(decision="approve", approver="ana", token=token))
    result = finished(thread, box)
    assert result["state"] == "succeeded"


def test_from_a_deployment_the_run_suspends_and_resumes_where_it_stopped(world):
    """Served as a deployment, the flow suspends (no process waits for the human) and, once
    resumed with the decision, runs again from the top and continues from the incident."""
    import os
    import signal
    import subprocess
    import sys

    from prefect.deployments import run_deployment
    from prefect.settings import PREFECT_API_URL

    env = {**os.environ, "PREFECT_API_URL": PREFECT_API_URL.value()}
    env["PREFECT_RUNNER_POLL_FREQUENCY"] = RUNNER_POLL_S
    server = subprocess.Popen(
        [sys.executable, "-c", "from flows.remediate import remediate; remediate.serve(name='t')"],
        cwd=Path(__file__).resolve().parents[1],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        wait_until(lambda: deployment_exists("remediate/t"), what="the served deployment")
        flow_run = run_deployment(
            "remediate/t",
            parameters={
                "signal_id": str(world["signals"]["oom-kills"].id),
                "parameters": OOM_PARAMETERS,
            },
            timeout=0,
        )
        current = wait_until(
            lambda: incidents.find_by_flow_run(flow_run.id), timeout=120, what="the incident"
        )
        wait_until(
            lambda: flow_state(flow_run.id) == "PAUSED" and _state_name(flow_run.id) == "Suspended",
            timeout=120,
            what="the run to suspend",
        )
        resume(flow_run.id, decision(world, current.id))
        wait_until(lambda: flow_state(flow_run.id) == "COMPLETED", timeout=120, what="completion")
        final = incidents.get(current.id)
        assert final.state == "succeeded" and final.approver == "ana"
        # One incident and one suggestion, though the flow ran twice.
        assert len(incidents.list_incidents()) == 1
        assert [e.action for e in audit.recent(subject=incidents.subject(current.id))].count(
            "incident.suggested"
        ) == 1
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        server.wait(30)


def _state_name(flow_run_id: uuid.UUID) -> str:
    from prefect.client.orchestration import get_client

    with get_client(sync_client=True) as client:
        return client.read_flow_run(flow_run_id).state.name


def test_neuralops_approve_checks_the_token_then_resumes_the_waiting_run(world):
    from typer.testing import CliRunner

    from neuralops.cli import app

    thread, box = start(signal_id=str(world["signals"]["oom-kills"].id), parameters=OOM_PARAMETERS)
    current = paused_incident()
    wait_until(lambda: flow_state(current.flow_run_id) == "PAUSED", what="the run to pause")
    runner = CliRunner()
    wrong = decision(world, current.id, roles=("sre",)).token.get_secret_value()
    refused = runner.invoke(
        app, ["approve", str(current.id), "--token", wrong, "--approver", "ana"]
    )
    assert refused.exit_code == 2 and "org-admin" in refused.output
    assert incidents.count_notes(current.id, "approval.refused") == 1
    assert flow_state(current.flow_run_id) == "PAUSED"  # not resumed with a bad token

    good = decision(world, current.id).token.get_secret_value()
    approved = runner.invoke(
        app, ["approve", str(current.id), "--token", good, "--approver", "ana"]
    )
    assert approved.exit_code == 0, approved.output
    assert f"resumed flow run {current.flow_run_id}" in approved.output
    result = finished(thread, box)
    assert result["state"] == "succeeded"


def test_a_safe_playbook_goes_through_the_whole_sequence_with_the_kill_switch_on(
    world, monkeypatch
):
    """verify-postgres-backup (read-only, auto) still pauses when the kill switch forces
    manual approval; resumed with input, it applies its Job on the local runtime."""
    monkeypatch.setenv("NEURALOPS_KILL_SWITCH", "true")
    get_settings.cache_clear()
    thread, box = start(
        incident={
            "alert": "PostgresBackupStale",
            "summary": "last base backup of orders-db is 30 hours old",
            "labels": {"namespace": "data", "symptom": "backup-stale"},
        },
        playbook_id="verify-postgres-backup",
        parameters={
            "cluster": "orders-db",
            "destination_path": "s3://acme-pg-backups/orders-db",
            "credentials_secret": "orders-db-backup",
        },
    )
    current = paused_incident()
    assert current.mode == "manual" and "kill switch" in current.mode_reason
    resume(current.flow_run_id, decision(world, current.id))
    result = finished(thread, box)
    assert result["state"] == "succeeded"
    final = incidents.get(current.id)
    [job] = [key for key in final.post_state if key.startswith("Job/data/")]
    assert final.post_state[job]["kind"] == "Job"
    assert runs.get_run(final.run_id).wpk_id == "verify-postgres-backup"


# --- no lost decisions (issue 16): refused in the UI, refused by the CLI, approved by the CLI


def _flow_run(flow_run_id: uuid.UUID):
    from prefect.client.orchestration import get_client

    with get_client(sync_client=True) as client:
        return client.read_flow_run(flow_run_id)


def _waiting_at(flow_run_id: uuid.UUID, key: str) -> bool:
    """The run is Paused/Suspended at the pause ``key`` (its latest attempt)."""
    run = _flow_run(flow_run_id)
    return bool(run.state and run.state.is_paused() and run.state.state_details.pause_key == key)


def _form_there(flow_run_id: uuid.UUID) -> bool:
    """The waiting run's Resume form (its input schema) is stored."""
    from prefect.client.orchestration import get_client

    state = _flow_run(flow_run_id).state
    with get_client(sync_client=True) as client:
        try:
            client.read_flow_run_input(flow_run_id, state.state_details.run_input_keyset["schema"])
        except Exception:
            return False
    return True


def lose_resume_form(flow_run_id: uuid.UUID) -> None:
    """What a Prefect server restart between a pause and the save of its form leaves: the run
    Paused/Suspended with no input schema (and no description)."""
    from prefect.client.orchestration import get_client

    keyset = _flow_run(flow_run_id).state.state_details.run_input_keyset
    with get_client(sync_client=True) as client:
        for name in ("schema", "description"):
            client.delete_flow_run_input(flow_run_id, keyset[name])
    assert not _form_there(flow_run_id)


def _warnings(flow_run_id: uuid.UUID) -> list[str]:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import LogFilter, LogFilterFlowRunId, LogFilterLevel

    with get_client(sync_client=True) as client:
        logs = client.read_logs(
            log_filter=LogFilter(
                flow_run_id=LogFilterFlowRunId(any_=[flow_run_id]),
                level=LogFilterLevel(ge_=30),
            )
        )
    return [log.message for log in logs]


def _refused_ui_then_cli_then_approved_by_cli(world, flow_run_id: uuid.UUID, current) -> None:
    """The sequence that lost a valid decision: a refused resume from the UI, a refused
    `neuralops approve`, then a valid one (the run's form lost meanwhile, as a server restart
    can leave it): the valid decision is the one the run executes."""
    from prefect import resume_flow_run
    from typer.testing import CliRunner

    from neuralops.cli import app

    wait_until(lambda: _waiting_at(flow_run_id, "approval-0"), timeout=120, what="the pause")
    assert _form_there(flow_run_id)  # written before the pause: visible with it
    # 1. The UI resumes with a token of the wrong role (the UI calls the same endpoint).
    wrong = decision(world, current.id, roles=("sre",))
    resume_flow_run(flow_run_id, run_input=wrong.as_input())
    wait_until(lambda: _waiting_at(flow_run_id, "approval-1"), timeout=120, what="a new pause")
    assert incidents.count_notes(current.id, "approval.refused") == 1
    assert _form_there(flow_run_id)  # the Resume form is usable again, with the same plan
    refused = artifacts(flow_run_id)["approval-refused"]["data"]
    assert "org-admin" in refused and f".venv/bin/neuralops approve {current.id}" in refused
    assert f"{incidents.get(current.id).expires_at:%Y-%m-%d %H:%M} UTC" in refused
    wait_until(  # the run's log line, at WARNING (logs reach the API in batches)
        lambda: any("refused" in ln and "org-admin" in ln for ln in _warnings(flow_run_id)),
        what="the refusal in the run's logs",
    )

    # 2. The CLI with the same bad token: one line, exit 2, nothing resumed.
    runner = CliRunner()
    token = wrong.token.get_secret_value()
    cli = runner.invoke(app, ["approve", str(current.id), "--token", token, "--approver", "ana"])
    assert cli.exit_code == 2, cli.output
    [line] = [ln for ln in cli.output.splitlines() if ln.startswith("refused:")]
    assert "org-admin" in line
    assert incidents.count_notes(current.id, "approval.refused") == 2  # the count moved...
    assert _waiting_at(flow_run_id, "approval-1")  # ...the run did not
    assert "`neuralops approve`" in artifacts(flow_run_id)["approval-refused"]["data"]
    wait_until(
        lambda: any("(neuralops approve)" in line for line in _warnings(flow_run_id)),
        what="the CLI's refusal in the run's logs",
    )

    # 3. The form lost (a restart between pause and save), then a valid approval by the CLI.
    lose_resume_form(flow_run_id)
    good = decision(world, current.id).token.get_secret_value()
    cli = runner.invoke(app, ["approve", str(current.id), "--token", good, "--approver", "ana"])
    assert cli.exit_code == 0, cli.output
    assert "re-created the run's lost Resume form" in cli.output
    assert f"resumed flow run {flow_run_id}" in cli.output


def _approved_once(flow_run_id: uuid.UUID, current) -> None:
    final = incidents.get(current.id)
    assert final.state == "succeeded" and final.approver == "ana"
    # No third pause: the valid decision given at approval-1 was the one executed.
    assert _flow_run(flow_run_id).empirical_policy.pause_keys == {"approval-0", "approval-1"}
    trail = [e.action for e in audit.recent(subject=incidents.subject(current.id))]
    assert trail.count("incident.approved") == 1 and trail.count("approval.refused") == 2
    assert audit.verify().ok


def test_a_valid_cli_approval_after_refusals_in_the_ui_and_the_cli_is_not_lost(world):
    """From a deployment (the run suspends, and replays from the top after each resume)."""
    import os
    import signal
    import subprocess
    import sys

    from prefect.deployments import run_deployment
    from prefect.settings import PREFECT_API_URL

    env = {**os.environ, "PREFECT_API_URL": PREFECT_API_URL.value()}
    env["PREFECT_RUNNER_POLL_FREQUENCY"] = RUNNER_POLL_S
    server = subprocess.Popen(
        [sys.executable, "-c", "from flows.remediate import remediate; remediate.serve(name='l')"],
        cwd=Path(__file__).resolve().parents[1],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        wait_until(lambda: deployment_exists("remediate/l"), what="the served deployment")
        flow_run = run_deployment(
            "remediate/l",
            parameters={
                "signal_id": str(world["signals"]["oom-kills"].id),
                "parameters": OOM_PARAMETERS,
            },
            timeout=0,
        )
        current = wait_until(
            lambda: incidents.find_by_flow_run(flow_run.id), timeout=120, what="the incident"
        )
        wait_until(lambda: _state_name(flow_run.id) == "Suspended", timeout=120, what="suspend")
        _refused_ui_then_cli_then_approved_by_cli(world, flow_run.id, current)
        wait_until(lambda: flow_state(flow_run.id) == "COMPLETED", timeout=120, what="completion")
        _approved_once(flow_run.id, current)
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        server.wait(30)


def test_a_valid_cli_approval_after_refusals_in_the_ui_and_the_cli_is_not_lost_in_process(world):
    """The same sequence with the run paused in-process (no deployment)."""
    thread, box = start(signal_id=str(world["signals"]["oom-kills"].id), parameters=OOM_PARAMETERS)
    current = paused_incident()
    _refused_ui_then_cli_then_approved_by_cli(world, current.flow_run_id, current)
    result = finished(thread, box)
    assert result["state"] == "succeeded"
    _approved_once(current.flow_run_id, current)


# --- evidence worth approving (issue 16): the signal, the current state, the policy verdict


def test_the_paused_run_shows_the_evidence_an_approver_decides_from(world, tmp_path, monkeypatch):
    """The demo incident as `neuralops run` replays it: the signal's hint, series, window and
    its metric around the incident; the diff against the workload's current spec (512Mi →
    2Gi); every policy rule's verdict; why approval is needed; each justification whole."""
    from datetime import UTC, datetime

    from test_evidence import demo_replay_rules, replay

    from neuralops import policy, signals
    from neuralops.sources import ReplaySource

    path = replay(tmp_path, datetime.now(UTC))
    monkeypatch.setenv("NEURALOPS_REPLAY_FILE", str(path))
    monkeypatch.setenv("NEURALOPS_RULES_FILE", str(demo_replay_rules()))
    get_settings.cache_clear()
    [rule] = [r for r in signals.load_rules(demo_replay_rules()) if r.name == "oom-kills"]
    source = ReplaySource(path)
    end = signals.range_end(source.now(), rule.step)
    batch = source.query_range(rule.query, end - rule.lookback, end, rule.step)
    [signal] = [r.signal for r in signals.record_signals(signals.find_anomalies(rule, batch), {})]

    thread, box = start(
        signal_id=str(signal.id), parameters={"container": "payments-api", "memory_limit": "2Gi"}
    )
    current = paused_incident()
    # awaiting_approval comes before the run publishes why (remediation-approval) and pauses
    wait_until(lambda: flow_state(current.flow_run_id) == "PAUSED", what="the run to pause")
    shown = {key: a["data"] for key, a in artifacts(current.flow_run_id).items()}

    incident = shown["remediation-incident"]
    assert f"> {signal.hint}" in incident and "OOM kills of namespace=payments" in signal.hint
    assert "**Series:** `namespace=payments, pod=payments-api-7d9f8b6c4d-x2x7q`" in incident
    assert f"{signal.window_start:%Y-%m-%d %H:%M} to {signal.window_end:%H:%M} UTC" in incident
    assert "#### The metric around the incident" in incident and "█" in incident
    assert "](data:image/svg+xml;base64," in incident and "| anomalous |" in incident
    for recommendation in current.recommendations:  # never clipped
        assert recommendation["justification"] in incident

    dry_run = shown["remediation-dry-run"]
    memory = "spec.template.spec.containers[payments-api].resources.limits.memory"
    assert f"`Deployment/payments/payments-api`: `{memory}`: `512Mi` → `2Gi`" in dry_run
    assert "- **pass** `signature`: verified against the pinned key" in dry_run
    for rule_name in policy.RULES:
        assert f"- **pass** `{rule_name}`: {policy.RULE_CHECKS[rule_name]}\n" in dry_run
    assert "- **pass** `server-side dry-run`: 2 steps accepted by mock-cluster" in dry_run

    approval = shown["remediation-approval"]
    assert "## Waiting for approval" in approval
    assert "- playbook raise-memory-limit is manual" in approval
    assert "- kill switch (NEURALOPS_KILL_SWITCH): off" in approval
    assert current.plan_digest in approval

    # The Resume form's Decision help says what approve runs (the change, the digest): the UI
    # shrinks the description above the form to a small scrolled box in a 1000 px window.
    wait_until(lambda: flow_state(current.flow_run_id) == "PAUSED", what="the run to pause")
    schema = _run_input(current.flow_run_id, "paused-approval-0-schema")
    help_ = schema["properties"]["decision"]["description"]
    change = "Deployment/payments/payments-api …containers[payments-api].resources.limits.memory"
    assert f"- {change}: **512Mi → 2Gi**" in help_
    assert f"plan digest `{current.plan_digest[:12]}…`" in help_ and "raise-memory-limit" in help_
    assert schema["properties"]["decision"]["enum"] == ["approve", "reject"]

    resume(current.flow_run_id, decision(world, current.id, verdict="reject"))
    result = finished(thread, box)
    assert result["state"] == "rejected"
