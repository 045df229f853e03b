"""Signals: detection rules, anomalies found in query results, and their deduplicated record.

A rule names a query and how to judge it (lookback, step, method, threshold, cooldown). For
each rule the detector scores every returned series at once; a series whose score in the
most recent points reaches the threshold becomes a signal candidate with a hint an on-call
engineer can read, and with the other series (same rule or a related one) that moved with it.

Deduplication: a candidate's fingerprint is its rule and series labels. It is suppressed
(the stored signal's ``occurrences`` and ``last_seen_at`` move instead) while the earlier
signal is within its cooldown, or when it continues the episode already signalled. Pure
core: no Prefect here; flows emit the events.
"""

from __future__ import annotations

import hashlib
import json
import re
import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Annotated, Any, Literal

import numpy as np
import yaml
from pydantic import (
    AwareDatetime,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationError,
    model_validator,
)
from sqlalchemy import func, select, text
from sqlalchemy.engine import URL
from sqlalchemy.orm import Session

from neuralops.db import session_scope
from neuralops.db.models import InsightSignal, utcnow
from neuralops.detectors import (
    CHANGE_WINDOW,
    CONTEXT_DAYS,
    DEFAULT_METHOD,
    DEFAULT_THRESHOLD,
    DETECTORS,
    EWMA_ALPHA,
    PARTS,
    ROBUST_WINDOW,
    SHAPE_HISTORY,
    ZSCORE_WINDOW,
    Detection,
    combined_parts,
    ewma,
    rolling_zscore,
)
from neuralops.errors import InvalidInput, NotFound
from neuralops.manifest import read_yaml, yaml_problem
from neuralops.redaction import SecretRedactor
from neuralops.runs import NoNulStr
from neuralops.sources import MetricSource, SeriesBatch

Method = Literal[
    "zscore",
    "ewma",
    "robust",
    "ensemble",
    "context",
    "change",
    "combined",
    "likelihood",
    "variance",
    "shape",
]
# How a signal was found: a detection method, or an Alertmanager alert (POST /alerts).
SignalMethod = Method | Literal["alertmanager"]
RULE_NAME_PATTERN = r"^[a-z0-9][a-z0-9_.-]{0,127}$"
ADHOC_RULE = "adhoc"
MAX_LABELS = 50  # labels a rule or an ad-hoc analysis adds to its signals
# Correlation hints: how many, how strong, and over how many points before the anomaly.
MAX_CORRELATED = 5
MIN_CORRELATION = 0.6
CONTEXT_POINTS = 30

_DURATION = re.compile(r"^(?:(\d+)d)?(?:(\d+)h)?(?:(\d+)m)?(?:(\d+)s)?$")


def parse_duration(value: Any) -> timedelta:
    """Prometheus-style durations: ``90s``, ``5m``, ``1h30m``, ``7d``; plain numbers are
    seconds."""
    if isinstance(value, timedelta):
        return value
    if isinstance(value, int | float) and not isinstance(value, bool):
        try:
            return timedelta(seconds=value)
        except OverflowError:
            raise ValueError(f"{value!r} is too long a duration") from None
    match = _DURATION.match(str(value).strip())
    if not match or not any(match.groups()):
        raise ValueError(f"{value!r} is not a duration such as 90s, 5m, 1h30m or 7d")
    days, hours, minutes, seconds = (int(g or 0) for g in match.groups())
    try:
        return timedelta(days=days, hours=hours, minutes=minutes, seconds=seconds)
    except OverflowError:
        raise ValueError(f"{value!r} is too long a duration") from None


def format_duration(delta: timedelta) -> str:
    """``timedelta(hours=1, minutes=30)`` → ``1h30m`` (the inverse of parse_duration)."""
    seconds = int(delta.total_seconds())
    parts = []
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60), ("s", 1)):
        if seconds >= size:
            parts.append(f"{seconds // size}{unit}")
            seconds %= size
    return "".join(parts) or "0s"


Duration = Annotated[timedelta, BeforeValidator(parse_duration)]


