"""Signals of the seasonal detectors: the rule's step sets the points per day, and the hint
names the part that fired and why."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import numpy as np

from neuralops import signals
from neuralops.sources import MAX_POINTS, SeriesBatch

STEP = 300.0  # 5-minute steps: 288 points a day
DAY = 288


def batch(values: np.ndarray, end: datetime) -> SeriesBatch:
    n = values.shape[1]
    return SeriesBatch(
        query="q",
        labels=[{"service": "api"}],
        timestamps=end.timestamp() - STEP * np.arange(n)[::-1],
        values=values,
    )


def rule(**fields: object) -> signals.Rule:
    return signals.Rule(
        **{
            "name": "requests",
            "query": "q",
            "title": "request rate",
            "step": "5m",
            "lookback": "5d",
            "recent": "15m",
            **fields,
        }
    )


def daily(days: int = 5, seed: int = 1) -> np.ndarray:
    """Busy from 08:00 to 20:00 (UTC, the series ends at midnight), quiet otherwise."""
    t = np.arange(days * DAY)
    busy = (t % DAY >= 96) & (t % DAY < 240)
    return (np.where(busy, 200.0, 100.0) + np.random.default_rng(seed).normal(0, 2, len(t)))[
        np.newaxis
    ]


def test_the_context_part_says_the_usual_level_at_that_time() -> None:
    values = daily()
    values[0, -1] = 200.0  # the busy level at 23:55: normal value, abnormal time
    end = datetime(2026, 11, 24, 23, 55, tzinfo=UTC)
    found = signals.find_anomalies(rule(), batch(values, end))
    assert len(found) == 1
    hint = found[0].hint
    assert "2.0x its usual 23:55 UTC level" in hint
    assert "now 200, usually 100" in hint and "for that time of day" in hint
    assert found[0].method == "combined"
    # At a 10-minute step the same rule compares with 144 points back, not 288.
    assert signals.period_points(rule(step="10m")) == 144


def test_the_change_part_says_the_level_shifted() -> None:
    rng = np.random.default_rng(2)
    values = (100 + rng.normal(0, 10, 600))[np.newaxis]  # noisy; no daily pattern yet
    values[0, -3:] += 40  # +4 sd of a point, but +6.9 sd of a six-point mean
    end = datetime(2026, 11, 24, 12, 50, tzinfo=UTC)
    found = signals.find_anomalies(rule(lookback="2d"), batch(values, end))
    assert len(found) == 1
    assert "request rate of service=api: level shifted by +" in found[0].hint
    assert "at 12:50 UTC" in found[0].hint


def test_a_rule_can_ask_for_the_lookback_the_context_part_needs() -> None:
    step = timedelta(minutes=5)
    lookback = signals.context_lookback(step)
    assert lookback >= timedelta(days=4)
    assert lookback / step < MAX_POINTS  # one range query still fits
    r = rule(lookback=signals.format_duration(lookback))
    assert r.lookback == lookback
    assert "daily pattern" in signals.baseline_name(rule(method="context"))
