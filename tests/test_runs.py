"""The run logger: validation, upsert by run_id, latest_run_id, paging, concurrency."""

from __future__ import annotations

import math
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta

import pytest
import sqlalchemy as sa
from sqlalchemy.engine import URL

from neuralops import db, registry, runs
from neuralops.db.models import WorkflowRun
from neuralops.errors import Conflict, InvalidInput, NotFound


def _run(run_id: str, wpk_id: str = "restart-deployment", **fields) -> dict:
    return {
        "wpk_id": wpk_id,
        "run_id": run_id,
        "status": "succeeded",
        "duration_ms": 1200,
        "inputs": {"namespace": "payments"},
        "outputs": {"message": "ok"},
        "node_logs": [{"name": "restart", "status": "Completed", "duration_ms": 900}],
        **fields,
    }


@pytest.fixture
def catalogue(database_url: URL) -> URL:
    registry.add_playbooks(registry.load_manifests([registry.catalogue_dir()]))
    return database_url


def _rows(url: URL) -> list[WorkflowRun]:
    with db.session_scope(url) as session:
        return list(session.scalars(sa.select(WorkflowRun).order_by(WorkflowRun.run_id)))


def test_log_run_stores_every_field(database_url: URL) -> None:
    started = datetime(2026, 11, 1, 12, 0, tzinfo=UTC)
    assert runs.log_run(_run("r-1", cluster="prod-eu-1", created_at=started)) == "r-1"
    [row] = _rows(database_url)
    assert (row.wpk_id, row.status, row.duration_ms, row.cluster) == (
        "restart-deployment",
        "succeeded",
        1200,
        "prod-eu-1",
    )
    assert row.inputs == {"namespace": "payments"}
    assert row.node_logs == [{"name": "restart", "status": "Completed", "duration_ms": 900}]
    assert row.created_at == started and row.created_at.tzinfo is not None


def test_accepts_the_pydantic_model(database_url: URL) -> None:
    assert runs.log_run(runs.RunIn.model_validate(_run("r-model"))) == "r-model"
    assert [r.run_id for r in _rows(database_url)] == ["r-model"]


def test_logging_the_same_run_id_twice_updates(database_url: URL) -> None:
    runs.log_run(_run("r-1", status="running", duration_ms=0))
    [first] = _rows(database_url)
    runs.log_run(_run("r-1", status="failed", duration_ms=5000, outputs={"error": "timeout"}))
    [row] = _rows(database_url)
    assert (row.id, row.created_at) == (first.id, first.created_at)
    assert (row.status, row.duration_ms, row.outputs) == ("failed", 5000, {"error": "timeout"})
    assert row.updated_at >= first.updated_at


def test_a_batch_with_repeated_run_ids_keeps_the_last_report(database_url: URL) -> None:
    runs.log_runs([_run("r-1", status="running"), _run("r-1", status="succeeded")])
    assert [(r.run_id, r.status) for r in _rows(database_url)] == [("r-1", "succeeded")]


def test_latest_run_id_follows_the_newest_run(catalogue: URL) -> None:
    now = datetime.now(UTC)
    runs.log_run(_run("r-new", created_at=now))
    assert registry.describe_workflow("restart-deployment").latest_run_id == "r-new"
    runs.log_run(_run("r-backfilled", created_at=now - timedelta(days=3)))
    assert registry.describe_workflow("restart-deployment").latest_run_id == "r-new"
    runs.log_run(_run("r-newer", created_at=now + timedelta(seconds=1)))
    assert registry.describe_workflow("restart-deployment").latest_run_id == "r-newer"