class Rule(BaseModel):
    """One named query and how to judge it."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(pattern=RULE_NAME_PATTERN, description="Unique, lower-case rule name.")
    query: NoNulStr = Field(min_length=1, max_length=10_000, description="PromQL query.")
    title: NoNulStr | None = Field(
        None, max_length=200, description='What the query measures, for hints ("p99 latency").'
    )
    lookback: Duration = Field(timedelta(hours=1), description="History the baseline sees.")
    step: Duration = Field(timedelta(minutes=1), description="Resolution of the range query.")
    recent: Duration = Field(
        timedelta(minutes=5), description="Only anomalies in this most recent span signal."
    )
    method: Method = DEFAULT_METHOD
    threshold: float = Field(DEFAULT_THRESHOLD, gt=0, le=1, description="Score that signals.")
    labels: dict[NoNulStr, NoNulStr] = Field(
        default_factory=dict,
        max_length=MAX_LABELS,
        description="Added to every signal (severity, team, ...).",
    )
    cooldown: Duration = Field(
        timedelta(minutes=30), description="The same series signals at most once per cooldown."
    )
    related: list[str] = Field(
        default_factory=list, description="Rules whose series are searched for correlation."
    )

    @model_validator(mode="after")
    def _sane_spans(self) -> Rule:
        if self.step <= timedelta(0):
            raise ValueError("step must be positive")
        if self.lookback < 10 * self.step:
            raise ValueError("lookback must cover at least 10 steps for a baseline")
        if self.recent < self.step:
            raise ValueError("recent must be at least one step")
        return self

    @property
    def what(self) -> str:
        return self.title or self.name


class RuleFile(BaseModel):
    model_config = ConfigDict(extra="forbid")

    rules: list[Rule] = Field(min_length=1)

    @model_validator(mode="after")
    def _consistent(self) -> RuleFile:
        names = [rule.name for rule in self.rules]
        duplicates = sorted({n for n in names if names.count(n) > 1})
        if duplicates:
            raise ValueError(f"rule names must be unique; repeated: {', '.join(duplicates)}")
        for rule in self.rules:
            unknown = sorted(set(rule.related) - set(names))
            if unknown:
                raise ValueError(f"rule {rule.name!r} relates to unknown rules: {unknown}")
        return self


def default_rules_path() -> Path:
    return Path(__file__).parent / "rules" / "default.yaml"


def load_rules(path: Path | str | None = None) -> list[Rule]:
    """Read and validate a rule file; errors name the file and the field."""
    path = Path(path) if path else default_rules_path()
    try:
        document = read_yaml(path)  # bounded size, no aliases
    except OSError as exc:
        raise InvalidInput(f"{path}: cannot read the rule file ({exc.strerror})") from exc
    except UnicodeDecodeError as exc:
        raise InvalidInput(f"{path}: cannot read the rule file (not UTF-8 text)") from exc
    except yaml.YAMLError as exc:
        raise InvalidInput(f"{path}: not valid YAML at {yaml_problem(exc)}") from None
    try:
        return RuleFile.model_validate(document).rules
    except ValidationError as exc:
        raise InvalidInput.from_validation(exc, str(path)) from exc


# --- finding anomalies -------------------------------------------------------------------------


class SignalIn(BaseModel):
    """An anomaly found by detection, before deduplication."""

    rule: str
    query: str
    labels: dict[str, str]
    value: float
    score: float = Field(ge=0, le=1)
    z: float | None
    method: SignalMethod
    hint: str
    correlated: list[dict[str, Any]] = Field(default_factory=list)
    window_start: AwareDatetime
    window_end: AwareDatetime
    fingerprint: str

    @model_validator(mode="after")
    def _no_credentials(self) -> SignalIn:
        """A credential in a series or rule label (``authorization``, ``api_key``...) goes no
        further than detection: not into the database, the API, events or artifacts. The
        fingerprint is of the labels as they came, so deduplication is unaffected."""
        redactor = SecretRedactor()
        self.labels = redactor.value(self.labels)
        self.hint = redactor.text(self.hint)
        self.correlated = redactor.value(self.correlated)
        return self


class Signal(SignalIn):
    """A stored signal."""

    model_config = ConfigDict(from_attributes=True)

    id: uuid.UUID
    occurrences: int
    last_seen_at: AwareDatetime
    created_at: AwareDatetime
    resolved_at: AwareDatetime | None = Field(
        None, description="When its alert resolved (Alertmanager); None while open."
    )


def fingerprint(rule: str, series_labels: dict[str, str]) -> str:
    """Identity of an anomaly's series: the rule and the series' labels, not the time."""
    key = json.dumps({"rule": rule, "labels": series_labels}, sort_keys=True)
    return hashlib.sha256(key.encode()).hexdigest()


def range_end(now: datetime, step: timedelta) -> datetime:
    """``now`` floored to a multiple of ``step``: successive runs query the same grid points,
    so an anomaly keeps its timestamps from run to run."""
    seconds = step.total_seconds()
    return datetime.fromtimestamp(now.timestamp() // seconds * seconds, tz=UTC)


# Seasonal detectors compare with the same time a day before: a day in the rule's steps.
DAY = timedelta(days=1)


def period_points(rule: Rule) -> int:
    """Points per day at the rule's step (at least 2)."""
    return max(2, round(DAY / rule.step))


