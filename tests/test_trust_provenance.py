"""Trust boundary, run history (issue 15, points 2 and 6): the attacks replayed on SQLite and
PostgreSQL, through the library and through the real API (uvicorn, bearer tokens).

(a) poisoning: 200 "succeeded" uncordon-node runs posted for an OOM alert must not steer the
    recommendation nor the precedent parameters;
(b) rewriting history: a finished run is immutable (same content idempotent, else 409);
(c) pinning "latest": a created_at far in the future is refused;
(d) text that cannot be encoded (a lone surrogate) is refused, nothing written;
(e) a bad stored row does not block the export: quarantined, the rest exported.
To be merged into tests/test_trust.py.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
import sqlalchemy as sa
from conftest import api_headers
from sqlalchemy.engine import URL

from neuralops import etl, remediation, runs
from neuralops.db import get_engine, session_scope
from neuralops.db.models import WorkflowRun
from neuralops.embedding import MiniLMEmbedder
from neuralops.errors import Conflict, InvalidInput
from neuralops.recommend import Recommender, incident_from_signal
from neuralops.registry import registered_manifests
from neuralops.vectorize import read_jsonl, vectorize_records
from neuralops.vectorstore import store_from_settings

ATTACKER = "api:attacker"
NODE = "ip-10-6-6-6.attacker.internal"


@pytest.fixture(scope="module")
def embedder() -> MiniLMEmbedder:
    return MiniLMEmbedder()


def execution_like(
    signal: Any,
    playbook: str,
    parameters: dict[str, Any],
    *,
    run_id: str,
    status: str = "succeeded",
    ago: timedelta = timedelta(days=1),
    steps: tuple[str, ...] = ("uncordon", "wait-schedulable"),
) -> dict[str, Any]:
    """A run shaped exactly like remediation.log_execution's record of an execution."""
    incident = incident_from_signal(signal)
    incident_id = str(uuid.uuid4())
    return {
        "wpk_id": playbook,
        "run_id": run_id,
        "status": status,
        "duration_ms": 41_000,
        "inputs": {
            "parameters": parameters,
            "alert": {"alertname": incident.alert, "summary": incident.summary, **incident.labels},
            "incident_id": incident_id,
            "triggered_by": "remediate",
        },
        "outputs": {
            "incident_id": incident_id,
            "outcome": "resolved",
            "runtime": "mock-cluster",
            "message": f"{playbook} completed",
        },
        "node_logs": [{"name": s, "status": "Completed", "duration_ms": 20_000} for s in steps],
        "cluster": None,
        "created_at": (datetime.now(UTC) - ago).isoformat(),
    }


def poison(signal: Any, count: int = 200) -> list[dict[str, Any]]:
    return [
        execution_like(
            signal,
            "uncordon-node",
            {"node": NODE},
            run_id=f"evil-{n:04d}",
            ago=timedelta(hours=1 + n),
        )
        for n in range(count)
    ]


def vectorize_all(tmp_path: Path, embedder: MiniLMEmbedder, settings: Any) -> Any:
    exported = etl.export_runs(tmp_path / "runs.jsonl")
    store = store_from_settings(settings)
    vectorize_records(read_jsonl(exported.path), store, embedder)
    return store


def stored_runs() -> dict[str, tuple]:
    with session_scope() as session:
        rows = session.execute(
            sa.select(
                WorkflowRun.run_id,
                WorkflowRun.status,
                WorkflowRun.outputs,
                WorkflowRun.created_at,
                WorkflowRun.updated_at,
                WorkflowRun.provenance,
                WorkflowRun.verified,
            )
        ).all()
    return {row.run_id: tuple(row[1:]) for row in rows}


# --- (a) poisoning the recommender and the precedent parameters --------------------------


