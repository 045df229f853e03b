"""Which playbook fixes this incident: hybrid retrieval, contraindications, a scored ranking.

1. Retrieval. The incident's text (alert, labels, summary: the incident part of a run
   summary) is searched two ways in two places: by vector (MiniLM, cosine) and by BM25
   (LanceDB full-text) over past runs, and over the catalogue (each playbook's title,
   description and the symptoms it treats), so a playbook with no history is still found.
   Run hits are fused by reciprocal rank fusion (RRF) into the evidence; playbooks are ranked
   in each of the four lists and fused again into ``relevance``.
2. Filtering. A playbook whose contraindications include a symptom of the incident is out,
   however similar its text: similarity alone picks plausible wrong fixes. A playbook that
   neither treats a known symptom nor resembles the incident (``MIN_SIMILARITY``) is not a
   candidate either; with none left the answer is an empty list and the reason.
3. Scoring, each feature in [0, 1], combined with ``Weights`` chosen by
   ``bench/recommend.py`` on a tuning split (reports/recommend.md):
   ``relevance`` (fused rank; from history, only runs that resolved their incident count),
   ``similarity`` (best cosine to the playbook or to a similar incident it resolved),
   ``treats`` (it lists one of the incident's symptoms), ``success`` (its outcome on similar
   incidents, weighted by similarity and age, smoothed toward 0.5 so one lucky run does not
   dominate), ``recency`` (how recently it last worked on a similar incident), minus
   ``failure`` times its recent failures on this same resource.

Evidence is only what NeuralOps can vouch for: runs that are verified (its own executions,
flow runs the Prefect API confirmed) or whose writer an operator trusts
(``NEURALOPS_TRUSTED_WRITERS``). Retrieval, success rates, recency, the recent-failure
penalty and the history rankings see only those (filtered in the store, so a flood of posted
runs cannot push real history out of the neighbours either). Other similar runs are still
shown in a recommendation's evidence, marked ``counted: false`` with their provenance, and
weigh nothing (docs/recommend.md).
"""

from __future__ import annotations

import re
from collections import defaultdict
from collections.abc import Collection, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, Literal

import numpy as np
import pyarrow as pa
from pydantic import BaseModel, Field

from neuralops.embedding import Embedder, content_hash, model_id
from neuralops.incident import Incident
from neuralops.manifest import Manifest
from neuralops.vectorstore import (
    VectorStore,
    reported_filter,
    sql_str,
    sql_timestamp,
    vouched_filter,
)

RRF_K = 60  # fusing run hits: long lists, the usual constant
PLAYBOOK_RRF_K = 5  # fusing playbook lists: 20-odd items, so ranks must stay distinct
NEIGHBOURS = 100  # runs taken from each retriever
# A past run is a "similar incident" when it shares a symptom with this one; where either
# side has none known, when its cosine reaches SIMILAR_MIN. Measured once by hand while
# choosing it (200,000 random pairs of 3,000 synthetic runs' incident texts, MiniLM; not a
# bench): pairs with different symptoms in the same namespace reach 0.75 at their 95th
# percentile, pairs with the same symptom and namespace have a median of 0.92.
SIMILAR_MIN = 0.8
# A playbook that treats no known symptom needs at least this cosine to be a candidate. A
# chosen value, not a measured one: unrelated text ("the coffee machine is empty") scores
# about 0.3 against the catalogue.
MIN_SIMILARITY = 0.45
PRIOR, PRIOR_STRENGTH = 0.5, 2.0  # Beta prior of the success rate: two pseudo-runs at 50%
HALF_LIFE_DAYS = 60.0  # evidence loses half its weight in this time
FAILURE_WINDOW = timedelta(days=7)
EVIDENCE_SHOWN = 5
MAX_TOP = 20
CATALOGUE_TABLE = "playbooks"

FEATURES = ("relevance", "similarity", "treats", "success", "recency")
Retrieval = Literal["hybrid", "bm25", "embedding"]
_WORD = re.compile(r"[A-Za-z0-9]+")


