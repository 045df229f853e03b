"""End to end: one `detect` flow run over many series served by a real Prometheus.

Builds a history of N series (60 s apart, running on past the wall clock as a scraping
Prometheus's would), injects a spike into 1% of them a few minutes ago, backfills it into a
local Prometheus, and runs the real `detect` flow (Prefect test server, SQLite) with R rules
that split the series between them. Reports wall time and peak memory of the flow run, the
time of each stage, and how many injected spikes were signalled (and how many quiet series
were). A second run shows the deduplicated path.

    .venv/bin/python bench/detect_e2e.py                 # 10,000 series, 10 rules
    .venv/bin/python bench/detect_e2e.py --series 1000   # quicker
"""

from __future__ import annotations

import argparse
import os
import platform
import resource
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _report import write_section

REPORT = Path(__file__).resolve().parents[1] / "reports" / "detection.md"
METRIC = "bench_latency_seconds"


def build_history(n_series: int, hours: float, shards: int, seed: int = 11):
    """Series ending 15 minutes after now; spikes on every 100th series, 3 minutes ago."""
    from neuralops.local_prometheus import Series

    rng = np.random.default_rng(seed)
    now = time.time()
    end = (now // 60) * 60 + 15 * 60
    stamps = end - 60.0 * np.arange(int(hours * 60), -1, -1)
    spike_at = np.searchsorted(stamps, (now // 60) * 60 - 3 * 60)
    levels = rng.uniform(0.05, 2.0, n_series)
    spiked = set(range(0, n_series, 100))
    series = []
    for i in range(n_series):
        values = levels[i] * (1 + 0.1 * np.sin(stamps / 3600 + i)) + rng.normal(
            0, 0.02 * levels[i], stamps.size
        )
        if i in spiked:
            values[spike_at : spike_at + 3] += 8 * levels[i]
        labels = {"service": f"svc-{i:05d}", "shard": str(i % shards)}
        series.append(Series(METRIC, labels, stamps, values))
    return series, spiked


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--series", type=int, default=10_000)
    parser.add_argument("--rules", type=int, default=10)
    parser.add_argument("--lookback-min", type=int, default=120)
    parser.add_argument("--report", type=Path, default=REPORT)
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="neuralops-e2e-"))
    os.environ["NEURALOPS_DATA_DIR"] = str(work / "data")
    os.environ["PREFECT_SERVER_ANALYTICS_ENABLED"] = "false"
    os.environ.pop("POSTGRES_DSN", None)

    from neuralops import db, signals
    from neuralops.local_prometheus import LocalPrometheus, write_openmetrics
    from neuralops.settings import get_settings

    t0 = time.perf_counter()
    series, spiked = build_history(args.series, args.lookback_min / 60 + 0.75, args.rules)
    samples = write_openmetrics(series, work / "history.om")
    server = LocalPrometheus(work / "prom")
    server.backfill(work / "history.om")
    setup_s = time.perf_counter() - t0
    print(f"history: {args.series} series, {samples:,} samples; backfilled in {setup_s:.1f} s")

    rules_file = work / "rules.yaml"
    rules_file.write_text(
        "rules:\n"
        + "".join(
            f"  - name: latency-shard-{k}\n"
            f'    query: {METRIC}{{shard="{k}"}}\n'
            f"    lookback: {args.lookback_min}m\n"
            "    step: 1m\n"
            "    recent: 6m\n"
            for k in range(args.rules)
        )
    )
    with server:
        os.environ["PROM_URL"] = server.url
        get_settings.cache_clear()
        db.upgrade(get_settings().database_url)

        from prefect.testing.utilities import prefect_test_harness

        from flows.detection import detect

        with prefect_test_harness(server_startup_timeout=120):
            rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
            t = time.perf_counter()
            first = detect(rules_file=str(rules_file))
            first_s = time.perf_counter() - t
            rss_peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
            t = time.perf_counter()
            second = detect(rules_file=str(rules_file))
            second_s = time.perf_counter() - t

        stages = stage_times(server.url, rules_file)

    found = {s.labels["service"] for s in signals.list_signals(limit=100_000)}
    injected = {f"svc-{i:05d}" for i in spiked}
    hits, false_alarms = len(found & injected), len(found - injected)
    points = args.series * (args.lookback_min + 1)
    print(first, second)
    print(f"first run {first_s:.1f} s, second {second_s:.1f} s, peak RSS {rss_peak:.0f} MiB")

    body = f"""## End to end: one `detect` run against a real Prometheus

Command: `.venv/bin/python bench/detect_e2e.py --series {args.series} --rules {args.rules}
--lookback-min {args.lookback_min}`; measured {datetime.now(UTC):%Y-%m-%d} on
{os.cpu_count()} cores ({platform.processor() or platform.machine()}), Prometheus from Debian,
the Prefect test server, SQLite.

{args.series:,} series of `{METRIC}` (60 s apart) served by a real Prometheus, split over
{args.rules} rules (one query task and one detection task per rule); each rule looks back
{args.lookback_min} min at a 1 min step, so the run scores {points:,} points. 1% of the series
({len(injected)}) carry a spike injected 3 minutes before the run.

| measure | value |
| --- | --- |
| `detect` flow run, first (wall) | {first_s:.1f} s |
| `detect` flow run, second: the same anomalies, deduplicated (wall) | {second_s:.1f} s |
| peak RSS of the flow process (before the first run: {rss_before:.0f} MiB) | {rss_peak:.0f} MiB |
| Prometheus range queries, all rules, sequential | {stages["query"]:.2f} s |
| detection (ensemble) and hints, all rules | {stages["detect"]:.2f} s |
| recording the signals (one transaction) | {stages["record"]:.2f} s |
| injected spikes signalled | {hits} of {len(injected)} |
| quiet series signalled (false alarms) | {false_alarms} of {args.series - len(injected)} |
| signals: first run new / second run new, suppressed | {first["new_signals"]} / \
{second["new_signals"]}, {second["suppressed"]} |

The flow runs the rules' queries concurrently (Prefect's thread pool), so its wall time is
less than the sum of the stage times plus the Prefect overhead of
{2 * args.rules + 2} task runs. Setting up the history (writing OpenMetrics, promtool
backfill) took {setup_s:.0f} s and is not part of the run.
"""
    write_section(args.report, "e2e", body, title="Detection: quality and speed")
    print(f"written to {args.report}")


def stage_times(url: str, rules_file: Path) -> dict[str, float]:
    """The flow's stages timed in-process, without Prefect, on a scratch copy of the database."""
    from neuralops import signals
    from neuralops.sources import PrometheusSource

    rules = signals.load_rules(rules_file)
    source = PrometheusSource(url)
    end = signals.range_end(source.now(), rules[0].step)
    t = time.perf_counter()
    batches = [source.query_range(r.query, end - r.lookback, end, r.step) for r in rules]
    query_s = time.perf_counter() - t
    t = time.perf_counter()
    found = [c for r, b in zip(rules, batches, strict=True) for c in signals.find_anomalies(r, b)]
    detect_s = time.perf_counter() - t
    scratch = Path(tempfile.mkdtemp()) / "scratch.db"
    from sqlalchemy.engine import URL

    from neuralops import db

    url_db = URL.create("sqlite+pysqlite", database=str(scratch))
    db.upgrade(url_db)
    t = time.perf_counter()
    signals.record_signals(found, {r.name: r.cooldown for r in rules}, url=url_db)
    record_s = time.perf_counter() - t
    source.close()
    return {"query": query_s, "detect": detect_s, "record": record_s}


if __name__ == "__main__":
    main()