def context_lookback(step: timedelta) -> timedelta:
    """The lookback that gives the context detector its three days before, plus a day for
    the spread of its errors: ask for it in a rule (at 5-minute steps: 1,152 points)."""
    return (CONTEXT_DAYS + 1) * DAY + step


def detect(rule: Rule, batch: SeriesBatch) -> Detection:
    if rule.method in ("context", "combined", "likelihood"):
        return DETECTORS[rule.method](batch.values, period=period_points(rule))
    return DETECTORS[rule.method](batch.values)


def first_recent(rule: Rule, times: np.ndarray) -> int:
    """Index of the first point within the rule's ``recent`` span of the last one (the last
    point always is: ``recent`` is at least a step)."""
    return int(np.searchsorted(times, times[-1] - rule.recent.total_seconds(), side="right"))


def find_anomalies(
    rule: Rule,
    batch: SeriesBatch,
    related: Sequence[tuple[Rule, SeriesBatch]] = (),
    detection: Detection | None = None,
) -> list[SignalIn]:
    """Signal candidates of one rule: series whose recent score reaches the threshold.

    ``related`` are other rules' results searched for correlation hints, besides the other
    series of this rule.
    """
    if batch.values.size == 0:
        return []
    if detection is None:
        detection = detect(rule, batch)
    score = np.nan_to_num(detection.score, nan=0.0)
    times = batch.timestamps
    first = first_recent(rule, times)
    recent_score = score[:, first:]
    hits = np.flatnonzero(recent_score.max(axis=1) >= rule.threshold)
    candidates = []
    strength = np.abs(np.nan_to_num(detection.z[:, first:], nan=0.0))
    for row in hits:
        # The peak is the most extreme recent point above the threshold (scores saturate
        # near 1; |z| still ranks them).
        above = recent_score[row] >= rule.threshold
        peak = first + int(np.argmax(np.where(above, strength[row], -1.0)))
        # The episode: back from the peak while the score stays above the threshold, and
        # forward to the last point that still does.
        calm_before = np.flatnonzero(score[row, : peak + 1] < rule.threshold)
        start = int(calm_before[-1]) + 1 if calm_before.size else 0
        end = peak + int(np.flatnonzero(score[row, peak:] >= rule.threshold)[-1])
        series_labels = batch.labels[row]
        z = float(detection.z[row, peak])
        candidates.append(
            SignalIn(
                rule=rule.name,
                query=batch.query,
                labels={**series_labels, **rule.labels},
                value=float(batch.values[row, peak]),
                score=float(score[row, peak]),
                z=z if np.isfinite(z) else None,
                method=rule.method,
                hint=hint(rule, series_labels, z, float(batch.values[row, peak]), times[start])
                if rule.method not in ("context", "change", "combined", "likelihood")
                else seasonal_hint(rule, series_labels, batch.values[row], times, peak, start),
                correlated=correlated_series(rule, batch, row, start, related),
                window_start=_utc(times[start]),
                window_end=_utc(times[end]),
                fingerprint=fingerprint(rule.name, series_labels),
            )
        )
    return candidates