def test_runs_of_unknown_playbooks_are_kept_without_touching_the_registry(catalogue: URL) -> None:
    runs.log_run(_run("r-flow", wpk_id="detect"))
    info = registry.describe_workflow("detect")
    assert (info.kind, info.latest_run_id, info.run_count) == ("flow", "r-flow", 1)


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"status": "exploded"}, "status"),
        ({"duration_ms": -1}, "duration_ms"),
        ({"duration_ms": "fast"}, "duration_ms"),
        ({"wpk_id": "../../etc/passwd"}, "wpk_id"),
        ({"run_id": ""}, "run_id"),
        ({"inputs": ["not", "a", "mapping"]}, "inputs"),
        ({"outputs": {"ratio": math.nan}}, "outputs"),
        ({"created_at": "2026-11-01T12:00:00"}, "created_at"),  # naive: whose noon?
        ({"node_logs": [{"status": "Completed"}]}, "node_logs.0.name"),
        ({"colour": "blue"}, "colour"),
    ],
)
def test_bad_payload_names_the_field_and_writes_nothing(
    database_url: URL, change: dict, field: str
) -> None:
    with pytest.raises(InvalidInput) as caught:
        runs.log_runs([_run("r-good"), {**_run("r-bad"), **change}])
    assert field in [p.field for p in caught.value.problems]
    assert field in str(caught.value)
    assert _rows(database_url) == []


def test_missing_field_is_named(database_url: URL) -> None:
    payload = _run("r-1")
    del payload["status"]
    with pytest.raises(InvalidInput, match="status: Field required"):
        runs.log_run(payload)


def test_oversized_inputs_are_refused(database_url: URL) -> None:
    with pytest.raises(InvalidInput, match="inputs"):
        runs.log_run(_run("r-1", inputs={"blob": "x" * (runs.MAX_JSON_BYTES + 1)}))


def test_concurrent_writers_lose_no_rows(catalogue: URL) -> None:
    def write(batch: int) -> None:
        for n in range(25):
            runs.log_run(_run(f"r-{batch}-{n}"))

    with ThreadPoolExecutor(max_workers=8) as pool:
        list(pool.map(write, range(8)))
    assert len(_rows(catalogue)) == 200
    assert registry.describe_workflow("restart-deployment").run_count == 200


def test_list_runs_pages_newest_first(catalogue: URL) -> None:
    base = datetime(2026, 11, 1, tzinfo=UTC)
    runs.log_runs([_run(f"r-{n:02d}", created_at=base + timedelta(minutes=n)) for n in range(12)])
    first = runs.list_runs("restart-deployment", limit=5, page=1)
    assert [r.run_id for r in first.items] == ["r-11", "r-10", "r-09", "r-08", "r-07"]
    assert (first.total, first.pages, first.next_page) == (12, 3, 2)
    last = runs.list_runs("restart-deployment", limit=5, page=3)
    assert [r.run_id for r in last.items] == ["r-01", "r-00"]
    assert last.next_page is None
    assert runs.list_runs("restart-deployment", limit=5, page=4).items == []


def test_list_runs_of_a_playbook_without_runs_is_empty(catalogue: URL) -> None:
    page = runs.list_runs("uncordon-node")
    assert (page.total, page.items, page.pages) == (0, [], 1)


def test_list_runs_of_an_unknown_workflow_is_not_found(database_url: URL) -> None:
    with pytest.raises(NotFound, match="no-such-thing"):
        runs.list_runs("no-such-thing")


# --- provenance, immutability, time and text (issue 15) -------------------------------------


def test_provenance_and_verification_are_recorded(database_url: URL) -> None:
    runs.log_run(_run("r-lib"))
    runs.log_run(_run("r-api"), provenance="api:ci-bot")
    runs.log_run(_run("r-own"), provenance=runs.NEURALOPS, verified=True)
    assert [(r.run_id, r.provenance, r.verified) for r in _rows(database_url)] == [
        ("r-api", "api:ci-bot", False),
        ("r-lib", "local", False),
        ("r-own", "neuralops", True),
    ]
    with pytest.raises(InvalidInput, match="provenance"):
        runs.log_run(_run("r-x"), provenance="api:two words")
    assert runs.api_provenance("ci-bot@example.com") == "api:ci-bot@example.com"


