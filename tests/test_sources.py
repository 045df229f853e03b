"""Metric sources: a real Prometheus (the ``prometheus`` fixture) and replay files.

The replay source is checked against the same data in Prometheus, so the two agree on the
grid and on the 5-minute lookback, not just on our reading of Prometheus' documentation.
"""

from __future__ import annotations

import base64
import socket
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import numpy as np
import polars as pl
import pytest

from neuralops.errors import ConfigError, InvalidInput, Unavailable
from neuralops.local_prometheus import (
    LATENCY,
    REQUESTS,
    DemoPrometheus,
    LocalPrometheus,
    LocalPrometheusError,
    PrometheusNotInstalled,
    Series,
    demo_history,
    free_port,
    prometheus_binaries,
    write_openmetrics,
)
from neuralops.settings import get_settings
from neuralops.sources import (
    MetricSource,
    PrometheusSource,
    ReplaySource,
    SeriesBatch,
    grid,
    parse_selector,
    source_from_settings,
)

MINUTE = timedelta(minutes=1)
TOKEN = "tok-9f8e7d6c5b4a"  # must never appear in a message
PASSWORD = "pw-1a2b3c4d"


def at(seconds: float) -> datetime:
    return datetime.fromtimestamp(seconds, UTC)


@pytest.fixture
def prom(prometheus: DemoPrometheus) -> Iterator[PrometheusSource]:
    source = PrometheusSource(prometheus.url)
    yield source
    source.close()


@pytest.fixture
def dead_url() -> str:
    return f"http://127.0.0.1:{free_port()}"  # nothing listens there


def by_service(batch: SeriesBatch) -> dict[str, np.ndarray]:
    return {labels["service"]: row for labels, row in zip(batch.labels, batch.values, strict=True)}


# --- PrometheusSource against the real server ---------------------------------------------


def test_range_query_returns_the_grid_and_the_spike(
    prom: PrometheusSource, prometheus: DemoPrometheus
) -> None:
    spike = prometheus.spike
    start, end = spike.at - 10 * MINUTE, spike.at + 10 * MINUTE
    batch = prom.query_range(spike.selector, start, end, MINUTE)

    assert isinstance(prom, MetricSource)
    assert batch.query == spike.selector
    assert batch.labels == [{"__name__": LATENCY, "service": "api"}]
    np.testing.assert_array_equal(batch.timestamps, spike.timestamp + 60.0 * np.arange(-10, 11))
    row = batch.values[0]
    assert row[10] == pytest.approx(spike.value, rel=1e-12)
    assert np.all(row[10 : 10 + spike.points] > 1.0)
    assert np.all(row[:10] < 0.5) and np.all(row[10 + spike.points :] < 0.5)


def test_whole_history_has_no_gaps_and_goes_stale_after_five_minutes(
    prom: PrometheusSource, prometheus: DemoPrometheus
) -> None:
    history = prometheus.history
    batch = prom.query_range(LATENCY, history.start_at, history.end_at + 10 * MINUTE, MINUTE)
    assert batch.values.shape == (3, 361 + 10)
    rows = by_service(batch)
    assert set(rows) == {"api", "web", "db"}
    expected = {s.labels["service"]: s.values for s in history.series if s.name == LATENCY}
    for service, row in rows.items():
        np.testing.assert_allclose(row[:361], expected[service], rtol=1e-12)
        # After the last sample: carried forward for 5 minutes (lookback), then nothing.
        np.testing.assert_array_equal(row[361:366], expected[service][-1])
        assert np.isnan(row[366:]).all()


def test_off_grid_start_and_a_function(prom: PrometheusSource, prometheus: DemoPrometheus) -> None:
    history = prometheus.history
    start = history.start_at + timedelta(seconds=17.5)
    batch = prom.query_range(f"rate({REQUESTS}[5m])", start, history.end_at, timedelta(seconds=45))
    np.testing.assert_array_equal(
        batch.timestamps, grid(start, history.end_at, timedelta(seconds=45))
    )
    assert batch.timestamps[0] == history.start + 17.5
    assert batch.labels == [{"service": "api"}, {"service": "web"}]  # rate() drops the name
    rates = by_service(batch)
    assert np.nanmean(rates["api"]) == pytest.approx(40, rel=0.3)  # 40 req/s +-20%