def hint(rule: Rule, labels: dict[str, str], z: float, value: float, started: float | None) -> str:
    """'p99 latency of service=api is 7.4σ above its 1h EWMA (now 2.31); started 12:03 UTC'.

    Without ``started`` (nothing anomalous) the hint ends after the value."""
    shown = ", ".join(f"{k}={v}" for k, v in sorted(labels.items()) if k != "__name__")
    subject = f"{rule.what} of {shown}" if shown else rule.what
    if np.isfinite(z):
        direction = "above" if z > 0 else "below"
        size = f"{abs(z):.1f}σ {direction}" if abs(z) < 1e6 else f"far {direction}"
    else:
        size = "off"
    text = f"{subject} is {size} its {baseline_name(rule)} (now {value:.4g})"
    return text if started is None else f"{text}; started {_utc(started):%H:%M} UTC"


def seasonal_hint(
    rule: Rule, labels: dict[str, str], values: np.ndarray, times: np.ndarray, peak: int, start: int
) -> str:
    """The hint of the seasonal detectors, naming the part that fired and why: '... is 2.0x
    its usual 14:00 UTC level (now 2.31, usually 1.15; +7.4σ for that time of day)', '...
    level shifted by +3.1σ at 12:48 UTC (now 2.31)', or the plain hint for the EWMA part."""
    period = period_points(rule)
    series = values[: peak + 1]
    _, which, parts = combined_parts(series, period=period)
    part = {"context": "context", "change": "change"}.get(rule.method) or (
        PARTS[int(which[-1])] if which[-1] >= 0 else "level"
    )
    z = float(parts[PARTS.index(part)][-1])
    value = float(values[peak])
    shown = ", ".join(f"{k}={v}" for k, v in sorted(labels.items()) if k != "__name__")
    subject = f"{rule.what} of {shown}" if shown else rule.what
    started = f"; started {_utc(times[start]):%H:%M} UTC"
    sigma = f"{z:+.1f}σ" if np.isfinite(z) and abs(z) < 1e6 else "far off"
    if part == "change":
        return (
            f"{subject}: level shifted by {sigma} at {_utc(times[peak]):%H:%M} UTC "
            f"(now {value:.4g}, mean of the last {CHANGE_WINDOW} points){started}"
        )
    if part == "context":
        before = [peak - k * period for k in range(1, CONTEXT_DAYS + 1) if peak - k * period >= 0]
        usual = float(np.nanmedian(values[before])) if before else float("nan")
        at = f"{_utc(times[peak]):%H:%M} UTC"
        if np.isfinite(usual) and usual > 0 and value > 0:
            ratio = value / usual
            size = f"{ratio:.1f}x" if ratio >= 1 else f"{ratio:.2f}x"
            what = f"{size} its usual {at} level"
        else:
            what = f"off its usual {at} level"
        return (
            f"{subject} is {what} (now {value:.4g}, usually {usual:.4g}; {sigma} for that "
            f"time of day){started}"
        )
    return hint(rule, labels, z, value, times[start])


def baseline_name(rule: Rule) -> str:
    """The baseline the method compares with, in words: '1h rolling mean', '2h EWMA'.

    A baseline longer than the lookback uses all of it, so the lookback caps the span named.
    """
    spans = {
        "zscore": ZSCORE_WINDOW,
        "ewma": round(2 / EWMA_ALPHA - 1),  # the EWMA's equivalent span
        "robust": ROBUST_WINDOW,
        "ensemble": max(ZSCORE_WINDOW, ROBUST_WINDOW),
        "context": CONTEXT_DAYS * period_points(rule),
        "change": CHANGE_WINDOW,
        "combined": round(2 / EWMA_ALPHA - 1),
        "likelihood": round(2 / EWMA_ALPHA - 1),
        "variance": round(2 / EWMA_ALPHA - 1),
        "shape": SHAPE_HISTORY,
    }
    span = format_duration(min(rule.step * spans[rule.method], rule.lookback))
    names = {
        "zscore": "rolling mean",
        "ewma": "EWMA",
        "robust": "rolling median",
        "ensemble": "baseline",
        "context": "daily pattern",
        "change": "recent mean",
        "combined": "baseline",
        "likelihood": "baseline",
        "variance": "step size",
        "shape": "shapes",
    }
    return f"{span} {names[rule.method]}"