def test_a_finished_run_is_immutable(database_url: URL) -> None:
    runs.log_run(_run("r-1", created_at=datetime(2026, 11, 1, tzinfo=UTC)))
    [before] = _rows(database_url)
    # The same content again (created_at repeated or left out) writes nothing.
    runs.log_run(_run("r-1", created_at=datetime(2026, 11, 1, tzinfo=UTC)))
    assert runs.log_run(_run("r-1"), provenance="api:someone") == "r-1"
    [same] = _rows(database_url)
    assert (same.updated_at, same.provenance) == (before.updated_at, "local")
    # Different content is a Conflict naming the run, and nothing of the batch is written.
    for change in ({"status": "failed"}, {"outputs": {"message": "rewritten"}}):
        with pytest.raises(Conflict, match="run 'r-1' is already recorded as succeeded"):
            runs.log_runs([_run("r-2"), _run("r-1", **change)])
    with pytest.raises(Conflict, match="r-1"):
        runs.log_run(_run("r-1", created_at=datetime(2026, 1, 1, tzinfo=UTC)))
    [after] = _rows(database_url)
    assert (after.status, after.outputs, after.updated_at) == (
        "succeeded",
        before.outputs,
        before.updated_at,
    )


def test_a_running_run_is_updated_only_by_its_writer(database_url: URL) -> None:
    runs.log_run(_run("r-1", status="running"), provenance="api:ci-bot")
    with pytest.raises(Conflict, match="another writer"):
        runs.log_run(_run("r-1", status="succeeded"), provenance="api:mallory")
    with pytest.raises(Conflict):
        runs.log_run(_run("r-1", status="succeeded"))  # local: not the writer either
    runs.log_run(_run("r-1", status="succeeded"), provenance="api:ci-bot")
    [row] = _rows(database_url)
    assert (row.status, row.provenance) == ("succeeded", "api:ci-bot")


def test_seeding_keeps_what_is_stored(database_url: URL) -> None:
    runs.log_run(_run("r-1"), provenance="api:ci-bot")
    runs.log_runs(
        [_run("r-1", status="failed"), _run("r-2")], provenance=runs.SEED, keep_existing=True
    )
    assert [(r.run_id, r.status, r.provenance) for r in _rows(database_url)] == [
        ("r-1", "succeeded", "api:ci-bot"),
        ("r-2", "succeeded", "seed"),
    ]


def test_concurrent_reports_of_one_run_cannot_rewrite_it(database_url: URL) -> None:
    """Writers racing to record the same run_id with different content: one wins, the others
    get a Conflict, and the stored run is exactly the winner's."""

    def write(n: int) -> str:
        try:
            runs.log_run(_run("r-race", duration_ms=1000 + n), provenance=f"api:w{n}")
        except Conflict:
            return "conflict"
        return "written"

    with ThreadPoolExecutor(max_workers=6) as pool:
        outcomes = list(pool.map(write, range(6)))
    assert outcomes.count("written") == 1
    [row] = _rows(database_url)
    assert row.provenance == f"api:w{outcomes.index('written')}"
    assert row.duration_ms == 1000 + outcomes.index("written")


