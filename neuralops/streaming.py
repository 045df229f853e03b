"""Metrics from a connected cluster: detect in the cluster, or ship samples in batches.

A connector's ``stream-metrics`` flow queries the cluster's own Prometheus with the
detection rules and, depending on its mode:

- ``signals``: runs the detectors inside the cluster and forwards only the signals, so raw
  metrics never leave the cluster;
- ``samples``: forwards the queried series in batches (at most ``MAX_SERIES`` series each),
  and the control plane runs the same rules on them.

Either way the series gain the label ``neuralops_cluster`` (Prometheus' own ``cluster``
label often means something else), so the same series in two clusters are two signals.
Both modes produce the same signals for the same data: detection is the same function.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from datetime import datetime
from typing import Any

import numpy as np

from neuralops.errors import InvalidInput
from neuralops.signals import Rule, SignalIn, find_anomalies, range_end
from neuralops.sources import MetricSource, SeriesBatch

CLUSTER_LABEL = "neuralops_cluster"
MAX_SERIES = 200  # per forwarded batch: keeps one event's payload well under a megabyte


def query_rules(
    rules: Sequence[Rule], source: MetricSource, cluster: str, *, now: datetime | None = None
) -> dict[str, SeriesBatch]:
    """Each rule's series over its lookback, labelled with the cluster."""
    now = now or source.now()
    batches = {}
    for rule in rules:
        end = range_end(now, rule.step)
        batch = source.query_range(rule.query, end - rule.lookback, end, rule.step)
        batches[rule.name] = SeriesBatch(
            batch.query,
            [{**labels, CLUSTER_LABEL: cluster} for labels in batch.labels],
            batch.timestamps,
            batch.values,
        )
    return batches


def detect_batches(rules: Sequence[Rule], batches: Mapping[str, SeriesBatch]) -> list[SignalIn]:
    """The signals of every rule on the given series (a rule without series finds none)."""
    by_name = {rule.name: rule for rule in rules}
    found: list[SignalIn] = []
    for rule in rules:
        batch = batches.get(rule.name)
        if batch is None:
            continue
        related = [(by_name[r], batches[r]) for r in rule.related if r in batches]
        found += find_anomalies(rule, batch, related)
    return found


def to_payloads(batches: Mapping[str, SeriesBatch], max_series: int = MAX_SERIES) -> list[dict]:
    """Series as JSON-able batches of at most ``max_series`` series (NaN as null)."""
    out = []
    for name, batch in batches.items():
        for start in range(0, max(len(batch.labels), 1), max_series):
            rows = batch.values[start : start + max_series]
            out.append(
                {
                    "rule": name,
                    "query": batch.query,
                    "labels": batch.labels[start : start + max_series],
                    "timestamps": batch.timestamps.tolist(),
                    "values": [[None if np.isnan(v) else float(v) for v in row] for row in rows],
                }
            )
    return out


def from_payloads(payloads: Iterable[Mapping[str, Any]]) -> dict[str, SeriesBatch]:
    """The inverse of ``to_payloads``: batches of one rule are joined again."""
    joined: dict[str, SeriesBatch] = {}
    for i, payload in enumerate(payloads):
        try:
            timestamps = np.asarray(payload["timestamps"], dtype=np.float64)
            values = np.asarray(
                [[np.nan if v is None else v for v in row] for row in payload["values"]],
                dtype=np.float64,
            ).reshape(len(payload["labels"]), len(timestamps))
            batch = SeriesBatch(
                payload["query"], [dict(x) for x in payload["labels"]], timestamps, values
            )
            name = str(payload["rule"])
        except (KeyError, TypeError, ValueError) as exc:
            raise InvalidInput(f"sample batch {i}: malformed ({exc})") from None
        if name in joined:
            held = joined[name]
            if not np.array_equal(held.timestamps, batch.timestamps):
                raise InvalidInput(f"sample batch {i}: rule {name} batches differ in their grid")
            batch = SeriesBatch(
                held.query,
                held.labels + batch.labels,
                held.timestamps,
                np.vstack([held.values, batch.values]),
            )
        joined[name] = batch
    return joined
