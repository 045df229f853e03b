"""Load (issue 9, point 2): a signal burst, concurrent run-logger writers, and the real API
driven from a second process. Counts and well-formedness only: no timing assertions (the
figures are bench/load.py's, in reports/load.md)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from conftest import free_port, stop_process, wait_until
from sqlalchemy import func, select
from sqlalchemy.engine import URL

from neuralops import incidents, registry, remediation, runs, signals
from neuralops.db import session_scope
from neuralops.db.models import WorkflowRun

ROOT = Path(__file__).resolve().parents[1]
RULE = "load-burst"
FINGERPRINTS = 5


def burst(total: int, base: datetime, *, first_minute: int = 1) -> list[list[signals.SignalIn]]:
    """``total`` candidates over FINGERPRINTS series, as ``total / FINGERPRINTS`` detect runs
    would find them: one call per run, one candidate per series; one episode starting at
    ``base``, each run seeing it a minute longer (so every window_end is distinct)."""
    calls = []
    for run in range(total // FINGERPRINTS):
        end = base + timedelta(minutes=first_minute + run)
        calls.append(
            [
                signals.SignalIn(
                    rule=RULE,
                    query="up",
                    labels={"service": f"svc-{s}"},
                    value=float(run),
                    score=0.999,
                    z=8.0,
                    method="ewma",
                    hint="burst",
                    window_start=base,
                    window_end=end,
                    fingerprint=signals.fingerprint(RULE, {"service": f"svc-{s}"}),
                )
                for s in range(FINGERPRINTS)
            ]
        )
    return calls


def record_concurrently(
    calls: list[list[signals.SignalIn]], cooldown: timedelta
) -> list[tuple[signals.SignalIn, signals.Recorded]]:
    """Each call from one of 8 threads (each its own connection), as concurrent detect runs."""

    def record(call: list[signals.SignalIn]):
        recorded = signals.record_signals(call, {RULE: cooldown})
        return list(zip(call, recorded, strict=True))  # one per fingerprint, in call order

    with ThreadPoolExecutor(max_workers=8) as pool:
        return [pair for pairs in pool.map(record, calls) for pair in pairs]


def emitted_events(monkeypatch: pytest.MonkeyPatch, recorded) -> list[dict]:
    """The events the detect flow would emit for these results: flows/detection.py passes
    the new ones to emit_signal_events, whose emit_event is captured here."""
    from tasks import detection

    events: list[dict] = []
    monkeypatch.setattr(detection, "emit_event", lambda **event: events.append(event))
    detection.emit_signal_events.fn([r.signal for _, r in recorded if r.new])
    return events


@pytest.mark.slow
def test_burst_of_1000_candidates_makes_one_signal_and_one_event_per_fingerprint(
    database_url: URL, monkeypatch: pytest.MonkeyPatch
) -> None:
    base = datetime.now(UTC).replace(microsecond=0) - timedelta(hours=2)
    recorded = record_concurrently(burst(1000, base), timedelta(minutes=30))

    assert len(recorded) == 1000
    assert sum(r.new for _, r in recorded) == FINGERPRINTS  # one new signal per fingerprint
    stored = signals.list_signals(rule=RULE, limit=1000)
    assert len(stored) == FINGERPRINTS
    for signal in stored:
        mine = [(c, r) for c, r in recorded if c.fingerprint == signal.fingerprint]
        assert len(mine) == 200 and sum(r.new for _, r in mine) == 1
        # last_seen_at only moves forward: it ends at the longest window seen...
        assert signal.last_seen_at == max(c.window_end for c, _ in mine)
        # ...and every call that moved it counted one occurrence (no lost update).
        moved = [c for c, r in mine if not r.new and r.signal.last_seen_at == c.window_end]
        assert signal.occurrences == 1 + len(moved)
    assert sum(n for r, _, n, _ in signals.signal_counts() if r == RULE) == FINGERPRINTS

    events = emitted_events(monkeypatch, recorded)
    assert len(events) == FINGERPRINTS  # the remediate trigger fires once per fingerprint
    assert sorted(e["resource"]["neuralops.fingerprint"] for e in events) == sorted(
        s.fingerprint for s in stored
    )
    assert {e["resource"]["prefect.resource.id"] for e in events} == {
        f"neuralops.signal.{s.id}" for s in stored
    }

    # A new episode within the cooldown folds into the same signals: no event.
    later = base + timedelta(minutes=300)
    again = record_concurrently(burst(250, later), timedelta(minutes=30))
    assert not any(r.new for _, r in again)
    assert emitted_events(monkeypatch, again) == []
    assert len(signals.list_signals(rule=RULE, limit=1000)) == FINGERPRINTS

    # Past the cooldown (0 here), a new episode is one new signal per fingerprint again,
    # however many concurrent runs report it.
    latest = base + timedelta(minutes=600)
    third = record_concurrently(burst(250, latest), timedelta(0))
    assert sum(r.new for _, r in third) == FINGERPRINTS
    assert len(emitted_events(monkeypatch, third)) == FINGERPRINTS
    assert len(signals.list_signals(rule=RULE, limit=1000)) == 2 * FINGERPRINTS


def test_a_second_suggest_for_a_signal_with_an_open_incident_opens_none(
    signed_catalogue, tmp_path: Path
) -> None:
    from neuralops.embedding import HashingEmbedder
    from neuralops.recommend import Recommender
    from neuralops.vectorstore import VectorStore

    recommender = Recommender(
        VectorStore(str(tmp_path / "lancedb")), HashingEmbedder(), signed_catalogue["manifests"]
    )
    signal_id = str(signed_catalogue["signals"]["oom-kills"].id)
    parameters = {"container": "api", "memory_limit": "2Gi"}
    first = remediation.suggest(recommender, signal_id=signal_id, parameters=parameters)
    assert first.state not in incidents.TERMINAL_STATES
    with pytest.raises(incidents.AlreadyOpen) as refused:
        remediation.suggest(recommender, signal_id=signal_id, parameters=parameters)
    assert refused.value.incident.id == first.id and str(first.id) in str(refused.value)
    # The database holds the line too, for two runs racing past the check.
    with pytest.raises(incidents.AlreadyOpen):
        incidents.create(
            signal_id=signal_id, playbook_id=None, recommendations=[], parameters={}, actor="t"
        )
    open_ones = [
        i
        for i in incidents.list_incidents(limit=1000)
        if str(i.signal_id) == signal_id and i.state not in incidents.TERMINAL_STATES
    ]
    assert [i.id for i in open_ones] == [first.id]
    # Once it has ended, the signal can be remediated again.
    incidents.transition(first.id, "dry_run_failed", actor="t", payload={"reason": "test"})
    again = remediation.suggest(recommender, signal_id=signal_id, parameters=parameters)
    assert again.id != first.id


def _run(run_id: str, n: int, wpk_id: str = "restart-deployment") -> dict:
    return {
        "wpk_id": wpk_id,
        "run_id": run_id,
        "status": "succeeded" if n % 7 else "failed",
        "duration_ms": 1000 + n,
        "created_at": (datetime(2026, 11, 1, tzinfo=UTC) + timedelta(seconds=n)).isoformat(),
    }


def _rows(prefix: str) -> tuple[int, int]:
    with session_scope() as session:
        rows, distinct = session.execute(
            select(func.count(), func.count(func.distinct(WorkflowRun.run_id))).where(
                WorkflowRun.run_id.startswith(prefix)
            )
        ).one()
    return rows, distinct


@pytest.mark.slow
def test_concurrent_run_writers_lose_no_rows_and_upserts_do_not_duplicate(
    database_url: URL,
) -> None:
    registry.add_playbooks(registry.load_manifests([registry.catalogue_dir()]))
    writers, per_writer = 8, 30

    def single(writer: int) -> None:  # one transaction a run, as a flow hook logs
        for n in range(per_writer):
            # every 5th call re-logs one of 3 run ids every writer shares, with the same
            # content (a finished run is immutable: a different one would be a Conflict)
            if n % 5 == 0:
                runs.log_run(_run(f"s-shared-{n % 3}", n % 3))
            else:
                runs.log_run(_run(f"s-{writer}-{n}", writer * 1000 + n))

    def batched(writer: int) -> None:  # log_runs batches overlapping other writers' batches
        for b in range(4):
            runs.log_runs(
                [_run(f"b-{writer}-{b}-{n}" if n % 10 else f"b-shared-{n}", n) for n in range(50)]
            )

    with ThreadPoolExecutor(max_workers=writers + 4) as pool:
        jobs = [pool.submit(single, w) for w in range(writers)]
        jobs += [pool.submit(batched, w) for w in range(4)]
        for job in jobs:
            job.result()  # re-raises a writer's error (a lock timeout, an IntegrityError)

    assert _rows("s-") == (writers * (per_writer - per_writer // 5) + 3,) * 2
    assert _rows("b-") == (4 * 4 * 45 + 5,) * 2
    info = registry.describe_workflow("restart-deployment")
    assert info.run_count == writers * (per_writer - per_writer // 5) + 3 + 4 * 4 * 45 + 5
    newest = runs.list_runs("restart-deployment", limit=1).items[0].run_id
    assert info.latest_run_id == newest


@pytest.mark.slow
def test_api_under_concurrent_load_from_a_second_process(
    database_url: URL, signed_catalogue, tmp_path: Path
) -> None:
    """The real `neuralops api` against a seeded database; bench/load.py drives /signals,
    /recommend, /workflows/{id}/runs and POST /runs from 6 threads of another process."""
    from neuralops.demo import demo_history

    runs.log_runs(demo_history(signed_catalogue["manifests"], runs_per_playbook=8))
    port = free_port()
    env = {**os.environ, "NEURALOPS_EMBEDDER": "hashing"}  # the tests' DB settings included
    log = (tmp_path / "api.log").open("wb")
    server = subprocess.Popen(
        [sys.executable, "-m", "neuralops", "api", "--host", "127.0.0.1", "--port", str(port)],
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        import httpx

        def healthy() -> bool:
            assert server.poll() is None, (tmp_path / "api.log").read_text()
            try:
                return httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=1).is_success
            except httpx.HTTPError:
                return False

        wait_until(healthy, timeout=60, what="the API to answer /healthz")
        figures = tmp_path / "load.json"
        driver = subprocess.run(
            [
                sys.executable,
                str(ROOT / "bench" / "load.py"),
                "--url",
                f"http://127.0.0.1:{port}",
                "--seconds",
                "2",
                "--concurrency",
                "6",
                "--json",
                str(figures),
            ],
            capture_output=True,
            text=True,
            timeout=120,
            env=env,
        )
    finally:
        stop_process(server)
        log.close()
    assert driver.returncode == 0, driver.stdout + driver.stderr
    mixed = json.loads(figures.read_text())["api"]["mixed"]
    endpoints = mixed["endpoints"]
    assert set(endpoints) == {
        "GET /signals",
        "POST /recommend",
        "GET /workflows/{id}/runs",
        "POST /runs",
    }
    for name, e in endpoints.items():
        assert e["requests"] > 0, name
        assert (e["errors"], e["malformed"]) == (0, 0), (name, e["first_problems"])
    # Every POST /runs answered 201 and is a row, once (shared run ids were upserted).
    posted = mixed["posted_run_ids"]
    assert len(posted) == mixed["posted_runs"] > 0
    assert _rows(mixed["run_id_prefix"]) == (len(posted), len(posted))
