"""ETL tasks: export (redacted) and vectorize, each one batch-processing task."""

from __future__ import annotations

from pathlib import Path

from prefect import task
from prefect.cache_policies import NO_CACHE

from neuralops import etl, vectorize
from neuralops.embedding import load_embedder
from neuralops.settings import get_settings
from neuralops.vectorstore import store_from_settings
from tasks import IO_RETRIES


@task(name="export-runs", cache_policy=NO_CACHE, **IO_RETRIES)
def export_runs(out: Path, full: bool = False) -> etl.ExportResult:
    """Runs changed since the watermark → redacted JSONL. The watermark stays until
    ``commit_watermark``: runs exported but never embedded are exported again next time."""
    return etl.export_runs(out, full=full, commit=False)


@task(name="commit-watermark", cache_policy=NO_CACHE, **IO_RETRIES)
def commit_watermark(exported: etl.ExportResult) -> bool:
    return etl.commit_watermark(exported)


@task(name="vectorize-runs", cache_policy=NO_CACHE, **IO_RETRIES)
def vectorize_runs(path: Path, embedder: str | None = None) -> vectorize.VectorizeResult:
    """Embed the exported runs and upsert them into LanceDB; unchanged runs are skipped.
    One vectorize at a time per store (``vectorize.vectorize_lock``): a second one waits."""
    settings = get_settings()
    model, warning = load_embedder(embedder or settings.embedder)
    store = store_from_settings(settings)
    bad_lines: list[vectorize.Quarantined] = []
    with vectorize.vectorize_lock(store):
        result = vectorize.vectorize_records(
            vectorize.read_jsonl(path, bad_lines), store, model, warning=warning, lock=False
        )
        store.ensure_index()  # once the table is large enough to benefit (see vectorstore)
    result.quarantined[:0] = bad_lines
    return result
