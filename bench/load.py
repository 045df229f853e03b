"""Load: the HTTP API driven from a second process, concurrent run-logger writes, a signal burst.

    .venv/bin/python bench/load.py [--seconds 10] [--concurrency 16] [--writers 8]
        [--backends sqlite,postgresql] [--pg postgresql://postgres@127.0.0.1:5432/test]

For each backend: a fresh, migrated database seeded with the shipped catalogue, its demo run
history and the demo signals; then

* run logger: ``--writers`` processes call ``runs.log_run`` (one transaction a run, as a flow
  hook does), then ``runs.log_runs`` in batches of 100, on distinct run ids plus a few shared
  ones (upserts); rows are counted after;
* signal burst: 1,000 candidates for 5 fingerprints recorded by 8 threads, one
  ``record_signals`` call per 5 candidates, as concurrent detect runs would;
* API: ``neuralops api`` started on a free loopback port, then this process drives
  ``GET /signals``, ``POST /recommend``, ``GET /workflows/{id}/runs`` and ``POST /runs`` from
  ``--concurrency`` threads for ``--seconds``, then ``POST /runs`` alone for ``--seconds``.
  Every response is checked: status 2xx and a body that parses as the endpoint's model.

Writes the ``load`` section of reports/load.md (``--no-report`` skips it) and, with
``--json``, the figures. ``--url`` drives an API that is already running instead (no seeding,
no run-logger or burst phases): the ids it needs are read from ``/signals`` and
``/playbooks``. Exit status 1 when any request failed or any row is missing.

The API needs a bearer token with the scopes runs:write, runs:read, signals:read and
recommend: ``--api-token`` (or NEURALOPS_API_TOKEN); without one, a DEV ONLY token signed
with the dev key of the API's data dir (NEURALOPS_DATA_DIR), which an API without
configured authentication accepts.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import multiprocessing
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
from pydantic import TypeAdapter

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))  # _report, when run as a script from anywhere

from _report import write_section  # noqa: E402

from neuralops import runs, signals  # noqa: E402

REPORT = ROOT / "reports" / "load.md"
SHARED_RUN_IDS = 5  # POST /runs re-posts these (idempotent) every 5th request
SIGNAL_LIST = TypeAdapter(list[signals.Signal])
SCOPES = ("runs:write", "runs:read", "signals:read", "recommend")


def dev_token(data_dir: str | Path | None = None) -> str:
    """DEV ONLY: an API token with ``SCOPES`` signed with the dev key of ``data_dir`` (default
    the settings' data dir), which an API without configured authentication accepts."""
    from neuralops.api_auth import dev_api_token
    from neuralops.settings import Settings, get_settings

    settings = Settings(data_dir=Path(data_dir)) if data_dir else get_settings()
    return dev_api_token(settings, SCOPES, subject="bench-load@localhost", ttl_s=3600)


# --- the HTTP driver ------------------------------------------------------------------------


@dataclass
class Endpoint:
    name: str
    latencies_ms: list[float] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)  # non-2xx or a transport error
    malformed: list[str] = field(default_factory=list)  # 2xx whose body is not the model


@dataclass
class Target:
    """What the driver asks about: ids read from the running API."""

    signal_ids: list[str]
    workflow_ids: list[str]


def discover(client: httpx.Client) -> Target:
    found = client.get("/signals", params={"limit": 1000})
    found.raise_for_status()
    playbooks = client.get("/playbooks")
    playbooks.raise_for_status()
    target = Target(
        signal_ids=[s["id"] for s in found.json()],
        workflow_ids=[p["id"] for p in playbooks.json()],
    )
    if not target.signal_ids or not target.workflow_ids:
        raise SystemExit("the API has no signals or no playbooks: seed it first")
    return target


def _check_signals(response: httpx.Response, _: Any) -> str | None:
    listed = SIGNAL_LIST.validate_json(response.content)
    return None if listed else "no signals listed"


