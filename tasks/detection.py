"""Detection tasks: one query and one detection task per rule (each a batch of series),
one transaction for all signals, then events for the new ones."""

from __future__ import annotations

from datetime import datetime, timedelta

from prefect import task
from prefect.cache_policies import NO_CACHE
from prefect.events import emit_event

from neuralops import signals
from neuralops.settings import get_settings
from neuralops.sources import MetricSource, SeriesBatch, source_from_settings
from tasks import IO_RETRIES

SIGNAL_EVENT = "neuralops.signal.detected"


def metric_source(prometheus_block: str | None = None) -> MetricSource:
    """The named PrometheusConnection block when given, else the settings (PROM_URL, or the
    replay file)."""
    if prometheus_block:
        from blocks.prometheus import PrometheusConnection

        return PrometheusConnection.load(prometheus_block).source()
    return source_from_settings(get_settings())


@task(name="query-rule", cache_policy=NO_CACHE, task_run_name="query {rule.name}", **IO_RETRIES)
def query_rule(
    rule: signals.Rule, end: datetime, prometheus_block: str | None = None
) -> SeriesBatch:
    """The rule's query over its lookback; an unreachable server is retried with backoff."""
    source = metric_source(prometheus_block)
    end = signals.range_end(end, rule.step)
    try:
        return source.query_range(rule.query, end - rule.lookback, end, rule.step)
    finally:
        source.close()


@task(name="find-anomalies", cache_policy=NO_CACHE, task_run_name="detect {rule.name}")
def find_rule_anomalies(
    rule: signals.Rule, batch: SeriesBatch, related: list[tuple[signals.Rule, SeriesBatch]]
) -> list[signals.SignalIn]:
    return signals.find_anomalies(rule, batch, related)


@task(name="record-signals", cache_policy=NO_CACHE, **IO_RETRIES)
def record_signals(
    candidates: list[signals.SignalIn], cooldowns: dict[str, timedelta]
) -> list[signals.Recorded]:
    return signals.record_signals(candidates, cooldowns)


@task(name="emit-signal-events", cache_policy=NO_CACHE)
def emit_signal_events(new_signals: list[signals.Signal]) -> int:
    """One `neuralops.signal.detected` event per new signal, the signal as its payload; the
    resource label ``neuralops.remediate`` says whether it reaches the remediation policy
    threshold (the remediate deployment's trigger matches on it)."""
    threshold = get_settings().remediate_min_score
    for signal in new_signals:
        emit_event(
            event=SIGNAL_EVENT,
            resource={
                "prefect.resource.id": f"neuralops.signal.{signal.id}",
                "prefect.resource.name": signal.rule,
                "neuralops.rule": signal.rule,
                "neuralops.method": signal.method,
                "neuralops.fingerprint": signal.fingerprint,
                "neuralops.remediate": "true" if signal.score >= threshold else "false",
            },
            payload=signal.model_dump(mode="json"),
        )
    return len(new_signals)