def test_instant_query(prom: PrometheusSource, prometheus: DemoPrometheus) -> None:
    end = prometheus.history.end_at
    batch = prom.query(LATENCY, at=end + 2 * MINUTE)
    assert batch.values.shape == (3, 1)
    assert batch.timestamps.tolist() == [prometheus.history.end + 120]
    last = {
        s.labels["service"]: s.values[-1] for s in prometheus.history.series if s.name == LATENCY
    }
    for service, row in by_service(batch).items():
        assert row[0] == pytest.approx(last[service], rel=1e-12)
    assert prom.query(LATENCY, at=end + 6 * MINUTE).n_series == 0  # stale by then


def test_instant_query_defaults_to_the_wall_clock(prom: PrometheusSource) -> None:
    before = datetime.now(UTC).timestamp()
    batch = prom.query("vector(1)")
    assert before - 0.001 <= batch.timestamps[0] <= datetime.now(UTC).timestamp()  # ms
    assert batch.values.tolist() == [[1.0]]


def test_special_values_parse(prom: PrometheusSource, prometheus: DemoPrometheus) -> None:
    query = f'{LATENCY}{{service="web"}} * 0 / 0 or {LATENCY}{{service="db"}} / 0'
    batch = prom.query(query, at=prometheus.history.end_at)
    values = sorted(batch.values.ravel().tolist(), key=str)
    assert np.isinf(values[0]) and values[0] > 0
    assert np.isnan(values[1])


def test_promql_syntax_error_names_the_query(prom: PrometheusSource) -> None:
    with pytest.raises(InvalidInput, match=r"sum\(rate\(oops.*parse error"):
        prom.query("sum(rate(oops[5m])")


@pytest.mark.parametrize("query", ["1 + 1", '"text"'])
def test_scalar_and_string_results_are_refused(prom: PrometheusSource, query: str) -> None:
    with pytest.raises(InvalidInput, match="must return a vector or matrix"):
        prom.query(query)


def test_range_vector_from_an_instant_query_is_refused(
    prom: PrometheusSource, prometheus: DemoPrometheus
) -> None:
    with pytest.raises(InvalidInput, match="use query_range"):
        prom.query(f"{LATENCY}[5m]", at=prometheus.history.end_at)


def test_unreachable_prometheus_is_unavailable_and_hides_the_token(dead_url: str) -> None:
    source = PrometheusSource(dead_url, token=TOKEN)
    with pytest.raises(Unavailable, match="unreachable") as caught:
        source.query("up")
    assert dead_url in str(caught.value)
    assert TOKEN not in str(caught.value) and TOKEN not in repr(source)


def test_a_silent_server_times_out_as_unavailable() -> None:
    # A socket that accepts connections (the kernel's backlog) but never answers.
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(8)
        url = f"http://127.0.0.1:{listener.getsockname()[1]}"
        with (
            PrometheusSource(url, timeout_s=0.3) as source,
            pytest.raises(Unavailable, match=r"did not answer within 0\.3 s"),
        ):
            source.query("up")


def test_the_token_never_appears_in_errors(prometheus: DemoPrometheus) -> None:
    # The real Prometheus ignores the header; what matters is what the errors say.
    with PrometheusSource(prometheus.url, token=TOKEN) as source:
        with pytest.raises(InvalidInput) as caught:
            source.query("sum(")
        assert TOKEN not in str(caught.value)
        assert source.query("vector(1)").values.tolist() == [[1.0]]