@dataclass(frozen=True)
class Weights:
    """Feature weights (normalised to sum to 1), the recent-failure penalty, and the
    temperature that turns cosine into evidence weight (exp((cos - closest) / temperature),
    ``closest`` being the best cosine among the incident's similar runs)."""

    relevance: float
    similarity: float
    treats: float
    success: float
    recency: float
    failure: float
    temperature: float

    def vector(self) -> np.ndarray:
        raw = np.array([getattr(self, name) for name in FEATURES], dtype=np.float64)
        return raw / raw.sum() if raw.sum() > 0 else raw


# Chosen by bench/recommend.py on the tuning split (reports/recommend.md, "Weights").
DEFAULT_WEIGHTS = Weights(
    relevance=0.1,
    similarity=0.0,
    treats=0.3,
    success=0.3,
    recency=0.3,
    failure=0.3,
    temperature=0.1,
)


class Evidence(BaseModel):
    run_id: str
    status: str
    similarity: float
    created_at: datetime | None
    resource: str | None
    provenance: str | None = Field(
        None, description="Where the run came from: prefect, neuralops, api:<subject>, seed..."
    )
    counted: bool = Field(
        True,
        description="Whether it weighs in the score: verified, or from a trusted writer. A "
        "run that is not is only reported, and weighs nothing.",
    )


class Recommendation(BaseModel):
    playbook_id: str
    title: str
    score: float = Field(ge=0, le=1)
    justification: str
    evidence: list[Evidence]
    success_rate: float | None = Field(
        description="Smoothed success rate on similar incidents; None without any."
    )
    similar_runs: int
    safety_mode: str
    features: dict[str, float]


class Excluded(BaseModel):
    playbook_id: str
    reason: str


class RecommendResult(BaseModel):
    incident: Incident
    query: str
    symptoms: list[str]
    symptom_source: Literal["declared", "inferred", "none"]
    recommendations: list[Recommendation]
    reason: str | None = Field(None, description="Why the list is empty, when it is.")
    excluded: list[Excluded] = Field(default_factory=list)
    model: str


@dataclass
class Candidates:
    """Everything scoring needs for one incident, for every catalogue playbook (index p)."""

    playbooks: list[Manifest]
    relevance: np.ndarray  # (P,)
    catalogue_similarity: np.ndarray  # (P,)
    treats: np.ndarray  # (P,) bool
    contraindicated: dict[int, list[str]]  # p -> the incident's symptoms it must not treat
    # Evidence: one entry per retrieved past run of a catalogue playbook.
    run_playbook: np.ndarray  # (E,) int
    run_similarity: np.ndarray  # (E,)
    run_age_days: np.ndarray  # (E,)
    run_outcome: np.ndarray  # (E,) 1 succeeded, 0 failed, nan otherwise (cancelled...)
    run_similar: np.ndarray  # (E,) bool: a similar incident (see SIMILAR_MIN)
    runs: list[dict[str, Any]]  # (E,) run_id, status, created_at, resource, provenance
    failures: dict[int, list[dict[str, Any]]] = field(default_factory=dict)  # on this resource

    def features(self, temperature: float) -> np.ndarray:
        """(P, len(FEATURES)) feature matrix."""
        count = len(self.playbooks)
        known = ~np.isnan(self.run_outcome) & self.run_similar
        # Closeness relative to the closest similar incident: the nearest runs weigh 1 each
        # against the prior's two pseudo-runs, however high cosines run for this text.
        closest = self.run_similarity[known].max() if known.any() else 1.0
        weight = np.exp((self.run_similarity - closest) / temperature) * np.power(
            0.5, self.run_age_days / HALF_LIFE_DAYS
        )
        succeeded = np.where(known, self.run_outcome, 0.0)
        wins = np.bincount(self.run_playbook[known], (weight * succeeded)[known], count)
        tries = np.bincount(self.run_playbook[known], weight[known], count)
        success = (wins + PRIOR * PRIOR_STRENGTH) / (tries + PRIOR_STRENGTH)

        # Only incidents a playbook resolved make it look right: being tried a lot and
        # failing must not raise it.
        best_run = np.zeros(count)
        resolved = self.run_similar & (self.run_outcome == 1)
        np.maximum.at(best_run, self.run_playbook[resolved], self.run_similarity[resolved])
        similarity = np.clip(np.maximum(self.catalogue_similarity, best_run), 0, 1)

        worked = resolved
        youngest = np.full(count, np.inf)
        np.minimum.at(youngest, self.run_playbook[worked], self.run_age_days[worked])
        recency = np.power(0.5, youngest / HALF_LIFE_DAYS)  # inf -> 0
        return np.column_stack(
            [self.relevance, similarity, self.treats.astype(float), success, recency]
        )

    def failure_level(self) -> np.ndarray:
        """(P,) 0, 0.5 or 1: none, one, or two and more recent failures on this resource."""
        level = np.zeros(len(self.playbooks))
        for p, runs in self.failures.items():
            level[p] = min(len(runs), 2) / 2
        return level

    def allowed(self, similarity: np.ndarray) -> np.ndarray:
        """(P,) bool: not contraindicated, and treats a known symptom or resembles the incident."""
        ok = self.treats | (similarity >= MIN_SIMILARITY)
        for p in self.contraindicated:
            ok[p] = False
        return ok


