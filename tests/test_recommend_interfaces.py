"""`neuralops recommend`, `neuralops seed signals`, POST /recommend and the recommend flow, on
real components: the database of the fixtures, LanceDB in the test's data dir, the shipped
catalogue, and synthetic run history exported, redacted and embedded as production does.

The hashing embedder stands in where the model is not the subject (it is fast); the CLI test
on a seeded signal uses MiniLM, as production does."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from pathlib import Path

import pytest
from conftest import api_headers, wait_until
from fastapi.testclient import TestClient
from sqlalchemy.engine import URL
from typer.testing import CliRunner

from neuralops import etl, registry, runs, signals
from neuralops.api import _Recommenders, create_app
from neuralops.cli import MAX_TOP as CLI_MAX_TOP
from neuralops.cli import app
from neuralops.embedding import load_embedder
from neuralops.errors import NotFound
from neuralops.recommend import MAX_TOP
from neuralops.settings import get_settings
from neuralops.synthetic import synthetic_runs
from neuralops.vectorize import read_jsonl, vectorize_records
from neuralops.vectorstore import VectorStore, store_from_settings

runner = CliRunner()
HISTORY_RUNS = 200
OOM_TEXT = "payments-api pods OOMKilled 12 times in 15m in namespace payments"


def use_embedder(monkeypatch: pytest.MonkeyPatch, kind: str) -> None:
    monkeypatch.setenv("NEURALOPS_EMBEDDER", kind)
    get_settings.cache_clear()


def register_catalogue() -> None:
    registry.add_playbooks(registry.load_manifests([registry.catalogue_dir()]))


def build_history(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, count: int = HISTORY_RUNS
) -> None:
    """Synthetic runs logged (provenance seed, a writer these tests trust, as the demo does),
    exported (redacted) and vectorized with the configured embedder, as the vectorize flow
    does."""
    monkeypatch.setenv("NEURALOPS_TRUSTED_WRITERS", "seed")
    get_settings.cache_clear()
    runs.log_runs(synthetic_runs(count, seed=0), provenance=runs.SEED)
    exported = etl.export_runs(tmp_path / "runs.jsonl")
    settings = get_settings()
    embedder, _ = load_embedder(settings.embedder)
    store = store_from_settings(settings)
    written = vectorize_records(read_jsonl(exported.path), store, embedder).written
    assert written == count
    store.ensure_index()


@pytest.fixture
def history(sqlite_url: URL, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> URL:
    """SQLite with the catalogue registered and vectorized history (hashing embedder)."""
    use_embedder(monkeypatch, "hashing")
    register_catalogue()
    build_history(tmp_path, monkeypatch)
    return sqlite_url


def seed_signals() -> dict[str, str]:
    """`neuralops seed signals --json`: rule -> signal id."""
    result = runner.invoke(app, ["seed", "signals", "--json"])
    assert result.exit_code == 0, result.output
    return {s["rule"]: s["id"] for s in json.loads(result.stdout)}


def neuralops(*args: str) -> subprocess.CompletedProcess:
    """The real console entry point, as an operator runs it."""
    return subprocess.run(
        [sys.executable, "-m", "neuralops", *args],
        capture_output=True,
        text=True,
        env=os.environ.copy(),
        timeout=120,
    )


# --- seed signals ------------------------------------------------------------------------------


def test_seed_signals_records_realistic_signals_once(sqlite_url: URL) -> None:
    first = runner.invoke(app, ["seed", "signals", "--json"])
    assert first.exit_code == 0, first.output
    recorded = json.loads(first.stdout)
    assert [s["rule"] for s in recorded] == ["oom-kills", "http-latency-p99", "pvc-usage"]
    assert all(s["new"] for s in recorded)
    oom = recorded[0]
    assert oom["labels"] == {
        "namespace": "payments",
        "pod": "payments-api-7d9f8b6c4d-x2x7q",
        "severity": "page",
        "symptom": "oom-killed",
    }
    assert oom["hint"].startswith(
        "OOM kills of namespace=payments, pod=payments-api-7d9f8b6c4d-x2x7q is 9.1σ above its "
        "3h baseline (now 4); started "
    ) and oom["hint"].endswith(" UTC")
    assert oom["fingerprint"] == signals.fingerprint(
        "oom-kills", {"namespace": "payments", "pod": "payments-api-7d9f8b6c4d-x2x7q"}
    )
    assert recorded[1]["labels"]["service"] == "checkout-web"
    assert recorded[1]["labels"]["symptom"] == "high-latency"
    assert recorded[2]["labels"]["pod"] == "postgres-main-0"
    assert recorded[2]["labels"]["symptom"] == "volume-full"

    again = runner.invoke(app, ["seed", "signals"])
    assert again.exit_code == 0, again.output
    for signal in recorded:
        assert signal["id"] in again.stdout
    assert again.stdout.count("already") == 3 and "new" not in again.stdout
    assert sorted(str(s.id) for s in signals.list_signals()) == sorted(s["id"] for s in recorded)


# --- CLI ---------------------------------------------------------------------------------------


@pytest.mark.slow
def test_cli_recommends_raising_the_memory_limit_for_a_seeded_oom_signal_with_minilm(
    sqlite_url: URL, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    use_embedder(monkeypatch, "minilm")
    register_catalogue()
    build_history(tmp_path, monkeypatch)
    oom = seed_signals()["oom-kills"]

    monkeypatch.setenv("COLUMNS", "100")  # narrow: justifications as lines under the table
    result = runner.invoke(app, ["recommend", "--signal-id", oom])
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert "oom-killed (declared)" in result.stdout
    first = next(line for line in lines if line.startswith("1. "))
    assert first.startswith("1. raise-memory-limit: ")
    assert "similar" in first and "run syn-" in first and "treats oom-killed" in first

    as_json = runner.invoke(app, ["recommend", "--signal-id", oom, "--json", "--top", "3"])
    assert as_json.exit_code == 0, as_json.output
    body = json.loads(as_json.stdout)
    assert body["model"].startswith("sentence-transformers/all-MiniLM-L6-v2@")
    assert body["symptoms"] == ["oom-killed"] and body["incident"]["alert"] == "oom-kills"
    best = body["recommendations"][0]
    assert best["playbook_id"] == "raise-memory-limit" and best["safety_mode"] == "manual"
    assert best["similar_runs"] > 0 and best["evidence"][0]["run_id"].startswith("syn-0-")
    assert len(body["recommendations"]) <= 3


def test_cli_recommends_for_text_in_a_wide_table(
    history: URL, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("COLUMNS", "250")
    result = runner.invoke(app, ["recommend", "--text", OOM_TEXT, "--top", "3"])
    assert result.exit_code == 0, result.output
    assert "oom-killed (inferred)" in result.stdout
    header = next(line for line in result.stdout.splitlines() if "justification" in line)
    assert "playbook" in header and "success rate" in header and "safety" in header
    rows = [line for line in result.stdout.splitlines() if line.startswith("│ 1 ")]
    assert rows and "raise-memory-limit" in rows[0]


def test_cli_recommend_json_parses_and_an_unrelated_text_says_why_it_is_empty(
    history: URL,
) -> None:
    result = runner.invoke(app, ["recommend", "--text", OOM_TEXT, "--json"])
    assert result.exit_code == 0, result.output
    body = json.loads(result.stdout)
    assert body["recommendations"][0]["playbook_id"] == "raise-memory-limit"
    assert body["symptom_source"] == "inferred" and body["reason"] is None

    empty = runner.invoke(app, ["recommend", "--text", "the [coffee] machine makes odd noises"])
    assert empty.exit_code == 0, empty.output
    assert "no recommendation: no playbook treats this incident" in empty.stdout
    assert "[coffee]" in empty.stdout  # printed as given, not read as markup


def test_cli_recommend_warns_on_stderr_when_the_embedder_falls_back(
    history: URL, monkeypatch: pytest.MonkeyPatch
) -> None:
    import neuralops.embedding as embedding

    use_embedder(monkeypatch, "auto")
    monkeypatch.setattr(embedding, "_minilm_available", lambda: False)  # package "missing"
    result = runner.invoke(app, ["recommend", "--text", OOM_TEXT, "--json"])
    assert result.exit_code == 0, result.output
    assert "warning:" in result.stderr and "hashing embedder" in result.stderr
    assert json.loads(result.stdout)["model"].startswith("hashing@")


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--text", "   "], "the incident text is empty"),
        (["--text", ""], "the incident text is empty"),
        ([], "give exactly one of --signal-id"),
        (["--text", "x", "--signal-id", str(uuid.uuid4())], "give exactly one of --signal-id"),
        (["--text", "x", "--top", str(MAX_TOP + 1)], "--top"),
        (["--text", "x", "--top", "0"], "--top"),
    ],
)
def test_cli_recommend_rejects_bad_options_naming_them(
    sqlite_url: URL, args: list[str], message: str
) -> None:
    result = runner.invoke(app, ["recommend", *args])
    assert result.exit_code == 2
    assert message in result.output
    if "empty" in message:
        assert "--text" in result.output


@pytest.mark.slow  # the real entry point in a subprocess: seconds of imports
def test_cli_unknown_signal_exits_2_with_the_message(sqlite_url: URL) -> None:
    missing = str(uuid.uuid4())
    result = neuralops("recommend", "--signal-id", missing)
    assert result.returncode == 2, result.stderr
    assert f"error: signal {missing} does not exist" in result.stderr
    assert "Traceback" not in result.stderr


def test_cli_malformed_signal_id_is_not_found(sqlite_url: URL) -> None:
    result = runner.invoke(app, ["recommend", "--signal-id", "not-a-signal"])
    assert isinstance(result.exception, NotFound)  # main() prints it and exits 2
    assert "'not-a-signal' does not exist (not a UUID)" in str(result.exception)


def test_cli_and_api_agree_on_the_largest_top() -> None:
    assert CLI_MAX_TOP == MAX_TOP


# --- API ---------------------------------------------------------------------------------------


@pytest.fixture
def client(history: URL) -> TestClient:
    return TestClient(create_app(history), headers=api_headers())


def test_api_recommends_for_a_signal(
    database_url: URL, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    use_embedder(monkeypatch, "hashing")
    register_catalogue()
    build_history(tmp_path, monkeypatch)
    oom = seed_signals()["oom-kills"]
    client = TestClient(create_app(database_url), headers=api_headers())
    response = client.post("/recommend", json={"signal_id": oom, "top": 2})
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["incident"]["labels"]["symptom"] == "oom-killed"
    assert body["symptom_source"] == "declared"
    best = body["recommendations"][0]
    assert best["playbook_id"] == "raise-memory-limit"
    assert "similar" in best["justification"] and "run syn-" in best["justification"]
    assert 1 <= len(body["recommendations"]) <= 2


def test_api_recommends_for_an_incident(client: TestClient) -> None:
    incident = {
        "alert": "KubePodOOMKilled",
        "summary": "payments-api pods OOMKilled 12 times in 15m",
        "labels": {"namespace": "payments", "service": "payments-api"},
    }
    response = client.post("/recommend", json={"incident": incident})
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["recommendations"][0]["playbook_id"] == "raise-memory-limit"
    assert body["symptoms"] == ["oom-killed"]
    # A declared symptom the playbook must not treat: contraindicated, never ranked.
    full = {"incident": {**incident, "symptoms": ["oom-killed", "quota-exceeded"]}}
    ranked = client.post("/recommend", json=full).json()
    assert "raise-memory-limit" not in [r["playbook_id"] for r in ranked["recommendations"]]
    assert "raise-memory-limit" in [e["playbook_id"] for e in ranked["excluded"]]


def test_api_unknown_signal_is_404(client: TestClient) -> None:
    missing = str(uuid.uuid4())
    response = client.post("/recommend", json={"signal_id": missing})
    assert response.status_code == 404
    assert response.json()["detail"] == f"signal {missing} does not exist"


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        ({"incident": {"summary": ""}}, "the incident is empty"),
        ({"incident": {"summary": "   ", "labels": {"namespace": " "}}}, "the incident is empty"),
        ({"incident": {}}, "the incident is empty"),
        ({}, "exactly one of signal_id or incident"),
        ({"signal_id": str(uuid.uuid4()), "incident": {"alert": "X"}}, "exactly one"),
        ({"incident": {"alert": "X"}, "top": 0}, "top"),
        ({"incident": {"alert": "X"}, "top": MAX_TOP + 1}, "top"),
        ({"signal_id": "not-a-uuid"}, "signal_id"),
        ({"incident": {"alert": "X", "severity": "page"}}, "severity"),
        ({"incident": {"alert": "X", "symptoms": ["OOM Killed"]}}, "is not a tag"),
    ],
)
def test_api_rejects_bad_requests_with_422(client: TestClient, body: dict, expected: str) -> None:
    response = client.post("/recommend", json=body)
    assert response.status_code == 422, response.text
    assert expected in response.text


def test_api_without_registered_playbooks_is_503_saying_how_to_fix_it(sqlite_url: URL) -> None:
    response = TestClient(create_app(sqlite_url), headers=api_headers()).post(
        "/recommend", json={"incident": {"summary": OOM_TEXT}}
    )
    assert response.status_code == 503
    assert "no playbooks are registered" in response.json()["detail"]


def test_api_sees_history_vectorized_after_its_first_request(
    sqlite_url: URL, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    use_embedder(monkeypatch, "hashing")
    register_catalogue()
    warmed = []
    prewarm = VectorStore.prewarm
    monkeypatch.setattr(VectorStore, "prewarm", lambda store: warmed.append(prewarm(store)))
    client = TestClient(create_app(sqlite_url), headers=api_headers())
    body = {"incident": {"summary": OOM_TEXT}}
    before = client.post("/recommend", json=body).json()["recommendations"][0]
    assert before["playbook_id"] == "raise-memory-limit"
    assert before["similar_runs"] == 0 and "no similar past runs" in before["justification"]
    build_history(tmp_path, monkeypatch)  # the hourly vectorize, while the API keeps running
    after = client.post("/recommend", json=body).json()["recommendations"][0]
    assert after["similar_runs"] > 0 and "run syn-" in after["justification"]
    # The indexes were loaded into the process's LanceDB cache once, before the first
    # request (none existed yet); the cache shared since then did not hide the new runs.
    assert warmed == [[]]


def test_api_holds_its_recommender_until_the_playbooks_or_trusted_writers_change(
    sqlite_url: URL, monkeypatch: pytest.MonkeyPatch
) -> None:
    use_embedder(monkeypatch, "hashing")
    register_catalogue()
    recommenders = _Recommenders(get_settings(), sqlite_url)
    first = recommenders.get()
    assert first.store.read_latest  # sees the runs other processes add (test above)
    assert recommenders.get() is first
    # A new version of one playbook: a recommender over the new catalogue, same model/store.
    manifest = next(m for m in registry.registered_manifests() if m.id == "raise-memory-limit")
    major, minor, patch = (int(part) for part in manifest.version.split("."))
    changed = manifest.model_copy(
        update={
            "version": f"{major}.{minor}.{patch + 1}",
            "description": "Raise the memory limit, reviewed again.",
        }
    )
    registry.add_playbooks([changed])
    second = recommenders.get()
    assert second is not first
    assert (second.store, second.embedder) == (first.store, first.embedder)
    assert changed in second.catalogue.manifests
    assert recommenders.get() is second
    monkeypatch.setenv("NEURALOPS_TRUSTED_WRITERS", "seed")
    get_settings.cache_clear()
    third = recommenders.get()
    assert third is not second and third.trusted == {"seed"}
    assert recommenders.get() is third


def test_api_documents_the_request(sqlite_url: URL) -> None:
    schema = TestClient(create_app(sqlite_url), headers=api_headers()).get("/openapi.json").json()
    operation = schema["paths"]["/recommend"]["post"]
    assert {"200", "404", "422", "503"} <= set(operation["responses"])
    request = schema["components"]["schemas"]["RecommendRequest"]["properties"]
    assert {"signal_id", "incident", "top"} == set(request)
    assert all(field.get("description") for field in request.values())
    assert request["top"]["maximum"] == MAX_TOP


# --- the flow ----------------------------------------------------------------------------------


def artifacts(key: str) -> list[dict]:
    from prefect.client.orchestration import get_client

    with get_client(sync_client=True) as client:
        # The sync client's read_artifacts sends null filters the server refuses.
        return client.request(
            "POST",
            "/artifacts/filter",
            json={"artifacts": {"key": {"any_": [key]}}, "sort": "CREATED_DESC"},
        ).json()


@pytest.mark.slow
def test_flow_publishes_the_ranking_as_a_table_artifact(prefect_server, history: URL) -> None:
    from flows.recommend import recommend

    oom = seed_signals()["oom-kills"]
    result = recommend(signal_id=oom, top=3)
    assert result["recommendations"][0]["playbook_id"] == "raise-memory-limit"
    [latest, *_] = artifacts("recommendation")
    assert latest["type"] == "table"
    rows = json.loads(latest["data"])
    assert rows[0]["rank"] == 1 and rows[0]["playbook"] == "raise-memory-limit"
    assert set(rows[0]) == {
        "rank",
        "playbook",
        "score",
        "success rate",
        "similar runs",
        "safety mode",
        "justification",
    }
    assert "run syn-" in rows[0]["justification"]
    assert f"signal {oom}" in latest["description"]

    by_hand = recommend(incident={"summary": "the coffee machine makes odd noises"})
    assert by_hand["recommendations"] == [] and by_hand["reason"]
    [empty, *_] = artifacts("recommendation")
    assert empty["type"] == "markdown"
    assert "No playbook to recommend" in empty["data"] and by_hand["reason"] in empty["data"]

    # The run form's free text (what an on-call types in the UI).
    in_words = recommend(incident_text=OOM_TEXT, top=3)
    assert in_words["recommendations"][0]["playbook_id"] == "raise-memory-limit"
    assert "oom-killed" in in_words["symptoms"]

    # The flow recorded its own runs, as every NeuralOps flow does.
    assert runs.list_runs("recommend").total == 3


@pytest.mark.slow
@pytest.mark.parametrize(
    ("parameters", "message"),
    [
        ({"incident": {"summary": ""}}, "the incident is empty"),
        ({"incident_text": "x", "signal_id": "y"}, "not signal_id and incident_text"),
        ({"incident": {"alert": "X"}, "top": 0}, f"top must be between 1 and {MAX_TOP}"),
        ({"signal_id": "00000000-0000-0000-0000-000000000000"}, "does not exist"),
    ],
)
def test_flow_fails_clearly_on_bad_parameters_without_retrying(
    prefect_server, sqlite_url: URL, parameters: dict, message: str
) -> None:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId
    from prefect.client.schemas.sorting import TaskRunSort

    from flows.recommend import recommend

    state = recommend(**parameters, return_state=True)
    assert state.is_failed()
    assert message in state.message
    with get_client(sync_client=True) as client:
        task_runs = client.read_task_runs(
            flow_run_filter=FlowRunFilter(
                id=FlowRunFilterId(any_=[state.state_details.flow_run_id])
            ),
            sort=TaskRunSort.EXPECTED_START_TIME_ASC,
            limit=10,
        )
    assert all(t.run_count <= 1 for t in task_runs)  # bad input is never retried


@pytest.mark.slow
@pytest.mark.parametrize("parameters", [{}, {"incident_text": "  ", "signal_id": ""}])
def test_a_quick_run_with_nothing_filled_in_fails_saying_what_to_fill_in(
    prefect_server, sqlite_url: URL, parameters: dict
) -> None:
    """The UI's Quick run sends only the defaults: the run fails with the fields to fill in,
    before any task, and without an exception (no traceback in its logs)."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId
    from prefect.client.schemas.sorting import TaskRunSort

    from flows.recommend import EMPTY_FORM, recommend

    state = recommend(**parameters, return_state=True)
    assert state.is_failed() and state.message == EMPTY_FORM
    assert "Incident, in words" in state.message and "Signal id" in state.message
    with get_client(sync_client=True) as client:
        run_id = state.state_details.flow_run_id
        task_runs = client.read_task_runs(
            flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[run_id])),
            sort=TaskRunSort.EXPECTED_START_TIME_ASC,
            limit=10,
        )

        def logs() -> list[str]:
            found = client.request(
                "POST", "/logs/filter", json={"logs": {"flow_run_id": {"any_": [str(run_id)]}}}
            ).json()
            return [entry["message"] for entry in found]

        # Logs arrive in the background: wait for the run's last line.
        messages = wait_until(
            lambda: (found := logs()) and any("Finished in state" in m for m in found) and found,
            timeout=30,
            what="the run's logs",
        )
    assert task_runs == []
    assert not any("Traceback" in m for m in messages), messages


def test_the_recommend_form_names_its_fields_and_says_what_to_fill_in() -> None:
    from flows.recommend import recommend

    fields = recommend.parameters.model_dump()["properties"]
    assert list(fields) == ["incident_text", "signal_id", "top", "incident"]
    assert fields["incident_text"]["title"] == "Incident, in words"
    assert fields["signal_id"]["title"] == "Signal id"
    assert (fields["top"]["minimum"], fields["top"]["maximum"]) == (1, MAX_TOP)
    for field in fields.values():
        assert field["description"] and "anyOf" not in field  # no "Property is type None"
