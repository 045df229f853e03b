"""Detection flows: `detect` (every rule, on a schedule) and `analyze` (one ad-hoc query)."""

from __future__ import annotations

from typing import Any

from prefect import flow
from prefect.artifacts import create_table_artifact

from neuralops import signals
from neuralops.hooks import run_logger_hooks
from neuralops.settings import get_settings
from tasks.detection import (
    emit_signal_events,
    find_rule_anomalies,
    metric_source,
    query_rule,
    record_signals,
)


@flow(name="detect", log_prints=False, **run_logger_hooks())
def detect(rules_file: str | None = None, prometheus_block: str | None = None) -> dict[str, int]:
    """Run every rule: query each, score its series, record deduplicated signals, emit events.

    ``prometheus_block`` names a NeuralOps Prometheus block (edited in the UI); without it the
    settings choose the source. All queries finish before anything is written: a Prometheus
    outage (after retries) fails the run and writes no partial signals; the next run covers
    the same span again.
    """
    rules = signals.load_rules(rules_file or get_settings().rules_file)
    source = metric_source(prometheus_block)
    try:
        end = source.now()
    finally:
        source.close()
    queries = {rule.name: query_rule.submit(rule, end, prometheus_block) for rule in rules}
    batches = {name: future.result() for name, future in queries.items()}  # raises on outage
    by_name = {rule.name: rule for rule in rules}
    found = [
        find_rule_anomalies.submit(
            rule, batches[rule.name], [(by_name[r], batches[r]) for r in rule.related]
        )
        for rule in rules
    ]
    candidates = [candidate for future in found for candidate in future.result()]
    recorded = record_signals(candidates, {rule.name: rule.cooldown for rule in rules})
    new = [r.signal for r in recorded if r.new]
    emit_signal_events(new)
    create_table_artifact(
        key="detect-signals",
        table=[_row(r.signal, r.new) for r in recorded]
        or [{"result": f"no anomalies in {len(rules)} rules"}],
        description=f"Signals of this detect run: {len(new)} new, "
        f"{len(recorded) - len(new)} repeats folded into earlier signals",
    )
    return {
        "rules": len(rules),
        "series": sum(len(b.labels) for b in batches.values()),
        "anomalies": len(candidates),
        "new_signals": len(new),
        "suppressed": len(recorded) - len(new),
    }


@flow(name="analyze", log_prints=False, **run_logger_hooks())
def analyze(
    query: str,
    lookback: str = "1h",
    labels: dict[str, str] | None = None,
    method: signals.Method | None = None,
    step: str | None = None,
    recent: str | None = None,
    prometheus_block: str | None = None,
) -> dict[str, Any]:
    """Is this query anomalous now? Returns score, method, z and a hint; stores a signal (and
    emits its event) when the score reaches the threshold."""
    request = signals.AnalyzeRequest(
        query=query, lookback=lookback, labels=labels or {}, method=method, step=step, recent=recent
    )
    source = metric_source(prometheus_block)
    try:
        result = signals.analyze(request, source)
    finally:
        source.close()
    if result.new_signal and result.signal_id is not None:
        emit_signal_events([signals.get_signal(result.signal_id)])
    return result.model_dump(mode="json")


def _row(signal: signals.Signal, new: bool) -> dict[str, Any]:
    return {
        "rule": signal.rule,
        "series": ", ".join(f"{k}={v}" for k, v in sorted(signal.labels.items())),
        "score": round(signal.score, 4),
        "z": None if signal.z is None else round(signal.z, 2),
        "hint": signal.hint,
        "status": "new" if new else f"repeat (seen {signal.occurrences}x)",
        "signal id": str(signal.id),
    }