def score(candidates: Candidates, weights: Weights) -> np.ndarray:
    """(P,) scores in [0, 1]; -1 for playbooks that are not candidates."""
    features = candidates.features(weights.temperature)
    raw = features @ weights.vector() - weights.failure * candidates.failure_level()
    return np.where(candidates.allowed(features[:, 1]), np.clip(raw, 0.0, 1.0), -1.0)


def incident_from_signal(signal: Any) -> Incident:
    """A detection signal as an incident: the rule is the alert, the hint its summary."""
    return Incident(
        alert=signal.rule,
        summary=signal.hint,
        labels={str(k): str(v) for k, v in signal.labels.items() if v is not None},
    )


def search_text(incident: Incident) -> str:
    """The BM25 query: the words of the alert name, label values and summary."""
    labels = [v for k, v in sorted(incident.labels.items()) if k != "pod"]
    return " ".join(
        _WORD.findall(" ".join(filter(None, [incident.alert, *labels, incident.summary])))
    )


def catalogue_text(manifest: Manifest) -> str:
    treats = ", ".join(s.replace("-", " ") for s in manifest.symptoms)
    return f"{manifest.title}. {manifest.description} Treats: {treats}."


def _rrf(ranked: Sequence[Sequence[Any]], k: int) -> dict[Any, float]:
    fused: dict[Any, float] = defaultdict(float)
    for items in ranked:
        for rank, item in enumerate(items, start=1):
            fused[item] += 1.0 / (k + rank)
    return fused


class Catalogue:
    """The catalogue's playbooks embedded and full-text indexed in LanceDB (table
    ``playbooks`` next to the runs); re-embedded only when a manifest or the model changes."""

    def __init__(self, store: VectorStore, embedder: Embedder, manifests: list[Manifest]) -> None:
        self.manifests = sorted(manifests, key=lambda m: m.id)
        self.index = {m.id: i for i, m in enumerate(self.manifests)}
        texts = [catalogue_text(m) for m in self.manifests]
        hashes = [content_hash(t) for t in texts]
        model = model_id(embedder)
        db = store.connect()
        try:
            table = db.open_table(CATALOGUE_TABLE)
            stored = table.to_arrow()
        except ValueError:  # not created yet
            table, stored = None, None
        if (
            stored is not None
            and stored.column("playbook_id").to_pylist() == [m.id for m in self.manifests]
            and stored.column("content_hash").to_pylist() == hashes
            and set(stored.column("model").to_pylist()) == {model}
        ):
            self.vectors = np.stack(stored.column("vector").to_numpy(zero_copy_only=False))
        else:
            self.vectors = embedder.embed(texts)
            data = pa.table(
                {
                    "playbook_id": [m.id for m in self.manifests],
                    "text": texts,
                    "content_hash": hashes,
                    "model": [model] * len(texts),
                    "vector": pa.FixedSizeListArray.from_arrays(
                        pa.array(self.vectors.reshape(-1).astype(np.float32)), embedder.dim
                    ),
                }
            )
            table = db.create_table(CATALOGUE_TABLE, data=data, mode="overwrite")
            from lancedb.index import FTS

            table.create_index("text", config=FTS(), replace=True)
        self.vectors = np.asarray(self.vectors, dtype=np.float32)
        self.table = table

    def text_ranking(self, text: str) -> list[str]:
        if not text:
            return []
        hits = (
            self.table.search(text, query_type="fts")
            .limit(len(self.manifests))
            .select(["playbook_id", "_score"])
            .to_list()
        )
        return [h["playbook_id"] for h in hits]