def test_posted_runs_cannot_steer_the_recommendation_or_the_parameters(
    database_url: URL, signed_catalogue: dict, embedder: MiniLMEmbedder, tmp_path: Path
) -> None:
    settings = signed_catalogue["settings"]
    signal = signed_catalogue["signals"]["oom-kills"]
    incident = incident_from_signal(signal)
    raise_memory = next(m for m in signed_catalogue["manifests"] if m.id == "raise-memory-limit")
    uncordon = next(m for m in signed_catalogue["manifests"] if m.id == "uncordon-node")
    # What NeuralOps itself did here before: raised the memory limit, and it worked.
    legit = execution_like(
        signal,
        raise_memory.id,
        {
            "namespace": "payments",
            "deployment": "payments-api",
            "container": "payments-api",
            "memory_limit": "2Gi",
        },
        run_id=f"remediate-{uuid.uuid4()}",
        ago=timedelta(days=9),
        steps=tuple(s.name for s in raise_memory.steps),
    )
    runs.log_run(legit, provenance=runs.NEURALOPS, verified=True)
    # The attack: 200 "succeeded" uncordon-node executions for this very OOM alert, and newer
    # "succeeded" raise-memory-limit runs with the attacker's values.
    runs.log_runs(poison(signal), provenance=ATTACKER)
    evil_limit = execution_like(
        signal,
        raise_memory.id,
        {
            "namespace": "payments",
            "deployment": "payments-api",
            "container": "payments-api",
            "memory_limit": "64Gi",
        },
        run_id="evil-memory",
        ago=timedelta(minutes=5),
    )
    runs.log_run(evil_limit, provenance=ATTACKER)
    store = vectorize_all(tmp_path, embedder, settings)
    assert store.count() == 202

    manifests = registered_manifests()
    recommender = Recommender(store, embedder, manifests)  # trusted: the setting (none)
    result = recommender.recommend(incident, top=20)
    ids = [r.playbook_id for r in result.recommendations]
    assert ids[0] == "raise-memory-limit"
    first = result.recommendations[0]
    assert first.similar_runs == 1 and [e.run_id for e in first.evidence if e.counted] == [
        legit["run_id"]
    ]
    for rec in result.recommendations:  # every attacker run shown is reported, never counted
        assert all(not e.counted for e in rec.evidence if e.provenance == ATTACKER)
        assert all(e.provenance != ATTACKER for e in rec.evidence if e.counted)
    if "uncordon-node" in ids:
        listed = result.recommendations[ids.index("uncordon-node")]
        assert (listed.similar_runs, listed.success_rate) == (0, None)
        assert listed.evidence and not any(e.counted for e in listed.evidence)
    # Its 200 runs are there to be seen, as reported: they weigh nothing.
    vector = embedder.embed([incident.text()])[0]
    shown = recommender.reported(["uncordon-node"], vector)["uncordon-node"]
    assert len(shown) == 5 and {r["provenance"] for r in shown} == {ATTACKER}
    candidates = recommender.candidates(incident, vector=vector)
    assert not any(r["provenance"] == ATTACKER for r in candidates.runs)

    # The control: were the attacker a trusted writer, its runs would be the evidence the
    # issue saw (uncordon-node: 100 similar runs, 99 %). The trust boundary, not the data,
    # is what keeps them out.
    fooled = Recommender(store, embedder, manifests, trusted={ATTACKER})
    steered = next(
        r
        for r in fooled.recommend(incident, top=20).recommendations
        if r.playbook_id == "uncordon-node"
    )
    assert steered.similar_runs == 100 and steered.success_rate > 0.98

    # Precedent parameters come from NeuralOps' own execution, not the attacker's newer runs.
    assert remediation.precedent_parameters(uncordon, incident) == {}
    assert remediation.precedent_parameters(raise_memory, incident)["memory_limit"] == "2Gi"
    assert remediation.precedent_parameters(uncordon, incident, trusted={ATTACKER}) == {
        "node": NODE
    }
    # And the whole suggest step: the playbook and parameters it would run.
    suggested = remediation.suggest(recommender, signal_id=str(signal.id))
    assert suggested.playbook_id == "raise-memory-limit"
    assert suggested.parameters["memory_limit"] == "2Gi"


