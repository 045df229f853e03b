"""The remediation steps without Prefect: every path ends safely, with its audit entries."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import select, update

from neuralops import audit, incidents, remediation, runs
from neuralops.approval import issue_dev_token, keys_from_settings
from neuralops.db import session_scope
from neuralops.db.models import AuditLog, Playbook
from neuralops.embedding import HashingEmbedder
from neuralops.incident_model import Incident
from neuralops.mock_cluster import MockCluster
from neuralops.recommend import Recommender, incident_from_signal
from neuralops.settings import get_settings
from neuralops.vectorstore import VectorStore

OOM_PARAMETERS = {"container": "api", "memory_limit": "2Gi"}


@pytest.fixture
def env(signed_catalogue, tmp_path: Path):
    """The signed catalogue and demo signals, a recommender, the mock cluster."""
    store = VectorStore(str(tmp_path / "lancedb"))
    return signed_catalogue | {
        "recommender": Recommender(store, HashingEmbedder(), signed_catalogue["manifests"]),
        "public_key": signed_catalogue["signer"].public_key_pem(),
        "cluster": MockCluster(tmp_path / "mock-cluster.json"),
    }


def token(env, incident_id, approver="ana", roles=("org-admin",), issued=None) -> str:
    return issue_dev_token(
        incident_id=incident_id,
        approver=approver,
        roles=roles,
        ttl_s=600,
        private_key_path=env["private_key"],
        now=issued,
    )


def decision(env, incident_id, *, verdict="approve", approver="ana", **kwargs):
    return remediation.ApprovalDecision(
        decision=verdict,
        approver=approver,
        token=kwargs.pop("raw_token", None) or token(env, incident_id, approver, **kwargs),
        comment="memory grew with the new batch size",
    )


def oom_incident(env, **kwargs) -> incidents.IncidentOut:
    current = remediation.suggest(
        env["recommender"],
        signal_id=str(env["signals"]["oom-kills"].id),
        parameters=OOM_PARAMETERS,
        **kwargs,
    )
    return remediation.dry_run(current.id, public_key_pem=env["public_key"], runtime=env["cluster"])


def actions(incident_id) -> list[str]:
    with session_scope() as session:
        rows = session.scalars(
            select(AuditLog.action)
            .where(AuditLog.subject == incidents.subject(incident_id))
            .order_by(AuditLog.seq)
        )
        return list(rows)


def test_approved_remediation_executes_logs_the_run_and_audits_every_step(env):
    current = oom_incident(env)
    assert current.playbook_id == "raise-memory-limit"
    assert current.parameters == {
        "namespace": "payments",
        "deployment": "payments-api",
        **OOM_PARAMETERS,
    }
    assert current.state == "dry_run_passed" and current.dry_run["ok"]
    assert current.dry_run["violations"] == [] and "2Gi" in current.dry_run["diff"]
    assert current.pre_state == {"Deployment/payments/payments-api": None}
    assert env["cluster"].get("Deployment", "payments", "payments-api") is None  # dry-run only

    current = remediation.decide(current.id, settings=env["settings"])
    assert current.state == "awaiting_approval" and current.mode == "manual"
    assert "manual" in current.mode_reason
    current, refusal = remediation.apply_decision(
        current.id, decision(env, current.id), keys=keys_from_settings(env["settings"])
    )
    assert refusal is None and current.state == "approved" and current.approver == "ana"

    current = remediation.execute(
        current.id, public_key_pem=env["public_key"], runtime=env["cluster"]
    )
    assert current.state == "succeeded" and current.run_id == f"remediate-{current.id}"
    deployment = env["cluster"].get("Deployment", "payments", "payments-api")
    assert deployment["spec"]["template"]["spec"]["containers"][0]["resources"]["limits"] == {
        "memory": "2Gi"
    }
    assert current.post_state["Deployment/payments/payments-api"] == deployment
    run = runs.get_run(current.run_id)
    assert (run.wpk_id, run.status) == ("raise-memory-limit", "succeeded")
    assert run.inputs["alert"]["symptom"] == "oom-killed"  # the loop learns from it

    current = remediation.verify_outcome(current.id, settings=env["settings"])
    assert current.outcome == "unverified"  # no metric source configured here
    assert actions(current.id) == [
        "incident.suggested",
        "incident.dry_run_passed",
        "incident.awaiting_approval",
        "incident.approved",
        "incident.executing",
        "incident.succeeded",
        "incident.verified",
    ]
    assert audit.verify().ok


def test_a_bad_token_changes_nothing_but_an_audit_entry(env):
    current = remediation.decide(oom_incident(env).id, settings=env["settings"])
    keys = keys_from_settings(env["settings"])
    # Another incident (one signal has one open incident at a time: this one has none).
    other = remediation.suggest(
        env["recommender"],
        incident=incident_from_signal(env["signals"]["oom-kills"]),
        parameters=OOM_PARAMETERS,
    )
    cases = {
        "wrong_role": decision(env, current.id, roles=("sre",)),
        "wrong_incident": decision(env, other.id),
        "approver_mismatch": decision(
            env, current.id, approver="bo", raw_token=token(env, current.id)
        ),
        "expired": decision(env, current.id, issued=datetime.now(UTC) - timedelta(hours=2)),
        "malformed": decision(env, current.id, raw_token="not-a-jwt"),
    }
    for reason, attempt in cases.items():
        after, refusal = remediation.apply_decision(current.id, attempt, keys=keys)
        assert refusal and after.state == "awaiting_approval", reason
    assert incidents.count_notes(current.id, "approval.refused") == len(cases)
    with session_scope() as session:
        payloads = session.scalars(
            select(AuditLog.payload).where(AuditLog.action == "approval.refused")
        ).all()
    assert [p["reason"] for p in payloads] == list(cases)
    secrets = [attempt.token.get_secret_value() for attempt in cases.values()]
    assert not any(secret in str(payloads) for secret in secrets)
    assert not any(s in repr(a) for s, a in zip(secrets, cases.values(), strict=True))


def test_reject_and_expiry_end_the_incident_without_executing(env):
    rejected = remediation.decide(oom_incident(env).id, settings=env["settings"])
    rejected, _ = remediation.apply_decision(
        rejected.id,
        decision(env, rejected.id, verdict="reject"),
        keys=keys_from_settings(env["settings"]),
    )
    assert rejected.state == "rejected"
    with pytest.raises(Exception, match="not approved"):
        remediation.execute(rejected.id, public_key_pem=env["public_key"], runtime=env["cluster"])
    expired = remediation.decide(oom_incident(env).id, settings=env["settings"])
    assert remediation.expire(expired.id).state == "expired"
    assert env["cluster"].get("Deployment", "payments", "payments-api") is None


def test_tampered_playbook_fails_the_dry_run_and_never_executes(env):
    with session_scope() as session:
        row = session.get(Playbook, "raise-memory-limit")
        manifest = dict(row.manifest)
        manifest["steps"] = [{**manifest["steps"][0], "description": "also delete things"}]
        session.execute(
            update(Playbook).where(Playbook.id == "raise-memory-limit").values(manifest=manifest)
        )
    current = oom_incident(env)
    assert current.state == "dry_run_failed"
    assert current.dry_run["signature"] == "tampered"
    assert "signature" in current.dry_run["reason"]
    with pytest.raises(incidents.IllegalTransition):
        remediation.decide(current.id, settings=env["settings"])
    assert "incident.dry_run_failed" in actions(current.id)


def test_missing_parameter_and_no_recommendation_fail_safely(env):
    current = remediation.suggest(
        env["recommender"], signal_id=str(env["signals"]["oom-kills"].id)
    )  # container and memory_limit are nowhere in the signal: no guessing from examples
    assert current.state == "dry_run_failed"
    assert "container" in current.dry_run["reason"] and "memory_limit" in current.dry_run["reason"]
    nothing = remediation.suggest(
        env["recommender"], incident=Incident(summary="the coffee machine is empty")
    )
    assert nothing.state == "dry_run_failed" and nothing.playbook_id is None
    assert nothing.dry_run["reason"].startswith("no playbook to run")


class _RunbookFirst:
    """The real recommender, with a runbook put at rank 1 (as an exact alias match puts it):
    what suggest does with a runbook ranked first must not depend on how it got there."""

    def __init__(self, inner: Recommender, runbook_id: str, only: bool = False) -> None:
        self.inner, self.runbook_id, self.only = inner, runbook_id, only
        self.catalogue = inner.catalogue

    def recommend(self, incident, top=5, **kwargs):
        result = self.inner.recommend(incident, top=top, **kwargs)
        guide = result.recommendations[0].model_copy(
            update={"playbook_id": self.runbook_id, "score": 1.0}
        )
        rest = [r for r in result.recommendations if r.playbook_id != self.runbook_id]
        ranked = [guide] if self.only else [guide, *rest][:top]
        return result.model_copy(update={"recommendations": ranked})


def test_suggest_never_picks_a_runbook_even_ranked_first(env):
    from neuralops.registry import add_playbooks
    from neuralops.runbooks import load_runbooks

    found, _ = load_runbooks(Path(__file__).parent / "data" / "runbooks")
    guides = [manifest for _, manifest in found]
    add_playbooks(guides)
    runbook = "kube-pod-crash-looping"
    assert any(m.id == runbook and m.is_runbook for m in guides)
    real = Recommender(env["recommender"].store, HashingEmbedder(), [*env["manifests"], *guides])
    signal_id = str(env["signals"]["oom-kills"].id)

    current = remediation.suggest(
        _RunbookFirst(real, runbook), signal_id=signal_id, parameters=OOM_PARAMETERS
    )
    ranked = [r["playbook_id"] for r in current.recommendations]
    assert ranked[0] == runbook  # recommended first, and recorded as such
    assert current.playbook_id == ranked[1] == "raise-memory-limit"  # the best remediation
    assert current.state == "suggested"
    checked = remediation.dry_run(
        current.id, public_key_pem=env["public_key"], runtime=env["cluster"]
    )
    assert checked.state == "dry_run_passed", checked.dry_run

    # Only runbooks match: nothing runs, and the reason names them.
    only = remediation.suggest(
        _RunbookFirst(real, runbook, only=True),
        incident=Incident(alert="KubePodCrashLooping", summary="payments-api restarts"),
    )
    assert (only.state, only.playbook_id) == ("dry_run_failed", None)
    assert only.dry_run["reason"].startswith("no playbook to run: only runbooks")
    assert runbook in only.dry_run["reason"]

    # Named explicitly, it is still refused (guidance only), before any dry-run.
    named = remediation.suggest(
        real,
        incident=Incident(alert="KubePodCrashLooping", summary="payments-api restarts"),
        playbook_id=runbook,
    )
    assert named.state == "dry_run_failed" and "is a runbook" in named.dry_run["reason"]


def test_auto_playbook_is_approved_by_policy_unless_the_kill_switch_is_on(env, monkeypatch):
    incident = Incident(
        alert="PostgresBackupStale",
        summary="last base backup of orders-db is 30 hours old",
        labels={"namespace": "data", "symptom": "backup-stale"},
    )

    def run_auto():
        current = remediation.suggest(
            env["recommender"],
            incident=incident,
            playbook_id="verify-postgres-backup",
            parameters={
                "cluster": "orders-db",
                "destination_path": "s3://acme-pg-backups/orders-db",
                "credentials_secret": "orders-db-backup",
            },
        )
        current = remediation.dry_run(
            current.id, public_key_pem=env["public_key"], runtime=env["cluster"]
        )
        assert current.state == "dry_run_passed", current.dry_run
        return remediation.decide(current.id, settings=get_settings())

    auto = run_auto()
    assert (auto.state, auto.mode, auto.approver) == ("approved", "auto", "policy:auto")
    monkeypatch.setenv("NEURALOPS_KILL_SWITCH", "true")
    get_settings.cache_clear()
    manual = run_auto()
    assert manual.state == "awaiting_approval" and "kill switch" in manual.mode_reason


def test_failed_execution_is_logged_as_a_failed_run(env):
    current = remediation.decide(oom_incident(env).id, settings=env["settings"])
    current, _ = remediation.apply_decision(
        current.id, decision(env, current.id), keys=keys_from_settings(env["settings"])
    )
    failing = MockCluster(env["cluster"].path, fail_steps=["patch-memory-limit"])
    current = remediation.execute(current.id, public_key_pem=env["public_key"], runtime=failing)
    assert current.state == "failed"
    run = runs.get_run(current.run_id)
    assert run.status == "failed" and "injected" in run.outputs["error"]
    assert (
        remediation.verify_outcome(current.id, settings=env["settings"]).outcome == "not_resolved"
    )


def test_resolved_when_the_series_is_quiet_again(env, tmp_path):
    """The re-check runs the signal's rule on the metric source: a series that is flat now
    resolves the incident; one still spiking does not. (The replay source reads selectors,
    so the rule here queries the counter's selector.)"""
    signal = env["signals"]["oom-kills"]
    rules = tmp_path / "rules.yaml"
    rules.write_text(
        "rules:\n  - name: oom-kills\n    query: container_oom_events\n    lookback: 3h\n"
        "    step: 2m\n    labels: {severity: page, symptom: oom-killed}\n"
    )
    now = datetime.now(UTC).replace(second=0, microsecond=0)

    def replay(name: str, spike: bool) -> Path:
        lines = ["timestamp,__name__,namespace,pod,value"]
        for minute in range(200, -1, -1):
            at = (now - timedelta(minutes=minute)).isoformat()
            value = 40 if spike and minute < 4 else 1 + minute % 2
            lines.append(f"{at},container_oom_events,payments,{signal.labels['pod']},{value}")
        path = tmp_path / name
        path.write_text("\n".join(lines) + "\n")
        return path

    current = remediation.decide(oom_incident(env).id, settings=env["settings"])
    current, _ = remediation.apply_decision(
        current.id, decision(env, current.id), keys=keys_from_settings(env["settings"])
    )
    current = remediation.execute(
        current.id, public_key_pem=env["public_key"], runtime=env["cluster"]
    )
    quiet = env["settings"].model_copy(
        update={"replay_file": replay("quiet.csv", False), "rules_file": rules}
    )
    assert remediation.recheck(signal, _rule(rules), _source(quiet))[0] == "resolved"
    spiking = quiet.model_copy(update={"replay_file": replay("spike.csv", True)})
    assert remediation.recheck(signal, _rule(rules), _source(spiking))[0] == "not_resolved"
    verified = remediation.verify_outcome(current.id, settings=spiking)
    assert verified.outcome == "not_resolved"
    run = runs.get_run(current.run_id)  # the loop learns it did not work
    assert run.status == "failed" and "still anomalous" in run.outputs["error"]


def _rule(path: Path):
    from neuralops.signals import load_rules

    return load_rules(path)[0]


def _source(settings):
    from neuralops.sources import source_from_settings

    return source_from_settings(settings)


def test_overdue_approvals_expire(env):
    waiting = remediation.decide(oom_incident(env).id, settings=env["settings"])
    assert remediation.expire_overdue(now=waiting.expires_at - timedelta(seconds=1)) == []
    assert remediation.expire_overdue(now=waiting.expires_at) == [waiting.id]
    assert incidents.get(waiting.id).state == "expired"


def test_a_named_cluster_never_falls_back_to_the_local_runtime(env):
    current = remediation.suggest(
        env["recommender"],
        signal_id=str(env["signals"]["oom-kills"].id),
        parameters=OOM_PARAMETERS,
        cluster="edge-1",
    )
    current = remediation.dry_run(
        current.id, public_key_pem=env["public_key"], runtime=env["cluster"]
    )
    assert current.state == "dry_run_failed" and current.cluster == "edge-1"
    assert "not registered" in current.dry_run["reason"]
    assert not env["cluster"].path.exists()


def test_the_dry_run_records_its_plan_and_each_decision_names_it(env):
    current = oom_incident(env)
    digest = current.plan_digest
    assert len(digest) == 64 and current.dry_run["plan_digest"] == digest
    assert current.dry_run["parameters"] == current.parameters
    current = remediation.decide(current.id, settings=env["settings"])
    entries = {p.get("to"): p for p in _payloads(current.id)}
    assert entries["dry_run_passed"]["plan_digest"] == digest
    assert entries["awaiting_approval"]["plan_digest"] == digest
    lines = remediation.plan_lines(current)
    assert f"plan digest: {digest}" in lines
    assert "  1. patch-memory-limit (patch Deployment payments/payments-api)" in lines


def test_an_incident_without_a_plan_digest_is_never_approved_or_executed(env):
    """An incident dry-run before plans were recorded (or whose digest was lost) has no plan
    an approval could bind to: both the approval and the execution refuse it."""
    from neuralops.db.models import Incident as IncidentRow

    current = remediation.decide(oom_incident(env).id, settings=env["settings"])
    with session_scope() as session:
        session.execute(
            update(IncidentRow).where(IncidentRow.id == current.id).values(plan_digest=None)
        )
    keys = keys_from_settings(env["settings"])
    after, refusal = remediation.apply_decision(current.id, decision(env, current.id), keys=keys)
    assert "no plan digest" in refusal and after.state == "awaiting_approval"
    with session_scope() as session:  # approved behind the state machine's back
        session.execute(
            update(IncidentRow).where(IncidentRow.id == current.id).values(state="approved")
        )
    done = remediation.execute(current.id, public_key_pem=env["public_key"], runtime=env["cluster"])
    assert done.state == "failed" and incidents.count_notes(done.id, "execute.refused") == 1
    assert env["cluster"].get("Deployment", "payments", "payments-api") is None


def test_a_malformed_plan_digest_is_refused_by_the_form():
    with pytest.raises(ValueError, match="plan_digest"):
        remediation.ApprovalDecision(
            decision="approve", approver="ana", token="t", plan_digest="not-a-digest"
        )


def _payloads(incident_id) -> list[dict]:
    with session_scope() as session:
        return list(
            session.scalars(
                select(AuditLog.payload)
                .where(AuditLog.subject == incidents.subject(incident_id))
                .order_by(AuditLog.seq)
            )
        )