class Recommender:
    """Recommends catalogue playbooks from past runs in ``store`` (see the module docstring)."""

    def __init__(
        self,
        store: VectorStore,
        embedder: Embedder,
        manifests: list[Manifest],
        weights: Weights = DEFAULT_WEIGHTS,
        trusted: Collection[str] | None = None,
    ) -> None:
        self.store = store
        self.embedder = embedder
        self.weights = weights
        if trusted is None:
            from neuralops.settings import get_settings

            trusted = get_settings().trusted
        # Writers whose unverified runs still count (NEURALOPS_TRUSTED_WRITERS by default).
        self.trusted = frozenset(trusted)
        self.catalogue = Catalogue(store, embedder, manifests)
        self.model = model_id(embedder)
        self._pool = ThreadPoolExecutor(max_workers=5, thread_name_prefix="recommend")

    def candidates(
        self,
        incident: Incident,
        *,
        before: datetime | None = None,
        now: datetime | None = None,
        retrieval: Retrieval = "hybrid",
        vector: np.ndarray | None = None,
    ) -> Candidates:
        """Features for every playbook; history limited to runs created before ``before``."""
        now = before or now or datetime.now(UTC)
        manifests = self.catalogue.manifests
        count = len(manifests)
        query = self.embedder.embed([incident.text()])[0] if vector is None else vector
        words = search_text(incident)
        # Only vouched-for runs are retrieved as evidence (``reported`` shows the others).
        where = vouched_filter(self.trusted) + _earlier(before)

        use_vectors, use_text = retrieval != "bm25", retrieval != "embedding"
        # The lookups are independent I/O (LanceDB releases the GIL): run them together.
        pending = {
            "vector": self._pool.submit(self.store.search, query, NEIGHBOURS, where)
            if use_vectors
            else None,
            "text": self._pool.submit(
                self.store.text_search, words, NEIGHBOURS, where, with_vectors=True
            )
            if use_text
            else None,
            "catalogue": self._pool.submit(self.catalogue.text_ranking, words)
            if use_text
            else None,
            "failures": self._pool.submit(self._recent_failures, incident.resource, now),
        }
        found = {key: job.result() if job else [] for key, job in pending.items()}
        vector_hits, text_hits = found["vector"], found["text"]
        by_id: dict[str, dict[str, Any]] = {}
        for hit in vector_hits:
            by_id[hit["run_id"]] = {**hit, "similarity": 1.0 - float(hit["_distance"])}
        for hit in text_hits:
            if hit["run_id"] not in by_id:
                similarity = float(np.dot(np.asarray(hit["vector"], dtype=np.float32), query))
                by_id[hit["run_id"]] = {**hit, "similarity": similarity}
        fused_runs = _rrf(
            [[h["run_id"] for h in vector_hits], [h["run_id"] for h in text_hits]], RRF_K
        )
        ordered = sorted(fused_runs, key=lambda r: (-fused_runs[r], r))
        runs = [by_id[r] for r in ordered if by_id[r].get("wpk_id") in self.catalogue.index]

        # Playbook rankings: catalogue by vector and by text; history by each playbook's
        # best-ranked run in each run list among the runs that resolved their incident.
        catalogue_similarity = self.catalogue.vectors @ query
        lists: list[list[str]] = []
        if use_vectors:
            order = np.lexsort((np.arange(count), -catalogue_similarity))
            lists.append([manifests[i].id for i in order])
            lists.append(_playbooks_in_order(vector_hits))
        if use_text:
            lists.append(found["catalogue"])
            lists.append(_playbooks_in_order(text_hits))
        fused = _rrf(lists, PLAYBOOK_RRF_K)
        best = len(lists) / (PLAYBOOK_RRF_K + 1)
        relevance = np.array([fused.get(m.id, 0.0) / best for m in manifests])

        symptoms = set(incident.known_symptoms())
        treats = np.array([bool(symptoms & set(m.symptoms)) for m in manifests])
        contraindicated = {
            p: sorted(symptoms & set(m.contraindications))
            for p, m in enumerate(manifests)
            if symptoms & set(m.contraindications)
        }
        ages = [
            max((now - r["created_at"]).total_seconds() / 86400, 0.0) if r["created_at"] else 0.0
            for r in runs
        ]
        run_similarity = np.array([r["similarity"] for r in runs], dtype=float)
        shares = [
            bool(symptoms & set(filter(None, (r.get("symptoms") or "").split(",")))) for r in runs
        ]
        known_tags = [bool(symptoms) and bool(r.get("symptoms")) for r in runs]
        run_similar = np.where(known_tags, shares, run_similarity >= SIMILAR_MIN).astype(bool)
        outcomes = [
            1.0 if r["status"] == "succeeded" else 0.0 if r["status"] == "failed" else np.nan
            for r in runs
        ]
        return Candidates(
            playbooks=manifests,
            relevance=relevance,
            catalogue_similarity=np.clip(catalogue_similarity.astype(float), 0, 1),
            treats=treats,
            contraindicated=contraindicated,
            run_playbook=np.array([self.catalogue.index[r["wpk_id"]] for r in runs], dtype=int),
            run_similarity=run_similarity,
            run_similar=run_similar,
            run_age_days=np.array(ages, dtype=float),
            run_outcome=np.array(outcomes, dtype=float),
            runs=[{k: r.get(k) for k in _EVIDENCE_FIELDS} for r in runs],
            failures=found["failures"],
        )

    def reported(
        self,
        playbook_ids: Sequence[str],
        vector: np.ndarray,
        *,
        before: datetime | None = None,
        k: int = EVIDENCE_SHOWN,
    ) -> dict[str, list[dict[str, Any]]]:
        """playbook id -> its ``k`` runs nearest the incident that nobody vouches for (not
        verified, writer not trusted): shown in the evidence as reported, never scored."""
        unvouched = reported_filter(self.trusted) + _earlier(before)
        jobs = {
            pid: self._pool.submit(
                self.store.search, vector, k, f"{unvouched} AND wpk_id = {sql_str(pid)}"
            )
            for pid in playbook_ids
        }
        return {
            pid: [
                {f: hit.get(f) for f in _EVIDENCE_FIELDS}
                | {"similarity": 1.0 - float(hit["_distance"])}
                for hit in job.result()
            ]
            for pid, job in jobs.items()
        }

    def _recent_failures(self, resource: str | None, now: datetime) -> dict[int, list[dict]]:
        if not resource:
            return {}
        where = (
            f"resource = {sql_str(resource)} AND status = 'failed' "
            f"AND created_at >= {sql_timestamp(now - FAILURE_WINDOW)} "
            f"AND created_at < {sql_timestamp(now)} AND {vouched_filter(self.trusted)}"
        )
        failures: dict[int, list[dict]] = defaultdict(list)
        for row in self.store.rows(where, ["run_id", "wpk_id", "created_at"], limit=500):
            if row["wpk_id"] in self.catalogue.index:
                failures[self.catalogue.index[row["wpk_id"]]].append(row)
        for rows in failures.values():
            rows.sort(key=lambda r: (r["created_at"], r["run_id"]), reverse=True)
        return dict(failures)

    def recommend(
        self,
        incident: Incident,
        *,
        top: int = 5,
        before: datetime | None = None,
        now: datetime | None = None,
    ) -> RecommendResult:
        """The ``top`` playbooks for ``incident``, best first, or none and the reason."""
        top = max(1, min(top, MAX_TOP))
        now = before or now or datetime.now(UTC)
        vector = self.embedder.embed([incident.text()])[0]
        candidates = self.candidates(incident, before=before, now=now, vector=vector)
        features = candidates.features(self.weights.temperature)
        scores = score(candidates, self.weights)
        manifests = candidates.playbooks
        symptoms = incident.known_symptoms()
        excluded = [
            Excluded(
                playbook_id=manifests[p].id,
                reason=f"contraindicated: the incident shows {', '.join(tags)}",
            )
            for p, tags in sorted(candidates.contraindicated.items())
            if candidates.treats[p] or features[p, 1] >= MIN_SIMILARITY
        ]
        ranked = [p for p in np.lexsort((np.arange(len(manifests)), -scores)) if scores[p] >= 0]
        shown = [manifests[p].id for p in ranked[:top]]
        reported = self.reported(shown, vector, before=before)
        recommendations = [
            self._recommendation(
                p, candidates, features, scores, incident, now, reported[manifests[p].id]
            )
            for p in ranked[:top]
        ]
        reason = None
        if not recommendations:
            reason = _empty_reason(incident, symptoms, features, candidates, excluded)
        return RecommendResult(
            incident=incident,
            query=incident.text(),
            symptoms=symptoms,
            symptom_source=incident.symptom_source,
            recommendations=recommendations,
            reason=reason,
            excluded=excluded,
            model=self.model,
        )

    def _recommendation(
        self,
        p: int,
        candidates: Candidates,
        features: np.ndarray,
        scores: np.ndarray,
        incident: Incident,
        now: datetime,
        reported: list[dict[str, Any]],
    ) -> Recommendation:
        manifest = candidates.playbooks[p]
        mine = np.flatnonzero(candidates.run_playbook == p)
        # Similar incidents first, then by cosine.
        mine = mine[
            np.lexsort((mine, -candidates.run_similarity[mine], ~candidates.run_similar[mine]))
        ]
        similar = [
            i for i in mine if candidates.run_similar[i] and not np.isnan(candidates.run_outcome[i])
        ]
        evidence = [
            Evidence(
                **candidates.runs[i],
                similarity=round(float(candidates.run_similarity[i]), 3),
            )
            for i in mine[:EVIDENCE_SHOWN]
        ]
        evidence += [
            Evidence(**{**r, "similarity": round(r["similarity"], 3)}, counted=False)
            for r in reported[:EVIDENCE_SHOWN]
        ]
        parts: list[str] = []
        title = incident.title()
        if similar:
            won = sum(candidates.run_outcome[i] == 1 for i in similar)
            where = f" on {incident.resource}" if incident.resource else ""
            text = f"{won} of {len(similar)} similar {title} incidents resolved by {manifest.id}"
            here = [i for i in similar if candidates.runs[i]["resource"] == incident.resource]
            if incident.resource and here and len(here) < len(similar):
                won_here = sum(candidates.run_outcome[i] == 1 for i in here)
                text += f" ({won_here} of {len(here)}{where})"
            parts.append(text)
            resolved = [i for i in similar if candidates.run_outcome[i] == 1]
            first = (resolved or similar)[0]
            parts.append(
                f"most similar: run {candidates.runs[first]['run_id']} "
                f"({candidates.runs[first]['status']}), {candidates.run_similarity[first]:.2f}"
            )
        else:
            parts.append(f"no similar past runs of {manifest.id}")
        treated = sorted(set(incident.known_symptoms()) & set(manifest.symptoms))
        if treated:
            parts.append(f"treats {', '.join(treated)}")
        if not similar or not treated:
            parts.append(f"catalogue match {candidates.catalogue_similarity[p]:.2f}")
        if reported:
            writers = ", ".join(sorted({str(r["provenance"]) for r in reported}))
            parts.append(f"runs reported by {writers} not counted (unverified)")
        failures = candidates.failures.get(p, [])
        if failures:
            latest = failures[0]
            age = _age(now - latest["created_at"])
            parts.append(
                f"demoted: failed {len(failures)}x on {incident.resource} in the last "
                f"{FAILURE_WINDOW.days} days (latest run {latest['run_id']}, {age} ago)"
            )
        return Recommendation(
            playbook_id=manifest.id,
            title=manifest.title,
            score=round(float(scores[p]), 4),
            justification="; ".join(parts),
            evidence=evidence,
            success_rate=round(float(features[p, 3]), 3) if similar else None,
            similar_runs=len(similar),
            safety_mode=manifest.safety.mode.value,
            features={name: round(float(features[p, i]), 4) for i, name in enumerate(FEATURES)}
            | {"recent_failures": float(len(failures))},
        )


