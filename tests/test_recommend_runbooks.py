"""Recommending imported runbooks: chunks, keyword evidence, alert-name aliases, the whole
query, the query cache. The hashing embedder keeps these fast and lexical, so the vector
side is weak and the keyword side must carry the answers (as for a short alert against a
long page)."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pytest

from neuralops.embedding import HashingEmbedder
from neuralops.incident_model import Incident
from neuralops.playbook_index import CHUNK_WORDS, chunk_texts, document_text, split_camel
from neuralops.recommend import Recommender, query_text
from neuralops.registry import catalogue_dir, load_manifests
from neuralops.runbooks import load_runbooks
from neuralops.vectorstore import VectorStore

NOW = datetime(2026, 11, 1, tzinfo=UTC)
RUNBOOKS = Path(__file__).resolve().parents[1] / "bench" / "data" / "runbooks"


class Counting(HashingEmbedder):
    def __init__(self) -> None:
        super().__init__()
        self.texts: list[str] = []

    def embed(self, texts):
        self.texts += list(texts)
        return super().embed(texts)


@pytest.fixture(scope="module")
def manifests():
    runbooks = [m for _, m in load_runbooks(RUNBOOKS)[0]]
    return [*load_manifests([catalogue_dir()]), *runbooks]


@pytest.fixture(scope="module")
def recommender(tmp_path_factory, manifests):
    store = VectorStore(str(tmp_path_factory.mktemp("store")))
    return Recommender(store, Counting(), manifests, trusted=())


def test_a_long_runbook_is_embedded_in_chunks_without_its_code(manifests):
    page = next(m for m in manifests if m.id == "node-filesystem-space-filling-up")
    chunks = chunk_texts(page)
    assert len(chunks) > len(page.sections)  # head chunk plus every section
    assert all(len(c.split()) <= CHUNK_WORDS + 20 for c in chunks)  # + title and heading
    assert not any("journalctl --disk-usage" in c for c in chunks)  # a code block
    assert "journalctl --disk-usage" in document_text(page)  # BM25 still reads it
    assert split_camel("KubePodOOMKilled") == "Kube Pod OOM Killed"


def test_the_alert_name_ranks_its_runbook_first_in_any_case(recommender):
    incident = Incident(summary="Pod shipping/label-printer has been in a non-ready state.")
    plain = recommender.recommend(incident, now=NOW, top=3)
    named = recommender.recommend(incident, now=NOW, top=3, alertname="kubepodcrashlooping")
    assert plain.recommendations[0].playbook_id != "kube-pod-crash-looping"
    assert named.recommendations[0].playbook_id == "kube-pod-crash-looping"
    assert "alias" in named.recommendations[0].justification
    # The incident's own alert name counts too.
    alerted = incident.model_copy(update={"alert": "KubePodCrashLooping"})
    assert recommender.recommend(alerted, now=NOW).recommendations[0].playbook_id == (
        "kube-pod-crash-looping"
    )


def test_keywords_alone_are_enough_to_answer(recommender):
    result = recommender.recommend(
        Incident(summary="deadlock detected: transactions aborted on the orders database"),
        now=NOW,
    )
    assert result.recommendations, result.reason
    first = result.recommendations[0]
    assert first.playbook_id == "postgres-deadlocks"
    assert first.features["similarity"] < 0.45  # the vector side alone would have abstained
    assert "keywords in common" in first.justification


def test_an_unrelated_text_is_empty_and_says_what_was_closest(recommender):
    result = recommender.recommend(Incident(summary="the coffee machine is empty"), now=NOW)
    assert result.recommendations == []
    assert "no playbook treats this incident" in result.reason
    assert "needs 0.45" in result.reason and "keywords" in result.reason


def test_the_whole_query_is_embedded_once_per_text(recommender):
    tail = "the replica pg-main-2 stopped streaming WAL"
    incident = Incident(summary="x" * 40 + " filler words" * 40 + " " + tail)
    assert tail in query_text(incident)  # no 300-character cut
    embedder = recommender.embedder
    before = len(embedder.texts)
    first = recommender.recommend(incident, now=NOW)
    embedded = len(embedder.texts) - before
    assert 1 <= embedded <= 2  # as runs are embedded, and as the catalogue is searched
    again = recommender.recommend(incident, now=NOW)
    assert len(embedder.texts) - before == embedded  # cached per text
    assert [r.playbook_id for r in again.recommendations] == [
        r.playbook_id for r in first.recommendations
    ]
    assert np.isfinite([r.score for r in first.recommendations]).all()