def test_a_future_dated_run_never_becomes_the_precedent(
    database_url: URL, signed_catalogue: dict
) -> None:
    """A run dated just inside the clock-skew allowance is accepted, but until its time has
    come it is not "the latest" succeeded run that parameters are taken from."""
    signal = signed_catalogue["signals"]["oom-kills"]
    incident = incident_from_signal(signal)
    manifest = next(m for m in signed_catalogue["manifests"] if m.id == "raise-memory-limit")
    params = {"namespace": "payments", "deployment": "payments-api", "container": "payments-api"}
    now = execution_like(
        signal, manifest.id, params | {"memory_limit": "2Gi"}, run_id="now", ago=timedelta(0)
    )
    ahead = execution_like(
        signal,
        manifest.id,
        params | {"memory_limit": "9Gi"},
        run_id="ahead",
        ago=-timedelta(minutes=4),
    )
    runs.log_runs([now, ahead], provenance=runs.NEURALOPS, verified=True)
    assert remediation.precedent_parameters(manifest, incident)["memory_limit"] == "2Gi"


# --- (b) (c) (d) rewriting, pinning, unencodable text: the library ------------------------


def test_a_finished_run_cannot_be_rewritten(database_url: URL, signed_catalogue: dict) -> None:
    signal = signed_catalogue["signals"]["oom-kills"]
    own = execution_like(signal, "raise-memory-limit", {"memory_limit": "2Gi"}, run_id="r-own")
    runs.log_run(own, provenance=runs.NEURALOPS, verified=True)
    before = stored_runs()
    rewritten = {**own, "status": "failed", "outputs": {"error": "made up"}}
    with pytest.raises(Conflict, match="run 'r-own'"):
        runs.log_runs(
            [execution_like(signal, "x", {}, run_id="r-new"), rewritten], provenance=ATTACKER
        )
    assert stored_runs() == before  # nothing of the batch written
    assert runs.log_run(own, provenance=ATTACKER) == "r-own"  # the same: idempotent
    assert stored_runs() == before  # not even the provenance changed


def test_a_run_dated_in_the_far_future_is_refused(database_url: URL) -> None:
    pinned = {
        "wpk_id": "uncordon-node",
        "run_id": "pin",
        "status": "succeeded",
        "duration_ms": 1,
        "created_at": "9999-12-30T00:00:00+00:00",
    }
    with pytest.raises(InvalidInput, match=r"created_at: .*in the future"):
        runs.log_run(pinned, provenance=ATTACKER)
    assert stored_runs() == {}


def test_text_that_cannot_be_encoded_is_refused_alike(database_url: URL) -> None:
    bad = {
        "wpk_id": "uncordon-node",
        "run_id": "bad",
        "status": "succeeded",
        "duration_ms": 1,
        "inputs": {"note": "\ud800"},
    }
    with pytest.raises(InvalidInput, match=r"inputs: .*lone surrogate"):
        runs.log_runs([{**bad, "run_id": "good", "inputs": {}}, bad], provenance=ATTACKER)
    assert stored_runs() == {}


# --- (e) a bad stored row does not block the export ---------------------------------------


def test_a_bad_stored_row_is_quarantined_and_the_rest_exported(
    database_url: URL, tmp_path: Path
) -> None:
    good = {"wpk_id": "restart-deployment", "status": "succeeded", "duration_ms": 1}
    runs.log_runs([good | {"run_id": f"r-{n}"} for n in range(5)], provenance=runs.SEED)
    # Written before the fix (PostgreSQL would have refused a surrogate: a depth Python cannot
    # parse stands for it there).
    if database_url.get_backend_name() == "postgresql":
        value, reason = '\'{"a": ' + "[" * 3000 + "]" * 3000 + "}'::jsonb", "nested too deeply"
    else:
        value, reason = '\'{"a": "\\ud800"}\'', "text that cannot be encoded"
    with get_engine().begin() as conn:
        conn.execute(sa.text(f"UPDATE workflow_runs SET inputs = {value} WHERE run_id = 'r-2'"))
    result = etl.export_runs(tmp_path / "runs.jsonl")
    assert result.rows == 4
    assert [q.run_id for q in result.quarantined] == ["r-2"]
    assert reason in result.quarantined[0].reason
    lines = (tmp_path / "runs.jsonl").read_text().splitlines()
    assert len(lines) == 4 and '"provenance":"seed"' in lines[0]
    assert etl.count_pending() == 0  # the watermark moved past it