def _check_recommend(response: httpx.Response, _: Any) -> str | None:
    from neuralops.recommend import RecommendResult  # imported by drive(), before the clock

    result = RecommendResult.model_validate_json(response.content)
    return None if result.recommendations or result.reason else "no recommendation, no reason"


def _check_runs_page(response: httpx.Response, workflow_id: Any) -> str | None:
    page = runs.RunPage.model_validate_json(response.content)
    if page.workflow_id != workflow_id or len(page.items) > page.limit:
        return f"page of {page.workflow_id} with {len(page.items)} items"
    return None


def _check_logged(response: httpx.Response, run_id: Any) -> str | None:
    if response.status_code != 201:
        return f"status {response.status_code}, not 201"
    logged = response.json()
    return None if logged == {"run_id": run_id} else f"answered {logged}"


@dataclass
class Request:
    endpoint: str
    method: str
    path: str
    body: dict | None
    check: Callable[[httpx.Response, Any], str | None]
    expect: Any = None


class Workload:
    """The requests one thread sends, in a fixed cycle; POST /runs ids are unique per run of
    the driver (``token``) except the shared ones, which are upserted."""

    def __init__(self, target: Target, token: str, mix: tuple[str, ...]) -> None:
        self.target, self.token, self.mix = target, token, mix

    def request(self, thread: int, n: int) -> Request:
        kind = self.mix[(thread + n) % len(self.mix)]
        t = self.target
        if kind == "signals":
            return Request("GET /signals", "GET", "/signals?limit=100", None, _check_signals)
        if kind == "recommend":
            body = {"signal_id": t.signal_ids[n % len(t.signal_ids)], "top": 3}
            return Request("POST /recommend", "POST", "/recommend", body, _check_recommend)
        if kind == "runs_page":
            wf = t.workflow_ids[n % len(t.workflow_ids)]
            return Request(
                "GET /workflows/{id}/runs",
                "GET",
                f"/workflows/{wf}/runs?limit=50&page={1 + n % 2}",
                None,
                _check_runs_page,
                wf,
            )
        run_id = self.run_id(thread, n)
        # A shared run id is re-posted with the same content each time: a finished run is
        # immutable, so a re-post is idempotent (different content would be a 409).
        k = (n // 5) % SHARED_RUN_IDS if n % 5 == 0 else n
        body = {
            "wpk_id": t.workflow_ids[k % len(t.workflow_ids)],
            "run_id": run_id,
            "status": "succeeded" if k % 7 else "failed",
            "duration_ms": 1000 + k % 5000,
            "inputs": {"namespace": "payments", "deployment": f"api-{k % 50}"},
            "outputs": {"message": "rollout complete"},
            "node_logs": [{"name": "restart", "status": "Completed", "duration_ms": 900}],
        }
        return Request("POST /runs", "POST", "/runs", body, _check_logged, run_id)

    def run_id(self, thread: int, n: int) -> str:
        if n % 5 == 0:
            return f"load-{self.token}-shared-{(n // 5) % SHARED_RUN_IDS}"
        return f"load-{self.token}-{thread}-{n}"


MIXED = ("signals", "recommend", "runs_page", "post_run")
WRITES = ("post_run",)


def drive(
    base_url: str,
    *,
    seconds: float,
    concurrency: int,
    mix: tuple[str, ...] = MIXED,
    target: Target | None = None,
    token: str | None = None,
    api_token: str | None = None,
) -> dict[str, Any]:
    """``concurrency`` threads, each with its own connection, send the mix for ``seconds``;
    ``api_token`` is the bearer token (default: a DEV ONLY one, see ``dev_token``)."""
    # Seconds of imports (LanceDB): here, not in the first measured check under the import lock.
    # Not at the top of this script: the log_run writer processes never need it.
    import neuralops.recommend  # noqa: F401

    headers = {"Authorization": f"Bearer {api_token or dev_token()}"}
    with httpx.Client(base_url=base_url, timeout=60, headers=headers) as client:
        target = target or discover(client)
    token = token or uuid.uuid4().hex[:8]
    workload = Workload(target, token, mix)
    endpoints: dict[str, Endpoint] = {}
    posted: set[str] = set()
    lock = threading.Lock()
    start_line = threading.Barrier(concurrency)
    warm_up = Workload(target, f"{token}w", mix)  # its run ids are not counted as posted
    with httpx.Client(base_url=base_url, timeout=60, headers=headers) as client:
        for n in range(len(mix)):
            req = warm_up.request(0, n)
            client.request(req.method, req.path, json=req.body)

    def worker(thread: int) -> None:
        mine: dict[str, Endpoint] = {}
        ids: set[str] = set()
        with httpx.Client(base_url=base_url, timeout=60, headers=headers) as client:
            start_line.wait()
            deadline = time.perf_counter() + seconds
            n = 0
            while time.perf_counter() < deadline:
                req = workload.request(thread, n)
                n += 1
                stats = mine.setdefault(req.endpoint, Endpoint(req.endpoint))
                t0 = time.perf_counter()
                try:
                    response = client.request(req.method, req.path, json=req.body)
                except httpx.HTTPError as exc:
                    stats.errors.append(f"{req.method} {req.path}: {exc!r}")
                    continue
                stats.latencies_ms.append((time.perf_counter() - t0) * 1000)
                if not response.is_success:
                    stats.errors.append(
                        f"{req.method} {req.path}: {response.status_code} {response.text[:200]}"
                    )
                    continue
                if req.endpoint == "POST /runs":
                    ids.add(req.expect)
                try:
                    problem = req.check(response, req.expect)
                except ValueError as exc:  # pydantic's ValidationError, bad JSON
                    problem = f"{type(exc).__name__}: {str(exc)[:200]}"
                if problem:
                    stats.malformed.append(f"{req.method} {req.path}: {problem}")
        with lock:
            posted.update(ids)
            for name, stats in mine.items():
                total = endpoints.setdefault(name, Endpoint(name))
                total.latencies_ms += stats.latencies_ms
                total.errors += stats.errors
                total.malformed += stats.malformed

    started = time.perf_counter()
    with ThreadPoolExecutor(max_workers=concurrency) as pool:
        list(pool.map(worker, range(concurrency)))
    elapsed = time.perf_counter() - started
    return {
        "seconds": round(elapsed, 3),
        "concurrency": concurrency,
        "endpoints": {name: summarize(e, elapsed) for name, e in sorted(endpoints.items())},
        "errors": sum(len(e.errors) for e in endpoints.values()),
        "malformed": sum(len(e.malformed) for e in endpoints.values()),
        "run_id_prefix": f"load-{token}-",
        "posted_runs": len(posted),
        "posted_run_ids": sorted(posted),
    }


def summarize(e: Endpoint, elapsed: float) -> dict[str, Any]:
    lat = sorted(e.latencies_ms)
    return {
        "requests": len(lat),
        "rps": round(len(lat) / elapsed, 1),
        "p50_ms": round(statistics.median(lat), 1) if lat else None,
        "p99_ms": round(lat[math.ceil(len(lat) * 0.99) - 1], 1) if lat else None,  # nearest rank
        "errors": len(e.errors),
        "malformed": len(e.malformed),
        "first_problems": (e.errors + e.malformed)[:5],
    }


# --- the server, the database ---------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def api_server(env: dict[str, str], log_path: Path) -> Iterator[str]:
    """``neuralops api`` (the real CLI) on a free loopback port; yields its base URL."""
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "neuralops", "api", "--host", "127.0.0.1", "--port", str(port)],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=ROOT,
        )
        try:
            deadline = time.monotonic() + 60
            while True:
                if process.poll() is not None:
                    raise RuntimeError(f"the API exited: {log_path.read_text()[-2000:]}")
                with contextlib.suppress(httpx.HTTPError):
                    if httpx.get(f"{base}/healthz", timeout=1).status_code == 200:
                        break
                if time.monotonic() > deadline:
                    raise RuntimeError(f"the API did not answer: {log_path.read_text()[-2000:]}")
                time.sleep(0.2)
            yield base
        finally:
            process.terminate()
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


