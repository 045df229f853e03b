"""The recommender on a real LanceDB store with the real MiniLM model."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from types import SimpleNamespace

import lancedb
import pyarrow as pa
import pytest
from pydantic import ValidationError

from neuralops import recommend as recommend_module
from neuralops.embedding import MiniLMEmbedder
from neuralops.incident_model import Incident, infer_symptoms, resource_of, run_resource
from neuralops.playbook_index import chunk_texts
from neuralops.recommend import (
    DEFAULT_WEIGHTS,
    MIN_SIMILARITY,
    Recommender,
    distinct_words,
    incident_from_signal,
    search_text,
)
from neuralops.registry import catalogue_dir, load_manifests
from neuralops.vectorize import vectorize_records
from neuralops.vectorstore import VectorStore, reported_filter, sql_str, sql_timestamp

NOW = datetime(2026, 6, 1, 12, tzinfo=UTC)


@pytest.fixture(scope="module")
def embedder(minilm: MiniLMEmbedder) -> MiniLMEmbedder:
    return minilm  # each test's new store holds the same catalogue: embedded once


@pytest.fixture(scope="module")
def manifests():
    return load_manifests([catalogue_dir()])


def run(
    n: int,
    playbook: str,
    status: str,
    *,
    alert: str = "KubeLatencyHigh",
    symptom: str = "high-latency",
    namespace: str = "checkout",
    service: str = "checkout-web",
    summary: str = "p99 latency of checkout-web above 2s for 5m in checkout",
    age: timedelta = timedelta(days=20),
) -> dict:
    created = (NOW - age - timedelta(minutes=n)).isoformat()
    return {
        "run_id": f"r-{playbook}-{status}-{n}",
        "wpk_id": playbook,
        "status": status,
        "duration_ms": 60_000,
        "inputs": {
            "alert": {
                "alertname": alert,
                "namespace": namespace,
                "service": service,
                "severity": "critical",
                "symptom": symptom,
                "summary": summary,
            }
        },
        "outputs": {"message": "done"} if status == "succeeded" else {"error": "rollout stuck"},
        "node_logs": [],
        "created_at": created,
        "updated_at": created,
        # History that teaches: NeuralOps' own executions (reported runs: tests/test_trust.py)
        "provenance": "neuralops",
        "verified": True,
    }


def latency_incident(**labels: str) -> Incident:
    return Incident(
        alert="KubeLatencyHigh",
        summary="p99 latency of checkout-web above 3s for 10m in checkout",
        labels={"namespace": "checkout", "service": "checkout-web", "symptom": "high-latency"}
        | labels,
    )


def oom_incident() -> Incident:
    return Incident(
        alert="KubePodOOMKilled",
        summary="payments-api pods OOMKilled 12 times in 15m in payments",
        labels={"namespace": "payments", "pod": "payments-api-7d9f8b6c4d-x2x7q"},
    )


def build(tmp_path, embedder, manifests, records, name="store") -> Recommender:
    store = VectorStore(str(tmp_path / name))
    if records:
        vectorize_records(records, store, embedder)
        store.ensure_index()
    return Recommender(store, embedder, manifests)


def ids(result) -> list[str]:
    return [r.playbook_id for r in result.recommendations]


# --- incidents ---------------------------------------------------------------------------


def test_incident_needs_some_text():
    with pytest.raises(ValidationError, match="the incident is empty"):
        Incident(summary="   ", labels={"namespace": " "})
    with pytest.raises(ValidationError, match="not a tag"):
        Incident(summary="x", symptoms=["Out Of Memory"])


def test_symptoms_declared_win_over_inferred():
    assert infer_symptoms("KubePodOOMKilled") == ["oom-killed"]
    assert infer_symptoms("pods forbidden: exceeded quota compute-resources") == ["quota-exceeded"]
    assert infer_symptoms("write failed: no space left on device") == ["disk-full"]
    assert infer_symptoms("the coffee machine is empty") == []
    declared = Incident(summary="OOMKilled", labels={"symptom": "quota-exceeded, disk-full"})
    assert declared.known_symptoms() == ["quota-exceeded", "disk-full"]
    assert declared.symptom_source == "declared"
    assert oom_incident().symptom_source == "inferred"


def test_resource_is_namespace_and_workload():
    assert oom_incident().resource == "payments/payments-api"
    assert resource_of({"namespace": "data", "pod": "postgres-main-0"}) == "data/postgres-main"
    assert resource_of({"severity": "page"}) is None
    record = {"inputs": {"parameters": {"namespace": "orders", "target": "orders-api"}}}
    assert run_resource(record) == "orders/orders-api"


def test_a_signal_becomes_an_incident():
    signal = SimpleNamespace(
        rule="oom-kills",
        hint="OOM kills of namespace=payments pod=payments-api-x is 9σ above its 3h baseline",
        labels={"namespace": "payments", "pod": "payments-api-x", "symptom": "oom-killed"},
    )
    incident = incident_from_signal(signal)
    assert incident.alert == "oom-kills" and incident.known_symptoms() == ["oom-killed"]


# --- ranking -----------------------------------------------------------------------------


def test_cold_start_works_from_the_catalogue_alone(tmp_path, embedder, manifests):
    recommender = build(tmp_path, embedder, manifests, [])
    result = recommender.recommend(oom_incident(), now=NOW)
    assert ids(result)[0] == "raise-memory-limit"
    first = result.recommendations[0]
    assert first.evidence == [] and first.success_rate is None and first.similar_runs == 0
    assert "no similar past runs" in first.justification
    assert "treats oom-killed" in first.justification
    assert 0 <= first.score <= 1 and first.safety_mode == "manual"
    # restart-deployment restarts OOMKilled pods in vain: the catalogue says so.
    assert "restart-deployment" not in ids(result)
    assert {e.playbook_id for e in result.excluded} >= {"restart-deployment"}


def test_history_of_success_ranks_the_fix_first(tmp_path, embedder, manifests):
    cold = build(tmp_path, embedder, manifests, [], name="cold")
    before = {
        r.playbook_id: r.score for r in cold.recommend(latency_incident(), top=10).recommendations
    }
    history = [run(i, "scale-up-deployment", "succeeded") for i in range(7)]
    history += [run(7, "scale-up-deployment", "failed")]
    history += [run(10 + i, "adjust-hpa-limits", "failed") for i in range(6)]
    recommender = build(tmp_path, embedder, manifests, history)
    result = recommender.recommend(latency_incident(), now=NOW, top=10)

    assert ids(result)[0] == "scale-up-deployment"
    first = result.recommendations[0]
    assert first.justification.startswith(
        "7 of 8 similar KubeLatencyHigh incidents resolved by scale-up-deployment"
    )
    assert "most similar: run r-scale-up-deployment-" in first.justification
    assert first.similar_runs == 8 and first.success_rate is not None
    assert first.success_rate > 0.7
    assert len(first.evidence) == 5 and all(e.similarity > 0.8 for e in first.evidence)
    assert {e.status for e in first.evidence} <= {"succeeded", "failed"}
    # The playbook that kept failing on such incidents scores lower than with no history.
    failing = next(r for r in result.recommendations if r.playbook_id == "adjust-hpa-limits")
    assert failing.justification.startswith("0 of 6 similar")
    assert failing.success_rate is not None and failing.success_rate < 0.3
    assert failing.score < before["adjust-hpa-limits"] < before["scale-up-deployment"] + 0.2


def test_recent_failure_on_the_same_resource_is_penalised(tmp_path, embedder, manifests):
    history = [run(i, "scale-up-deployment", "succeeded", age=timedelta(days=40)) for i in range(4)]
    history += [
        run(4 + i, "scale-up-deployment", "failed", age=timedelta(days=1)) for i in range(2)
    ]
    recommender = build(tmp_path, embedder, manifests, history)
    here = recommender.recommend(latency_incident(), now=NOW, top=10)
    elsewhere = recommender.recommend(
        latency_incident(namespace="search", service="search-api"), now=NOW, top=10
    )
    mine = next(r for r in here.recommendations if r.playbook_id == "scale-up-deployment")
    theirs = next(r for r in elsewhere.recommendations if r.playbook_id == "scale-up-deployment")
    assert "demoted: failed 2x on checkout/checkout-web in the last 7 days" in mine.justification
    assert mine.features["recent_failures"] == 2 and theirs.features["recent_failures"] == 0
    assert mine.score < theirs.score - DEFAULT_WEIGHTS.failure / 2


def test_contraindicated_playbook_is_filtered_however_similar(tmp_path, embedder, manifests):
    # raise-memory-limit "worked" on quota incidents before: still never suggested for one.
    quota = {
        "alert": "KubeQuotaExceeded",
        "symptom": "quota-exceeded",
        "namespace": "payments",
        "service": "payments-api",
        "summary": "pods forbidden: exceeded quota compute-resources in payments",
    }
    history = [run(i, "raise-memory-limit", "succeeded", **quota) for i in range(6)]
    recommender = build(tmp_path, embedder, manifests, history)
    incident = Incident(
        alert="KubeQuotaExceeded",
        summary="pods forbidden: exceeded quota compute-resources in payments",
        labels={"namespace": "payments", "service": "payments-api"},
    )
    result = recommender.recommend(incident, now=NOW, top=20)
    assert result.symptoms == ["quota-exceeded"] and result.symptom_source == "inferred"
    assert ids(result)[0] == "raise-resource-quota"
    assert "raise-memory-limit" not in ids(result)
    excluded = {e.playbook_id: e.reason for e in result.excluded}
    assert excluded["raise-memory-limit"] == "contraindicated: the incident shows quota-exceeded"


def test_no_good_candidate_is_an_empty_list_with_a_reason(tmp_path, embedder, manifests):
    recommender = build(tmp_path, embedder, manifests, [])
    result = recommender.recommend(Incident(summary="the coffee machine is empty"), now=NOW)
    assert result.recommendations == []
    assert result.reason is not None
    assert "no playbook treats this incident" in result.reason
    assert f"needs {MIN_SIMILARITY:.2f}" in result.reason


def test_before_hides_later_history(tmp_path, embedder, manifests):
    history = [run(i, "scale-up-deployment", "succeeded", age=timedelta(days=2)) for i in range(5)]
    recommender = build(tmp_path, embedder, manifests, history)
    now = recommender.recommend(latency_incident(), now=NOW)
    earlier = recommender.recommend(latency_incident(), before=NOW - timedelta(days=3))
    assert now.recommendations[0].similar_runs == 5
    assert all(r.similar_runs == 0 for r in earlier.recommendations)


def test_results_are_deterministic_for_the_same_data(tmp_path, embedder, manifests):
    history = [run(i, "scale-up-deployment", "succeeded") for i in range(3)]
    history += [run(3 + i, "restart-deployment", "failed") for i in range(3)]
    history += [run(6 + i, "rollback-rollout", "succeeded") for i in range(2)]
    recommender = build(tmp_path, embedder, manifests, history)
    first = recommender.recommend(latency_incident(), now=NOW, top=20)
    again = recommender.recommend(latency_incident(), now=NOW, top=20)
    fresh = Recommender(VectorStore(str(tmp_path / "store")), embedder, manifests)
    assert first == again == fresh.recommend(latency_incident(), now=NOW, top=20)
    scores = [r.score for r in first.recommendations]
    assert scores == sorted(scores, reverse=True) and all(0 <= s <= 1 for s in scores)
    assert len(recommender.recommend(latency_incident(), now=NOW, top=2).recommendations) == 2


def test_catalogue_vectors_are_reused_until_a_manifest_changes(tmp_path, manifests):
    class Counting(MiniLMEmbedder):
        texts = 0

        def embed(self, texts):
            Counting.texts += len(texts)
            return super().embed(texts)

    store = VectorStore(str(tmp_path / "store"))
    chunks = sum(len(chunk_texts(m)) for m in manifests)
    Recommender(store, Counting(), manifests)
    assert Counting.texts == chunks
    Recommender(store, Counting(), manifests)
    assert Counting.texts == chunks  # read back from the catalogue's chunks table
    changed = [m.model_copy(update={"description": m.description + " More."}) for m in manifests]
    Recommender(store, Counting(), changed)
    # Only the chunks that hold the description are embedded again.
    fresh = {t for m in changed for t in chunk_texts(m)} - {
        t for m in manifests for t in chunk_texts(m)
    }
    assert Counting.texts == chunks + len(fresh) and 0 < len(fresh) <= chunks


def test_a_store_from_before_resource_and_symptoms_gains_the_columns(tmp_path, embedder):
    old = pa.schema(
        [
            f
            for f in VectorStore(str(tmp_path / "x")).schema
            if f.name not in ("resource", "symptoms")
        ]
    )
    lancedb.connect(str(tmp_path / "old")).create_table("runs", schema=old)
    store = VectorStore(str(tmp_path / "old"))
    vectorize_records([run(1, "scale-up-deployment", "failed")], store, embedder)
    row = store.rows("run_id = 'r-scale-up-deployment-failed-1'", ["resource", "symptoms"])[0]
    assert row == {"resource": "checkout/checkout-web", "symptoms": "high-latency"}
    assert store.text_search("checkout latency", k=1)[0]["run_id"].startswith("r-scale-up")


# --- only vouched-for history counts (issue 15) ---------------------------------------------


def reported(run_: dict, provenance: str = "api:mallory") -> dict:
    return {
        **run_,
        "run_id": f"{run_['run_id']}-{provenance}",
        "provenance": provenance,
        "verified": False,
    }


def test_unvouched_runs_are_reported_and_weigh_nothing(tmp_path, embedder, manifests):
    history = [run(i, "scale-up-deployment", "succeeded") for i in range(3)]
    # A flood of "succeeded" runs of another playbook, and "failed" runs of the right one on
    # this very resource, from a writer nobody vouches for.
    flood = [
        reported(run(100 + i, "adjust-hpa-limits", "succeeded", age=timedelta(days=1)))
        for i in range(60)
    ]
    flood += [
        reported(run(200 + i, "scale-up-deployment", "failed", age=timedelta(hours=3)))
        for i in range(3)
    ]
    flood += [
        reported(run(300, "adjust-hpa-limits", "succeeded"), "local"),
        reported(run(301, "adjust-hpa-limits", "succeeded"), "unknown"),
    ]
    clean = build(tmp_path, embedder, manifests, history, name="clean")
    poisoned = build(tmp_path, embedder, manifests, history + flood, name="poisoned")
    expected = clean.recommend(latency_incident(), now=NOW, top=10)
    result = poisoned.recommend(latency_incident(), now=NOW, top=10)

    # The same ranking, scores and features as without the flood.
    assert [(r.playbook_id, r.score, r.features) for r in result.recommendations] == [
        (r.playbook_id, r.score, r.features) for r in expected.recommendations
    ]
    first = result.recommendations[0]
    assert first.playbook_id == "scale-up-deployment" and first.similar_runs == 3
    assert first.features["recent_failures"] == 0  # unvouched failures do not demote
    assert [e.counted for e in first.evidence] == [True] * 3 + [False] * 3
    assert {e.provenance for e in first.evidence if not e.counted} == {"api:mallory"}
    hpa = next(r for r in result.recommendations if r.playbook_id == "adjust-hpa-limits")
    assert (hpa.similar_runs, hpa.success_rate) == (0, None)
    assert hpa.evidence and not any(e.counted for e in hpa.evidence)
    assert "runs reported by api:mallory not counted (unverified)" in hpa.justification
    # Runs of plain library calls, and from before provenance was recorded, count no more.
    vector = embedder.embed([latency_incident().text()])[0]
    everything = poisoned.reported(["adjust-hpa-limits"], vector, k=100)["adjust-hpa-limits"]
    assert {r["provenance"] for r in everything} == {"api:mallory", "local", "unknown"}
    assert len(everything) == 62


def test_reported_runs_of_several_playbooks_come_from_one_exact_search(
    tmp_path, embedder, manifests, monkeypatch
):
    """The shown playbooks' reported runs, found in one exact search over the unvouched runs,
    are what one filtered search per playbook finds: each one's nearest k, nearest first."""
    history = [run(i, "scale-up-deployment", "succeeded") for i in range(3)]
    writers = ["api:mallory", "local", "unknown"]
    playbooks = ["adjust-hpa-limits", "scale-up-deployment", "rollback-rollout"]
    flood = [
        reported(
            run(
                100 + i,
                playbooks[i % 3],
                "succeeded" if i % 2 else "failed",
                # distinct texts: no two runs tie on distance
                summary=f"p99 latency of checkout-web above {i + 2}s for {5 + i}m in checkout",
                age=timedelta(days=1 + i),
            ),
            writers[i // 3 % 3],
        )
        for i in range(24)
    ]
    recommender = build(tmp_path, embedder, manifests, history + flood)
    vector = embedder.embed([latency_incident().text()])[0]
    shown = ["adjust-hpa-limits", "scale-up-deployment", "rollback-rollout", "uncordon-node"]

    def one_per_playbook(k: int, before: datetime | None = None) -> dict[str, list[str]]:
        where = reported_filter(recommender.trusted)
        if before is not None:
            where += f" AND created_at < {sql_timestamp(before)}"
        return {
            pid: [
                h["run_id"]
                for h in recommender.store.search(vector, k, f"{where} AND wpk_id = {sql_str(pid)}")
            ]
            for pid in shown
        }

    def run_ids(found: dict[str, list[dict]]) -> dict[str, list[str]]:
        return {pid: [r["run_id"] for r in runs] for pid, runs in found.items()}

    expected = one_per_playbook(5)
    assert [len(expected[pid]) for pid in shown] == [5, 5, 5, 0]
    assert run_ids(recommender.reported(shown, vector)) == expected
    assert run_ids(recommender.reported(shown, vector, bound=len(flood))) == expected
    everything = recommender.reported(shown, vector, k=100)
    assert run_ids(everything) == one_per_playbook(100)
    assert all(
        not r["provenance"].startswith("neuralops") for r in everything["scale-up-deployment"]
    )
    # History before a moment: only the runs from before it.
    before = NOW - timedelta(days=10)
    assert run_ids(recommender.reported(shown, vector, before=before)) == one_per_playbook(
        5, before
    )
    # Nothing to report: no search at all.
    assert recommender.reported(shown, vector, bound=0) == {pid: [] for pid in shown}
    # A flood past REPORTED_EXACT_MAX takes one filtered search per playbook: the same runs.
    monkeypatch.setattr(recommend_module, "REPORTED_EXACT_MAX", 3)
    assert run_ids(recommender.reported(shown, vector)) == expected


def test_a_store_of_vouched_runs_is_searched_without_the_filter_to_the_same_runs(
    tmp_path, embedder, manifests, monkeypatch
):
    """With no unvouched run stored the vouched filter keeps every run, so the searches go
    without it: the same candidates as with it. A run written between the count and the
    searches cannot slip in: the searches are redone with the filter."""
    history = [run(i, "scale-up-deployment", "succeeded") for i in range(3)]
    history += [run(10 + i, "adjust-hpa-limits", "failed", age=timedelta(days=2)) for i in range(3)]
    recommender = build(tmp_path, embedder, manifests, history)
    store = recommender.store
    vector, catalogue_vector = recommender.query_vectors(latency_incident())
    wheres: list[str | None] = []
    search = store.search
    monkeypatch.setattr(store, "search", lambda *a, **kw: wheres.append(a[2]) or search(*a, **kw))

    def runs(found) -> dict[str, float]:  # runs of one text tie: their order may differ
        return {
            r["run_id"]: round(float(similarity), 5)
            for r, similarity in zip(found.runs, found.run_similarity, strict=True)
        }

    plain = recommender.candidates(latency_incident(), now=NOW, vector=vector)
    assert plain.unvouched == 0 and wheres == [None]
    before = NOW - timedelta(days=10)
    earlier = recommender.candidates(latency_incident(), before=before, vector=vector)
    assert earlier.unvouched == 0 and wheres[-1] == f"created_at < {sql_timestamp(before)}"
    assert {r["run_id"] for r in earlier.runs} == {h["run_id"] for h in history[:3]}
    # The same runs as the filtered searches find.
    monkeypatch.setattr(store, "count", lambda where=None: 1)
    filtered = recommender.candidates(latency_incident(), now=NOW, vector=vector)
    assert "verified = true" in wheres[-1] and runs(filtered) == runs(plain)
    assert len(plain.runs) == 6
    monkeypatch.undo()

    # A flood written right after the count (0): redone with the filter, none of it counts.
    count = store.count
    flood = [reported(run(100 + i, "adjust-hpa-limits", "succeeded")) for i in range(5)]

    def count_then_write(where=None):
        counted = count(where)
        if where and "verified IS NULL" in where and not flood_written:
            flood_written.append(True)
            vectorize_records(flood, store, embedder)
        return counted

    flood_written: list[bool] = []
    monkeypatch.setattr(store, "count", count_then_write)
    raced = recommender.candidates(
        latency_incident(), now=NOW, vector=vector, catalogue_vector=catalogue_vector
    )
    assert flood_written and store.count() == 11
    assert raced.unvouched is None and runs(raced) == runs(plain)
    result = recommender.recommend(latency_incident(), now=NOW, top=10)
    hpa = next(r for r in result.recommendations if r.playbook_id == "adjust-hpa-limits")
    assert [e.counted for e in hpa.evidence] == [True] * 3 + [False] * 5


def test_a_flood_from_another_writer_after_the_count_never_counts_in_a_held_store(
    tmp_path, embedder, manifests, monkeypatch
):
    """The API holds its recommender over a store that reads the latest version
    (``read_latest``): a flood of unvouched runs committed by another process between the
    count (0: the searches go without the filter) and the searches shows in the version, so
    the searches are redone with the filter and none of it counts."""
    history = [run(i, "scale-up-deployment", "succeeded") for i in range(3)]
    vectorize_records(history, VectorStore(str(tmp_path / "store")), embedder)
    held = VectorStore(str(tmp_path / "store"), read_latest=True)
    recommender = Recommender(held, embedder, manifests)
    other_process = VectorStore(str(tmp_path / "store"))
    flood = [reported(run(100 + i, "adjust-hpa-limits", "succeeded")) for i in range(20)]
    count = held.count
    written: list[bool] = []

    def count_then_another_writer(where=None):
        counted = count(where)
        if where and "verified IS NULL" in where and not written:
            written.append(True)
            vectorize_records(flood, other_process, embedder)
        return counted

    monkeypatch.setattr(held, "count", count_then_another_writer)
    raced = recommender.candidates(latency_incident(), now=NOW)
    assert written and held.count() == 23
    assert raced.unvouched is None  # the version moved: searched again with the filter
    assert {r["run_id"] for r in raced.runs} == {h["run_id"] for h in history}
    monkeypatch.undo()
    result = recommender.recommend(latency_incident(), now=NOW, top=10)
    hpa = next(r for r in result.recommendations if r.playbook_id == "adjust-hpa-limits")
    assert hpa.similar_runs == 0 and not any(e.counted for e in hpa.evidence)
    assert ids(result)[0] == "scale-up-deployment"


def test_a_trusted_writer_counts(tmp_path, embedder, manifests):
    history = [reported(run(i, "adjust-hpa-limits", "succeeded"), "api:ci-bot") for i in range(4)]
    store = VectorStore(str(tmp_path / "store"))
    vectorize_records(history, store, embedder)
    untrusted = Recommender(store, embedder, manifests, trusted=())
    trusted = Recommender(store, embedder, manifests, trusted={"api:ci-bot"})
    hpa = {
        name: next(
            x
            for x in r.recommend(latency_incident(), now=NOW, top=20).recommendations
            if x.playbook_id == "adjust-hpa-limits"
        )
        for name, r in (("untrusted", untrusted), ("trusted", trusted))
    }
    assert hpa["untrusted"].similar_runs == 0
    assert hpa["trusted"].similar_runs == 4 and all(e.counted for e in hpa["trusted"].evidence)
    assert hpa["trusted"].score > hpa["untrusted"].score


def test_trusted_writers_default_to_the_setting(tmp_path, embedder, manifests, monkeypatch):
    from neuralops.settings import get_settings

    monkeypatch.setenv("NEURALOPS_TRUSTED_WRITERS", "seed, api:ci-bot")
    get_settings.cache_clear()
    try:
        assert Recommender(VectorStore(str(tmp_path / "s")), embedder, manifests).trusted == {
            "seed",
            "api:ci-bot",
        }
    finally:
        get_settings.cache_clear()


def test_the_run_search_asks_bm25_each_word_once(tmp_path, embedder, manifests, monkeypatch):
    assert distinct_words("KubeLatencyHigh Kube Latency High latency of checkout LATENCY") == (
        "KubeLatencyHigh Kube Latency High of checkout"
    )
    history = [run(i, "scale-up-deployment", "succeeded") for i in range(3)]
    recommender = build(tmp_path, embedder, manifests, history)
    asked = []
    search = recommender.store.text_search

    def recording(text, *args, **kwargs):
        asked.append(text)
        return search(text, *args, **kwargs)

    monkeypatch.setattr(recommender.store, "text_search", recording)
    result = recommender.recommend(latency_incident(), now=NOW, top=3)
    words = search_text(latency_incident())
    assert words.lower().split().count("latency") > 1  # alert name split, summary
    assert asked == [distinct_words(words)]
    assert ids(result)[0] == "scale-up-deployment"
    assert result.recommendations[0].similar_runs == 3
