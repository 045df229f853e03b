"""Probes: is this query anomalous over its last N points? (``POST /probe``)

A probe is the specification's ``{"query": "<promql>", "threshold": <num>}``: it fetches the
last ``last_points`` points of the query (N, default 120 at a ``step`` of 1 minute: the last
2 hours) and creates a signal when the score reaches ``threshold``. It is a thin call over
:func:`neuralops.signals.analyze` (same detector, hint, recent span and deduplication), with
two differences: the history is given in points rather than as a duration, and its signals
carry the rule name ``probe`` (so ``GET /signals?rule=probe`` lists them, and a probe and an
ad-hoc analysis of the same series are deduplicated separately). Pure core: no Prefect.
"""

from __future__ import annotations

from datetime import timedelta

from pydantic import BaseModel, ConfigDict, Field, model_validator
from sqlalchemy.engine import URL

from neuralops.detectors import DEFAULT_THRESHOLD
from neuralops.runs import NoNulStr
from neuralops.signals import (
    MAX_LABELS,
    AnalyzeRequest,
    AnalyzeResult,
    Duration,
    Rule,
    analyze,
    format_duration,
)
from neuralops.sources import MetricSource

PROBE_RULE = "probe"
DEFAULT_POINTS = 120
MIN_POINTS = 20  # a baseline of at least 10 steps, and some points to judge
MAX_POINTS = 11_000  # Prometheus refuses range queries of more points per series
DEFAULT_STEP = timedelta(minutes=1)


class ProbeAnalysis(AnalyzeRequest):
    """The analysis a probe runs: an ad-hoc one whose signals are the ``probe`` rule's."""

    def as_rule(self) -> Rule:
        return super().as_rule().model_copy(update={"name": PROBE_RULE})


class ProbeRequest(BaseModel):
    """The specification's probe: a PromQL query and the score that signals."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [
                {"query": 'http_request_duration_seconds_p99{service="api"}', "threshold": 0.99}
            ]
        },
    )

    query: NoNulStr = Field(min_length=1, max_length=10_000, description="PromQL query.")
    threshold: float = Field(
        DEFAULT_THRESHOLD,
        gt=0,
        le=1,
        description="The score (0 < threshold <= 1, not a z) at which a signal is created: "
        "0.95 is about |z| 4, the default 0.9995 about |z| 7.",
    )
    last_points: int = Field(
        DEFAULT_POINTS,
        ge=MIN_POINTS,
        le=MAX_POINTS,
        description="N: how many of the latest points (at `step`) are fetched; the most recent "
        "5 minutes of them (at least one step) are judged against the ones before.",
    )
    step: Duration = Field(
        DEFAULT_STEP,
        ge=timedelta(seconds=1),
        le=timedelta(days=1),
        description="Time between points (90s, 1m, 5m...).",
    )
    labels: dict[NoNulStr, NoNulStr] = Field(
        default_factory=dict, max_length=MAX_LABELS, description="Added to a resulting signal."
    )

    @model_validator(mode="after")
    def _makes_an_analysis(self) -> ProbeRequest:
        self.analysis()  # a ValueError (a 422) for what analyze would refuse
        return self

    def analysis(self) -> ProbeAnalysis:
        return ProbeAnalysis(
            query=self.query,
            lookback=self.step * self.last_points,
            step=self.step,
            threshold=self.threshold,
            labels=self.labels,
        )


class ProbeResult(AnalyzeResult):
    """The analysis, and what the probe asked for. ``signal_id`` is the signal created (or
    the earlier one it repeats: ``new_signal`` false), null when the score stayed below the
    threshold."""

    threshold: float
    last_points: int
    step: str = Field(description="As given or the default, e.g. 1m.")


def probe(request: ProbeRequest, source: MetricSource, *, url: URL | None = None) -> ProbeResult:
    """Run the probe's analysis (recording a deduplicated signal at the threshold)."""
    result = analyze(request.analysis(), source, url=url)
    return ProbeResult(
        **dict(result),
        threshold=request.threshold,
        last_points=request.last_points,
        step=format_duration(request.step),
    )
