"""Signals core: rule files, anomalies with hints and correlation, dedup and cooldown, analyze."""

from __future__ import annotations

import threading
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pytest
from sqlalchemy.engine import URL

from neuralops import signals
from neuralops.errors import InvalidInput, NotFound
from neuralops.sources import ReplaySource, SeriesBatch

STEP = 60.0
END = datetime(2026, 11, 23, 12, 10, tzinfo=UTC).timestamp()
rng = np.random.default_rng(3)


@pytest.fixture(autouse=True)
def _same_draws_whatever_ran_before() -> None:
    """Each test draws from a fresh generator: with one shared by the module, a test's data
    depended on which tests ran before it in its process (xdist, ordering)."""
    global rng
    rng = np.random.default_rng(3)


def batch(values: np.ndarray, labels: list[dict[str, str]], query: str = "q") -> SeriesBatch:
    n = values.shape[1]
    return SeriesBatch(
        query=query,
        labels=labels,
        timestamps=END - STEP * np.arange(n)[::-1],
        values=values,
    )


def latency(n: int = 120) -> tuple[np.ndarray, list[dict[str, str]]]:
    """Three services; api spikes over the last 3 points and db moves with it."""
    t = np.arange(n)
    values = 0.2 + 0.01 * np.sin(t / 9) + rng.normal(0, 0.004, (3, n))
    values[0, -3:] += [0.2, 0.25, 0.3]
    values[2, -3:] += [0.1, 0.12, 0.15]
    labels = [{"service": "api"}, {"service": "web"}, {"service": "db"}]
    return values, labels


def rule(**fields) -> signals.Rule:
    return signals.Rule(
        **{"name": "http-latency-p99", "query": "q", "title": "p99 latency", **fields}
    )


# --- rules -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "seconds"), [("90s", 90), ("5m", 300), ("1h30m", 5400), ("7d", 604800), (30, 30)]
)
def test_durations_parse_and_print_back(text: str | int, seconds: int) -> None:
    delta = signals.parse_duration(text)
    assert delta.total_seconds() == seconds
    assert signals.parse_duration(signals.format_duration(delta)) == delta


@pytest.mark.parametrize("bad", ["", "1x", "h", "-5m", "5 minutes"])
def test_bad_durations_say_what_a_duration_looks_like(bad: str) -> None:
    with pytest.raises(ValueError, match="is not a duration such as 90s"):
        signals.parse_duration(bad)


def test_shipped_rules_are_valid_and_related_rules_exist() -> None:
    rules = signals.load_rules()
    names = {r.name for r in rules}
    assert len(rules) >= 5 and all(set(r.related) <= names for r in rules)


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ("rules:\n  - {name: a, query: up, related: [b]}\n", "relates to unknown rules"),
        ("rules:\n  - {name: a, query: up}\n  - {name: a, query: up}\n", "repeated: a"),
        ("rules:\n  - {name: a, query: up, lookback: 5m, step: 1m}\n", "at least 10 steps"),
        ("rules:\n  - {name: a, query: up, lookback: soon}\n", "rules.0.lookback"),
        ("rules:\n  - {name: a, query: up, treshold: 0.9}\n", "rules.0.treshold"),
        ("rules:\n  - {name: a, query: up, method: magic}\n", "rules.0.method"),
        ("rules: [", "not valid YAML"),
    ],
)
def test_rule_file_errors_name_the_file_and_the_field(
    tmp_path: Path, body: str, message: str
) -> None:
    path = tmp_path / "rules.yaml"
    path.write_text(body)
    with pytest.raises(InvalidInput, match=message) as caught:
        signals.load_rules(path)
    assert str(path) in str(caught.value)


# --- finding anomalies -------------------------------------------------------------------------


def test_a_spike_becomes_one_candidate_with_a_hint_and_correlated_series() -> None:
    values, labels = latency()
    found = signals.find_anomalies(rule(labels={"severity": "page"}), batch(values, labels))
    # api and db both jumped (db by less); web stayed quiet.
    assert [c.labels for c in found] == [
        {"service": "api", "severity": "page"},
        {"service": "db", "severity": "page"},
    ]
    signal = found[0]
    assert signal.score >= signals.DEFAULT_THRESHOLD and signal.z > 5
    assert signal.value in values[0, -3:]
    assert signal.hint.startswith("p99 latency of service=api is ")
    assert "σ above its" in signal.hint and "started 12:0" in signal.hint
    assert signal.window_start <= signal.window_end == datetime.fromtimestamp(END, UTC)
    assert signal.window_start >= datetime.fromtimestamp(END - 3 * STEP, UTC)
    # db moved with api; web did not.
    assert [c["labels"] for c in signal.correlated] == [{"service": "db"}]
    assert [c["labels"] for c in found[1].correlated] == [{"service": "api"}]
    assert signal.correlated[0]["correlation"] > 0.9


