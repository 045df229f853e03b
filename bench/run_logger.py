"""Run-logger throughput and paging latency on SQLite and PostgreSQL.

    .venv/bin/python bench/run_logger.py [--runs 50000] [--pg postgresql://postgres@127.0.0.1:5432/test]

Writes reports/run-logger.md. Each backend gets a fresh, migrated database.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

import sqlalchemy as sa
from sqlalchemy.engine import URL, make_url

from neuralops import db, runs

REPORT = Path(__file__).resolve().parents[1] / "reports" / "run-logger.md"


def payload(n: int, base: datetime) -> dict:
    return {
        "wpk_id": f"playbook-{n % 20}",
        "run_id": f"bench-{n}",
        "status": "succeeded" if n % 7 else "failed",
        "duration_ms": 1000 + n % 5000,
        "inputs": {"namespace": "payments", "deployment": f"api-{n % 50}", "replicas": 3},
        "outputs": {"message": "rollout complete"},
        "node_logs": [{"name": "restart", "status": "Completed", "duration_ms": 900}],
        "created_at": base + timedelta(seconds=n),
    }


def measure(url: URL, total: int) -> dict[str, float]:
    db.upgrade(url)
    base = datetime(2026, 1, 1, tzinfo=UTC)
    single = 1000
    started = time.perf_counter()
    for n in range(single):
        runs.log_run(payload(n, base), url=url)
    single_rate = single / (time.perf_counter() - started)

    started = time.perf_counter()
    batch = 1000
    for start in range(single, total, batch):
        runs.log_runs([payload(n, base) for n in range(start, min(start + batch, total))], url=url)
    batch_rate = (total - single) / (time.perf_counter() - started)

    latencies = []
    for page in range(1, 201):
        t0 = time.perf_counter()
        runs.list_runs("playbook-3", limit=50, page=page % 40 + 1, url=url)
        latencies.append((time.perf_counter() - t0) * 1000)
    latencies.sort()
    return {
        "single": single_rate,
        "batch": batch_rate,
        "p50": statistics.median(latencies),
        "p99": latencies[int(len(latencies) * 0.99) - 1],
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=50_000)
    parser.add_argument("--pg", default="postgresql+psycopg://postgres@127.0.0.1:5432/test")
    args = parser.parse_args()

    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        results["SQLite (WAL)"] = measure(
            URL.create("sqlite+pysqlite", database=f"{tmp}/bench.db"), args.runs
        )
    admin = make_url(args.pg).set(drivername="postgresql+psycopg")
    name = f"neuralops_bench_{uuid.uuid4().hex[:8]}"
    engine = sa.create_engine(admin, isolation_level="AUTOCOMMIT")
    with engine.connect() as conn:
        conn.execute(sa.text(f"CREATE DATABASE {name}"))
    try:
        results["PostgreSQL 15"] = measure(admin.set(database=name), args.runs)
    finally:
        db.dispose_engines()
        with engine.connect() as conn:
            conn.execute(sa.text(f"DROP DATABASE {name} WITH (FORCE)"))

    lines = [
        "# Run logger: throughput and paging latency",
        "",
        f"`python bench/run_logger.py --runs {args.runs}` on this project's 2-core machine, "
        f"{datetime.now(UTC):%Y-%m-%d}. One process, one thread; each run carries small "
        "inputs, outputs and one node log. Paging reads 50-run pages of one workflow "
        f"among 20 ({args.runs // 20} runs each).",
        "",
        "| backend | `log_run` one at a time (runs/s) | `log_runs` batches of 1,000 (runs/s) "
        "| page of 50, p50 (ms) | p99 (ms) |",
        "| --- | ---: | ---: | ---: | ---: |",
    ]
    for backend, r in results.items():
        lines.append(
            f"| {backend} | {r['single']:,.0f} | {r['batch']:,.0f} | {r['p50']:.1f} "
            f"| {r['p99']:.1f} |"
        )
    lines += [
        "",
        "One transaction per call: a single `log_run` pays a commit (an fsync) each time, "
        "so hooks and connectors that report many runs should batch through `log_runs`.",
        "",
    ]
    REPORT.write_text("\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
