"""The catalogue as the recommender reads it: playbooks cut into chunks for the vector
search, whole documents for BM25, their aliases and symptom terms.

Long pages embed poorly against a short alert: MiniLM reads at most 256 word pieces, and a
page's mean vector blurs its one relevant paragraph. So a playbook is embedded as chunks
(its title and description; then each section, in paragraphs of at most ``CHUNK_WORDS``
words, each prefixed with the title and heading) and scores its best chunk's cosine. BM25
(LanceDB full text, stemmed) reads the whole document, title and alert names counted twice.
Both are stored in LanceDB next to the runs (``catalogue_chunks``, ``catalogue_docs``);
a chunk is re-embedded only when its text or the model changes.
"""

from __future__ import annotations

import re

import numpy as np
import pyarrow as pa

from neuralops.embedding import Embedder, content_hash, model_id
from neuralops.manifest import Manifest, alias_key
from neuralops.vectorstore import VectorStore

CHUNKS_TABLE = "catalogue_chunks"
DOCS_TABLE = "catalogue_docs"
CHUNK_WORDS = 120  # MiniLM truncates at 256 word pieces; ~120 words stay well inside
_CAMEL = re.compile(r"(?<=[a-z0-9])(?=[A-Z])|(?<=[A-Z])(?=[A-Z][a-z])")
_FENCE = re.compile(r"^(```|~~~).*?^\1[^\n]*$", re.S | re.M)
_HTML = re.compile(r"<[^>\n]+>")
_LINK = re.compile(r"!?\[([^\]]*)\]\([^)]*\)")
_MARKUP = re.compile(r"[`*_#>|]+")
_SENTENCE = re.compile(r"(?<=[.!?])\s+")
_TERM = re.compile(r"[a-z0-9]+")
# Words that say nothing about which alert it is; everything else counts as a keyword.
STOP_WORDS = frozenset(
    re.findall(
        r"\w+",
        "a an and are as at be been but by can for from has have if in into is it its no not "
        "of on or so than that the their then there these this to too was were when which "
        "while will with",
    )
)


def split_camel(name: str) -> str:
    """``KubePodOOMKilled`` -> ``Kube Pod OOM Killed``; underscores become spaces."""
    return _CAMEL.sub(" ", name).replace("_", " ")


def plain(markdown: str) -> str:
    """Markdown as prose for the embedder: code blocks, HTML tags, link targets and markup
    removed (commands embed as noise; BM25 still reads them in the document)."""
    text = _FENCE.sub(" ", markdown)
    text = _LINK.sub(r"\1", _HTML.sub(" ", text))
    return _MARKUP.sub(" ", text)


def _windows(text: str, limit: int = CHUNK_WORDS) -> list[str]:
    """Paragraphs packed into pieces of at most ``limit`` words; a longer paragraph is cut at
    sentence ends (a longer sentence stays whole: the model truncates it)."""
    pieces: list[str] = []
    current: list[str] = []
    for paragraph in re.split(r"\n\s*\n", text):
        words = paragraph.split()
        if not words:
            continue
        units = (
            [s.split() for s in _SENTENCE.split(" ".join(words))] if len(words) > limit else [words]
        )
        for unit in units:
            if current and len(current) + len(unit) > limit:
                pieces.append(" ".join(current))
                current = []
            current.extend(unit)
    if current:
        pieces.append(" ".join(current))
    return pieces


def names(manifest: Manifest) -> str:
    """The alert names it answers, verbatim and split into words."""
    return " ".join(f"{a} ({split_camel(a)})" for a in manifest.aliases)


def chunk_texts(manifest: Manifest) -> list[str]:
    """What is embedded for one playbook: a head chunk (title, alert names, description,
    the symptoms it treats), then each section in paragraphs under its title and heading."""
    treats = ", ".join(s.replace("-", " ") for s in manifest.symptoms)
    head = " ".join(
        filter(
            None,
            [
                f"{manifest.title}.",
                names(manifest),
                manifest.description,
                f"Treats: {treats}." if treats else "",
            ],
        )
    )
    chunks = [head]
    for heading, body in manifest.sections.items():
        for piece in _windows(plain(body)):
            chunks.append(f"{manifest.title}. {heading}: {piece}")
    if not manifest.sections and len(manifest.description.split()) > CHUNK_WORDS:
        chunks += [f"{manifest.title}. {piece}" for piece in _windows(manifest.description)]
    return chunks


def document_text(manifest: Manifest) -> str:
    """What BM25 reads: the whole playbook, its title and alert names twice (a field boost)."""
    symptoms = " ".join(s.replace("-", " ") for s in manifest.symptoms)
    title = f"{manifest.title} {names(manifest)}"
    sections = " ".join(f"{h} {t}" for h, t in manifest.sections.items())
    return " ".join([title, title, manifest.description, symptoms, sections])


def terms(text: str) -> set[str]:
    """Distinct keywords of a text: lower-case words, stop words out, a plural's s dropped."""
    found = set()
    for word in _TERM.findall(split_camel(text).lower()):
        if word in STOP_WORDS or len(word) < 2:
            continue
        found.add(word[:-1] if len(word) > 3 and word.endswith("s") else word)
    return found