# --- the same attacks through the real API --------------------------------------------------


def test_the_api_records_the_writer_and_refuses_rewriting_pinning_and_bad_text(
    api_server: str, signed_catalogue: dict, embedder: MiniLMEmbedder, tmp_path: Path
) -> None:
    signal = signed_catalogue["signals"]["oom-kills"]
    writer = api_headers("runs:write", subject="attacker")
    with httpx.Client(base_url=api_server, timeout=30) as client:
        # (a) the 200 posted runs are recorded as the attacker's, unverified
        for run in poison(signal):
            assert client.post("/runs", json=run, headers=writer).status_code == 201
        stored = stored_runs()
        assert {v[4:] for k, v in stored.items() if k.startswith("evil-")} == {(ATTACKER, False)}
        # (b) a finished run is immutable: same content 201 (nothing written), else 409
        own = execution_like(signal, "raise-memory-limit", {"memory_limit": "2Gi"}, run_id="r-own")
        runs.log_run(own, provenance=runs.NEURALOPS, verified=True)
        before = stored_runs()
        assert client.post("/runs", json=own, headers=writer).status_code == 201
        rewrite = client.post("/runs", json={**own, "status": "failed"}, headers=writer)
        assert rewrite.status_code == 409 and "r-own" in rewrite.json()["detail"]
        posted = {**poison(signal, 1)[0], "status": "failed"}  # the attacker's own, rewritten
        assert client.post("/runs", json=posted, headers=writer).status_code == 409
        assert stored_runs() == before
        # (c) pinning a resource's latest run
        pin = {**poison(signal, 1)[0], "run_id": "pin", "created_at": "9999-12-30T00:00:00Z"}
        pinned = client.post("/runs", json=pin, headers=writer)
        assert pinned.status_code == 422 and "created_at" in pinned.text
        # (d) a lone surrogate, sent as the JSON escape a client would
        body = (
            '{"wpk_id": "x", "run_id": "sur", "status": "succeeded", "duration_ms": 1, '
            '"inputs": {"note": "\\ud800"}}'
        )
        refused = client.post(
            "/runs", content=body, headers=writer | {"Content-Type": "application/json"}
        )
        assert refused.status_code == 422 and "inputs" in refused.text
        assert stored_runs() == before
        # and none of it without a runs:write credential
        anonymous = client.post("/runs", json={**own, "run_id": "anon"})
        assert anonymous.status_code == 401
        assert "anon" not in stored_runs() and "pin" not in stored_runs()

        # The hourly vectorize, then POST /recommend for the OOM signal: the 200 posted runs
        # are shown as reported and count for nothing.
        vectorize_all(tmp_path, embedder, signed_catalogue["settings"])
        asked = client.post(
            "/recommend",
            json={"signal_id": str(signal.id), "top": 20},
            headers=api_headers("recommend"),
        )
        assert asked.status_code == 200, asked.text
        ranked = asked.json()["recommendations"]
        assert ranked[0]["playbook_id"] == "raise-memory-limit"
        for rec in ranked:
            for e in rec["evidence"]:
                assert e["counted"] == (e["provenance"] != ATTACKER)
            if rec["playbook_id"] == "uncordon-node":
                assert (rec["similar_runs"], rec["success_rate"]) == (0, None)
