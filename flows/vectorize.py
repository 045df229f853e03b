"""The vectorize flow: export → redact → embed → upsert, incrementally (hourly in prefect.yaml)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from prefect import flow, get_run_logger
from prefect.artifacts import create_markdown_artifact

from neuralops.hooks import run_logger_hooks
from neuralops.settings import get_settings
from tasks.etl import commit_watermark, export_runs, vectorize_runs

KEEP_EXPORTS = 24  # a day of hourly exports


@flow(name="vectorize", log_prints=False, **run_logger_hooks())
def vectorize(full: bool = False, embedder: str | None = None) -> dict[str, Any]:
    """Export the runs changed since the last run (redacted), embed them and upsert them into
    LanceDB, then move the export watermark. ``full`` re-exports everything; vectors of
    unchanged runs are still kept."""
    settings = get_settings()
    exports = settings.data_dir / "exports"
    out = exports / f"runs-{datetime.now(UTC):%Y%m%dT%H%M%S}.jsonl"
    exported = export_runs(out, full=full)
    for old in sorted(exports.glob("runs-*.jsonl"))[:-KEEP_EXPORTS]:
        old.unlink(missing_ok=True)  # the export files are a short audit trail, not a store
    result = vectorize_runs(exported.path, embedder)
    commit_watermark(exported)  # only now: a failed embedding exports the same runs again
    if result.warning:
        get_run_logger().warning(result.warning)
    # Rows that could not be exported or vectorized: left out, named (never their content).
    quarantined = [str(q) for q in [*exported.quarantined, *result.quarantined]]
    if quarantined:
        get_run_logger().warning(
            "quarantined %d run(s): %s", len(quarantined), "; ".join(quarantined[:20])
        )
    summary = {
        "exported": exported.rows,
        "written": result.written,
        "unchanged": result.skipped,
        "texts_embedded": result.embedded_texts,
        "model": result.model,
        "redacted": sum(exported.redactions.values()),
        "quarantined": len(quarantined),
        "export_file": str(exported.path),
    }
    create_markdown_artifact(
        key="vectorize-summary",
        markdown="\n".join(
            ["| | |", "| --- | --- |", *(f"| {k} | {v} |" for k, v in summary.items())]
            + ([f"\n**Warning:** {result.warning}"] if result.warning else [])
            + (
                ["\n**Quarantined** (left out, not blocking the rest):"]
                + [f"- {q}" for q in quarantined[:50]]
                if quarantined
                else []
            )
        ),
        description="What this vectorize run exported, redacted and embedded",
    )
    return summary