def test_token_and_basic_auth_together_are_refused() -> None:
    with pytest.raises(ConfigError, match="not both") as caught:
        PrometheusSource("http://prom:9090", token=TOKEN, username="ops", password=PASSWORD)
    assert TOKEN not in str(caught.value) and PASSWORD not in str(caught.value)
    with pytest.raises(ConfigError, match="PROM_PASSWORD is set without PROM_USERNAME"):
        PrometheusSource("http://prom:9090", password=PASSWORD)


def test_huge_ranges_are_refused_before_sending(dead_url: str) -> None:
    # Nothing listens at dead_url: reaching the network would raise Unavailable instead.
    source = PrometheusSource(dead_url)
    end = datetime(2026, 1, 31, tzinfo=UTC)
    with pytest.raises(InvalidInput, match=r"exceeds the limit of 11000; use a step of at least"):
        source.query_range("up", end - timedelta(days=30), end, timedelta(seconds=15))
    with pytest.raises(InvalidInput, match="before start"):
        source.query_range("up", end, end - MINUTE, MINUTE)
    # 11,000 points exactly is allowed (and then fails on the network, as it should).
    with pytest.raises(Unavailable):
        source.query_range("up", end - 10_999 * MINUTE, end, MINUTE)


def _mock(status: int, body: dict | str, seen: list[httpx.Request]) -> httpx.MockTransport:
    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        if isinstance(body, str):
            return httpx.Response(status, text=body)
        return httpx.Response(status, json=body)

    return httpx.MockTransport(handler)


@pytest.mark.parametrize("status", [401, 403])
def test_auth_refusal_names_the_settings_mock(status: int) -> None:
    """MOCK (httpx.MockTransport): the local Prometheus has no auth, so a 401/403 is faked."""
    seen: list[httpx.Request] = []
    transport = _mock(status, "Unauthorized", seen)
    source = PrometheusSource("http://prom.example:9090", token=TOKEN, transport=transport)
    with pytest.raises(ConfigError, match=r"PROM_TOKEN.*PROM_USERNAME") as caught:
        source.query("up")
    assert f"HTTP {status}" in str(caught.value) and TOKEN not in str(caught.value)
    assert seen[0].headers["Authorization"] == f"Bearer {TOKEN}"
    assert seen[0].method == "POST" and b"query=up" in seen[0].content


def test_basic_auth_header_mock() -> None:
    """MOCK (httpx.MockTransport): checks the Authorization header basic auth sends."""
    seen: list[httpx.Request] = []
    ok = {"status": "success", "data": {"resultType": "vector", "result": []}}
    source = PrometheusSource(
        "http://u:p@prom.example:9090/",
        username="ops",
        password=PASSWORD,
        transport=_mock(200, ok, seen),
    )
    assert source.query("up", at=datetime(2026, 1, 1, tzinfo=UTC)).n_series == 0
    expected = base64.b64encode(f"ops:{PASSWORD}".encode()).decode()
    assert seen[0].headers["Authorization"] == f"Basic {expected}"
    assert "u:p" not in repr(source)


@pytest.mark.parametrize(
    ("status", "body", "error", "match"),
    [
        (
            503,
            {"status": "error", "errorType": "timeout", "error": "query timed out"},
            Unavailable,
            "HTTP 503: query timed out",
        ),
        (502, "Bad Gateway", Unavailable, "HTTP 502"),
        (
            422,
            {"status": "error", "errorType": "execution", "error": "many-to-many"},
            InvalidInput,
            "rejected query 'up': execution: many-to-many",
        ),
        (404, "404 page not found", ConfigError, "PROM_URL must be the Prometheus base URL"),
        (200, "<html>login</html>", ConfigError, "is PROM_URL a Prometheus API"),
    ],
)
def test_status_mapping_mock(status: int, body: dict | str, error: type, match: str) -> None:
    """MOCK (httpx.MockTransport): proxy-style failures a local Prometheus does not produce."""
    source = PrometheusSource("http://prom.example:9090", transport=_mock(status, body, []))
    with pytest.raises(error, match=match):
        source.query("up")


