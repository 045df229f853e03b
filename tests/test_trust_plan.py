"""Trust boundary (issue 15, points 3 and 4), replayed as an attacker would: what runs is the
plan a named person (or the auto policy) approved, and parameters that reach a shell or an
image are constrained, whatever their source. On SQLite and PostgreSQL."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import yaml
from sqlalchemy import select, update
from sqlalchemy.engine import URL
from typer.testing import CliRunner

from neuralops import audit, incidents, policy, registry, remediation, runs
from neuralops.approval import issue_dev_token, keys_from_settings
from neuralops.db import session_scope
from neuralops.db.models import AuditLog, Cluster, WorkflowRun
from neuralops.embedding import HashingEmbedder
from neuralops.errors import InvalidInput, NotFound
from neuralops.incident import Incident
from neuralops.manifest import Manifest
from neuralops.mock_cluster import MockCluster
from neuralops.recommend import Recommender
from neuralops.signing import sign_playbook
from neuralops.vectorstore import VectorStore

OOM_PARAMETERS = {"container": "api", "memory_limit": "2Gi"}
BACKUP = {
    "cluster": "orders-db",
    "destination_path": "s3://acme-pg-backups/orders-db",
    "credentials_secret": "orders-db-backup",
}
ORDERS_DB = {"namespace": "data", "service": "orders-db", "symptom": "long-running-queries"}
QUERIES = {"cluster": "orders-db", "database": "orders", "credentials_secret": "orders-db-app"}


@pytest.fixture
def env(database_url: URL, signed_catalogue: dict, tmp_path: Path) -> dict[str, Any]:
    """The signed catalogue on the database under test, a recommender, the mock cluster."""
    store = VectorStore(str(tmp_path / "lancedb"))
    return signed_catalogue | {
        "recommender": Recommender(store, HashingEmbedder(), signed_catalogue["manifests"]),
        "public_key": signed_catalogue["signer"].public_key_pem(),
        "cluster": MockCluster(tmp_path / "mock-cluster.json"),
        "keys": keys_from_settings(signed_catalogue["settings"]),
    }


def _decision(env, incident_id, *, verdict="approve", plan_digest=None):
    return remediation.ApprovalDecision(
        decision=verdict,
        approver="ana",
        token=issue_dev_token(
            incident_id=incident_id,
            approver="ana",
            roles=("org-admin",),
            ttl_s=600,
            private_key_path=env["private_key"],
        ),
        comment="reviewed the dry-run",
        plan_digest=plan_digest,
    )


def _dry_run(env, current: incidents.IncidentOut) -> incidents.IncidentOut:
    return remediation.dry_run(current.id, public_key_pem=env["public_key"], runtime=env["cluster"])


def _oom_incident(env, **kwargs) -> incidents.IncidentOut:
    current = remediation.suggest(
        env["recommender"],
        signal_id=str(env["signals"]["oom-kills"].id),
        parameters=OOM_PARAMETERS,
        **kwargs,
    )
    return _dry_run(env, current)


def _approved(env, current: incidents.IncidentOut) -> incidents.IncidentOut:
    current = remediation.decide(current.id, settings=env["settings"])
    assert current.state == "awaiting_approval"
    current, refusal = remediation.apply_decision(
        current.id, _decision(env, current.id), keys=env["keys"]
    )
    assert refusal is None and current.state == "approved"
    return current


def _republish(env, playbook_id: str, version: str) -> None:
    """What the attacker did: the same playbook re-added as a new version with other steps and
    re-signed with the same signing key (an honest-looking release)."""
    data = registry.get_playbook(playbook_id).manifest
    step = data["steps"][0]
    steps = [{**step, "description": step["description"] + " (and then some)"}, *data["steps"][1:]]
    new = Manifest.model_validate({**data, "version": version, "steps": steps})
    [result] = registry.add_playbooks([new])
    assert result.change is registry.Change.updated
    sign_playbook(playbook_id, env["signer"])


def _entries(incident_id, action: str) -> list[dict[str, Any]]:
    with session_scope() as session:
        return list(
            session.scalars(
                select(AuditLog.payload)
                .where(AuditLog.subject == incidents.subject(incident_id))
                .where(AuditLog.action == action)
                .order_by(AuditLog.seq)
            )
        )


def _assert_refused(env, current: incidents.IncidentOut, approved_digest: str) -> None:
    assert current.state == "failed"
    [refused] = _entries(current.id, "execute.refused")
    assert refused["approved_digest"] == approved_digest
    assert refused["current_digest"] not in (None, approved_digest)
    assert {"version", "manifest", "steps"} <= set(refused["differs"])
    assert "changed since it was approved" in refused["reason"]
    [failed] = _entries(current.id, "incident.failed")
    assert failed["refused"] is True and failed["approved_digest"] == approved_digest
    with pytest.raises(NotFound):  # no execution was logged: nothing ran
        runs.get_run(f"remediate-{current.id}")
    assert audit.verify().ok


# --- (a) a new version after the approval never runs under it -------------------------------


def test_a_playbook_re_released_after_approval_is_refused_at_execute(env) -> None:
    current = _oom_incident(env)
    assert current.state == "dry_run_passed" and current.dry_run["version"] == "1.0.0"
    digest = current.plan_digest
    assert digest and current.dry_run["plan_digest"] == digest
    current = _approved(env, current)
    [approved] = _entries(current.id, "incident.approved")
    assert approved["plan_digest"] == digest  # the audit trail says which plan was approved

    _republish(env, "raise-memory-limit", "1.0.1")
    current = remediation.execute(
        current.id, public_key_pem=env["public_key"], runtime=env["cluster"]
    )
    _assert_refused(env, current, digest)
    assert env["cluster"]._load() == {}  # nothing was applied to the mock cluster
    assert incidents.get(current.id).plan_digest == digest  # the incident kept its plan


def test_an_auto_approved_incident_is_bound_to_its_plan_too(env) -> None:
    current = remediation.suggest(
        env["recommender"],
        incident=Incident(alert="PostgresBackupStale", labels={"namespace": "data"}),
        playbook_id="verify-postgres-backup",
        parameters=BACKUP,
    )
    current = _dry_run(env, current)
    assert current.state == "dry_run_passed", current.dry_run
    current = remediation.decide(current.id, settings=env["settings"])
    assert (current.state, current.approver) == ("approved", "policy:auto")
    [approved] = _entries(current.id, "incident.approved")
    assert approved["plan_digest"] == current.plan_digest

    _republish(env, "verify-postgres-backup", "1.1.1")
    done = remediation.execute(current.id, public_key_pem=env["public_key"], runtime=env["cluster"])
    _assert_refused(env, done, current.plan_digest)
    assert env["cluster"]._load() == {}  # the mock cluster holds no object at all


def test_a_release_between_dry_run_and_decision_is_never_auto_approved(env) -> None:
    current = remediation.suggest(
        env["recommender"],
        incident=Incident(alert="PostgresBackupStale", labels={"namespace": "data"}),
        playbook_id="verify-postgres-backup",
        parameters=BACKUP,
    )
    current = _dry_run(env, current)
    _republish(env, "verify-postgres-backup", "1.1.1")
    current = remediation.decide(current.id, settings=env["settings"])
    assert current.state == "awaiting_approval"
    assert "changed since the dry-run" in current.mode_reason


def test_on_a_cluster_a_changed_plan_never_reaches_the_connector(env) -> None:
    with session_scope() as session:
        session.add(Cluster(name="edge-1", work_pool="cluster-edge-1", status="healthy"))
    current = _oom_incident(env, cluster="edge-1")
    assert current.state == "dry_run_passed", current.dry_run
    digest = current.plan_digest
    current = _approved(env, current)
    _republish(env, "raise-memory-limit", "1.0.1")
    sent: list[Any] = []
    current = remediation.execute(
        current.id,
        public_key_pem=env["public_key"],
        runtime=env["cluster"],
        signer=env["signer"],
        dispatch=lambda cluster, trigger: sent.append(trigger) or {"ok": True, "results": []},
    )
    _assert_refused(env, current, digest)
    assert sent == []  # no trigger was signed for the connector


def test_the_unchanged_plan_still_executes(env) -> None:
    current = _approved(env, _oom_incident(env))
    done = remediation.execute(current.id, public_key_pem=env["public_key"], runtime=env["cluster"])
    assert done.state == "succeeded" and _entries(done.id, "execute.refused") == []
    deployment = env["cluster"].get("Deployment", "payments", "payments-api")
    limits = deployment["spec"]["template"]["spec"]["containers"][0]["resources"]["limits"]
    assert limits == {"memory": "2Gi"}


# --- (b) an approval for another plan -------------------------------------------------------


def test_an_approval_carrying_a_stale_digest_is_refused(env) -> None:
    current = remediation.decide(_oom_incident(env).id, settings=env["settings"])
    stale = "0" * 64
    after, refusal = remediation.apply_decision(
        current.id, _decision(env, current.id, plan_digest=stale), keys=env["keys"]
    )
    assert refusal and "the plan changed since you reviewed it" in refusal
    assert after.state == "awaiting_approval" and after.approver is None
    [entry] = _entries(current.id, "approval.refused")
    assert entry["reason"] == "plan_changed"
    assert (entry["reviewed_digest"], entry["plan_digest"]) == (stale, current.plan_digest)

    # The CLI refuses it too, before resuming anything, and shows the plan it would approve.
    token = _decision(env, current.id).token.get_secret_value()
    args = ["approve", str(current.id), "--token", token, "--approver", "ana"]
    result = CliRunner().invoke(_cli(), [*args, "--plan-digest", stale])
    assert result.exit_code == 2 and "the plan changed since you reviewed it" in result.output
    assert current.plan_digest in result.output and "raise-memory-limit" in result.output
    assert "patch-memory-limit" in result.output
    assert incidents.get(current.id).state == "awaiting_approval"
    assert len(_entries(current.id, "approval.refused")) == 2

    result = CliRunner().invoke(_cli(), [*args, "--plan-digest", current.plan_digest])
    assert result.exit_code == 0, result.output
    assert incidents.get(current.id).state == "approved"
    [approved] = _entries(current.id, "incident.approved")
    assert approved["plan_digest"] == approved["reviewed_digest"] == current.plan_digest


def test_a_rejection_needs_no_digest_and_records_the_plan(env) -> None:
    current = remediation.decide(_oom_incident(env).id, settings=env["settings"])
    after, refusal = remediation.apply_decision(
        current.id,
        _decision(env, current.id, verdict="reject", plan_digest="1" * 64),
        keys=env["keys"],
    )
    assert refusal is None and after.state == "rejected"
    [rejected] = _entries(current.id, "incident.rejected")
    assert rejected["plan_digest"] == current.plan_digest


def _cli():
    from neuralops.cli import app

    return app


# --- (c) an image outside allowed_images, even from a precedent -----------------------------


def _precedent(image: str) -> None:
    """A succeeded run of kill-long-running-queries on orders-db whose psql_image is the
    attacker's, marked as NeuralOps' own verified execution: the most trusted precedent."""
    runs.log_run(
        {
            "wpk_id": "kill-long-running-queries",
            "run_id": "precedent-1",
            "status": "succeeded",
            "duration_ms": 1200,
            "inputs": {
                "parameters": {**QUERIES, "namespace": "data", "psql_image": image},
                "alert": {"alertname": "PostgresLongRunningQueries", **ORDERS_DB},
            },
            "outputs": {"message": "done"},
        }
    )
    with session_scope() as session:
        session.execute(
            update(WorkflowRun)
            .where(WorkflowRun.run_id == "precedent-1")
            .values(provenance="neuralops", verified=True)
        )


@pytest.mark.parametrize("image", ["evil.example/psql:latest", "evil.example/psql:16"])
def test_an_attackers_image_from_a_precedent_never_runs(env, image: str) -> None:
    """Even from the most trusted precedent, a value the manifest refuses is left out (as a
    bad label is): the playbook's own default image runs, never the attacker's."""
    _precedent(image)
    asked = Incident(alert="PostgresLongRunningQueries", labels=ORDERS_DB)
    manifest = registry.registered_manifests()
    manifest = next(m for m in manifest if m.id == "kill-long-running-queries")
    assert "psql_image" not in remediation.precedent_parameters(manifest, asked)

    current = remediation.suggest(
        env["recommender"],
        incident=asked,
        playbook_id="kill-long-running-queries",
        parameters={"cluster": "orders-db", "database": "orders"},
    )
    current = _dry_run(env, current)
    assert current.state == "dry_run_passed", current.dry_run
    assert current.parameters["psql_image"] == "postgres:16.4-alpine"
    assert image not in json.dumps(current.dry_run)


@pytest.mark.parametrize("image", ["evil.example/psql:latest", "evil.example/psql:16"])
def test_an_attackers_image_stored_with_the_incident_fails_the_dry_run(env, image: str) -> None:
    """Whatever wrote the incident's parameters, the dry-run renders them through the same
    checks: the image is named in the failure and nothing reaches the cluster."""
    current = incidents.create(
        signal_id=None,
        playbook_id="kill-long-running-queries",
        recommendations=[],
        parameters={**QUERIES, "namespace": "data", "psql_image": image, "run_id": "x1"},
        actor="test",
    )
    current = _dry_run(env, current)
    assert current.state == "dry_run_failed" and current.plan_digest is None
    assert image in current.dry_run["reason"]
    with pytest.raises(incidents.IllegalTransition):
        remediation.decide(current.id, settings=env["settings"])


def test_an_allowed_image_from_a_precedent_passes(env) -> None:
    _precedent("postgres:17.2-alpine")
    current = remediation.suggest(
        env["recommender"],
        incident=Incident(alert="PostgresLongRunningQueries", labels=ORDERS_DB),
        playbook_id="kill-long-running-queries",
        parameters={"cluster": "orders-db", "database": "orders"},
    )
    current = _dry_run(env, current)
    assert current.state == "dry_run_passed", current.dry_run
    assert current.parameters["psql_image"] == "postgres:17.2-alpine"


# --- (d) an unconstrained string into args is refused at `playbook add` ---------------------


def test_playbook_add_refuses_an_unconstrained_string_in_args(env, tmp_path: Path) -> None:
    data = yaml.safe_load((registry.catalogue_dir() / "kill-long-running-queries.yaml").read_text())
    data["id"] = "run-any-sql"
    data["parameters"].append({"name": "sql", "type": "string", "description": "SQL to run."})
    container = data["steps"][0]["manifest"]["spec"]["template"]["spec"]["containers"][0]
    container["args"] = ['psql -c "{{ sql }}"']
    path = tmp_path / "run-any-sql.yaml"
    path.write_text(yaml.safe_dump(data))
    result = CliRunner().invoke(_cli(), ["playbook", "add", str(path)])
    assert result.exit_code != 0 and isinstance(result.exception, InvalidInput)  # rc 2 in main()
    output = " ".join(str(result.exception).split())
    assert "run-any-sql" in output and "run-terminate-job" in output and "'sql'" in output
    assert "add a pattern" in output
    with pytest.raises(NotFound):
        registry.get_playbook("run-any-sql")


def test_playbook_add_refuses_a_parameterised_image_without_allowed_images(
    env, tmp_path: Path
) -> None:
    data = yaml.safe_load((registry.catalogue_dir() / "kill-long-running-queries.yaml").read_text())
    data["id"] = "any-image"
    del data["allowed_images"]
    path = tmp_path / "any-image.yaml"
    path.write_text(yaml.safe_dump(data))
    with pytest.raises(InvalidInput, match=r"psql_image.*add allowed_images"):
        registry.add_playbooks(registry.load_manifests([path]))
    with pytest.raises(NotFound):
        registry.get_playbook("any-image")


# --- (e) a pattern-violating value for a constrained parameter ------------------------------

INJECTION = "x; rm -rf /"


def test_a_shell_injection_in_a_constrained_parameter_fails_the_dry_run(env) -> None:
    given = remediation.suggest(
        env["recommender"],
        incident=Incident(alert="PostgresTableBloat", labels=ORDERS_DB),
        playbook_id="vacuum-bloated-table",
        parameters={**QUERIES, "table": INJECTION},
    )
    assert given.state == "dry_run_failed"
    assert (
        "parameters.table" in given.dry_run["reason"]
        and "does not match" in given.dry_run["reason"]
    )

    stored = incidents.create(
        signal_id=None,
        playbook_id="vacuum-bloated-table",
        recommendations=[],
        parameters={**QUERIES, "namespace": "data", "table": INJECTION, "run_id": "x1"},
        actor="test",
    )
    stored = _dry_run(env, stored)
    assert stored.state == "dry_run_failed" and "does not match" in stored.dry_run["reason"]
    manifest = next(m for m in env["manifests"] if m.id == "vacuum-bloated-table")
    with pytest.raises(InvalidInput, match="does not match"):
        policy.render(manifest, {**QUERIES, "namespace": "data", "table": INJECTION})