_EVIDENCE_FIELDS = ("run_id", "status", "created_at", "resource", "provenance")


def _earlier(before: datetime | None) -> str:
    return f" AND created_at < {sql_timestamp(before)}" if before else ""


def _playbooks_in_order(hits: list[dict[str, Any]]) -> list[str]:
    """Playbook ids in the order of their best run among ``hits`` that resolved its incident."""
    return list(
        dict.fromkeys(h["wpk_id"] for h in hits if h.get("wpk_id") and h["status"] == "succeeded")
    )


def _age(delta: timedelta) -> str:
    hours = delta.total_seconds() / 3600
    return f"{hours:.0f} h" if hours < 48 else f"{hours / 24:.0f} days"


def _empty_reason(
    incident: Incident,
    symptoms: list[str],
    features: np.ndarray,
    candidates: Candidates,
    excluded: list[Excluded],
) -> str:
    if excluded:
        names = ", ".join(e.playbook_id for e in excluded)
        return (
            f"every playbook that matches is contraindicated for {', '.join(symptoms)}: {names}; "
            "none is safe to suggest"
        )
    best = int(np.argmax(features[:, 1]))
    shown = ", ".join(symptoms) if symptoms else "no catalogue symptom could be read from it"
    return (
        f"no playbook treats this incident ({shown}) and none is similar enough: the closest, "
        f"{candidates.playbooks[best].id}, scores {features[best, 1]:.2f} "
        f"(needs {MIN_SIMILARITY:.2f}); add a playbook for it or describe the incident more fully"
    )