@pytest.mark.usefixtures("prometheus_installed")
def test_stop_and_start_keep_port_and_data(tmp_path: Path) -> None:
    history = demo_history(datetime.now(UTC), hours=1)
    server = LocalPrometheus(tmp_path / "prom")
    write_openmetrics(history, tmp_path / "h.om")
    server.backfill(tmp_path / "h.om")
    spike = history.spike
    with server, PrometheusSource(server.url, timeout_s=2) as source:
        assert source.query(spike.selector, at=spike.at).values[0, 0] == pytest.approx(spike.value)
        port = server.port
        server.stop()
        assert not server.running
        with pytest.raises(Unavailable):
            source.query(spike.selector, at=spike.at)
        server.start()
        assert server.port == port
        assert source.query(spike.selector, at=spike.at).values[0, 0] == pytest.approx(spike.value)
    assert not server.running


# --- write_openmetrics and LocalPrometheus ---------------------------------------------------


@pytest.mark.usefixtures("prometheus_installed")
def test_openmetrics_round_trip_with_escaping_and_gaps(tmp_path: Path) -> None:
    t0 = 1_790_000_000.0
    odd = 'say "hi"\\ and\nbye'
    series = [
        Series(
            "b_metric", {"path": odd, "empty": ""}, np.array([t0 + 60, t0]), np.array([2.0, 1.0])
        ),
        ("b_metric", {"path": "plain"}, t0 + 60.0 * np.arange(3), np.array([1.0, np.nan, np.inf])),
        ("a_metric", {}, np.array([t0 + 0.25]), np.array([-np.inf])),
    ]
    path = tmp_path / "x.om"
    assert write_openmetrics(series, path) == 5
    text = path.read_text()
    assert text.count("# TYPE b_metric gauge") == 1 and text.endswith("# EOF\n")
    assert 'path="say \\"hi\\"\\\\ and\\nbye"' in text
    assert "+Inf" in text and "-Inf" in text and "1790000000.250" in text
    assert "empty=" not in text

    server = LocalPrometheus(tmp_path / "prom")
    server.backfill(path)
    with server, PrometheusSource(server.url) as source:
        batch = source.query_range("b_metric", at(t0), at(t0 + 120), MINUTE)
        rows = {
            labels["path"]: row.tolist()
            for labels, row in zip(batch.labels, batch.values, strict=True)
        }
        assert rows[odd][:2] == [1.0, 2.0]
        # The NaN was skipped, so t0+60 carries t0's sample forward (lookback).
        assert rows["plain"] == [1.0, 1.0, np.inf]
        assert source.query("a_metric", at=at(t0 + 1)).values[0, 0] == -np.inf


def test_openmetrics_refuses_interleaved_families(tmp_path: Path) -> None:
    one = np.array([1.0])
    series = [("a", {}, one, one), ("b", {}, one, one), ("a", {"x": "1"}, one, one)]
    with pytest.raises(ValueError, match="'a' appears again"):
        write_openmetrics(series, tmp_path / "x.om")
    with pytest.raises(ValueError, match="invalid label name"):
        write_openmetrics([("a", {"bad-name": "1"}, one, one)], tmp_path / "x.om")