def test_related_rules_are_searched_for_series_that_moved_together() -> None:
    values, labels = latency()
    errors = batch(values[[0]] * 0.1 + rng.normal(0, 1e-4, (1, values.shape[1])), [labels[0]])
    found = signals.find_anomalies(
        rule(), batch(values, labels), [(rule(name="http-error-ratio"), errors)]
    )
    related = [c for c in found[0].correlated if c["rule"] == "http-error-ratio"]
    assert related and related[0]["labels"] == {"service": "api"}


def test_quiet_series_and_old_anomalies_do_not_signal() -> None:
    values, labels = latency()
    assert signals.find_anomalies(rule(), batch(values[[1]], [labels[1]])) == []
    old = values.copy()
    old[0, -3:] = old[0, -10:-7]
    old[0, 60] += 1.0  # an hour ago: outside `recent`
    assert signals.find_anomalies(rule(), batch(old[[0]], [labels[0]])) == []


def test_empty_results_and_all_gaps_signal_nothing() -> None:
    assert signals.find_anomalies(rule(), batch(np.empty((0, 0)), [])) == []
    assert signals.find_anomalies(rule(), batch(np.full((2, 50), np.nan), [{}, {}])) == []


def test_fingerprint_is_the_rule_and_series_not_the_time() -> None:
    a = signals.fingerprint("r", {"service": "api", "pod": "p1"})
    assert a == signals.fingerprint("r", {"pod": "p1", "service": "api"})
    assert a != signals.fingerprint("r", {"service": "api", "pod": "p2"})
    assert a != signals.fingerprint("other", {"service": "api", "pod": "p1"})


# --- recording and dedup -----------------------------------------------------------------------


def candidate(start_min: int = 0, end_min: int = 2, **fields) -> signals.SignalIn:
    base = datetime(2026, 11, 23, 12, 0, tzinfo=UTC)
    return signals.SignalIn(
        **{
            "rule": "r",
            "query": "q",
            "labels": {"service": "api"},
            "value": 2.5,
            "score": 0.999,
            "z": 7.4,
            "method": "ewma",
            "hint": "h",
            "window_start": base + timedelta(minutes=start_min),
            "window_end": base + timedelta(minutes=end_min),
            "fingerprint": signals.fingerprint("r", {"service": "api"}),
            **fields,
        }
    )


def test_the_same_anomaly_is_signalled_once_while_it_lasts(database_url: URL) -> None:
    first = signals.record_signals([candidate()], {"r": timedelta(0)})
    assert [r.new for r in first] == [True]
    again = signals.record_signals([candidate()], {"r": timedelta(0)})  # same view
    assert not again[0].new and again[0].signal.id == first[0].signal.id
    assert again[0].signal.occurrences == 1
    longer = signals.record_signals([candidate(end_min=7)], {"r": timedelta(0)})  # still going
    assert not longer[0].new and longer[0].signal.occurrences == 2
    assert longer[0].signal.last_seen_at == candidate(end_min=7).window_end
    later = signals.record_signals([candidate(30, 31)], {"r": timedelta(0)})  # a new episode
    assert later[0].new and later[0].signal.id != first[0].signal.id
    assert len(signals.list_signals()) == 2


def test_cooldown_folds_a_new_episode_into_the_last_signal(database_url: URL) -> None:
    signals.record_signals([candidate()], {"r": timedelta(hours=1)})
    again = signals.record_signals([candidate(30, 31)], {"r": timedelta(hours=1)})
    assert not again[0].new and again[0].signal.occurrences == 2
    assert signals.signal_counts() == [("r", "ewma", 1, 2)]