def seed(url) -> None:
    """The shipped catalogue, its demo run history and the demo signals."""
    from neuralops import db
    from neuralops.demo import demo_history, demo_signals
    from neuralops.registry import add_playbooks, catalogue_dir, load_manifests

    db.upgrade(url)
    manifests = load_manifests([catalogue_dir()])
    add_playbooks(manifests, url=url)
    runs.log_runs(demo_history(manifests), url=url, provenance=runs.SEED, keep_existing=True)
    candidates, cooldowns = demo_signals(datetime.now(UTC))
    signals.record_signals(candidates, cooldowns, url=url)


def count_runs(url, prefix: str) -> tuple[int, int]:
    """(rows, distinct run ids) whose run_id starts with ``prefix``."""
    from sqlalchemy import func, select

    from neuralops.db import session_scope
    from neuralops.db.models import WorkflowRun

    with session_scope(url) as session:
        rows, distinct = session.execute(
            select(func.count(), func.count(func.distinct(WorkflowRun.run_id))).where(
                WorkflowRun.run_id.startswith(prefix)
            )
        ).one()
    return int(rows), int(distinct)


# --- run logger: concurrent writer processes ----------------------------------------------


def writer_runs(prefix: str, writer: int, count: int) -> list[dict[str, Any]]:
    """A writer's runs: distinct ids, except every 10th, one of a few ids all writers share
    and report with the same content (a finished run is immutable: re-logging it the same is
    idempotent, a different report would be a Conflict)."""
    out = []
    for n in range(count):
        k = (n // 10) % SHARED_RUN_IDS
        shared = n % 10 == 0
        out.append(
            {
                "wpk_id": "restart-deployment",
                "run_id": f"{prefix}shared-{k}" if shared else f"{prefix}{writer}-{n}",
                "status": "succeeded" if (k if shared else n) % 7 else "failed",
                "duration_ms": 1000 + (k if shared else n),
                "inputs": {"namespace": "payments", "writer": None if shared else writer},
                "node_logs": [{"name": "restart", "status": "Completed", "duration_ms": 900}],
            }
        )
    return out


def _writer(url, prefix: str, writer: int, count: int, batch: int, start) -> None:
    from neuralops import db

    db.dispose_engines()  # never share the parent's pooled connections
    todo = writer_runs(prefix, writer, count)
    start.wait()
    for i in range(0, count, batch):
        if batch == 1:
            runs.log_run(todo[i], url=url)
        else:
            runs.log_runs(todo[i : i + batch], url=url)


def expected_writer_rows(writers: int, count: int) -> int:
    distinct = sum(1 for n in range(count) if n % 10)
    return writers * distinct + min(SHARED_RUN_IDS, len(range(0, count, 10)))


def concurrent_log_run(url, *, writers: int, count: int, batch: int = 1) -> dict[str, Any]:
    """``writers`` processes each call log_run ``count`` times; every 10th run id is one of a
    few shared ones (an upsert of a run another writer may be logging at the same moment)."""
    from neuralops import db

    prefix = f"w{uuid.uuid4().hex[:6]}-"
    context = multiprocessing.get_context("spawn")  # LanceDB (in neuralops) is not fork-safe
    db.dispose_engines()
    start = context.Barrier(writers + 1)
    processes = [
        context.Process(target=_writer, args=(url, prefix, w, count, batch, start))
        for w in range(writers)
    ]
    for process in processes:
        process.start()
    start.wait(timeout=120)  # every writer has imported and connected
    t0 = time.perf_counter()
    for process in processes:
        process.join(timeout=600)
    elapsed = time.perf_counter() - t0
    failed = [p.exitcode for p in processes if p.exitcode != 0]
    if failed:
        raise RuntimeError(f"log_run writers failed: exit codes {failed}")
    rows, distinct = count_runs(url, prefix)
    return {
        "writers": writers,
        "batch": batch,
        "runs": writers * count,
        "seconds": round(elapsed, 3),
        "runs_per_s": round(writers * count / elapsed, 1),
        "rows": rows,
        "distinct_run_ids": distinct,
        "expected_rows": expected_writer_rows(writers, count),
    }


# --- signal burst ---------------------------------------------------------------------------


def burst_candidates(total: int, fingerprints: int, base: datetime) -> list[signals.SignalIn]:
    """``total`` candidates, round-robin over ``fingerprints`` series; one episode starting at
    ``base``, each candidate seeing it go on a minute longer."""
    out = []
    for n in range(total):
        labels = {"service": f"svc-{n % fingerprints}"}
        end = base + timedelta(minutes=1 + n // fingerprints)
        out.append(
            signals.SignalIn(
                rule="load-burst",
                query="up",
                labels=labels,
                value=float(n),
                score=0.999,
                z=8.0,
                method="ewma",
                hint="burst",
                window_start=base,
                window_end=end,
                fingerprint=signals.fingerprint("load-burst", labels),
            )
        )
    return out


def signal_burst(
    url, *, total: int = 1000, fingerprints: int = 5, threads: int = 8
) -> dict[str, Any]:
    """Record the burst from ``threads`` threads, one call per ``fingerprints`` candidates."""
    base = datetime.now(UTC).replace(microsecond=0) - timedelta(hours=1)
    candidates = burst_candidates(total, fingerprints, base)
    calls = [candidates[i : i + fingerprints] for i in range(0, total, fingerprints)]
    cooldowns = {"load-burst": timedelta(minutes=30)}

    def record(batch: list[signals.SignalIn]) -> list[signals.Recorded]:
        return signals.record_signals(batch, cooldowns, url=url)

    t0 = time.perf_counter()
    with ThreadPoolExecutor(max_workers=threads) as pool:
        results = [r for recorded in pool.map(record, calls) for r in recorded]
    elapsed = time.perf_counter() - t0
    return {
        "candidates": total,
        "fingerprints": fingerprints,
        "threads": threads,
        "seconds": round(elapsed, 3),
        "new": sum(r.new for r in results),
        "folded": sum(not r.new for r in results),
    }


# --- one backend, the report ---------------------------------------------------------------


def measure_backend(url, env: dict[str, str], args, workdir: Path) -> dict[str, Any]:
    seed(url)
    result: dict[str, Any] = {}
    result["log_run"] = concurrent_log_run(url, writers=args.writers, count=args.runs_per_writer)
    result["log_runs"] = concurrent_log_run(
        url, writers=args.writers, count=args.runs_per_writer * 10, batch=100
    )
    result["burst"] = signal_burst(url)
    token = dev_token(env["NEURALOPS_DATA_DIR"])  # the server's data dir, so its dev key
    with api_server(env, workdir / "api.log") as base:
        result["mixed"] = drive(
            base, seconds=args.seconds, concurrency=args.concurrency, api_token=token
        )
        result["post_runs"] = drive(
            base, seconds=args.seconds, concurrency=args.concurrency, mix=WRITES, api_token=token
        )
    for phase in ("mixed", "post_runs"):
        ids = result[phase].pop("posted_run_ids")
        rows, distinct = count_runs(url, result[phase]["run_id_prefix"])
        result[phase]["rows_check"] = {"posted": len(ids), "rows": rows, "distinct": distinct}
    return result


def problems(result: dict[str, Any]) -> list[str]:
    found = []
    for phase in ("mixed", "post_runs"):
        r = result.get(phase)
        if not r:
            continue
        if r["errors"] or r["malformed"]:
            found.append(f"{phase}: {r['errors']} errors, {r['malformed']} malformed")
        check = r.get("rows_check")
        if check and not check["posted"] == check["rows"] == check["distinct"]:
            found.append(f"{phase}: POST /runs rows {check}")
    for name in ("log_run", "log_runs"):
        w = result.get(name)
        if w and not w["rows"] == w["distinct_run_ids"] == w["expected_rows"]:
            found.append(f"{name} rows {w}")
    b = result.get("burst")
    if b and (b["new"] != b["fingerprints"] or b["new"] + b["folded"] != b["candidates"]):
        found.append(f"signal burst {b}")
    return found


def markdown(results: dict[str, dict[str, Any]], args, load_before: float) -> str:
    load = f"{load_before:.1f} before, {os.getloadavg()[0]:.1f} after"
    lines = [
        f"`python bench/load.py --seconds {args.seconds} --concurrency {args.concurrency} "
        f"--writers {args.writers} --runs-per-writer {args.runs_per_writer}`, "
        f"{datetime.now(UTC):%Y-%m-%d %H:%M} UTC, on this project's "
        "2-core machine **shared with 4 other engineers' builds and tests**: the figures are "
        "noisy (expect ±50 % from run to run) and the load driver, the API and the database "
        f"share the same two cores (1-minute load average {load}). Compare orders of "
        "magnitude, not digits.",
        "",
        "The API is `neuralops api` (one uvicorn worker; FastAPI runs the sync handlers in its "
        f"thread pool) on a free loopback port; this script drives it from a second process "
        f"with {args.concurrency} threads, one keep-alive connection each, for {args.seconds} s "
        "a phase. `POST /recommend` uses the hashing embedder (`NEURALOPS_EMBEDDER=hashing`); "
        "MiniLM would add its inference to every call. Every response is checked: 2xx and a "
        "body that parses as the endpoint's model.",
        "",
        "| backend | phase | endpoint | requests | req/s | p50 (ms) | p99 (ms) | errors |",
        "| --- | --- | --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    for backend, r in results.items():
        for phase in ("mixed", "post_runs"):
            for name, e in r[phase]["endpoints"].items():
                lines.append(
                    f"| {backend} | {phase} | `{name}` | {e['requests']:,} | {e['rps']:,.0f} "
                    f"| {e['p50_ms']} | {e['p99_ms']} | {e['errors'] + e['malformed']} |"
                )
    lines += [
        "",
        "Run logger, concurrent writers: separate processes call `runs.log_run` (one "
        "transaction a run, as a flow hook does) or `runs.log_runs` (batches of 100); every "
        "10th run upserts one of 5 run ids all writers share. Rows are counted after: lost rows "
        "or duplicated upserts would show. `POST /runs` is the API's `post_runs` phase above.",
        "",
        "| backend | writers | call | runs | runs/s | rows (expected) | distinct run ids |",
        "| --- | ---: | --- | ---: | ---: | ---: | ---: |",
    ]
    for backend, r in results.items():
        for name in ("log_run", "log_runs"):
            w = r[name]
            call = "`log_run`" if w["batch"] == 1 else f"`log_runs` x{w['batch']}"
            lines.append(
                f"| {backend} | {w['writers']} | {call} | {w['runs']:,} | {w['runs_per_s']:,.0f} "
                f"| {w['rows']:,} ({w['expected_rows']:,}) | {w['distinct_run_ids']:,} |"
            )
        check = r["post_runs"]["rows_check"]
        lines.append(
            f"| {backend} | {args.concurrency} HTTP threads | `POST /runs` | {check['posted']:,} "
            f"distinct | {r['post_runs']['endpoints']['POST /runs']['rps']:,.0f} "
            f"| {check['rows']:,} ({check['posted']:,}) | {check['distinct']:,} |"
        )
    lines += [
        "",
        "Signal burst: 1,000 candidates for 5 fingerprints (one episode), recorded by 8 threads "
        "in 200 `record_signals` calls of 5 (one per fingerprint), cooldown 30m.",
        "",
        "| backend | seconds | new signals | folded repeats |",
        "| --- | ---: | ---: | ---: |",
    ]
    for backend, r in results.items():
        b = r["burst"]
        lines.append(f"| {backend} | {b['seconds']} | {b['new']} | {b['folded']} |")
    return "\n".join(lines)


def postgres_database(dsn: str):
    """A fresh database on the server at ``dsn`` (dropped on exit), or None if unreachable."""
    import sqlalchemy as sa
    from sqlalchemy.engine import make_url

    admin = make_url(dsn).set(drivername="postgresql+psycopg")
    engine = sa.create_engine(
        admin, isolation_level="AUTOCOMMIT", connect_args={"connect_timeout": 3}
    )
    name = f"neuralops_load_{uuid.uuid4().hex[:8]}"

    @contextlib.contextmanager
    def scope():
        with engine.connect() as conn:
            conn.execute(sa.text(f"CREATE DATABASE {name}"))
        try:
            yield admin.set(database=name)
        finally:
            from neuralops import db

            db.dispose_engines()
            with engine.connect() as conn:
                conn.execute(sa.text(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
            engine.dispose()

    try:
        with engine.connect():
            pass
    except sa.exc.OperationalError as exc:
        print(f"PostgreSQL skipped: {exc.orig}", file=sys.stderr)
        return None
    return scope()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=10.0, help="Per API phase.")
    parser.add_argument("--concurrency", type=int, default=16, help="Driver threads.")
    parser.add_argument("--writers", type=int, default=8, help="log_run processes.")
    parser.add_argument("--runs-per-writer", type=int, default=500)
    parser.add_argument("--backends", default="sqlite,postgresql")
    parser.add_argument("--pg", default="postgresql+psycopg://postgres@127.0.0.1:5432/test")
    parser.add_argument("--embedder", default="hashing", choices=["hashing", "auto", "minilm"])
    parser.add_argument("--url", help="Drive this running API instead (mixed phase only).")
    parser.add_argument(
        "--api-token",
        default=os.environ.get("NEURALOPS_API_TOKEN"),
        help="Bearer token for --url (scopes runs:write runs:read signals:read recommend); "
        "default NEURALOPS_API_TOKEN, else a DEV ONLY one from NEURALOPS_DATA_DIR's dev key.",
    )
    parser.add_argument("--json", type=Path, help="Write the figures here too.")
    parser.add_argument("--no-report", action="store_true", help="Leave reports/load.md.")
    args = parser.parse_args()
    load_before = os.getloadavg()[0]

    if args.url:
        mixed = drive(
            args.url,
            seconds=args.seconds,
            concurrency=args.concurrency,
            api_token=args.api_token,
        )
        results = {"api": {"mixed": mixed}}
        print(json.dumps(mixed["endpoints"], indent=2))
    else:
        results = {}
        for backend in args.backends.split(","):
            with tempfile.TemporaryDirectory() as tmp:
                env = {
                    **os.environ,
                    "NEURALOPS_DATA_DIR": tmp,
                    "NEURALOPS_EMBEDDER": args.embedder,
                    "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
                }
                env.pop("POSTGRES_DSN", None)
                env.pop("NEURALOPS_POSTGRES_DSN", None)
                if backend == "sqlite":
                    from sqlalchemy.engine import URL

                    url = URL.create("sqlite+pysqlite", database=f"{tmp}/neuralops.db")
                    results["SQLite (WAL)"] = measure_backend(url, env, args, Path(tmp))
                elif backend == "postgresql":
                    scope = postgres_database(args.pg)
                    if scope is None:
                        continue
                    with scope as url:
                        env["POSTGRES_DSN"] = url.render_as_string(hide_password=False)
                        results["PostgreSQL"] = measure_backend(url, env, args, Path(tmp))
                else:
                    raise SystemExit(f"unknown backend {backend!r}")
        text = markdown(results, args, load_before)
        print(text)
        if not args.no_report:
            write_section(REPORT, "load", text, title="Load: API, run logger, signal burst")
    if args.json:
        args.json.write_text(json.dumps(results, indent=2, default=str))
    found = [f"{backend}: {p}" for backend, r in results.items() for p in problems(r)]
    for problem in found:
        print(f"PROBLEM {problem}", file=sys.stderr)
    sys.exit(1 if found else 0)


if __name__ == "__main__":
    main()
