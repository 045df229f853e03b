"""Metric sources: Prometheus over its HTTP API, or a replay file; both return aligned batches.

Every source answers with a :class:`SeriesBatch`: one row per series on the regular grid
``start, start+step, ... <= end`` (Prometheus' own range-query grid), NaN where a series has
no sample. Detectors work on that matrix directly, whatever the source.

The replay source follows Prometheus 2.x lookup semantics so that a file and the same data
loaded into Prometheus give the same batch: each grid point takes the last sample at or
before it, if that sample is at most 5 minutes older (the lookback delta; a series that
stops reporting goes stale after it).
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from itertools import chain
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

import httpx
import numpy as np
import polars as pl
from pydantic import SecretStr

from neuralops.errors import ConfigError, InvalidInput, Unavailable

if TYPE_CHECKING:
    from neuralops.settings import Settings

MAX_POINTS = 11_000  # Prometheus refuses range queries with more points per series
LOOKBACK_MS = 5 * 60 * 1000  # Prometheus' default --query.lookback-delta

__all__ = [
    "LOOKBACK_MS",
    "MAX_POINTS",
    "MetricSource",
    "PrometheusSource",
    "ReplaySource",
    "Selector",
    "SeriesBatch",
    "grid",
    "parse_selector",
    "source_from_settings",
]


@dataclass(frozen=True)
class SeriesBatch:
    """Series on one regular time grid.

    ``labels[i]`` describes row ``values[i]`` and includes ``__name__`` when the source
    knows it (Prometheus drops it from the result of functions such as ``rate``).
    """

    query: str
    labels: list[dict[str, str]]
    timestamps: np.ndarray  # (n_points,) float64 unix seconds
    values: np.ndarray  # (n_series, n_points) float64, NaN = no sample

    @property
    def n_series(self) -> int:
        return int(self.values.shape[0])

    @property
    def n_points(self) -> int:
        return int(self.timestamps.shape[0])


@runtime_checkable
class MetricSource(Protocol):
    def query_range(
        self, query: str, start: datetime, end: datetime, step: timedelta
    ) -> SeriesBatch: ...

    def query(self, query: str, at: datetime | None = None) -> SeriesBatch: ...

    def now(self) -> datetime: ...

    def close(self) -> None: ...


# --- the grid ---------------------------------------------------------------------------


def _ms(moment: datetime) -> int:
    # Naive datetimes are taken as UTC (not local time, as datetime.timestamp() would).
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return round(moment.timestamp() * 1000)


def _grid_ms(query: str, start: datetime, end: datetime, step: timedelta) -> np.ndarray:
    """Grid points in integer milliseconds, the way Prometheus steps through a range query."""
    start_ms, end_ms = _ms(start), _ms(end)
    step_ms = round(step.total_seconds() * 1000)
    if step_ms <= 0:
        raise InvalidInput(f"query {query!r}: step must be at least 1 ms, got {step}")
    if end_ms < start_ms:
        raise InvalidInput(f"query {query!r}: end {end} is before start {start}")
    n_points = (end_ms - start_ms) // step_ms + 1
    if n_points > MAX_POINTS:
        suggested = timedelta(seconds=math.ceil((end_ms - start_ms) / 1000 / (MAX_POINTS - 1)))
        raise InvalidInput(
            f"query {query!r}: {n_points} points per series from {start} to {end} at step "
            f"{step} exceeds the limit of {MAX_POINTS}; use a step of at least {suggested} "
            "or a shorter range"
        )
    return start_ms + step_ms * np.arange(n_points, dtype=np.int64)


def grid(start: datetime, end: datetime, step: timedelta) -> np.ndarray:
    """The timestamps (float unix seconds) a range query over these bounds returns."""
    return _grid_ms("(grid)", start, end, step) / 1000.0


def _utc(seconds: float) -> datetime:
    return datetime.fromtimestamp(seconds, UTC)


# --- Prometheus -------------------------------------------------------------------------


def _safe_url(url: str) -> str:
    """The URL without credentials or query string, for messages."""
    try:
        parsed = httpx.URL(url)
    except httpx.InvalidURL:
        return "(invalid URL)"
    return str(parsed.copy_with(username=None, password=None, query=None, fragment=None))


def _secret(value: str | SecretStr | None) -> str | None:
    if isinstance(value, SecretStr):
        return value.get_secret_value()
    return value


class PrometheusSource:
    """Prometheus (or a compatible API: Thanos, Mimir, VictoriaMetrics) over HTTP.

    Queries are POSTed form-encoded, so long PromQL is fine. Authenticates with a bearer
    token or with basic auth, never both. ``transport`` is for tests only.
    """

    def __init__(
        self,
        url: str,
        token: str | SecretStr | None = None,
        username: str | None = None,
        password: str | SecretStr | None = None,
        timeout_s: float = 10.0,
        *,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        if not url.startswith(("http://", "https://")):
            raise ConfigError(f"PROM_URL must start with http:// or https://, got {_safe_url(url)}")
        token, password = _secret(token), _secret(password)
        if token and (username or password):
            raise ConfigError(
                "Prometheus credentials: set either PROM_TOKEN (bearer token) or "
                "PROM_USERNAME/PROM_PASSWORD (basic auth), not both"
            )
        if password and not username:
            raise ConfigError("PROM_PASSWORD is set without PROM_USERNAME")
        if timeout_s <= 0:
            raise ConfigError(f"NEURALOPS_PROM_TIMEOUT_S must be positive, got {timeout_s}")
        self.url = url.rstrip("/")
        self.timeout_s = timeout_s
        self._label = _safe_url(self.url)
        headers = {"Accept": "application/json"}
        if token:
            headers["Authorization"] = f"Bearer {token}"
        try:
            self._client = httpx.Client(
                base_url=self.url,
                headers=headers,
                auth=httpx.BasicAuth(username, password or "") if username else None,
                timeout=httpx.Timeout(timeout_s),
                transport=transport,
            )
        except (httpx.InvalidURL, ValueError):
            # The token is not echoed: the message names only the (sanitised) URL.
            raise ConfigError(
                f"PROM_URL {self._label} or the credentials are not usable in HTTP"
            ) from None

    def __repr__(self) -> str:
        return f"PrometheusSource({self._label!r})"

    def __enter__(self) -> PrometheusSource:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._client.close()

    def now(self) -> datetime:
        return datetime.now(UTC)

    def query_range(
        self, query: str, start: datetime, end: datetime, step: timedelta
    ) -> SeriesBatch:
        grid_ms = _grid_ms(query, start, end, step)  # refuses huge ranges before sending
        step_ms = int(grid_ms[1] - grid_ms[0]) if len(grid_ms) > 1 else round(step / _MS)
        data = self._post(
            "/api/v1/query_range",
            query,
            {
                "start": _fmt_s(int(grid_ms[0])),
                "end": _fmt_s(int(grid_ms[-1])),
                "step": _fmt_s(step_ms),
            },
        )
        if data.get("resultType") != "matrix":
            raise InvalidInput(
                f"query {query!r}: query must return a vector or matrix, "
                f"got {data.get('resultType')}"
            )
        return _matrix_to_batch(query, data["result"], grid_ms, self._label)

    def query(self, query: str, at: datetime | None = None) -> SeriesBatch:
        # Send the evaluation time ourselves so the one-point grid is known exactly.
        at_ms = _ms(at or self.now())
        data = self._post("/api/v1/query", query, {"time": _fmt_s(at_ms)})
        kind = data.get("resultType")
        if kind == "matrix":
            raise InvalidInput(
                f"query {query!r}: an instant query must return an instant vector, got a "
                "range vector; drop the [range] or use query_range"
            )
        if kind != "vector":
            raise InvalidInput(f"query {query!r}: query must return a vector or matrix, got {kind}")
        series = [{"metric": s["metric"], "values": [s["value"]]} for s in data["result"]]
        return _matrix_to_batch(query, series, np.array([at_ms], dtype=np.int64), self._label)

    def _post(self, path: str, query: str, params: dict[str, str]) -> dict[str, Any]:
        form = {"query": query, **params, "timeout": f"{self.timeout_s:g}s"}
        try:
            response = self._client.post(path, data=form)
        except httpx.TimeoutException:
            raise Unavailable(
                f"Prometheus at {self._label} did not answer within {self.timeout_s:g} s"
            ) from None
        except httpx.TransportError as exc:
            # The exception text names host and reason only; headers (the token) never.
            raise Unavailable(
                f"Prometheus at {self._label} is unreachable: {type(exc).__name__}: {exc}"
            ) from None
        return self._decode(response, query)

    def _decode(self, response: httpx.Response, query: str) -> dict[str, Any]:
        status = response.status_code
        if status in (401, 403):
            raise ConfigError(
                f"Prometheus at {self._label} refused the credentials (HTTP {status}): set "
                "PROM_TOKEN for a bearer token, or PROM_USERNAME and PROM_PASSWORD for basic auth"
            )
        if status == 404:
            raise ConfigError(
                f"{self._label}{response.request.url.path} not found (HTTP 404): PROM_URL must "
                "be the Prometheus base URL (the part before /api/v1)"
            )
        if status == 429 or status >= 500:
            detail = _error_text(response)
            raise Unavailable(
                f"Prometheus at {self._label} answered HTTP {status}"
                + (f": {detail}" if detail else "")
            )
        try:
            body = response.json()
        except ValueError:
            body = None
        if not isinstance(body, dict):
            raise ConfigError(
                f"{self._label} answered HTTP {status} without Prometheus' JSON body: "
                "is PROM_URL a Prometheus API?"
            )
        if body.get("status") != "success" or status >= 400:
            error = body.get("error") or f"HTTP {status}"
            kind = body.get("errorType")
            raise InvalidInput(
                f"Prometheus rejected query {query!r}: " + (f"{kind}: {error}" if kind else error)
            )
        data = body.get("data")
        if not isinstance(data, dict) or not isinstance(data.get("result"), list):
            raise ConfigError(f"{self._label} answered without a result: is it a Prometheus API?")
        return data


_MS = timedelta(milliseconds=1)


def _fmt_s(ms: int) -> str:
    """Milliseconds as the decimal seconds Prometheus parses exactly."""
    return f"{ms / 1000:.3f}"


def _error_text(response: httpx.Response) -> str:
    try:
        body = response.json()
        return str(body.get("error", ""))[:300]
    except (ValueError, AttributeError):
        return response.text[:200].strip()


def _matrix_to_batch(
    query: str, result: list[dict[str, Any]], grid_ms: np.ndarray, where: str
) -> SeriesBatch:
    """Place each ``[ts, "value"]`` pair on the grid, in a few array operations.

    Python touches each pair once to flatten it; parsing the value strings ("NaN", "+Inf"
    included) is polars' work and placing them numpy's.
    """
    n_series, n_points = len(result), len(grid_ms)
    values = np.full((n_series, n_points), np.nan)
    try:
        labels = [dict(series["metric"]) for series in result]
        columns = [series.get("values", ()) for series in result]  # native histograms: none
        counts = np.fromiter(map(len, columns), dtype=np.int64, count=n_series)
        total = int(counts.sum())
        pairs = list(chain.from_iterable(columns))
        stamps = np.fromiter((pair[0] for pair in pairs), dtype=np.float64, count=total)
        # polars parses "NaN" and "+Inf" too, and is about 8x faster here than numpy's cast.
        text = pl.Series([pair[1] for pair in pairs], dtype=pl.String)
        parsed_series = text.cast(pl.Float64, strict=False)
        if parsed_series.null_count():
            raise ValueError(f"not a number: {text.filter(parsed_series.is_null())[0]!r}")
        parsed = parsed_series.to_numpy()
    except (KeyError, TypeError, ValueError, IndexError, pl.exceptions.PolarsError) as exc:
        raise Unavailable(
            f"Prometheus at {where} sent a result that is not a matrix of [time, value] "
            f"pairs: {exc}"
        ) from None
    if total:
        rows = np.repeat(np.arange(n_series), counts)
        step_ms = int(grid_ms[1] - grid_ms[0]) if n_points > 1 else 1
        offset = np.rint(stamps * 1000).astype(np.int64) - grid_ms[0]
        cols = np.rint(offset / step_ms).astype(np.int64)
        on_grid = (cols >= 0) & (cols < n_points)
        values[rows[on_grid], cols[on_grid]] = parsed[on_grid]
    return SeriesBatch(query, labels, grid_ms / 1000.0, values)


# --- selectors (the PromQL subset a replay file answers) ---------------------------------

_METRIC_NAME = re.compile(r"[a-zA-Z_:][a-zA-Z0-9_:]*")
_LABEL_NAME = re.compile(r"[a-zA-Z_][a-zA-Z0-9_]*")
_OPERATORS = ("=~", "!~", "!=", "=")
_ESCAPES = {"n": "\n", "t": "\t", "r": "\r", "\\": "\\", '"': '"', "'": "'", "`": "`"}
SELECTORS_ONLY = (
    "the replay source supports PromQL selectors only, such as name or "
    'name{label="value", other=~"regex"}; set PROM_URL to query a Prometheus with full PromQL'
)


@dataclass(frozen=True)
class Matcher:
    label: str
    op: str  # one of = != =~ !~
    value: str
    pattern: re.Pattern[str] | None = None

    def matches(self, labels: dict[str, str]) -> bool:
        # As in Prometheus, an absent label reads as the empty string.
        actual = labels.get(self.label, "")
        if self.op == "=":
            return actual == self.value
        if self.op == "!=":
            return actual != self.value
        assert self.pattern is not None
        found = self.pattern.fullmatch(actual) is not None
        return found if self.op == "=~" else not found


@dataclass(frozen=True)
class Selector:
    matchers: tuple[Matcher, ...]

    def matches(self, labels: dict[str, str]) -> bool:
        return all(m.matches(labels) for m in self.matchers)


def parse_selector(query: str) -> Selector:
    """Parse ``name``, ``name{...}`` or ``{__name__="x", ...}``; anything else is refused."""
    parser = _SelectorParser(query)
    selector = parser.parse()
    if not any(not m.matches({}) for m in selector.matchers):
        raise InvalidInput(
            f"query {query!r}: a selector needs a metric name or at least one matcher that "
            "does not match the empty string"
        )
    return selector


class _SelectorParser:
    def __init__(self, query: str) -> None:
        self.query = query
        self.pos = 0

    def fail(self, what: str) -> InvalidInput:
        return InvalidInput(
            f"query {self.query!r}: {what} at position {self.pos + 1}; {SELECTORS_ONLY}"
        )

    def skip(self) -> None:
        while self.pos < len(self.query) and self.query[self.pos].isspace():
            self.pos += 1

    def peek(self) -> str:
        return self.query[self.pos] if self.pos < len(self.query) else ""

    def parse(self) -> Selector:
        matchers: list[Matcher] = []
        self.skip()
        name = _METRIC_NAME.match(self.query, self.pos)
        if name:
            matchers.append(Matcher("__name__", "=", name.group()))
            self.pos = name.end()
            self.skip()
        if self.peek() == "{":
            self.pos += 1
            matchers.extend(self.matchers())
            self.skip()
        elif not name:
            raise self.fail("expected a metric name or '{'")
        if self.peek() == "[":
            raise self.fail("range vector selectors ([5m]) are not supported: use query_range")
        if self.pos != len(self.query):
            raise self.fail(f"unexpected {self.peek()!r}")
        return Selector(tuple(matchers))

    def matchers(self) -> list[Matcher]:
        found: list[Matcher] = []
        while True:
            self.skip()
            if self.peek() == "}":
                self.pos += 1
                return found
            label = _LABEL_NAME.match(self.query, self.pos)
            if not label:
                raise self.fail("expected a label name or '}'")
            self.pos = label.end()
            self.skip()
            op = next((o for o in _OPERATORS if self.query.startswith(o, self.pos)), None)
            if op is None:
                raise self.fail("expected one of = != =~ !~")
            self.pos += len(op)
            self.skip()
            value = self.string()
            pattern = None
            if op in ("=~", "!~"):
                try:
                    pattern = re.compile(value, re.DOTALL)
                except re.error as exc:
                    raise InvalidInput(
                        f"query {self.query!r}: invalid regular expression {value!r}: {exc}"
                    ) from None
            found.append(Matcher(label.group(), op, value, pattern))
            self.skip()
            if self.peek() == ",":
                self.pos += 1
            elif self.peek() != "}":
                raise self.fail("expected ',' or '}'")

    def string(self) -> str:
        quote = self.peek()
        if quote not in ('"', "'", "`"):
            raise self.fail("expected a quoted label value")
        self.pos += 1
        out: list[str] = []
        while self.pos < len(self.query):
            char = self.query[self.pos]
            self.pos += 1
            if char == quote:
                return "".join(out)
            if char == "\\" and quote != "`":
                escaped = self.peek()
                if escaped not in _ESCAPES:
                    raise self.fail(f"unsupported escape \\{escaped}")
                out.append(_ESCAPES[escaped])
                self.pos += 1
            else:
                out.append(char)
        raise self.fail("unterminated string")


# --- replay -----------------------------------------------------------------------------

_NAME_COLUMNS = ("__name__", "metric")


class ReplaySource:
    """Series from a long-format CSV or Parquet file, answering selectors like Prometheus.

    Columns: ``timestamp`` (ISO-8601, naive meaning UTC, or unix seconds), ``value``,
    ``__name__`` (or ``metric``) and any number of label columns. Empty label values mean
    "no such label", as in Prometheus. Rows with an empty ``value`` are skipped; a
    duplicate (series, timestamp) keeps the last row.
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        frame, label_columns = _read_long_frame(self.path)
        keys = frame.select(label_columns).unique(maintain_order=True)
        keys = keys.with_row_index("_sid")
        frame = (
            frame.join(keys, on=label_columns, how="left", nulls_equal=True)
            .unique(subset=["_sid", "_ts"], keep="last", maintain_order=True)
            .sort(["_sid", "_ts"])
        )
        self._labels: list[dict[str, str]] = [
            {name: value for name, value in row.items() if value}
            for row in keys.drop("_sid").iter_rows(named=True)
        ]
        sids = frame["_sid"].to_numpy()
        self._ts_ms = frame["_ts"].to_numpy()
        self._values = frame["value"].to_numpy().astype(np.float64)
        self._offsets = np.searchsorted(sids, np.arange(len(self._labels) + 1))
        self._last_ms = int(self._ts_ms.max())

    def __repr__(self) -> str:
        return f"ReplaySource({str(self.path)!r})"

    def __enter__(self) -> ReplaySource:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Nothing to release: the file was read whole."""

    def now(self) -> datetime:
        return _utc(self._last_ms / 1000)

    def query_range(
        self, query: str, start: datetime, end: datetime, step: timedelta
    ) -> SeriesBatch:
        return self._evaluate(query, _grid_ms(query, start, end, step))

    def query(self, query: str, at: datetime | None = None) -> SeriesBatch:
        at_ms = _ms(at) if at is not None else self._last_ms
        return self._evaluate(query, np.array([at_ms], dtype=np.int64))

    def _evaluate(self, query: str, grid_ms: np.ndarray) -> SeriesBatch:
        selector = parse_selector(query)
        labels: list[dict[str, str]] = []
        rows: list[np.ndarray] = []
        for sid, series_labels in enumerate(self._labels):
            if not selector.matches(series_labels):
                continue
            lo, hi = self._offsets[sid], self._offsets[sid + 1]
            stamps = self._ts_ms[lo:hi]
            # Last sample at or before each grid point, if no older than the lookback.
            idx = np.searchsorted(stamps, grid_ms, side="right") - 1
            safe = np.maximum(idx, 0)
            found = (idx >= 0) & (stamps[safe] >= grid_ms - LOOKBACK_MS)
            if not found.any():
                continue  # Prometheus leaves out series with no point in range
            labels.append(dict(series_labels))
            rows.append(np.where(found, self._values[lo:hi][safe], np.nan))
        values = np.vstack(rows) if rows else np.empty((0, len(grid_ms)))
        order = sorted(range(len(labels)), key=lambda i: sorted(labels[i].items()))
        return SeriesBatch(query, [labels[i] for i in order], grid_ms / 1000.0, values[order])


def _bad(path: Path, message: str) -> InvalidInput:
    return InvalidInput(f"replay file {path}: {message}")


def _read_long_frame(path: Path) -> tuple[pl.DataFrame, list[str]]:
    """The file as columns ``_ts`` (int ms), ``value`` (float) and string label columns."""
    if not path.is_file():
        raise _bad(path, "no such file")
    suffix = path.suffix.lower()
    try:
        if suffix in (".csv", ".gz"):
            # All strings: label values such as "200" or "01" must not become numbers.
            frame = pl.read_csv(path, infer_schema=False)
        elif suffix in (".parquet", ".pq"):
            frame = pl.read_parquet(path)
        else:
            raise _bad(path, f"unknown format {suffix!r}: use .csv or .parquet")
    except (pl.exceptions.PolarsError, OSError) as exc:
        raise _bad(path, f"cannot be read: {exc}") from None
    if frame.height == 0:
        raise _bad(path, "has no rows")
    for column in ("timestamp", "value"):
        if column not in frame.columns:
            raise _bad(path, f"missing column {column!r} (columns: {', '.join(frame.columns)})")
    name_column = next((c for c in _NAME_COLUMNS if c in frame.columns), None)
    if name_column is None:
        raise _bad(path, "missing column '__name__' (or 'metric') for the metric name")
    if name_column != "__name__":
        frame = frame.rename({name_column: "__name__"})
    label_columns = ["__name__"] + [
        c for c in frame.columns if c not in ("__name__", "timestamp", "value")
    ]
    for column in label_columns[1:]:
        if not _LABEL_NAME.fullmatch(column):
            raise _bad(path, f"column {column!r} is not a valid Prometheus label name")
    frame = frame.with_columns(
        [pl.col(c).cast(pl.String) for c in label_columns],
        _ts=_timestamps_ms(path, frame["timestamp"]),
        value=_floats(path, frame["value"]),
    ).select(["_ts", "value", *label_columns])
    names = frame["__name__"]
    if names.null_count() or (names == "").any():
        raise _bad(path, "column '__name__' has empty metric names")
    bad_name = names.unique().filter(~names.unique().str.contains(r"^[a-zA-Z_:][a-zA-Z0-9_:]*$"))
    if len(bad_name):
        raise _bad(path, f"column '__name__' has an invalid metric name {bad_name[0]!r}")
    frame = frame.filter(pl.col("value").is_not_null())
    if frame.height == 0:
        raise _bad(path, "column 'value' has no values")
    return frame, label_columns


def _floats(path: Path, column: pl.Series) -> pl.Series:
    if column.dtype.is_numeric():
        return column.cast(pl.Float64)
    # Strings such as "NaN", "+Inf", "1e-3"; an empty cell is a missing sample.
    text = column.cast(pl.String).str.strip_chars()
    parsed = text.str.replace(r"^\+", "").cast(pl.Float64, strict=False)
    failed = parsed.is_null() & text.is_not_null() & (text != "")
    if failed.any():
        raise _bad(path, f"column 'value' has a non-number {text.filter(failed)[0]!r}")
    return parsed


def _timestamps_ms(path: Path, column: pl.Series) -> pl.Series:
    if column.null_count():
        raise _bad(path, "column 'timestamp' has empty cells")
    if isinstance(column.dtype, pl.Datetime):
        # A naive datetime is UTC; epoch() reads it as such.
        return column.dt.epoch("ms")
    if column.dtype.is_numeric():
        seconds = column.cast(pl.Float64)
    else:
        text = column.cast(pl.String).str.strip_chars()
        seconds = text.cast(pl.Float64, strict=False)
        if seconds.null_count():
            if seconds.null_count() != len(seconds):
                raise _bad(path, "column 'timestamp' mixes unix seconds and other text")
            seconds = _iso_seconds(path, text)
    if seconds.max() > 1e11:  # year 5138 in seconds, 1973 in milliseconds
        raise _bad(path, "column 'timestamp' looks like milliseconds: use unix seconds")
    return (seconds * 1000).round().cast(pl.Int64)


def _iso_seconds(path: Path, text: pl.Series) -> pl.Series:
    # fromisoformat on each distinct value: few of them (one per scrape), any ISO-8601 form.
    mapping: dict[str, float] = {}
    for value in text.unique().to_list():
        try:
            moment = datetime.fromisoformat(value)
        except ValueError:
            raise _bad(
                path, f"column 'timestamp' has {value!r}, neither ISO-8601 nor unix seconds"
            ) from None
        if moment.tzinfo is None:
            moment = moment.replace(tzinfo=UTC)
        mapping[value] = moment.timestamp()
    return text.replace_strict(mapping, return_dtype=pl.Float64)


# --- from settings ----------------------------------------------------------------------


def source_from_settings(settings: Settings | None = None) -> MetricSource:
    """Prometheus when PROM_URL is set, else the replay file; PROM_URL wins if both are."""
    if settings is None:
        from neuralops.settings import get_settings

        settings = get_settings()
    if settings.prom_url:
        return PrometheusSource(
            settings.prom_url,
            token=settings.prom_token,
            username=settings.prom_username,
            password=settings.prom_password,
            timeout_s=settings.prom_timeout_s,
        )
    if settings.replay_file is not None:
        if not settings.replay_file.is_file():
            raise ConfigError(f"NEURALOPS_REPLAY_FILE: {settings.replay_file} does not exist")
        return ReplaySource(settings.replay_file)
    raise ConfigError(
        "no metric source: set PROM_URL to a Prometheus, or NEURALOPS_REPLAY_FILE to a CSV or "
        "Parquet file of samples (columns timestamp, value, __name__, labels...)"
    )