class Catalogue:
    """The catalogue's playbooks indexed for retrieval (see the module docstring)."""

    def __init__(self, store: VectorStore, embedder: Embedder, manifests: list[Manifest]) -> None:
        self.manifests = sorted(manifests, key=lambda m: m.id)
        self.index = {m.id: i for i, m in enumerate(self.manifests)}
        self.aliases = {
            key: p for p, m in enumerate(self.manifests) for key in sorted(m.alias_keys())
        }
        self.terms = [terms(document_text(m)) for m in self.manifests]
        # Symptom tags any playbook declares, as the words that name them ("replication lag").
        self.tags = {
            tag: frozenset(terms(tag.replace("-", " ")))
            for m in self.manifests
            for tag in (*m.symptoms, *m.contraindications)
        }
        db = store.connect()
        self._load_chunks(db, embedder)
        self._load_docs(db)

    def _load_chunks(self, db, embedder: Embedder) -> None:
        owners, texts = [], []
        for p, manifest in enumerate(self.manifests):
            for text in chunk_texts(manifest):
                owners.append(p)
                texts.append(text)
        hashes = [content_hash(t) for t in texts]
        model = model_id(embedder)
        cached: dict[str, np.ndarray] = {}
        table = _open(db, CHUNKS_TABLE)
        if table is not None:
            stored = table.to_arrow()
            for digest, kind, vector in zip(
                stored.column("content_hash").to_pylist(),
                stored.column("model").to_pylist(),
                stored.column("vector").to_numpy(zero_copy_only=False),
                strict=True,
            ):
                if kind == model:
                    cached[digest] = vector
        missing = [i for i, h in enumerate(hashes) if h not in cached]
        if missing:
            fresh = embedder.embed([texts[i] for i in missing])
            cached.update({hashes[i]: v for i, v in zip(missing, fresh, strict=True)})
        vectors = np.stack([cached[h] for h in hashes]).astype(np.float32)
        if missing or table is None or table.count_rows() != len(texts):
            data = pa.table(
                {
                    "playbook_id": [self.manifests[p].id for p in owners],
                    "text": texts,
                    "content_hash": hashes,
                    "model": [model] * len(texts),
                    "vector": pa.FixedSizeListArray.from_arrays(
                        pa.array(vectors.reshape(-1)), vectors.shape[1]
                    ),
                }
            )
            db.create_table(CHUNKS_TABLE, data=data, mode="overwrite")
        self.chunk_owner = np.array(owners, dtype=int)
        self.chunk_texts = texts
        self.chunk_vectors = vectors
        # Chunks are grouped by playbook in order: each group starts here.
        self._starts = np.flatnonzero(np.r_[True, np.diff(self.chunk_owner) != 0])

    def _load_docs(self, db) -> None:
        ids = [m.id for m in self.manifests]
        texts = [document_text(m) for m in self.manifests]
        hashes = [content_hash(t) for t in texts]
        table = _open(db, DOCS_TABLE)
        if table is not None:
            stored = table.to_arrow()
            if not (
                stored.column("playbook_id").to_pylist() == ids
                and stored.column("content_hash").to_pylist() == hashes
            ):
                table = None
        if table is None:
            data = pa.table({"playbook_id": ids, "text": texts, "content_hash": hashes})
            table = db.create_table(DOCS_TABLE, data=data, mode="overwrite")
            from lancedb.index import FTS

            table.create_index("text", config=FTS(), replace=True)
        self.docs = table

    def vector_scores(self, query: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(P,) best chunk cosine per playbook, and (P,) the index of that chunk."""
        cosines = self.chunk_vectors @ np.asarray(query, dtype=np.float32)
        best = np.maximum.reduceat(cosines, self._starts)
        where = np.array(
            [
                start + int(np.argmax(cosines[start:end]))
                for start, end in zip(self._starts, [*self._starts[1:], len(cosines)], strict=True)
            ]
        )
        return best.astype(float), where

    def text_scores(self, words: str) -> np.ndarray:
        """(P,) BM25 score of each playbook's document for ``words`` (0: no term in common)."""
        scores = np.zeros(len(self.manifests))
        if not words.strip():
            return scores
        hits = (
            self.docs.search(words, query_type="fts")
            .limit(len(self.manifests))
            .select(["playbook_id"])
            .to_list()
        )
        for hit in hits:
            scores[self.index[hit["playbook_id"]]] = float(hit["_score"])
        return scores

    def shared_terms(self, text: str) -> list[set[str]]:
        """Per playbook, the query's keywords its document contains."""
        query = terms(text)
        return [query & own for own in self.terms]

    def alias_match(self, alertname: str | None) -> int | None:
        """The playbook whose alias is this alert name (any case), if one is."""
        return self.aliases.get(alias_key(alertname)) if alertname else None

    def symptom_terms(self, text: str) -> set[str]:
        """Catalogue symptom tags whose words all appear in ``text`` ("replication lag")."""
        words = terms(text)
        return {tag for tag, need in self.tags.items() if need and need <= words}


def _open(db, name: str):
    try:
        return db.open_table(name)
    except ValueError:  # not created yet
        return None