def correlated_series(
    rule: Rule,
    batch: SeriesBatch,
    row: int,
    start: int,
    related: Sequence[tuple[Rule, SeriesBatch]] = (),
) -> list[dict[str, Any]]:
    """Series that moved with ``batch``'s series ``row`` from just before its episode to now,
    strongest correlation first (Pearson, over this rule's time grid)."""
    first = max(0, start - CONTEXT_POINTS)
    grid = batch.timestamps[first:]
    if grid.size < 3:
        return []
    target = batch.values[row, first:]
    pools = [(rule.name, batch.labels, batch.values[:, first:], row)]
    for other_rule, other in related:
        if other.values.size:
            pools.append((other_rule.name, other.labels, _on_grid(other, grid), -1))
    found = []
    for name, labels, values, own in pools:
        r = _pearson(target, values)
        if own >= 0:
            r[own] = np.nan  # not itself
        for i in np.flatnonzero(np.abs(np.nan_to_num(r)) >= MIN_CORRELATION):
            found.append({"rule": name, "labels": labels[i], "correlation": round(float(r[i]), 3)})
    found.sort(key=lambda item: -abs(item["correlation"]))
    return found[:MAX_CORRELATED]


def _on_grid(batch: SeriesBatch, grid: np.ndarray) -> np.ndarray:
    """Another result's values at ``grid`` times (the latest point at or before each)."""
    index = np.searchsorted(batch.timestamps, grid, side="right") - 1
    values = batch.values[:, np.clip(index, 0, None)]
    values[:, index < 0] = np.nan
    return values


def _pearson(target: np.ndarray, others: np.ndarray) -> np.ndarray:
    """Correlation of one series with each row of ``others``, over the points both have."""
    both = ~np.isnan(target) & ~np.isnan(others)
    n = both.sum(axis=1)
    t = np.where(both, target, 0.0)
    o = np.where(both, others, 0.0)
    with np.errstate(all="ignore"):
        t_mean = t.sum(axis=1) / n
        o_mean = o.sum(axis=1) / n
        tc = np.where(both, t - t_mean[:, None], 0.0)
        oc = np.where(both, o - o_mean[:, None], 0.0)
        r = (tc * oc).sum(axis=1) / np.sqrt((tc * tc).sum(axis=1) * (oc * oc).sum(axis=1))
    r[n < 3] = np.nan
    return r


def _utc(seconds: float) -> datetime:
    return datetime.fromtimestamp(float(seconds), tz=UTC)


# --- recording, with deduplication ---------------------------------------------------------------


@dataclass(frozen=True)
class Recorded:
    """What happened to one candidate: a new signal, or folded into an earlier one."""

    signal: Signal
    new: bool


def record_signals(
    candidates: Iterable[SignalIn],
    cooldowns: dict[str, timedelta],
    *,
    url: URL | None = None,
) -> list[Recorded]:
    """Store candidates in one transaction (all or none), suppressing duplicates.

    ``cooldowns`` maps rule name to its cooldown. A candidate whose fingerprint was signalled
    within the cooldown, or whose episode started before the stored signal was last seen (the
    same anomaly, still going), updates that signal's ``occurrences`` and ``last_seen_at``
    instead of adding a row.
    """
    best: dict[str, SignalIn] = {}
    for candidate in candidates:  # one per fingerprint: the strongest
        held = best.get(candidate.fingerprint)
        if held is None or candidate.score > held.score:
            best[candidate.fingerprint] = candidate
    if not best:
        return []
    results = []
    with session_scope(url) as session:
        _lock_fingerprints(session, sorted(best))
        latest = _latest_by_fingerprint(session, list(best))
        now = utcnow()
        for fp, candidate in best.items():
            stored = latest.get(fp)
            cooldown = cooldowns.get(candidate.rule, timedelta(0))
            if stored is not None and (
                now - stored.created_at < cooldown or candidate.window_start <= stored.last_seen_at
            ):
                if candidate.window_end > stored.last_seen_at:  # new anomalous points
                    stored.occurrences += 1
                    stored.last_seen_at = candidate.window_end
                results.append((stored, False))
                continue
            row = InsightSignal(
                **candidate.model_dump(), last_seen_at=candidate.window_end, created_at=now
            )
            session.add(row)
            results.append((row, True))
        session.flush()
        return [Recorded(Signal.model_validate(row), new) for row, new in results]