def test_one_batch_keeps_the_strongest_candidate_per_fingerprint(database_url: URL) -> None:
    recorded = signals.record_signals(
        [candidate(score=0.991), candidate(score=0.999), candidate(labels={"s": "x"}, score=0.99)],
        {},
    )
    assert [r.signal.score for r in recorded] == [0.999]


def test_concurrent_writers_record_one_signal(database_url: URL) -> None:
    barrier = threading.Barrier(4)
    results: list[bool] = []

    def write() -> None:
        barrier.wait()
        results.extend(r.new for r in signals.record_signals([candidate()], {"r": timedelta(0)}))

    threads = [threading.Thread(target=write) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(results) == [False, False, False, True]
    assert len(signals.list_signals()) == 1


def test_list_filters_and_get(database_url: URL) -> None:
    a = signals.record_signals([candidate()], {})[0].signal
    b = signals.record_signals([candidate(rule="other", fingerprint="f2")], {})[0].signal
    assert [s.id for s in signals.list_signals()] == [b.id, a.id]
    assert [s.id for s in signals.list_signals(rule="r")] == [a.id]
    assert [s.id for s in signals.list_signals(limit=1)] == [b.id]
    future = datetime.now(UTC) + timedelta(minutes=1)
    assert signals.list_signals(since=future) == []
    assert signals.get_signal(str(a.id)) == a
    with pytest.raises(NotFound):
        signals.get_signal(uuid.uuid4())
    with pytest.raises(NotFound, match="not a UUID"):
        signals.get_signal("../etc/passwd")


# --- analyze on a replay file -------------------------------------------------------------------


def replay_file(path: Path, spike: bool = True) -> Path:
    """Two services at 60 s spacing for 3 hours; api spikes over the last 3 minutes."""
    values, labels = latency(180)
    if not spike:
        values[0, -3:] = values[0, -10:-7]
    stamps = END - STEP * np.arange(values.shape[1])[::-1]
    lines = ["timestamp,__name__,service,value"]
    for row, series in enumerate(labels):
        for ts, v in zip(stamps, values[row], strict=True):
            lines.append(f"{int(ts)},latency_p99,{series['service']},{v:.6f}")
    path.write_text("\n".join(lines) + "\n")
    return path


def test_analyze_finds_the_spike_explains_it_and_records_it_once(
    tmp_path: Path, sqlite_url: URL
) -> None:
    source = ReplaySource(replay_file(tmp_path / "m.csv"))
    request = signals.AnalyzeRequest(query="latency_p99", lookback="2h", step="1m")
    result = signals.analyze(request, source)
    assert result.series == 3 and result.signal_id is not None and result.new_signal
    assert result.labels["service"] == "api" and result.z > 5
    assert result.hint.startswith("latency_p99 of service=api is ")
    assert "σ above its" in result.hint
    repeat = signals.analyze(request, source)
    assert repeat.signal_id == result.signal_id and not repeat.new_signal


def test_analyze_a_quiet_query_reports_the_normal_range(tmp_path: Path, sqlite_url: URL) -> None:
    source = ReplaySource(replay_file(tmp_path / "m.csv", spike=False))
    result = signals.analyze(
        signals.AnalyzeRequest(query='latency_p99{service="api"}', lookback="2h"), source
    )
    assert result.signal_id is None and result.series == 1
    assert result.score is not None and result.score < signals.DEFAULT_THRESHOLD
    assert result.hint.endswith("within the normal range")
    assert signals.list_signals() == []


def test_analyze_with_no_matching_series_says_so(tmp_path: Path, sqlite_url: URL) -> None:
    source = ReplaySource(replay_file(tmp_path / "m.csv"))
    result = signals.analyze(signals.AnalyzeRequest(query="nothing_here"), source)
    assert result.series == 0 and result.signal_id is None
    assert result.hint == "the query returned no data"


@pytest.mark.parametrize(
    ("method", "lookback", "step", "named"),
    [
        ("zscore", "2h", "1m", "2h rolling mean"),
        ("robust", "6h", "1m", "2h rolling median"),
        ("robust", "6h", "30s", "1h rolling median"),
        ("ewma", "3h", "1m", "3h EWMA"),
        ("ensemble", "1h", "15s", "1h baseline"),
    ],
)
def test_hints_name_the_baseline_the_detector_actually_had(
    method: str, lookback: str, step: str, named: str
) -> None:
    assert signals.baseline_name(rule(method=method, lookback=lookback, step=step)) == named