def test_record_outcome_corrects_only_neuralops_own_runs(database_url: URL) -> None:
    runs.log_run(_run("remediate-1"), provenance=runs.NEURALOPS, verified=True)
    runs.record_outcome("remediate-1", "failed", outputs={"outcome": "not_resolved"})
    [row] = _rows(database_url)
    assert (row.status, row.outputs, row.verified) == ("failed", {"outcome": "not_resolved"}, True)
    runs.log_run(_run("r-api"), provenance="api:ci-bot")
    with pytest.raises(Conflict, match="r-api"):
        runs.record_outcome("r-api", "failed", outputs={})
    with pytest.raises(NotFound):
        runs.record_outcome("r-none", "failed", outputs={})


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"created_at": "9999-12-30T00:00:00+00:00"}, "created_at"),
        ({"created_at": timedelta(minutes=6)}, "created_at"),  # from now, when the test runs
        (
            {
                "node_logs": [
                    {"name": "a", "status": "Completed", "started_at": "9999-12-30T00:00:00Z"}
                ]
            },
            "node_logs.0.started_at",
        ),
    ],
)
def test_times_in_the_future_are_refused(database_url: URL, change: dict, field: str) -> None:
    change = {
        k: (datetime.now(UTC) + v).isoformat() if isinstance(v, timedelta) else v
        for k, v in change.items()
    }
    with pytest.raises(InvalidInput, match="in the future") as caught:
        runs.log_runs([_run("r-good"), _run("r-bad", **change)])
    assert field in [p.field for p in caught.value.problems]
    assert _rows(database_url) == []
    runs.log_run(_run("r-soon", created_at=datetime.now(UTC) + timedelta(minutes=4)))


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"inputs": {"note": "a\ud800b"}}, "inputs"),
        ({"inputs": {"deep": [{"\udfff": 1}]}}, "inputs"),
        ({"outputs": {"message": "\ud83d"}}, "outputs"),
        ({"cluster": "prod-\ud800"}, "cluster"),
        ({"node_logs": [{"name": "a\ud800", "status": "Completed"}]}, "node_logs.0.name"),
        (
            {"node_logs": [{"name": "a", "status": "Failed", "message": "\udc80"}]},
            "node_logs.0.message",
        ),
    ],
)
def test_text_that_cannot_be_encoded_is_refused(
    database_url: URL, change: dict, field: str
) -> None:
    with pytest.raises(InvalidInput, match=r"lone surrogate|unicode string") as caught:
        runs.log_runs([_run("r-good"), _run("r-bad", **change)])
    assert field in [p.field for p in caught.value.problems]
    assert "\ud800" not in str(caught.value)  # the input is not echoed
    assert _rows(database_url) == []
    runs.log_run(_run("r-emoji", outputs={"message": "ok \U0001f600 \u00e9"}))  # real text is fine


def test_execution_run_ids_are_reserved_for_neuralops(database_url: URL) -> None:
    """Another writer cannot take `remediate-<incident>` first: NeuralOps' record of that
    execution would then be refused as a conflict."""
    with pytest.raises(InvalidInput, match="reserved for NeuralOps' own executions") as caught:
        runs.log_runs(
            [_run("ok-1"), _run("remediate-1234", status="running")],
            provenance=runs.api_provenance("mallory"),
        )
    assert [p.field for p in caught.value.problems] == ["run_id"]
    assert _rows(database_url) == []  # nothing of the batch
    runs.log_run(_run("remediate-1234"), provenance=runs.NEURALOPS, verified=True)
    assert [r.run_id for r in _rows(database_url)] == ["remediate-1234"]


@pytest.mark.parametrize(
    ("subject", "expected"),
    [
        ("ci-bot", "api:ci-bot"),
        ("svc@example.com", "api:svc@example.com"),
        ("Jane Doe, SRE", "api:Jane%20Doe%2C%20SRE"),
        ("tab\there", "api:tab%09here"),
    ],
)
def test_any_token_subject_makes_a_valid_provenance(subject: str, expected: str) -> None:
    assert runs.api_provenance(subject) == expected
    assert runs.check_provenance(expected) == expected


def test_a_very_long_subject_is_shortened_with_a_hash_and_stays_distinct() -> None:
    one, two = runs.api_provenance("x" * 400), runs.api_provenance("x" * 399 + "y")
    assert one != two and len(one) <= 200 and len(two) <= 200


def test_a_batch_larger_than_one_statement_is_written(postgresql_url) -> None:
    """4,700 runs x 14 columns is more than PostgreSQL's 65,535 parameters in one statement."""
    from neuralops.synthetic import synthetic_runs

    written = runs.log_runs(synthetic_runs(4700, seed=11))
    assert len(written) == 4700