def _lock_fingerprints(session: Session, fingerprints: list[str]) -> None:
    """Serialize writers that handle the same fingerprints (two detect runs at once)."""
    if session.get_bind().dialect.name == "postgresql":
        for fp in fingerprints:  # sorted: every writer takes the locks in the same order
            session.execute(
                text("SELECT pg_advisory_xact_lock(:key)"),
                {"key": int(fp[:15], 16)},  # 60 bits of the hash fit a bigint
            )
    else:
        # SQLite: a write statement takes the database's write lock for this transaction
        # now, before the read below, so two writers cannot both see "no signal yet".
        session.execute(text("UPDATE insight_signals SET occurrences = occurrences WHERE 0"))


def _latest_by_fingerprint(session: Session, fingerprints: list[str]) -> dict[str, InsightSignal]:
    newest = (
        select(InsightSignal.fingerprint, func.max(InsightSignal.created_at).label("at"))
        .where(InsightSignal.fingerprint.in_(fingerprints))
        .group_by(InsightSignal.fingerprint)
        .subquery()
    )
    rows = session.scalars(
        select(InsightSignal).join(
            newest,
            (InsightSignal.fingerprint == newest.c.fingerprint)
            & (InsightSignal.created_at == newest.c.at),
        )
    )
    return {row.fingerprint: row for row in rows}


def list_signals(
    *,
    since: datetime | None = None,
    rule: str | None = None,
    limit: int = 100,
    url: URL | None = None,
) -> list[Signal]:
    """Newest first."""
    query = select(InsightSignal).order_by(InsightSignal.created_at.desc(), InsightSignal.id.desc())
    if since is not None:
        since = since if since.tzinfo else since.replace(tzinfo=UTC)  # naive means UTC
        query = query.where(InsightSignal.created_at >= since)
    if rule is not None:
        query = query.where(InsightSignal.rule == rule)
    with session_scope(url) as session:
        return [Signal.model_validate(row) for row in session.scalars(query.limit(limit))]


def get_signal(signal_id: uuid.UUID | str, *, url: URL | None = None) -> Signal:
    try:
        key = signal_id if isinstance(signal_id, uuid.UUID) else uuid.UUID(str(signal_id))
    except ValueError as exc:
        raise NotFound(f"signal {signal_id!r} does not exist (not a UUID)") from exc
    with session_scope(url) as session:
        row = session.get(InsightSignal, key)
        if row is None:
            raise NotFound(f"signal {signal_id} does not exist")
        return Signal.model_validate(row)


def signal_counts(*, url: URL | None = None) -> list[tuple[str, str, int, int]]:
    """(rule, method, signals, anomalies seen including suppressed repeats) per rule/method."""
    query = select(
        InsightSignal.rule,
        InsightSignal.method,
        func.count(),
        func.coalesce(func.sum(InsightSignal.occurrences), 0),
    ).group_by(InsightSignal.rule, InsightSignal.method)
    with session_scope(url) as session:
        return [(r, m, int(n), int(o)) for r, m, n, o in session.execute(query)]


# --- ad-hoc analysis ------------------------------------------------------------------------------


