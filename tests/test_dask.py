"""The detect flow on a Dask cluster (NEURALOPS_DASK_ADDRESS): same signals as the thread pool.

The runner is chosen from the settings when each flow run starts (``SettingsTaskRunner``),
so these tests change the environment between runs of the same imported flow.
"""

from __future__ import annotations

import math
import shutil
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

import pytest
from conftest import rules_file
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import FlowFilter, FlowFilterName
from prefect.client.schemas.sorting import FlowRunSort
from prefect.task_runners import ThreadPoolTaskRunner

import flows.detection as detection_flows
from neuralops import db, signals
from neuralops.errors import ConfigError, Unavailable
from neuralops.local_prometheus import free_port
from neuralops.settings import get_settings
from neuralops.sources import PrometheusSource
from tasks.detection import query_rule


def reset_settings() -> None:
    get_settings.cache_clear()
    db.dispose_engines()


def test_the_runner_is_chosen_from_the_settings_when_a_run_starts(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from prefect_dask import DaskTaskRunner

    shim = detection_flows.detect.task_runner
    assert isinstance(shim, detection_flows.SettingsTaskRunner)
    # What the flow engine does for each run: enter a duplicate of the flow's runner.
    with shim.duplicate() as entered:
        assert isinstance(entered.runner, ThreadPoolTaskRunner)  # unset: Prefect's default

    monkeypatch.setenv("NEURALOPS_DASK_ADDRESS", "tcp://10.0.0.7:8786")
    reset_settings()
    with shim.duplicate() as entered:  # entering does not connect yet (first submit does)
        assert isinstance(entered.runner, DaskTaskRunner)
        assert entered.runner.address == "tcp://10.0.0.7:8786"

    monkeypatch.setenv("NEURALOPS_DASK_ADDRESS", "local")
    reset_settings()
    runner = detection_flows.detection_task_runner(get_settings().dask_address)
    assert isinstance(runner, DaskTaskRunner) and runner.address is None  # a LocalCluster


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("http://dask:8787", "not its dashboard URL"),
        ("grpc://dask:8786", "scheme 'grpc'"),
        ("dask-scheduler", "host and port"),
    ],
)
def test_a_bad_address_names_the_variable(
    monkeypatch: pytest.MonkeyPatch, value: str, message: str
) -> None:
    monkeypatch.setenv("NEURALOPS_DASK_ADDRESS", value)
    with pytest.raises(ConfigError, match=f"NEURALOPS_DASK_ADDRESS: .*{message}"):
        get_settings()


def test_without_prefect_dask_the_error_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "prefect_dask", None)  # import fails as if not installed
    with pytest.raises(ConfigError, match=r"pip install 'neuralops\[dask\]'"):
        detection_flows.detection_task_runner("tcp://127.0.0.1:8786")
    assert isinstance(detection_flows.detection_task_runner(None), ThreadPoolTaskRunner)


@pytest.mark.slow
def test_a_run_without_prefect_dask_fails_with_that_error(
    prefect_server, sqlite_url, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "prefect_dask", None)
    monkeypatch.setenv("NEURALOPS_DASK_ADDRESS", "local")
    reset_settings()
    with pytest.raises(ConfigError, match=r"pip install 'neuralops\[dask\]'"):
        detection_flows.detect()
    # The run does not stay Running: the server records how it ended, with the fix.
    with get_client(sync_client=True) as client:
        [run] = client.read_flow_runs(
            flow_filter=FlowFilter(name=FlowFilterName(any_=["detect"])),
            sort=FlowRunSort.EXPECTED_START_TIME_DESC,
            limit=1,
        )
    assert run.state is not None and run.state.is_failed()
    assert "neuralops[dask]" in (run.state.message or "")


def test_an_unreachable_scheduler_is_unavailable_and_named(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import dask

    monkeypatch.setenv("NEURALOPS_DASK_ADDRESS", f"tcp://127.0.0.1:{free_port()}")
    reset_settings()
    with (
        dask.config.set({"distributed.comm.timeouts.connect": "1s"}),
        detection_flows.detect.task_runner.duplicate() as runner,
        pytest.raises(
            Unavailable, match=r"scheduler at tcp://127\.0\.0\.1:\d+ \(NEURALOPS_DASK_ADDRESS\)"
        ),
    ):
        runner.submit(query_rule, parameters={})


def signal_facts(found: list[signals.Signal]) -> list[tuple]:
    return sorted(
        (
            s.rule,
            s.fingerprint,
            sorted(s.labels.items()),
            s.window_start,
            s.window_end,
            s.value,
            s.z,
            s.score,
            s.hint,
            [sorted(c.items()) if isinstance(c, dict) else c for c in s.correlated],
        )
        for s in found
    )


def run_detect_in(data_dir: Path, template: Path, rules: Path) -> tuple[dict, list[tuple]]:
    """One detect run on a fresh copy of the migrated database in ``data_dir``."""
    data_dir.mkdir(parents=True)
    shutil.copy(template, data_dir / "neuralops.db")
    reset_settings()
    result = detection_flows.detect(rules_file=str(rules))
    return result, signal_facts(signals.list_signals())


@pytest.mark.slow
def test_detect_on_a_dask_cluster_records_the_same_signals_as_the_thread_pool(
    prefect_server,
    live_prometheus,
    sqlite_template: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from distributed import LocalCluster

    monkeypatch.setenv("PROM_URL", live_prometheus.url)
    # Both runs look at the same span: the range end is pinned to a whole minute.
    end = datetime.fromtimestamp(math.floor(time.time() / 60) * 60, UTC)
    monkeypatch.setattr(PrometheusSource, "now", lambda self: end)
    recent = math.ceil((time.time() - live_prometheus.spike.timestamp) / 60) + 5
    rules = rules_file(tmp_path, recent)

    with LocalCluster(
        processes=False, n_workers=1, threads_per_worker=2, dashboard_address=":0"
    ) as cluster:
        monkeypatch.setenv("NEURALOPS_DASK_ADDRESS", cluster.scheduler_address)
        monkeypatch.setenv("NEURALOPS_DATA_DIR", str(tmp_path / "dask"))
        on_dask, dask_signals = run_detect_in(tmp_path / "dask", sqlite_template, rules)
        # Every per-rule task was computed by this cluster: one query, one scoring per rule.
        computed = {
            name: prefix.state_counts["memory"]
            for name, prefix in cluster.scheduler.task_prefixes.items()
        }
        assert computed == {"query_rule": 2, "find_rule_anomalies": 2}, computed

    monkeypatch.delenv("NEURALOPS_DASK_ADDRESS")
    monkeypatch.setenv("NEURALOPS_DATA_DIR", str(tmp_path / "threads"))
    on_threads, thread_signals = run_detect_in(tmp_path / "threads", sqlite_template, rules)

    assert on_dask == on_threads
    assert on_dask["new_signals"] >= 1
    assert dask_signals == thread_signals
    assert any(fact[0] == "latency-p99" for fact in dask_signals)
