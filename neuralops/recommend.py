"""Which playbook fixes this incident: hybrid retrieval, contraindications, a scored ranking.

1. Retrieval. The incident's text (alert, labels, summary: the incident part of a run
   summary) is searched two ways in two places: by vector (MiniLM, cosine) and by BM25
   (LanceDB full-text) over past runs, and over the catalogue (``neuralops.playbook_index``:
   each playbook in chunks, scored by its best chunk, and as a whole document for BM25), so
   a playbook with no history is still found. Run hits are fused by reciprocal rank fusion
   (RRF) into the evidence. ``relevance`` fuses the catalogue's two scores, calibrated per
   query (BM25 over its best, cosine between the catalogue's median and its best) so a clear
   margin survives, with the RRF of the four playbook rankings (``SCORE_FUSION``).
   An alert name that is a playbook's alias (``alertname``, else the incident's alert) ranks
   that playbook first.
2. Filtering. A playbook whose contraindications include a symptom of the incident is out,
   however similar its text: similarity alone picks plausible wrong fixes. A playbook is a
   candidate when it treats a known symptom, resembles the incident (``MIN_SIMILARITY``),
   shares keywords with it (``KEYWORD_MIN_TERMS``, BM25) or is named by its alert; with
   none left the answer is an empty list, the closest playbook by each retriever and why.
3. Scoring, each feature in [0, 1], combined with ``Weights`` chosen by
   ``bench/recommend.py`` on a tuning split (reports/recommend.md):
   ``relevance`` (fused rank; from history, only runs that resolved their incident count),
   ``similarity`` (best cosine to the playbook or to a similar incident it resolved),
   ``treats`` (it lists one of the incident's symptoms: declared ones count 1, ones read from
   the text ``INFERRED_TREATS``), ``success`` (its outcome on similar
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
import threading
from collections import OrderedDict, defaultdict
from collections.abc import Collection, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from typing import Any, Literal

import numpy as np
from pydantic import BaseModel, Field

from neuralops.embedding import Embedder, _clean, _volatile, model_id
from neuralops.incident_model import Incident
from neuralops.manifest import Manifest
from neuralops.playbook_index import Catalogue, split_camel
from neuralops.vectorstore import (
    VectorStore,
    reported_filter,
    sql_str,
    sql_timestamp,
    vouched_filter,
)

RRF_K = 60  # fusing run hits: long lists, the usual constant
PLAYBOOK_RRF_K = 5  # fusing playbook lists: 20-odd items, so ranks must stay distinct
NEIGHBOURS = 50  # runs taken from each retriever (100 cost ~2x the search time at 1M rows)
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
MAX_TOP = 100
# Relevance from the catalogue: TEXT_WEIGHT * BM25 / best BM25 + (1 - TEXT_WEIGHT) * cosine
# calibrated between the catalogue's median and best; mixed with the rank fusion as
# SCORE_FUSION * that + (1 - SCORE_FUSION) * RRF. Chosen by cross-validation on the runbook
# set (bench/recommend.py --runbooks, reports/recommend.md), not on the figures reported.
TEXT_WEIGHT = 0.25
SCORE_FUSION = 1.0
# Symptoms read from the text (word patterns, the catalogue's own tags) are a guess: a
# match counts this much in ``treats``; declared symptoms count 1. Cross-validation chose 0:
# the words that name a symptom already count in BM25 and the vectors, and a guessed tag
# shared by several playbooks only lifted the wrong ones.
INFERRED_TREATS = 0.0
# Keyword evidence: a playbook sharing at least this many keywords with the incident, among
# BM25's best three, is a candidate however low its cosine.
KEYWORD_MIN_TERMS = 2
KEYWORD_TOP = 3
COSINE_SPREAD = 0.1  # calibration floor: at least this far below the best cosine
QUERY_CACHE = 4096  # query embeddings kept per process (recent texts)
# Reported runs: up to this many unvouched runs of the shown playbooks are searched exactly
# in one query; more (a flood) take one filtered ANN search per playbook. Measured by hand
# on the bench's 1M-run store: an exact search over 125-1,000 rows spread over its 125
# fragments took 40-55 ms, about what the five filtered ANN searches took together.
REPORTED_EXACT_MAX = 500

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
    treats: np.ndarray  # (P,) in [0, 1]: 1 declared symptom, INFERRED_TREATS read from text
    contraindicated: dict[int, list[str]]  # p -> the incident's symptoms it must not treat
    # Evidence: one entry per retrieved past run of a catalogue playbook.
    run_playbook: np.ndarray  # (E,) int
    run_similarity: np.ndarray  # (E,)
    run_age_days: np.ndarray  # (E,)
    run_outcome: np.ndarray  # (E,) 1 succeeded, 0 failed, nan otherwise (cancelled...)
    run_similar: np.ndarray  # (E,) bool: a similar incident (see SIMILAR_MIN)
    runs: list[dict[str, Any]]  # (E,) run_id, status, created_at, resource, provenance
    failures: dict[int, list[dict[str, Any]]] = field(default_factory=dict)  # on this resource
    # (P,) bool: the alert name is one of its aliases; shares keywords (see KEYWORD_MIN_TERMS)
    alias: np.ndarray | None = None
    keyword: np.ndarray | None = None
    text_score: np.ndarray | None = None  # (P,) BM25 over the best
    shared: list[set[str]] = field(default_factory=list)  # (P,) keywords in common
    # The parts relevance and treats are made of (``combine`` mixes them again).
    raw_text: np.ndarray | None = None  # (P,) BM25 of the catalogue document
    raw_cosine: np.ndarray | None = None  # (P,) best chunk cosine (None: vectors not used)
    by_rank: np.ndarray | None = None  # (P,) RRF of the playbook rankings, best = 1
    treats_declared: np.ndarray | None = None  # (P,) bool
    treats_guessed: np.ndarray | None = None  # (P,) bool
    # Unvouched runs before the incident, counted while retrieving (None: not counted).
    unvouched: int | None = None

    def combine(
        self, text_weight: float, score_fusion: float, inferred_treats: float
    ) -> Candidates:
        """The same candidates with relevance and treats mixed with other parameters."""
        assert self.raw_text is not None and self.by_rank is not None
        cosine = self.raw_cosine if self.raw_cosine is not None else np.zeros(0)
        weight = text_weight if cosine.size else 1.0
        relevance = (
            score_fusion * calibrated(self.raw_text, cosine, weight)
            + (1.0 - score_fusion) * self.by_rank
        )
        treats = np.where(
            self.treats_declared, 1.0, np.where(self.treats_guessed, inferred_treats, 0.0)
        )
        return replace(self, relevance=relevance, treats=treats)

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
        return np.column_stack([self.relevance, similarity, self.treats, success, recency])

    def failure_level(self) -> np.ndarray:
        """(P,) 0, 0.5 or 1: none, one, or two and more recent failures on this resource."""
        level = np.zeros(len(self.playbooks))
        for p, runs in self.failures.items():
            level[p] = min(len(runs), 2) / 2
        return level

    def allowed(self, similarity: np.ndarray) -> np.ndarray:
        """(P,) bool: not contraindicated, and treats a known symptom, resembles the incident,
        shares keywords with it or is named by its alert."""
        ok = (self.treats > 0) | (similarity >= MIN_SIMILARITY)
        for extra in (self.keyword, self.alias):
            if extra is not None:
                ok |= extra
        for p in self.contraindicated:
            ok[p] = False
        return ok


def score(candidates: Candidates, weights: Weights) -> np.ndarray:
    """(P,) scores in [0, 1]; -1 for playbooks that are not candidates."""
    features = candidates.features(weights.temperature)
    raw = features @ weights.vector() - weights.failure * candidates.failure_level()
    return np.where(candidates.allowed(features[:, 1]), np.clip(raw, 0.0, 1.0), -1.0)


def ranking_key(candidates: Candidates, scores: np.ndarray) -> np.ndarray:
    """(P,) what the order is sorted on: the score, an alias match ahead of everything
    (a candidate still: a contraindicated playbook stays out)."""
    alias = candidates.alias if candidates.alias is not None else np.zeros(len(scores), bool)
    return np.where(scores >= 0, scores + 2.0 * alias, scores)


def calibrated(text: np.ndarray, cosine: np.ndarray, text_weight: float) -> np.ndarray:
    """(P,) catalogue relevance in [0, 1]: BM25 over the best BM25, and the cosine between
    the catalogue's median (0) and its best (1), mixed. Unlike ranks, a playbook far ahead on
    either stays far ahead."""
    best = text.max() if text.size else 0.0
    by_text = text / best if best > 0 else np.zeros_like(text)
    if cosine.size == 0:
        return by_text
    top = float(cosine.max())
    floor = min(float(np.median(cosine)), top - COSINE_SPREAD)
    by_vector = np.clip((cosine - floor) / (top - floor), 0.0, 1.0)
    return text_weight * by_text + (1.0 - text_weight) * by_vector


def incident_from_signal(signal: Any) -> Incident:
    """A detection signal as an incident: the rule is the alert, the hint its summary."""
    return Incident(
        alert=signal.rule,
        summary=signal.hint,
        labels={str(k): str(v) for k, v in signal.labels.items() if v is not None},
    )


def search_text(incident: Incident) -> str:
    """The BM25 query: the words of the alert name (whole and split), label values and
    summary."""
    # Per-instance labels (pod, node, instance...) are noise to BM25, and each extra word
    # lengthens the search over every run.
    labels = [v for k, v in sorted(incident.labels.items()) if not _volatile(k)]
    alert = f"{incident.alert} {split_camel(incident.alert)}" if incident.alert else None
    return " ".join(_WORD.findall(" ".join(filter(None, [alert, *labels, incident.summary]))))


def distinct_words(text: str) -> str:
    """``text``'s words, each once (case aside; the first spelling kept): the BM25 query over
    run summaries. LanceDB scores a query word once per occurrence, and over a million runs
    each occurrence costs (the alert name whole and split and the summary say "latency"
    three times: 1M runs, by hand, BM25 ~13.5 -> ~10 ms p50). The catalogue's BM25 keeps
    the repeats (its weights were cross-validated with them; bench/recommend.py)."""
    first: dict[str, str] = {}
    for word in text.split():
        first.setdefault(word.lower(), word)
    return " ".join(first.values())


def query_text(incident: Incident) -> str:
    """What is embedded to search the catalogue: the whole incident (no 300-character cut;
    the model reads up to 256 word pieces), the alert name split into words."""
    parts = [f"alert {incident.alert} ({split_camel(incident.alert)})"] if incident.alert else []
    kept = [(k, v) for k, v in sorted(incident.labels.items()) if k not in ("pod", "instance")]
    if kept:
        parts.append("labels " + " ".join(f"{k}={_clean(v, 80)}" for k, v in kept))
    if incident.summary:
        parts.append(_clean(incident.summary, 4000))
    return "; ".join(parts)


_CACHE: OrderedDict[tuple[str, str], np.ndarray] = OrderedDict()
_CACHE_LOCK = threading.Lock()


def embed_cached(embedder: Embedder, texts: Sequence[str]) -> np.ndarray:
    """(n, dim) query vectors, the last QUERY_CACHE texts kept per process: an alert that
    fires again, or the same text asked twice, is not embedded again."""
    model = model_id(embedder)
    out: list[np.ndarray | None] = []
    with _CACHE_LOCK:
        for text in texts:
            vector = _CACHE.get((model, text))
            if vector is not None:
                _CACHE.move_to_end((model, text))
            out.append(vector)
    missing = [i for i, v in enumerate(out) if v is None]
    if missing:
        fresh = embedder.embed([texts[i] for i in missing])
        with _CACHE_LOCK:
            for i, vector in zip(missing, fresh, strict=True):
                out[i] = vector
                _CACHE[(model, texts[i])] = vector
            while len(_CACHE) > QUERY_CACHE:
                _CACHE.popitem(last=False)
    return np.stack(out) if out else np.zeros((0, embedder.dim), np.float32)  # type: ignore[arg-type]


def _rrf(ranked: Sequence[Sequence[Any]], k: int) -> dict[Any, float]:
    fused: dict[Any, float] = defaultdict(float)
    for items in ranked:
        for rank, item in enumerate(items, start=1):
            fused[item] += 1.0 / (k + rank)
    return fused


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
        catalogue_vector: np.ndarray | None = None,
        alertname: str | None = None,
        text_weight: float | None = None,
        score_fusion: float | None = None,
        inferred_treats: float | None = None,
    ) -> Candidates:
        """Features for every playbook; history limited to runs created before ``before``.
        ``vector`` is the incident as runs are embedded (``Incident.text``), and
        ``catalogue_vector`` as the catalogue is searched (``query_text``); the last three
        override the module's constants (the bench's cross-validation)."""
        now = before or now or datetime.now(UTC)
        manifests = self.catalogue.manifests
        count = len(manifests)
        if vector is None or catalogue_vector is None:
            vector, catalogue_vector = self.query_vectors(incident)
        query = vector
        words = search_text(incident)
        use_vectors, use_text = retrieval != "bm25", retrieval != "embedding"
        # The lookups are independent I/O (LanceDB releases the GIL): run them together.
        pending = {
            "catalogue": self._pool.submit(self.catalogue.text_scores, words) if use_text else None,
            "failures": self._pool.submit(self._recent_failures, incident.resource, now),
        }
        # Only vouched-for runs are retrieved as evidence (``reported`` shows the others).
        # Where the store holds no other run from before ``before`` (every writer verified or
        # trusted), that filter keeps every run: the searches go without it, the same
        # searches for less (at 1M rows ~6 ms each; counting, from the bitmap indexes, ~3).
        version = self.store.version()
        unvouched: int | None = self.store.count(reported_filter(self.trusted) + _earlier(before))
        where = (
            vouched_filter(self.trusted) + _earlier(before) if unvouched else _time_filter(before)
        )
        run_words = distinct_words(words)
        searched = self._search_runs(query, run_words, where, use_vectors, use_text)
        if not unvouched and self.store.version() != version:
            # Written to meanwhile (through this store, or by any writer where the store reads
            # the latest version, as the API's does): the filter may keep runs out now.
            unvouched = None
            where = vouched_filter(self.trusted) + _earlier(before)
            searched = self._search_runs(query, run_words, where, use_vectors, use_text)
        found = {key: job.result() if job else None for key, job in pending.items()}
        found = {key: [] if value is None else value for key, value in found.items()}
        vector_hits, text_hits = searched
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
        catalogue_similarity, _ = self.catalogue.vector_scores(catalogue_vector)
        text_scores = np.asarray(found["catalogue"], dtype=float)
        if not use_text:
            text_scores = np.zeros(count)
        lists: list[list[str]] = []
        if use_vectors:
            order = np.lexsort((np.arange(count), -catalogue_similarity))
            lists.append([manifests[i].id for i in order])
            lists.append(_playbooks_in_order(vector_hits))
        if use_text:
            order = np.lexsort((np.arange(count), -text_scores))
            lists.append([manifests[i].id for i in order if text_scores[i] > 0])
            lists.append(_playbooks_in_order(text_hits))
        fused = _rrf(lists, PLAYBOOK_RRF_K)
        best = len(lists) / (PLAYBOOK_RRF_K + 1)
        by_rank = np.array([fused.get(m.id, 0.0) / best for m in manifests])

        declared = set(incident.declared_symptoms())
        symptoms = set(incident.known_symptoms())
        # Read from the text: the fixed patterns and the catalogue's own symptom tags.
        guessed = (symptoms | self.catalogue.symptom_terms(words)) - declared
        treats_declared = np.array([bool(declared & set(m.symptoms)) for m in manifests])
        treats_guessed = np.array([bool(guessed & set(m.symptoms)) for m in manifests])
        shared = self.catalogue.shared_terms(words)
        top_text = set(np.lexsort((np.arange(count), -text_scores))[:KEYWORD_TOP].tolist())
        keyword = np.array(
            [
                use_text
                and text_scores[p] > 0
                and p in top_text
                and len(shared[p]) >= KEYWORD_MIN_TERMS
                for p in range(count)
            ],
            dtype=bool,
        )
        alias = np.zeros(count, dtype=bool)
        matched = self.catalogue.alias_match(alertname or incident.alert)
        if matched is not None:
            alias[matched] = True
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
        raw = Candidates(
            playbooks=manifests,
            relevance=by_rank,
            catalogue_similarity=np.clip(catalogue_similarity.astype(float), 0, 1),
            treats=treats_declared.astype(float),
            contraindicated=contraindicated,
            run_playbook=np.array([self.catalogue.index[r["wpk_id"]] for r in runs], dtype=int),
            run_similarity=run_similarity,
            run_similar=run_similar,
            run_age_days=np.array(ages, dtype=float),
            run_outcome=np.array(outcomes, dtype=float),
            runs=[{k: r.get(k) for k in _EVIDENCE_FIELDS} for r in runs],
            failures=found["failures"] or {},
            alias=alias,
            keyword=keyword,
            text_score=text_scores / text_scores.max() if text_scores.max() > 0 else text_scores,
            shared=shared,
            raw_text=text_scores,
            raw_cosine=catalogue_similarity if use_vectors else None,
            by_rank=by_rank,
            treats_declared=treats_declared,
            treats_guessed=treats_guessed,
            unvouched=unvouched,
        )
        if not use_text:
            text_weight = 0.0
        return raw.combine(
            TEXT_WEIGHT if text_weight is None else text_weight,
            SCORE_FUSION if score_fusion is None else score_fusion,
            INFERRED_TREATS if inferred_treats is None else inferred_treats,
        )

    def _search_runs(
        self, query: np.ndarray, words: str, where: str | None, use_vectors: bool, use_text: bool
    ) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
        """(vector hits, BM25 hits with their vectors) among the runs ``where`` keeps, the two
        searches together."""
        vector = (
            self._pool.submit(self.store.search, query, NEIGHBOURS, where, columns=_HIT_FIELDS)
            if use_vectors
            else None
        )
        text = (
            self._pool.submit(
                self.store.text_search,
                words,
                NEIGHBOURS,
                where,
                with_vectors=True,
                columns=_HIT_FIELDS,
            )
            if use_text
            else None
        )
        return (vector.result() if vector else []), (text.result() if text else [])

    def query_vectors(self, incident: Incident) -> tuple[np.ndarray, np.ndarray]:
        """(as runs are embedded, as the catalogue is searched): one embedding when the two
        texts are the same, none when they were embedded lately (``embed_cached``)."""
        texts = [incident.text(), query_text(incident)]
        vectors = embed_cached(self.embedder, texts)
        return vectors[0], vectors[1]

    def reported(
        self,
        playbook_ids: Sequence[str],
        vector: np.ndarray,
        *,
        before: datetime | None = None,
        k: int = EVIDENCE_SHOWN,
        bound: int | None = None,
    ) -> dict[str, list[dict[str, Any]]]:
        """playbook id -> its ``k`` runs nearest the incident that nobody vouches for (not
        verified, writer not trusted): shown in the evidence as reported, never scored.
        ``bound``: at least as many as such runs of these playbooks (``candidates`` counts the
        unvouched runs of every playbook): 0 spares the search."""
        ids = list(dict.fromkeys(playbook_ids))
        out: dict[str, list[dict[str, Any]]] = {pid: [] for pid in ids}
        if not ids or k < 1 or bound == 0:
            return out
        unvouched = reported_filter(self.trusted) + _earlier(before)
        mine = f"{unvouched} AND wpk_id IN ({', '.join(sql_str(pid) for pid in ids)})"
        if bound is None or bound > REPORTED_EXACT_MAX:
            bound = self.store.count(mine)  # scalar indexes: a few ms
        if bound == 0:
            return out
        if bound <= REPORTED_EXACT_MAX:
            # Few (the usual case): one exact search over all of them, nearest first, ties by
            # run id, instead of walking the ANN index once per playbook for rare matches.
            hits = self.store.search(vector, bound, mine, exact=True, columns=_REPORTED_FIELDS)
            for hit in sorted(hits, key=lambda h: (float(h["_distance"]), h["run_id"])):
                runs = out.get(hit["wpk_id"])
                if runs is not None and len(runs) < k:
                    runs.append(_reported_run(hit))
            return out
        # A flood: the index, one filtered search per playbook (together).
        jobs = {
            pid: self._pool.submit(
                self.store.search,
                vector,
                k,
                f"{unvouched} AND wpk_id = {sql_str(pid)}",
                columns=_REPORTED_FIELDS,
            )
            for pid in ids
        }
        return {pid: [_reported_run(hit) for hit in job.result()] for pid, job in jobs.items()}

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
        alertname: str | None = None,
    ) -> RecommendResult:
        """The ``top`` playbooks for ``incident``, best first, or none and the reason. A
        playbook whose alias is ``alertname`` (any case; default: the incident's alert) comes
        first unless contraindicated."""
        top = max(1, min(top, MAX_TOP))
        now = before or now or datetime.now(UTC)
        vector, catalogue_vector = self.query_vectors(incident)
        candidates = self.candidates(
            incident,
            before=before,
            now=now,
            vector=vector,
            catalogue_vector=catalogue_vector,
            alertname=alertname,
        )
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
            if candidates.treats[p] > 0
            or features[p, 1] >= MIN_SIMILARITY
            or (candidates.keyword is not None and candidates.keyword[p])
        ]
        key = ranking_key(candidates, scores)
        ranked = [p for p in np.lexsort((np.arange(len(manifests)), -key)) if scores[p] >= 0]
        shown = [manifests[p].id for p in ranked[:top]]
        reported = self.reported(shown, vector, before=before, bound=candidates.unvouched)
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
        if candidates.alias is not None and candidates.alias[p]:
            parts.insert(0, f"the alert's name is its alias ({', '.join(manifest.aliases)})")
        treated = sorted(set(incident.known_symptoms()) & set(manifest.symptoms))
        if treated:
            parts.append(f"treats {', '.join(treated)}")
        if not similar or not treated:
            parts.append(f"catalogue match {candidates.catalogue_similarity[p]:.2f}")
            if candidates.shared and candidates.shared[p]:
                words = ", ".join(sorted(candidates.shared[p])[:6])
                parts.append(f"keywords in common: {words}")
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
# What scoring reads of a retrieved run; what a reported run shows.
_HIT_FIELDS = (*_EVIDENCE_FIELDS, "wpk_id", "symptoms")
_REPORTED_FIELDS = (*_EVIDENCE_FIELDS, "wpk_id")


def _reported_run(hit: dict[str, Any]) -> dict[str, Any]:
    return {f: hit.get(f) for f in _EVIDENCE_FIELDS} | {"similarity": 1.0 - float(hit["_distance"])}


def _earlier(before: datetime | None) -> str:
    return f" AND created_at < {sql_timestamp(before)}" if before else ""


def _time_filter(before: datetime | None) -> str | None:
    return f"created_at < {sql_timestamp(before)}" if before else None


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
    keywords = "no playbook shares keywords with it"
    if candidates.shared:
        closest = max(
            range(len(candidates.shared)),
            key=lambda p: (len(candidates.shared[p]), -p),
        )
        if candidates.shared[closest]:
            words = ", ".join(sorted(candidates.shared[closest])[:6])
            keywords = (
                f"by keywords the closest, {candidates.playbooks[closest].id}, shares only "
                f"{words} (needs {KEYWORD_MIN_TERMS} among BM25's best {KEYWORD_TOP})"
            )
    return (
        f"no playbook treats this incident ({shown}) and none is similar enough: the closest, "
        f"{candidates.playbooks[best].id}, scores {features[best, 1]:.2f} "
        f"(needs {MIN_SIMILARITY:.2f}); {keywords}; add a playbook for it or describe the "
        "incident more fully"
    )


def recommender_from_settings(
    settings: Any = None, *, url: Any = None, embedder: str | None = None, read_latest: bool = False
) -> tuple[Recommender, str | None]:
    """(recommender over the registered playbooks and the configured vector store, a warning
    when the embedder fell back to hashing). Loading MiniLM takes seconds: a long-lived
    process holds the recommender, its store opened with ``read_latest`` so it sees runs
    added since, and builds another when the registered playbooks change (the API)."""
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
    store = store_from_settings(settings, read_latest=read_latest)
    return Recommender(store, model, manifests, trusted=settings.trusted), warning


def recommend_for_signal(
    recommender: Recommender, signal_id: Any, *, top: int = 5, url: Any = None
) -> RecommendResult:
    """Recommend for a stored signal; an unknown id raises NotFound."""
    from neuralops.signals import get_signal

    return recommender.recommend(incident_from_signal(get_signal(signal_id, url=url)), top=top)