class AnalyzeRequest(BaseModel):
    """An ad-hoc question: is this query anomalous now? The query comes as ``query`` or as
    ``prom_query`` (the specification's name), exactly one of them."""

    model_config = ConfigDict(extra="forbid")

    query: NoNulStr | None = Field(
        None,
        min_length=1,
        max_length=10_000,
        description="PromQL query. Give this or prom_query, not both.",
    )
    prom_query: NoNulStr | None = Field(
        None,
        min_length=1,
        max_length=10_000,
        description="The same PromQL query under the specification's name: give this or "
        "query, not both.",
    )
    lookback: Duration = Field(timedelta(hours=1), description="History for the baseline.")
    step: Duration | None = Field(None, description="Resolution; default lookback / 120.")
    method: Method | None = Field(None, description=f"Detector; default {DEFAULT_METHOD}.")
    labels: dict[NoNulStr, NoNulStr] = Field(
        default_factory=dict, max_length=MAX_LABELS, description="Added to a resulting signal."
    )
    recent: Duration | None = Field(
        None, description="An anomaly this recent counts; default 5m (at least one step)."
    )
    threshold: float = Field(DEFAULT_THRESHOLD, gt=0, le=1)

    @model_validator(mode="after")
    def _makes_a_rule(self) -> AnalyzeRequest:
        """Exactly one of query / prom_query (kept as ``query``); then refuse here what the
        rule would refuse later (lookback under 10 steps...)."""
        if (self.query is None) == (self.prom_query is None):
            raise ValueError(
                "give exactly one of query or prom_query (prom_query is another name for "
                "query)" + (": drop one of them" if self.query is not None else "")
            )
        if self.prom_query is not None:
            self.query, self.prom_query = self.prom_query, None
        try:
            self.as_rule()
        except ValidationError as exc:
            raise ValueError("; ".join(e["msg"] for e in exc.errors(include_url=False))) from None
        return self

    def as_rule(self) -> Rule:
        step = self.step or max(timedelta(seconds=15), self.lookback / 120)
        query = self.query or self.prom_query or ""  # one of them, once validated
        return Rule(
            name=ADHOC_RULE,
            query=query,
            title=query if len(query) <= 60 else "the query",
            lookback=self.lookback,
            step=step,
            recent=max(step, self.recent or timedelta(minutes=5)),
            method=self.method or DEFAULT_METHOD,
            threshold=self.threshold,
            labels=self.labels,
            cooldown=timedelta(minutes=30),
        )


RECENT_POINTS = 30  # the points of the most anomalous series an analysis returns


class SeriesPoint(BaseModel):
    at: AwareDatetime
    value: float | None = Field(description="None where the series has no sample.")


class DetectorReading(BaseModel):
    """One detector's view of the answer's series (``labels``): its most extreme recent point."""

    z: float | None = Field(description="Largest |z| in the recent span (signed); None: no data.")
    score: float | None = Field(description="The detector's score in [0, 1] at that point.")
    at: AwareDatetime | None = Field(description="When that point was.")


class AnalyzeResult(BaseModel):
    query: str
    method: Method
    series: int = Field(description="How many series the query returned.")
    score: float | None = Field(description="Highest recent score of any series.")
    z: float | None
    value: float | None
    labels: dict[str, str] = Field(description="Labels of the most anomalous series.")
    hint: str
    signal_id: uuid.UUID | None = Field(description="Set when the score reached the threshold.")
    new_signal: bool = Field(
        False, description="False when the anomaly had already been signalled (deduplicated)."
    )
    points: list[SeriesPoint] = Field(
        default_factory=list,
        description=f"The last points (at most {RECENT_POINTS}) of the series in ``labels``, "
        "oldest first.",
    )
    zscore: DetectorReading | None = Field(
        None,
        description="The rolling z-score detector alone on the series in ``labels``: z and "
        "score at its most extreme recent point. None when there is no series.",
    )
    ewma: DetectorReading | None = Field(
        None,
        description="The EWMA detector alone on the same series, the same way. ``score``, "
        "``method`` and ``hint`` are the analysis' own method's.",
    )


def recent_points(batch: SeriesBatch, row: int, n: int = RECENT_POINTS) -> list[SeriesPoint]:
    """The last ``n`` points of ``batch``'s series ``row``."""
    return [
        SeriesPoint(at=_utc(t), value=None if np.isnan(v) else float(v))
        for t, v in zip(batch.timestamps[-n:], batch.values[row, -n:], strict=True)
    ]


