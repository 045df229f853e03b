"""Detection flows: `detect` (every rule, on a schedule) and `analyze` (one ad-hoc query).

`detect` runs its per-rule tasks on the task runner the settings choose when each run
starts: Prefect's thread pool by default, or a Dask cluster (``NEURALOPS_DASK_ADDRESS``).
"""

from __future__ import annotations

from typing import Any

from prefect import flow
from prefect.artifacts import create_markdown_artifact, create_table_artifact
from prefect.context import FlowRunContext
from prefect.task_runners import TaskRunner, ThreadPoolTaskRunner

from flows.forms import param
from neuralops import evidence, signals
from neuralops.errors import ConfigError, Unavailable
from neuralops.hooks import run_logger_hooks
from neuralops.settings import get_settings
from tasks.detection import (
    emit_signal_events,
    find_rule_anomalies,
    metric_source,
    query_rule,
    record_signals,
)

DASK_INSTALL_HINT = "pip install 'neuralops[dask]'"


def detection_task_runner(dask_address: str | None) -> TaskRunner:
    """The task runner for detect's per-rule tasks: Prefect's thread pool without an
    address, a temporary ``distributed.LocalCluster`` for ``local``, else the Dask scheduler
    at that address (``tcp://host:8786``)."""
    if not dask_address:
        return ThreadPoolTaskRunner()
    try:
        from prefect_dask import DaskTaskRunner
    except ImportError as exc:
        raise ConfigError(
            f"NEURALOPS_DASK_ADDRESS is set ({dask_address}) but prefect-dask is not "
            f"installed: {DASK_INSTALL_HINT}, or unset NEURALOPS_DASK_ADDRESS"
        ) from exc
    if dask_address == "local":
        return DaskTaskRunner()
    return DaskTaskRunner(address=dask_address)


class SettingsTaskRunner(TaskRunner):
    """A task runner chosen from the settings when a flow run starts, not at import.

    ``@flow(task_runner=...)`` is fixed when the module is imported. The flow engine
    enters a ``duplicate()`` of the flow's runner for each run; this one then picks the
    runner that ``NEURALOPS_DASK_ADDRESS`` names at that moment and delegates to it. A
    runner that cannot be had (prefect-dask missing) fails the run at its first task with
    the fix, rather than in the engine's setup, which would leave the run Running.
    ``detect.with_options(task_runner=...)`` still overrides all of this.
    """

    def __init__(self) -> None:
        super().__init__()
        self._runner: TaskRunner | None = None
        self._error: ConfigError | None = None
        self._address: str | None = None

    @property
    def runner(self) -> TaskRunner | None:
        """The runner this run's tasks go to (None until entered)."""
        return self._runner

    def duplicate(self) -> SettingsTaskRunner:
        return type(self)()

    def __enter__(self) -> SettingsTaskRunner:
        super().__enter__()
        try:
            self._address = get_settings().dask_address
            self._runner = detection_task_runner(self._address).__enter__()
        except ConfigError as exc:
            self._error = exc
        return self

    def __exit__(self, exc_type: Any, exc_value: Any, traceback: Any) -> None:
        runner, self._runner, self._error = self._runner, None, None
        try:
            if runner is not None:
                runner.__exit__(exc_type, exc_value, traceback)
        finally:
            super().__exit__(exc_type, exc_value, traceback)

    def check(self) -> None:
        """Raise now what the first task would: the runner this run cannot have."""
        if self._error is not None:
            raise self._error

    def _started_runner(self) -> TaskRunner:
        self.check()
        if self._runner is None:
            raise RuntimeError("The task runner must be started before submitting work.")
        return self._runner

    def submit(self, task, parameters, wait_for=None, dependencies=None):  # type: ignore[override]
        runner = self._started_runner()
        try:
            return runner.submit(task, parameters, wait_for, dependencies)
        except OSError as exc:  # Dask connects on the first submit
            if not self._address or self._address == "local":
                raise
            raise Unavailable(
                f"the Dask scheduler at {self._address} (NEURALOPS_DASK_ADDRESS) is "
                f"unreachable: {exc}"
            ) from exc

    def map(self, task, parameters, wait_for=None):  # type: ignore[override]
        return self._started_runner().map(task, parameters, wait_for)