def test_missing_binaries_name_the_package(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(
        PrometheusNotInstalled, match=r"apt-get install prometheus.*make system-deps"
    ):
        prometheus_binaries()
    with pytest.raises(PrometheusNotInstalled, match="prometheus and promtool not found"):
        LocalPrometheus(tmp_path / "p")


@pytest.mark.usefixtures("prometheus_installed")
def test_startup_failure_shows_the_log(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        server = LocalPrometheus(tmp_path / "p", port=taken.getsockname()[1])
        with pytest.raises(
            LocalPrometheusError, match=r"(?s)exited with code 1.*address already in use"
        ):
            server.start()
    assert not server.running


# --- ReplaySource ----------------------------------------------------------------------------


def write_rows(path: Path, rows: list[dict]) -> Path:
    frame = pl.DataFrame(rows)
    if path.suffix == ".csv":
        frame.write_csv(path)
    else:
        frame.write_parquet(path)
    return path


@pytest.fixture(params=["csv", "parquet"])
def demo_file(request: pytest.FixtureRequest, prometheus: DemoPrometheus, tmp_path: Path) -> Path:
    frame = prometheus.history.to_frame()
    if request.param == "csv":  # ISO-8601 in the CSV, unix seconds in the Parquet
        iso = [at(t).isoformat() for t in frame["timestamp"].to_list()]
        frame = frame.with_columns(timestamp=pl.Series(iso))
        frame.write_csv(tmp_path / "demo.csv")
    else:
        frame.write_parquet(tmp_path / "demo.parquet")
    return tmp_path / f"demo.{request.param}"


def test_replay_matches_prometheus(
    demo_file: Path, prom: PrometheusSource, prometheus: DemoPrometheus
) -> None:
    history = prometheus.history
    replay = ReplaySource(demo_file)
    assert isinstance(replay, MetricSource)
    assert replay.now() == history.end_at
    windows = [
        (history.start_at - 10 * MINUTE, history.end_at + 10 * MINUTE, MINUTE),
        (history.start_at + timedelta(seconds=17.5), history.end_at, timedelta(seconds=45)),
        # Around the lookback boundary, second by second: the sample exactly 5 min old counts.
        (
            history.end_at + timedelta(seconds=290),
            history.end_at + timedelta(seconds=310),
            timedelta(seconds=1),
        ),
        (history.start_at, history.end_at, timedelta(minutes=7)),
    ]
    for query in [LATENCY, f'{REQUESTS}{{service="web"}}', f'{{__name__=~"{LATENCY}|{REQUESTS}"}}']:
        for start, end, step in windows:
            expected = prom.query_range(query, start, end, step)
            got = replay.query_range(query, start, end, step)
            np.testing.assert_array_equal(got.timestamps, expected.timestamps)
            assert got.labels == expected.labels, (query, start)
            np.testing.assert_allclose(got.values, expected.values, rtol=1e-12)
        for moment in (history.end_at, history.end_at + 5 * MINUTE, history.end_at + 6 * MINUTE):
            expected, got = prom.query(query, at=moment), replay.query(query, at=moment)
            assert got.labels == expected.labels
            np.testing.assert_allclose(got.values, expected.values, rtol=1e-12)
    boundary = replay.query_range(LATENCY, *windows[2])
    assert (~np.isnan(boundary.values[0])).sum() == 11  # 290 s .. 300 s inclusive


@pytest.fixture
def labelled(tmp_path: Path) -> ReplaySource:
    rows = []
    for service, zone, code in [("api", "a", "200"), ("web", "b", "0200"), ("db", "", "500")]:
        for t in (0, 60, 120):
            rows.append(
                {
                    "timestamp": 1_790_000_000 + t,
                    "value": len(service) + t,
                    "metric": "req",
                    "service": service,
                    "zone": zone,
                    "code": code,
                }
            )
    rows.append(
        {
            "timestamp": 1_790_000_000,
            "value": 1.0,
            "metric": "other",
            "service": "api",
            "zone": "a",
            "code": "200",
        }
    )
    return ReplaySource(write_rows(tmp_path / "l.csv", rows))


@pytest.mark.parametrize(
    ("query", "services"),
    [
        ("req", ["api", "db", "web"]),
        ('req{service="api"}', ["api"]),
        ('req{service!="api"}', ["db", "web"]),
        ('req{service=~"a.*|db"}', ["api", "db"]),
        ('req{service=~"a"}', []),  # regexes are anchored
        ('req{service!~"w.*"}', ["api", "db"]),
        ('req{zone=""}', ["db"]),  # an absent label is the empty string
        ('req{zone!=""}', ["api", "web"]),
        ('req{code="0200"}', ["web"]),  # labels stay strings
        ('{__name__="req", service=~`a.*`, }', ["api"]),
        ("{__name__=~'req|other', service='api'}", ["api", "api"]),
        ('  req { service = "web" , zone =~ "b" }  ', ["web"]),
    ],
)
def test_replay_selectors(labelled: ReplaySource, query: str, services: list[str]) -> None:
    batch = labelled.query_range(query, at(1_790_000_000), at(1_790_000_120), MINUTE)
    assert sorted(labels["service"] for labels in batch.labels) == services
    assert all("__name__" in labels for labels in batch.labels)
    assert all("zone" not in labels for labels in batch.labels if labels["service"] == "db")


@pytest.mark.parametrize(
    "query",
    [
        "rate(req[5m])",
        "sum(req)",
        "sum by (service) (req)",
        "req + 1",
        "req offset 5m",
        "req > 2",
        "-req",
        "1",
    ],
)
def test_replay_refuses_full_promql(labelled: ReplaySource, query: str) -> None:
    with pytest.raises(InvalidInput, match=r"selectors only.*PROM_URL") as caught:
        labelled.query(query)
    assert repr(query) in str(caught.value)


@pytest.mark.parametrize(
    ("query", "match"),
    [
        ("req[5m]", "use query_range"),
        ("{}", "metric name or at least one matcher"),
        ('{service=~".*"}', "metric name or at least one matcher"),
        ('req{service=~"("}', "invalid regular expression"),
        ('req{service="api}', "unterminated string"),
        ("req{service=api}", "expected a quoted label value"),
    ],
)
def test_replay_selector_errors(labelled: ReplaySource, query: str, match: str) -> None:
    with pytest.raises(InvalidInput, match=match):
        labelled.query(query)


def test_replay_resampling_and_staleness(tmp_path: Path) -> None:
    t0 = 1_790_000_000
    rows = [
        {"timestamp": t0 + t, "value": v, "__name__": "m"}
        for t, v in [
            (120, 3.0),
            (0, 1.0),
            (60, 2.0),
            (60, 2.5),
            (1000, 9.0),
            (1030, "NaN"),
            (1060, "+Inf"),
            (1090, ""),
        ]
    ]
    source = ReplaySource(
        write_rows(tmp_path / "r.csv", [{**r, "value": str(r["value"])} for r in rows])
    )
    assert source.now() == at(t0 + 1060)  # the empty value is no sample
    batch = source.query_range("m", at(t0 - 30), at(t0 + 1090), timedelta(seconds=30))
    got = dict(
        zip((batch.timestamps - t0).astype(int).tolist(), batch.values[0].tolist(), strict=True)
    )
    assert np.isnan(got[-30])  # before the first sample
    assert got[0] == 1.0 and got[30] == 1.0
    assert got[60] == 2.5  # duplicate timestamp: the last row wins
    assert got[120] == 3.0 and got[420] == 3.0  # carried forward for 300 s ...
    assert np.isnan(got[450]) and np.isnan(got[990])  # ... then stale
    assert got[1020] == 9.0 and np.isnan(got[1050]) and got[1080] == np.inf
    assert source.query("m").values.tolist() == [[np.inf]]  # default: at the end of the data


def test_replay_parquet_datetime_column(tmp_path: Path) -> None:
    path = tmp_path / "d.parquet"
    pl.DataFrame(
        {
            "timestamp": [datetime(2026, 1, 1, 0, 0), datetime(2026, 1, 1, 0, 1)],
            "value": [1, 2],
            "__name__": ["m", "m"],
            "job": ["x", "x"],
        }
    ).write_parquet(path)
    source = ReplaySource(path)
    assert source.now() == datetime(2026, 1, 1, 0, 1, tzinfo=UTC)  # naive means UTC
    batch = source.query('m{job="x"}', at=datetime(2026, 1, 1, 0, 0, 30))
    assert batch.values.tolist() == [[1.0]] and batch.labels == [{"__name__": "m", "job": "x"}]


@pytest.mark.parametrize(
    ("content", "match"),
    [
        ("value,__name__\n1,m\n", "missing column 'timestamp'"),
        ("timestamp,__name__\n1,m\n", "missing column 'value'"),
        ("timestamp,value\n1,1\n", r"missing column '__name__' \(or 'metric'\)"),
        ("timestamp,value,__name__\n1,abc,m\n", "column 'value' has a non-number 'abc'"),
        ("timestamp,value,__name__\nyesterday,1,m\n", "column 'timestamp' has 'yesterday'"),
        ("timestamp,value,__name__\n1790000000000,1,m\n", "looks like milliseconds"),
        ("timestamp,value,__name__\n1790000000,1,m\n2026-01-01,1,m\n", "mixes unix seconds"),
        (
            "timestamp,value,__name__,host name\n1,1,m,a\n",
            "'host name' is not a valid Prometheus label",
        ),
        ("timestamp,value,__name__\n1,1,9m\n", "invalid metric name '9m'"),
        ("timestamp,value,__name__\n", "has no rows"),
    ],
)
def test_replay_bad_files_name_file_and_column(tmp_path: Path, content: str, match: str) -> None:
    path = tmp_path / "bad.csv"
    path.write_text(content)
    with pytest.raises(InvalidInput, match=match) as caught:
        ReplaySource(path)
    assert str(path) in str(caught.value)


def test_replay_missing_and_unknown_files(tmp_path: Path) -> None:
    with pytest.raises(InvalidInput, match="no such file"):
        ReplaySource(tmp_path / "nope.csv")
    (tmp_path / "x.json").write_text("{}")
    with pytest.raises(InvalidInput, match=r"unknown format '\.json'"):
        ReplaySource(tmp_path / "x.json")
    (tmp_path / "broken.parquet").write_text("not parquet")
    with pytest.raises(InvalidInput, match=r"broken\.parquet: cannot be read"):
        ReplaySource(tmp_path / "broken.parquet")


def test_parse_selector_keeps_matchers() -> None:
    selector = parse_selector('up{job="a\\"b", x!~"y"}')
    assert [(m.label, m.op, m.value) for m in selector.matchers] == [
        ("__name__", "=", "up"),
        ("job", "=", 'a"b'),
        ("x", "!~", "y"),
    ]


# --- from settings -------------------------------------------------------------------------------


def test_source_from_settings_prefers_prometheus(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("PROM_URL", "http://prom:9090/")
    monkeypatch.setenv("NEURALOPS_REPLAY_FILE", str(tmp_path / "ignored.csv"))
    monkeypatch.setenv("NEURALOPS_PROM_TIMEOUT_S", "2.5")
    source = source_from_settings(get_settings())
    assert isinstance(source, PrometheusSource)
    assert source.url == "http://prom:9090" and source.timeout_s == 2.5


def test_source_from_settings_refuses_two_kinds_of_credentials(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("PROM_URL", "http://prom:9090")
    monkeypatch.setenv("PROM_TOKEN", TOKEN)
    monkeypatch.setenv("PROM_USERNAME", "ops")
    with pytest.raises(ConfigError, match="not both") as caught:
        source_from_settings()
    assert TOKEN not in str(caught.value)


def test_source_from_settings_replay(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    path = write_rows(
        tmp_path / "r.csv", [{"timestamp": 1_790_000_000, "value": 1.0, "__name__": "m"}]
    )
    monkeypatch.setenv("NEURALOPS_REPLAY_FILE", str(path))
    source = source_from_settings()
    assert isinstance(source, ReplaySource) and source.now() == at(1_790_000_000)
    monkeypatch.setenv("NEURALOPS_REPLAY_FILE", str(tmp_path / "missing.csv"))
    get_settings.cache_clear()
    with pytest.raises(ConfigError, match=r"NEURALOPS_REPLAY_FILE: .*missing\.csv does not exist"):
        source_from_settings()


def test_source_from_settings_needs_one() -> None:
    with pytest.raises(ConfigError, match=r"set PROM_URL .* or NEURALOPS_REPLAY_FILE"):
        source_from_settings()