def recommender_from_settings(
    settings: Any = None, *, url: Any = None, embedder: str | None = None
) -> tuple[Recommender, str | None]:
    """(recommender over the registered playbooks and the configured vector store, a warning
    when the embedder fell back to hashing). Loading MiniLM takes seconds: a long-lived
    process keeps the embedder and builds a Recommender per request (~10 ms), so it sees
    runs and playbooks added since."""
    from neuralops.embedding import load_embedder
    from neuralops.errors import ConfigError
    from neuralops.registry import registered_manifests
    from neuralops.settings import get_settings
    from neuralops.vectorstore import store_from_settings

    settings = settings or get_settings()
    manifests = registered_manifests(url=url)
    if not manifests:
        raise ConfigError(
            "no playbooks are registered: `neuralops playbook add <dir>` registers manifests "
            "(`neuralops run` registers the shipped catalogue)"
        )
    model, warning = load_embedder(embedder or settings.embedder)
    store = store_from_settings(settings)
    return Recommender(store, model, manifests, trusted=settings.trusted), warning


def recommend_for_signal(
    recommender: Recommender, signal_id: Any, *, top: int = 5, url: Any = None
) -> RecommendResult:
    """Recommend for a stored signal; an unknown id raises NotFound."""
    from neuralops.signals import get_signal

    return recommender.recommend(incident_from_signal(get_signal(signal_id, url=url)), top=top)