@flow(name="detect", log_prints=False, task_runner=SettingsTaskRunner(), **run_logger_hooks())
def detect(rules_file: str | None = None, prometheus_block: str | None = None) -> dict[str, int]:
    """Run every rule: query each, score its series, record deduplicated signals, emit events.

    ``prometheus_block`` names a NeuralOps Prometheus block (edited in the UI); without it the
    settings choose the source. All queries finish before anything is written: a Prometheus
    outage (after retries) fails the run and writes no partial signals; the next run covers
    the same span again. The per-rule query and scoring tasks run on the thread pool, or on
    Dask when ``NEURALOPS_DASK_ADDRESS`` is set (``SettingsTaskRunner``).
    """
    context = FlowRunContext.get()
    if context is not None and isinstance(context.task_runner, SettingsTaskRunner):
        context.task_runner.check()  # no Dask to be had: fail before touching anything
    rules = signals.load_rules(rules_file or get_settings().rules_file)
    source = metric_source(prometheus_block)
    try:
        end = source.now()
    finally:
        source.close()
    queries = {rule.name: query_rule.submit(rule, end, prometheus_block) for rule in rules}
    batches = {name: future.result() for name, future in queries.items()}  # raises on outage
    by_name = {rule.name: rule for rule in rules}
    found = [
        find_rule_anomalies.submit(
            rule, batches[rule.name], [(by_name[r], batches[r]) for r in rule.related]
        )
        for rule in rules
    ]
    candidates = [candidate for future in found for candidate in future.result()]
    recorded = record_signals(candidates, {rule.name: rule.cooldown for rule in rules})
    new = [r.signal for r in recorded if r.new]
    emit_signal_events(new)
    create_table_artifact(
        key="detect-signals",
        table=[_row(r.signal, r.new) for r in recorded]
        or [{"result": f"no anomalies in {len(rules)} rules"}],
        description=f"Signals of this detect run: {len(new)} new, "
        f"{len(recorded) - len(new)} repeats folded into earlier signals",
    )
    return {
        "rules": len(rules),
        "series": sum(len(b.labels) for b in batches.values()),
        "anomalies": len(candidates),
        "new_signals": len(new),
        "suppressed": len(recorded) - len(new),
    }


# Matches the demo's payments memory whichever source it runs on: the raw cAdvisor name in
# Prometheus, the recording-rule name in the replay file (which answers selectors only).
DEMO_QUERY = (
    '{__name__=~"container_memory_working_set_bytes|'
    'namespace_pod:container_memory_working_set_bytes:sum", namespace="payments"}'
)


@flow(name="analyze", log_prints=False, **run_logger_hooks())
def analyze(
    query: str = param(
        DEMO_QUERY,
        "PromQL query",
        "What to judge, e.g. sum by (namespace, pod) (container_memory_working_set_bytes) "
        "on Prometheus; a replay file (NEURALOPS_REPLAY_FILE) answers selectors only, such "
        'as namespace_pod:container_memory_working_set_bytes:sum{namespace="payments"}. '
        "The default reads the demo's payments memory on either.",
        minLength=1,
    ),
    lookback: str = param(
        "3h",
        "Lookback",
        "History the baseline is computed from: 30m, 1h, 3h, 1d.",
    ),
    labels: dict[str, str] = param(
        {},
        "Labels for a signal",
        "Added to the signal recorded when the query is anomalous, e.g. team: payments.",
    ),
    method: signals.Method = param(
        "combined",
        "Detector",
        "combined (the default: level, time-of-day context and level shifts), zscore, ewma, "
        "robust, ensemble (median of the first three), context, change, variance, shape or "
        "likelihood.",
    ),
    step: str = param(
        "",
        "Step",
        "Resolution of the range query (30s, 1m); empty: the lookback / 120, at least 15s.",
    ),
    recent: str = param(
        "",
        "Recent",
        "How recent an anomaly must be to count (e.g. 10m); empty: 5m, at least one step.",
    ),
    prometheus_block: str = param(
        "",
        "Prometheus block",
        "Name of a NeuralOps Prometheus block to query; empty: the worker's PROM_URL, or "
        "its replay file.",
    ),
) -> dict[str, Any]:
    """Is this query anomalous now? Returns score, method, z, a hint and the most anomalous
    series' last points, and publishes them as the ``analysis`` artifact; records a signal
    (and emits its event) when the score reaches the threshold."""
    request = signals.AnalyzeRequest(
        query=query,
        lookback=lookback,
        labels=labels or {},
        method=method or None,
        step=step or None,
        recent=recent or None,
    )
    source = metric_source(prometheus_block or None)
    try:
        result = signals.analyze(request, source)
    finally:
        source.close()
    if result.new_signal and result.signal_id is not None:
        emit_signal_events([signals.get_signal(result.signal_id)])
    create_markdown_artifact(
        key="analysis",
        markdown=evidence.analysis_markdown(result, lookback=lookback),
        description=f"Ad-hoc analysis of {query[:80]}: score, hint and the series' last points",
    )
    return result.model_dump(mode="json")


def _row(signal: signals.Signal, new: bool) -> dict[str, Any]:
    return {
        "rule": signal.rule,
        "series": ", ".join(f"{k}={v}" for k, v in sorted(signal.labels.items())),
        "score": round(signal.score, 4),
        "z": None if signal.z is None else round(signal.z, 2),
        "hint": signal.hint,
        "status": "new" if new else f"repeat (seen {signal.occurrences}x)",
        "signal id": str(signal.id),
    }