def analyze(
    request: AnalyzeRequest, source: MetricSource, *, url: URL | None = None
) -> AnalyzeResult:
    """Score a query now; store a signal (deduplicated) when it is anomalous. Beside the
    rule's method, the z-score and EWMA detectors' readings of the same series."""
    rule = request.as_rule()
    end = range_end(source.now(), rule.step)
    batch = source.query_range(rule.query, end - rule.lookback, end, rule.step)
    result = _judge(rule, batch, url)
    return result.model_copy(update=detector_readings(rule, batch, result.labels))


def detector_readings(
    rule: Rule, batch: SeriesBatch, labels: dict[str, str]
) -> dict[str, DetectorReading]:
    """``{"zscore": ..., "ewma": ...}``: each of those detectors run on its own over the
    series with ``labels`` (the answer's), read at its most extreme point within the rule's
    recent span. Empty when there is no such series."""
    row = _series_row(rule, batch, labels)
    if row is None:
        return {}
    first = first_recent(rule, batch.timestamps)
    readings = {}
    for name, detector in (("zscore", rolling_zscore), ("ewma", ewma)):
        found = detector(batch.values[row])
        z = found.z[first:]
        if np.isnan(z).all():
            readings[name] = DetectorReading(z=None, score=None, at=None)
            continue
        at = first + int(np.nanargmax(np.abs(z)))
        readings[name] = DetectorReading(
            z=float(found.z[at]), score=float(found.score[at]), at=_utc(batch.timestamps[at])
        )
    return readings


def _series_row(rule: Rule, batch: SeriesBatch, labels: dict[str, str]) -> int | None:
    """The row of ``batch`` whose series an answer's ``labels`` name (the rule's own labels
    may shadow some of the series'); None when there is no data."""
    if batch.values.size == 0:
        return None
    return next(
        (
            i
            for i, own in enumerate(batch.labels)
            if all(labels.get(k) == v for k, v in own.items() if k not in rule.labels)
        ),
        0,
    )


def _judge(rule: Rule, batch: SeriesBatch, url: URL | None) -> AnalyzeResult:
    base = {"query": rule.query, "method": rule.method, "series": len(batch.labels)}
    if batch.values.size == 0:
        return AnalyzeResult(
            **base,
            score=None,
            z=None,
            value=None,
            labels={},
            hint="the query returned no data",
            signal_id=None,
        )
    detection = detect(rule, batch)
    found = find_anomalies(rule, batch, detection=detection)
    if found:
        top = max(found, key=lambda s: (s.score, abs(s.z or 0.0)))  # scores saturate at 1
        recorded = record_signals([top], {rule.name: rule.cooldown}, url=url)[0]
        row = _series_row(rule, batch, top.labels) or 0
        return AnalyzeResult(
            **base,
            score=top.score,
            z=top.z,
            value=top.value,
            labels=top.labels,
            hint=top.hint,
            signal_id=recorded.signal.id,
            new_signal=recorded.new,
            points=recent_points(batch, row),
        )
    # Nothing reached the threshold: report the most anomalous recent point anyway.
    first = first_recent(rule, batch.timestamps)
    score = np.nan_to_num(detection.score[:, first:], nan=-1.0)
    row, col = np.unravel_index(int(np.argmax(score)), score.shape)
    col += first
    top_score = float(detection.score[row, col])
    if not np.isfinite(top_score):
        return AnalyzeResult(
            **base,
            score=None,
            z=None,
            value=None,
            labels=batch.labels[row],
            hint="not enough recent data to judge (gaps, or too little history)",
            signal_id=None,
            points=recent_points(batch, int(row)),
        )
    z = float(detection.z[row, col])
    value = float(batch.values[row, col])
    return AnalyzeResult(
        **base,
        score=top_score,
        z=z,
        value=value,
        labels=batch.labels[row],
        hint=hint(rule, batch.labels[row], z, value, None) + ": within the normal range",
        signal_id=None,
        points=recent_points(batch, int(row)),
    )
