"""The ``neuralops`` command line."""

from __future__ import annotations

import contextlib
import json
import os
import sys
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Literal

import typer
import yaml
from pydantic import ValidationError
from rich.console import Console
from rich.markup import escape
from rich.table import Table
from sqlalchemy.exc import OperationalError, SQLAlchemyError

from neuralops import db, registry, runs
from neuralops.errors import ConfigError, InvalidInput, NeuralOpsError
from neuralops.settings import Settings, get_settings

if TYPE_CHECKING:
    from neuralops.recommend import RecommendResult

app = typer.Typer(
    help="NeuralOps: anomaly signals, playbook recommendations, approved remediation.",
    no_args_is_help=True,
    pretty_exceptions_show_locals=False,  # locals can hold secrets
)
db_app = typer.Typer(help="Database schema (Alembic migrations).", no_args_is_help=True)
playbook_app = typer.Typer(help="The playbook registry.", no_args_is_help=True)
signals_app = typer.Typer(help="Anomaly signals found by detection.", no_args_is_help=True)
seed_app = typer.Typer(help="Synthetic data for demos, tests and benchmarks.", no_args_is_help=True)
etl_app = typer.Typer(
    help="Run history out of the database: export (redacted) and vectorize.", no_args_is_help=True
)
app.add_typer(db_app, name="db")
app.add_typer(playbook_app, name="playbook")
app.add_typer(signals_app, name="signals")
app.add_typer(seed_app, name="seed")
app.add_typer(etl_app, name="etl")
token_app = typer.Typer(help="Approval and API tokens (DEV ONLY helpers).", no_args_is_help=True)
app.add_typer(token_app, name="token")
connector_app = typer.Typer(help="Connect a cluster: register, render.", no_args_is_help=True)
app.add_typer(connector_app, name="connector")
incidents_app = typer.Typer(help="Remediation incidents and their state.", no_args_is_help=True)
app.add_typer(incidents_app, name="incidents")

DEMO_APPROVER = "sre-oncall@example.com"  # the subject of the DEV ONLY token `run` prints
out = Console(soft_wrap=True)
err = Console(stderr=True, soft_wrap=True)


def _lit(value: object) -> str:
    """Data (a path, a message, a label, a pattern) inside a markup string: escaped, so
    ``[a-z0-9]`` prints as written and a stray ``[/]`` cannot raise MarkupError."""
    return escape(str(value))


def main() -> None:
    """Console entry point: errors an operator can fix print as one clear line, exit 2.
    Messages are escaped: a regex or a path with ``[a-z]`` in it prints as it is."""
    try:
        app()
    except NeuralOpsError as exc:
        err.print(f"[red]error:[/] {escape(str(exc))}", highlight=False)
        sys.exit(2)
    except OperationalError:
        # The driver's message can carry the DSN; say where without the password.
        err.print(
            "[red]error:[/] cannot reach the database "
            f"({escape(get_settings().database_label())}): "
            "check POSTGRES_DSN and that the server is up",
            highlight=False,
        )
        sys.exit(2)


_announced: set[str] = set()  # notices already printed by this process


def _announce(settings: Settings) -> None:
    """Which database, once per process, and only where a command touches one (not for
    --help, `token issue-dev`, `detect-file` ...)."""
    if settings.uses_sqlite and "database" not in _announced:
        _announced.add("database")
        err.print(
            f"[dim]POSTGRES_DSN is not set: using {escape(settings.database_label())} "
            "(set POSTGRES_DSN=postgresql://... for PostgreSQL)[/]",
            highlight=False,
        )


def _require_schema(settings: Settings) -> None:
    _announce(settings)
    current, head = db.current_revision(settings.database_url), db.head_revision()
    if current != head:
        raise ConfigError(
            f"database schema is at {current or 'nothing'}, the code needs {head}: "
            "run `neuralops db upgrade`"
        )


# --- the running stack: <data dir>/stack.json (neuralops/stack.py) --------------------------

STACK_FIX = "start the stack with `make run`, or set PREFECT_API_URL / NEURALOPS_DATA_DIR"
_stack_seen: dict[Path, Any] = {}  # data dir → this process's reading of its stack.json


def _use_stack() -> str | None:
    """The Prefect API this process talks to: PREFECT_API_URL when set, else the running
    stack's from ``<data dir>/stack.json``, exported as PREFECT_API_URL before Prefect is
    imported (one dim line says so). A stale or unreadable record is reported, never used.
    None when there is neither (Prefect's own profile may still name a server)."""
    if url := os.environ.get("PREFECT_API_URL"):
        return url
    data_dir = get_settings().data_dir
    if data_dir not in _stack_seen:
        from neuralops import stack

        found = _stack_seen[data_dir] = stack.check(data_dir)
        if found.state in ("stale", "invalid"):
            err.print(
                f"[yellow]warning:[/] not using {escape(str(found.path))}: {escape(found.reason)}",
                highlight=False,
            )
    found = _stack_seen[data_dir]
    if not found.running:
        return None
    url = found.info.prefect_api_url
    os.environ["PREFECT_API_URL"] = url
    get_settings.cache_clear()
    err.print(
        f"[dim]PREFECT_API_URL is not set: using the running stack's Prefect API {url} "
        f"(from {escape(str(found.path))})[/]",
        highlight=False,
    )
    return url


def _guard_runs(incident_id: str) -> None:
    """The first line of commands acting on an existing run (`approve` ...): such a run
    lives on one Prefect server, so the command reaches that one (PREFECT_API_URL, the
    running stack's stack.json, or Prefect's profile) or refuses, naming the fix. Prefect's
    temporary (ephemeral) server is switched off for the process: it would not know the run."""
    url = _use_stack()
    try:
        from neuralops import incidents

        flow_run_id = incidents.get(incident_id).flow_run_id
    except (NeuralOpsError, SQLAlchemyError):
        return  # unknown id, no schema ...: the command itself says so
    if flow_run_id is None:
        return  # decided here, without Prefect
    if "prefect" not in sys.modules:  # read when Prefect loads: too late after that
        os.environ["PREFECT_SERVER_EPHEMERAL_ENABLED"] = "false"
    if url is None:
        from prefect.settings import get_current_settings

        url = get_current_settings().api.url  # a Prefect profile (or a test harness)
    if url is None:
        found = _stack_seen.get(get_settings().data_dir)
        why = found.reason if found is not None else "no stack.json read"
        raise ConfigError(
            f"incident {incident_id} waits in Prefect flow run {flow_run_id}, and this "
            f"terminal has no Prefect server to reach it (PREFECT_API_URL is unset; "
            f"{why}): {STACK_FIX}"
        )
    from neuralops import localstack

    if not localstack.healthy(url):
        raise ConfigError(f"the Prefect API at {url} does not answer: {STACK_FIX}")


# --- listings that fit the terminal ---------------------------------------------------------


@dataclass(frozen=True)
class _Col:
    """A listing's column. ``drop``: 0 is always shown, higher numbers go first when the
    terminal is narrow. ``shrink``: the width it may narrow to (wrapped on words, long words
    folded; with ``cut``, cut with an ellipsis instead); None keeps it whole on one line."""

    header: str
    drop: int = 0
    shrink: int | None = None
    cut: bool = False
    justify: Literal["left", "right"] = "left"


def _print_listing(columns: list[_Col], rows: list[list[str]], *, what: str) -> None:
    """Print rows as a table as wide as the terminal (COLUMNS): the most droppable columns go
    until the rest fit, the shrinkable ones share what is left, a dim line names what was
    left out; `--json` always has every field."""
    from rich import box

    width = out.width
    natural = [max([len(c.header), *(len(row[i]) for row in rows)]) for i, c in enumerate(columns)]
    floor = [
        natural[i] if c.shrink is None else min(natural[i], c.shrink) for i, c in enumerate(columns)
    ]

    def room(shown: list[int]) -> int:  # two spaces between columns
        return width - 2 * (len(shown) - 1)

    keep = list(range(len(columns)))
    for i in sorted(keep, key=lambda i: -columns[i].drop):
        if sum(floor[k] for k in keep) <= room(keep) or columns[i].drop == 0:
            break
        keep.remove(i)
    for i in sorted(set(range(len(columns))) - set(keep), key=lambda i: columns[i].drop):
        trial = sorted([*keep, i])  # a narrow column dropped before a wide one may fit again
        if sum(natural[k] for k in trial) <= room(trial):
            keep = trial
    widths = {i: natural[i] for i in keep}
    if sum(widths.values()) > room(keep):  # shrink: each to its floor, then the spare back
        widths = {i: floor[i] for i in keep}
        spare = room(keep) - sum(widths.values())
        for i in sorted(keep, key=lambda i: columns[i].drop):
            grant = max(0, min(spare, natural[i] - widths[i]))
            widths[i] += grant
            spare -= grant
    table = Table(
        box=box.SIMPLE_HEAD, show_edge=False, pad_edge=False, padding=(0, 1, 0, 0)
    )  # between columns: one space of padding and the (blank) divider
    for i in keep:
        col = columns[i]
        table.add_column(
            col.header,
            justify=col.justify,
            no_wrap=col.shrink is None or col.cut,
            overflow="ellipsis" if col.cut else "fold",
            width=widths[i] if widths[i] < natural[i] else None,
        )
    for row in rows:
        table.add_row(*(escape(row[i]) for i in keep))
    out.print(table)
    hidden = [columns[i].header for i in range(len(columns)) if i not in keep]
    if hidden:
        out.print(
            f"[dim]not shown at {width} columns: {escape(', '.join(hidden))} "
            f"(`{what} --json` has every field)[/]",
            highlight=False,
            soft_wrap=False,
        )


# --- the main job ----------------------------------------------------------------------------


@app.command()
def run(
    host: Annotated[str, typer.Option(help="Interface of the local Prefect server.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(min=1, max=65535, help="Its port (the UI's too).")] = 4200,
    workers: Annotated[int, typer.Option(min=1, max=8, help="Workers on neuralops-local.")] = 1,
    runs_per_playbook: Annotated[int, typer.Option(min=1, max=10_000)] = 24,
    wait: Annotated[
        bool, typer.Option(help="Keep everything running until Ctrl-C (--no-wait: stop at once).")
    ] = True,
) -> None:
    """The main job on this machine: the whole loop, from a Prometheus incident to a
    remediation waiting for your approval in the Prefect UI.

    Starts (or reuses) a local Prefect server, migrates the database, creates the work pool and
    blocks, deploys prefect.yaml, starts the workers, seeds the demo (signed catalogue, run
    history, vectors, metrics with an OOM-kill incident), runs detection, and waits for the
    remediation it triggers to pause for approval. Ctrl-C stops what it started."""
    import signal as signals_

    from neuralops import localstack
    from neuralops import stack as stack_file

    settings = get_settings()
    api_url = os.environ.get("PREFECT_API_URL") or f"http://{host}:{port}/api"
    _refuse_a_second_stack(settings)
    stack = localstack.Stack(settings.data_dir / "logs")
    steps = 9
    started_at = datetime.now(UTC)

    def step(n: int, text: str) -> None:
        out.print(f"[green]✓[/] {_lit(f'[{n}/{steps}] {text}')}", highlight=False)

    def stop_on_sigterm(*_: object) -> None:
        raise KeyboardInterrupt  # `kill` cleans up like Ctrl-C

    signals_.signal(signals_.SIGTERM, stop_on_sigterm)
    prometheus = None
    began = time.monotonic()
    out.rule("NeuralOps")
    out.print(
        f"data dir  {_lit(settings.data_dir)}\ndatabase  {_lit(settings.database_label())}",
        highlight=False,
    )
    try:
        # 1. the Prefect server: reuse one that answers, else start ours (SQLite in the data dir)
        if localstack.healthy(api_url):
            step(1, f"Prefect server at {api_url} (reused: already running)")
        elif "PREFECT_API_URL" in os.environ:
            raise ConfigError(
                f"PREFECT_API_URL={api_url} does not answer: start that server, or unset "
                "PREFECT_API_URL to let `neuralops run` start a local one"
            )
        else:
            server_env = os.environ | {
                "PREFECT_HOME": str(settings.data_dir / "prefect"),
                "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
                "PREFECT_UI_API_URL": api_url,  # else the UI calls port 4200 whatever --port says
            }
            with out.status(f"[1/{steps}] starting the Prefect server (about 25 s the first time)"):
                server = stack.start(
                    "prefect-server", localstack.server_argv(host, port), server_env
                )
                waited = localstack.wait_healthy(api_url, server)
            step(1, f"Prefect server at {api_url} (started in {waited:.0f} s; log {server.log})")
        _record_stack(settings, api_url, None, started_at)  # other terminals find it from now
        os.environ["PREFECT_API_URL"] = api_url  # before Prefect loads: every client uses it
        os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")

        with out.status(f"[2/{steps}] applying database migrations"):
            before, after = db.upgrade(settings.database_url)
        step(2, f"schema at revision {after}" + _was(before, after))

        from flows import loop
        from tasks.registry import register_block_types

        _quiet_prefect_console()

        created = loop.ensure_local_pool()
        kinds = register_block_types.fn()
        step(
            3,
            f"work pool {loop.LOCAL_POOL} ({'created' if created else 'exists'}); "
            f"block types: {', '.join(kinds)}",
        )

        # 4. metrics with an incident: Prometheus when installed, else a replay file
        flow_env = {
            "PREFECT_API_URL": api_url,
            "NEURALOPS_DATA_DIR": str(settings.data_dir),
            # The demo's runtime is the mock cluster: nothing to wait for before re-checking.
            "NEURALOPS_SETTLE_S": os.environ.get("NEURALOPS_SETTLE_S", "5"),
            # The demo learns from its synthetic history (provenance seed), which nobody can
            # verify: this demo trusts it, explicitly (docs/run-history.md). Your own
            # trusted writers are kept.
            "NEURALOPS_TRUSTED_WRITERS": ",".join(sorted(settings.trusted | {runs.SEED})),
        }
        if settings.prom_url:
            step(4, f"metrics: your Prometheus at {settings.prom_url} (PROM_URL; no demo data)")
        else:
            prometheus, flow_env_metrics, where = _demo_metrics(settings)
            flow_env |= flow_env_metrics
            if prometheus is not None:
                loop.save_prometheus_block(prometheus.url)
            step(4, f"metrics: {where} (loaded just before detection)")
        prometheus_url = settings.prom_url or (prometheus.url if prometheus is not None else None)
        _record_stack(settings, api_url, prometheus_url, started_at)
        os.environ.update(flow_env)
        get_settings.cache_clear()

        with out.status(f"[5/{steps}] prefect deploy --all (every deployment of prefect.yaml)"):
            localstack.deploy(os.environ, settings.data_dir / "logs" / "prefect-deploy.log")
        step(5, "deployed prefect.yaml: schedules and triggers included")

        worker_env = os.environ | {"PREFECT_WORKER_QUERY_SECONDS": "5"}
        for n in range(1, workers + 1):
            name = f"{loop.LOCAL_POOL}-{n}"
            stack.start(f"worker-{n}", localstack.worker_argv(loop.LOCAL_POOL, name), worker_env)
        step(6, f"{workers} worker(s) on {loop.LOCAL_POOL} (logs in {stack.logs})")

        with out.status(f"[7/{steps}] seeding the demo: catalogue, history, signatures, vectors"):
            seeded = loop.seed_demo(runs_per_playbook=runs_per_playbook)
        step(
            7,
            f"demo: {seeded['playbooks']} playbooks ({seeded['signed']} signed now), "
            f"{seeded['runs_seeded']} runs, {seeded['vectors_written']} vectors written "
            f"({seeded['vectors_unchanged']} unchanged); the synthetic history (provenance "
            f"seed) is trusted for this demo: "
            f"NEURALOPS_TRUSTED_WRITERS={flow_env['NEURALOPS_TRUSTED_WRITERS']}",
        )

        with out.status(f"[8/{steps}] loading the metrics (an OOM-kill incident), detecting"):
            loaded = "" if settings.prom_url else _load_demo_metrics(get_settings(), prometheus)
            since = loop.now()
            detected = loop.run_detection()
        stack.check()
        detect_url = f"{_ui(api_url)}/runs/flow-run/{detected.state_details.flow_run_id}"
        if not detected.is_completed():
            raise localstack.StackError(f"the detect run ended {detected.name}: see {detect_url}")
        found = detected.result()
        step(8, f"{loaded}; detect found {found['new_signals']} new signal(s): {detect_url}")

        with out.status(f"[9/{steps}] remediate: waiting for the run to pause for approval") as s:
            paused = loop.wait_for_paused_remediation(
                since, progress=lambda state: s.update(f"[9/{steps}] remediate: {state}")
            )
            how = "started by the signal's event"
            if paused is None:
                paused, how = _reuse_or_start_remediation(loop)
        took = time.monotonic() - began
        step(9, f"remediation paused for approval ({how}); ready in {took / 60:.1f} min")
        _print_next(api_url, paused.id, settings)
        _print_api_access(settings)
        if wait:
            out.print("\n[bold]Running.[/] Ctrl-C stops what this command started.")
            while True:
                stack.check()
                time.sleep(1)
    except KeyboardInterrupt:
        out.print("\nstopping ...")
    finally:
        # A second Ctrl-C (or `timeout` forwarding one) must not cut the shutdown short.
        signals_.signal(signals_.SIGINT, signals_.SIG_IGN)
        signals_.signal(signals_.SIGTERM, signals_.SIG_IGN)
        with contextlib.suppress(OSError):  # first: no terminal picks up a stack going down
            stack_file.mark_stopped(settings.data_dir, os.getpid())
        stopped = stack.stop()
        if prometheus is not None:
            prometheus.stop()
            stopped.append("prometheus")
        if stopped:
            out.print(f"stopped: {', '.join(stopped)}", highlight=False)


def _refuse_a_second_stack(settings: Settings) -> None:
    """One `neuralops run` per data dir: a second one would share its database and ports.
    A stale stack.json (its run gone) is replaced, saying so."""
    from neuralops import stack as stack_file

    found = stack_file.check(settings.data_dir)
    if found.running and found.info.pid != os.getpid():
        raise ConfigError(
            f"a stack is already running for {settings.data_dir} ({found.reason}; Prefect UI "
            f"{found.info.prefect_ui_url}): use it from this terminal (`neuralops doctor` shows "
            f"it), or stop it first (Ctrl-C in its terminal, or kill {found.info.pid}), or set "
            "another NEURALOPS_DATA_DIR"
        )
    if found.state in ("stale", "invalid"):
        out.print(f"[dim]replacing {_lit(found.path)}: {_lit(found.reason)}[/]", highlight=False)


def _record_stack(
    settings: Settings, api_url: str, prometheus_url: str | None, started_at: datetime
) -> Path:
    """Write <data dir>/stack.json: where this run's stack answers, for every other terminal."""
    import socket

    from neuralops import localstack
    from neuralops import stack as stack_file

    info = stack_file.StackInfo(
        pid=os.getpid(),
        hostname=socket.gethostname(),
        started_at=started_at,
        data_dir=settings.data_dir,
        project_root=localstack.PROJECT_ROOT,
        prefect_api_url=api_url,
        prefect_ui_url=_ui(api_url),
        prometheus_url=prometheus_url,
    )
    return stack_file.write(settings.data_dir, info)


def _quiet_prefect_console() -> None:
    """Only warnings from Prefect on this terminal (the steps are the progress); every log
    still reaches the server, so the UI shows each run's logs in full."""
    import logging

    from prefect.logging.handlers import PrefectConsoleHandler

    names = ["", *logging.root.manager.loggerDict]
    for logger in (logging.getLogger(name) for name in names):
        for handler in getattr(logger, "handlers", []):
            if isinstance(handler, PrefectConsoleHandler):
                handler.setLevel(logging.WARNING)


def _ui(api_url: str) -> str:
    return api_url.rstrip("/").removesuffix("/api")


def _demo_metrics(settings: Settings) -> tuple[Any, dict[str, str], str]:
    """(Prometheus to start or None, the flows' environment, what it is): the demo incident
    goes into a real local Prometheus when the binary is installed, else into a replay file.
    The data is written later, by ``_load_demo_metrics``, so it ends just before detection."""
    import shutil as shutil_

    from neuralops import demo, local_prometheus

    workdir = settings.data_dir / "demo"
    try:
        local_prometheus.prometheus_binaries()
    except local_prometheus.PrometheusNotInstalled:
        replay = workdir / "metrics.parquet"
        rules = Path(demo.__file__).with_name("rules") / "demo-replay.yaml"
        env = {"NEURALOPS_REPLAY_FILE": str(replay), "NEURALOPS_RULES_FILE": str(rules)}
        return None, env, f"replay file {replay} (no prometheus binary: make system-deps)"
    shutil_.rmtree(workdir / "prometheus", ignore_errors=True)  # fresh data, relative to now
    server = local_prometheus.LocalPrometheus(workdir / "prometheus")
    return server, {"PROM_URL": server.url}, f"local Prometheus at {server.url}"


def _load_demo_metrics(settings: Settings, prometheus: Any) -> str:
    """Write three hours of metrics ending now, with the OOM-kill incident, and start the
    demo Prometheus on them (or write the replay file)."""
    import polars as pl

    from neuralops import demo, local_prometheus
    from tasks.remediate import runtime

    series = demo.incident_metrics(datetime.now(UTC))
    # The metrics tell of payments-api OOM-killed at its 512Mi limit: the local runtime (the
    # mock cluster) starts from that spec again, whatever an earlier demo's approval changed.
    runtime().reset()
    if prometheus is None:
        replay = settings.replay_file
        assert replay is not None
        replay.parent.mkdir(parents=True, exist_ok=True)
        frames = [
            pl.DataFrame(
                {"timestamp": s.timestamps, "value": s.values, "__name__": s.name}
            ).with_columns(**{k: pl.lit(v) for k, v in s.labels.items()})
            for s in demo.recorded_metrics(series)
        ]
        pl.concat(frames, how="diagonal").write_parquet(replay)
        return f"{len(frames)} series replayed from {replay}"
    openmetrics = prometheus.workdir / "history.om"
    samples = local_prometheus.write_openmetrics(series, openmetrics)
    prometheus.backfill(openmetrics)
    prometheus.start()
    return f"{samples} samples in Prometheus at {prometheus.url}"


def _reuse_or_start_remediation(loop: Any) -> tuple[Any, str]:
    """No run started from this detection (its signal was a repeat, folded into an earlier
    one): show the remediation still paused, or remediate the latest actionable signal."""
    from prefect.client.schemas.objects import StateType

    from neuralops.localstack import StackError

    paused = loop.remediation_runs(StateType.PAUSED)
    if paused:
        return paused[0], "reused: it was already waiting"
    from neuralops import signals as signals_core

    threshold = get_settings().remediate_min_score
    actionable = [s for s in signals_core.list_signals(limit=100) if s.score >= threshold]
    if not actionable:
        raise StackError("detection found no signal reaching NEURALOPS_REMEDIATE_MIN_SCORE")
    started = loop.start_remediation(str(actionable[0].id))
    paused = loop.wait_for_paused_remediation(started.expected_start_time or loop.now())
    if paused is None:
        raise StackError(f"remediation run {started.name} did not start")
    return paused, f"started for signal {actionable[0].id}: the earlier one had ended"


def _print_next(api_url: str, flow_run_id: Any, settings: Settings) -> None:
    """Where to look and what to paste: the UI, the paused run, a DEV ONLY approval token."""
    from neuralops import approval, incidents

    incident = incidents.find_by_flow_run(flow_run_id)
    ui = _ui(api_url)
    out.print(
        f"\nPrefect UI  {ui}\nPaused run  {ui}/runs/flow-run/{flow_run_id}",
        highlight=False,
        markup=False,
    )
    if incident is not None:
        out.print(
            f"Incident    {incident.id} ({incident.playbook_id}, {incident.state})",
            highlight=False,
            markup=False,
        )
    if incident is None:
        return
    if settings.approval_public_key is not None or settings.approval_jwks_url:
        out.print("Approve with a token from your identity provider (org-admin role).")
        return
    private, _ = approval.dev_keypair(settings.data_dir)
    token = approval.issue_dev_token(
        incident_id=str(incident.id),
        approver=DEMO_APPROVER,
        roles=(approval.REQUIRED_ROLE,),
        ttl_s=settings.approval_timeout_s,
        private_key_path=private,
        issuer=settings.approval_issuer or approval.DEV_ISSUER,
        audience=settings.approval_audience,
    )
    out.print(
        "\nIn the paused run, press [bold]Resume[/] and fill the form: Decision [bold]approve[/], "
        f"Approver id [bold]{DEMO_APPROVER}[/], and this Approval token "
        "([yellow]DEV ONLY[/], signed with the local dev key):",
        highlight=False,
    )
    out.print(f"APPROVAL_TOKEN={token}", highlight=False, soft_wrap=True)
    _print_approve_commands(str(incident.id), DEMO_APPROVER, token, settings)


def _print_approve_commands(
    incident_id: str, approver: str, token: str, settings: Settings
) -> None:
    """The approval from another terminal, as it runs there when pasted: the environment's
    own `neuralops` (no PATH needed), the data dir when it is not the default, and the stack
    found through <data dir>/stack.json (no PREFECT_API_URL needed)."""
    import shlex

    from neuralops import localstack
    from neuralops import stack as stack_file

    root = localstack.PROJECT_ROOT
    binary = Path(sys.executable).with_name("neuralops")
    here = Path.cwd().resolve() == root.resolve() and binary.is_relative_to(root)
    shown = str(binary.relative_to(root)) if here else str(binary)
    prefix = (
        f"NEURALOPS_DATA_DIR={shlex.quote(str(settings.data_dir))} "
        if "NEURALOPS_DATA_DIR" in os.environ
        else ""
    )
    make = "make" if here else f"make -C {shlex.quote(str(root))}"
    args = f"{shlex.quote(incident_id)} --approver {shlex.quote(approver)} --token {token}"
    where = f"in {root}" if here else "from any directory"
    out.print(
        f"\nOr from another terminal, {where} (it finds this stack through "
        f"{stack_file.stack_path(settings.data_dir)}):",
        highlight=False,
        markup=False,
    )
    out.print(f"{prefix}{shlex.quote(shown)} approve {args}", highlight=False, markup=False)
    out.print(
        f"{prefix}{make} approve INCIDENT={shlex.quote(incident_id)} "
        f"APPROVER={shlex.quote(approver)} TOKEN={token}",
        highlight=False,
        markup=False,
    )
    if not settings.uses_sqlite:
        out.print("(with the same POSTGRES_DSN as this terminal)", highlight=False)


def _print_api_access(settings: Settings) -> None:
    """How to call the HTTP API (`neuralops api`): a DEV ONLY read token, or the IdP."""
    from neuralops import api_auth

    where = _lit(f"(start it with `neuralops api`: http://{settings.api_host}:{settings.api_port})")
    if api_auth.auth_configured(settings):
        out.print(
            f"\nHTTP API {where}: bearer tokens from your identity provider, with the scopes "
            f"{', '.join(api_auth.SCOPES)}",
            highlight=False,
        )
        return
    scopes = ("runs:read", "signals:read", "recommend")
    token = api_auth.dev_api_token(settings, scopes, ttl_s=8 * 3600)
    out.print(
        f"\nHTTP API {where}: this [yellow]DEV ONLY[/] token reads runs and signals and "
        f"recommends ({' '.join(scopes)}); for other scopes: neuralops token issue-dev "
        "--scope runs:write ...",
        highlight=False,
    )
    out.print(f"API_TOKEN={token}", highlight=False, soft_wrap=True)


def _was(before: str | None, after: str | None) -> str:
    return " (already up to date)" if before == after else f" (was {before or 'empty'})"


# --- doctor ----------------------------------------------------------------------------------


@app.command()
def doctor(
    json_out: Annotated[Path, typer.Option(help="Also write the report here as JSON.")] = Path(
        "reports/prereqs.json"
    ),
) -> None:
    """Which components are configured, reachable or missing, what each gap blocks, and the
    stack `make run` recorded in <data dir>/stack.json (running, stale or absent)."""
    from neuralops.doctor import Status, diagnose

    _use_stack()  # the running stack's Prefect API is checked when PREFECT_API_URL is unset
    report = diagnose(get_settings())
    colours = {
        Status.ok: "green",
        Status.configured: "cyan",
        Status.embedded: "yellow",
        Status.unreachable: "red",
        Status.missing: "magenta",
    }
    table = Table("component", "status", "detail", "blocks")
    for c in report.components:
        colour = colours[c.status]
        table.add_row(
            _lit(c.name), f"[{colour}]{c.status}[/]", _lit(c.detail), _lit("\n".join(c.blocks))
        )
    out.print(table)
    json_out.parent.mkdir(parents=True, exist_ok=True)
    json_out.write_text(report.model_dump_json(indent=2) + "\n")
    out.print(f"written to {json_out}", highlight=False, markup=False)
    if not report.ok:
        raise typer.Exit(1)


# --- db --------------------------------------------------------------------------------------


@db_app.command("upgrade")
def db_upgrade(
    revision: Annotated[str, typer.Argument(help="Target revision.")] = "head",
) -> None:
    """Apply migrations (idempotent)."""
    _announce(get_settings())
    before, after = db.upgrade(get_settings().database_url, revision)
    out.print(f"database at revision {after}" + _was(before, after))


@db_app.command("current")
def db_current() -> None:
    """Show the applied and the latest revision."""
    _announce(get_settings())
    current = db.current_revision(get_settings().database_url)
    out.print(f"applied: {current or 'none'}; head: {db.head_revision()}")


# --- playbooks -------------------------------------------------------------------------------


@playbook_app.command("add")
def playbook_add(
    paths: Annotated[list[Path], typer.Argument(help="Manifest files or directories.")],
) -> None:
    """Validate manifests and register them, all or none."""
    _require_schema(get_settings())
    results = registry.add_playbooks(registry.load_manifests(paths))
    table = Table("playbook", "version", "change")
    for r in results:
        change = r.change.value
        if r.previous_version and r.change is registry.Change.updated:
            change += f" (from {r.previous_version})"
        table.add_row(r.id, r.version, change)
    out.print(table)


@playbook_app.command("import-runbooks")
def playbook_import_runbooks(
    folder: Annotated[
        Path, typer.Argument(metavar="DIR", help="Folder of markdown runbooks, one per alert.")
    ],
    url_base: Annotated[
        str | None,
        typer.Option(
            "--url-base",
            help="Where the pages are published (e.g. https://github.com/org/runbooks/blob/main"
            "); each runbook links to it plus the page's relative path.",
        ),
    ] = None,
    url_style: Annotated[
        str,
        typer.Option(
            "--url-style",
            help="How --url-base and a page's path make its link: github (Dir/Alert.md, as a "
            "repository shows it) or hugo (dir/alert/: lower-case, no .md, trailing slash, as "
            "a Hugo site such as runbooks.prometheus-operator.dev publishes it).",
        ),
    ] = "github",
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Register markdown runbooks as guidance playbooks (kind: runbook): recommended like any
    playbook, matched exactly by their alert name, never executed. Re-importing the same
    folder changes nothing; a changed page gets the next patch version. Pages that make no
    runbook are listed with the reason; exit 1 when none was imported."""
    from neuralops.runbooks import import_runbooks

    _require_schema(get_settings())
    report = import_runbooks(folder, url_base, url_style=url_style)
    counts = {c: sum(r.change is c for r in report.results) for c in registry.Change}
    if as_json:
        out.print_json(
            json.dumps(
                {
                    "imported": [
                        {
                            "id": r.id,
                            "version": r.version,
                            "change": r.change.value,
                            "source": report.sources.get(r.id),
                        }
                        for r in report.results
                    ],
                    "skipped": [
                        {"path": s.path, "reason": s.reason, "index_page": s.note}
                        for s in report.skipped
                    ],
                }
            )
        )
    else:
        if report.results:
            table = Table("runbook", "playbook", "version", "change")
            for r in report.results:
                change = r.change.value
                if r.previous_version and r.change is registry.Change.updated:
                    change += f" (from {r.previous_version})"
                table.add_row(escape(report.sources.get(r.id, "")), r.id, r.version, change)
            out.print(table)
        for s in report.skipped:
            label = "[dim]note:[/]" if s.note else "[yellow]skipped:[/]"
            err.print(f"{label} {escape(s.path)}: {escape(s.reason)}", highlight=False)
        out.print(
            f"{len(report.results)} runbooks ({counts[registry.Change.added]} added, "
            f"{counts[registry.Change.updated]} updated, "
            f"{counts[registry.Change.unchanged]} unchanged); {len(report.problems)} skipped, "
            f"{len(report.skipped) - len(report.problems)} index pages",
            highlight=False,
        )
    if not report.results:
        err.print(
            f"[red]error:[/] no runbook imported from {escape(str(folder))}: markdown pages "
            "(*.md), one per alert, with a title or a heading",
            highlight=False,
        )
        raise typer.Exit(1)


@playbook_app.command("list")
def playbook_list(
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Every registered playbook."""
    _require_schema(get_settings())
    playbooks = registry.list_playbooks()
    if as_json:
        out.print_json(json.dumps([p.model_dump(mode="json") for p in playbooks]))
    elif not playbooks:
        out.print("the registry is empty: `neuralops playbook add DIR` or `neuralops run`")
    else:
        _print_playbooks(playbooks)


def _print_playbooks(playbooks: list[registry.WorkflowInfo]) -> None:
    # Title and latest run only where they fit; `playbook show` has everything.
    wide = out.width >= 140
    table = Table("id", "version", "safety", "approvers", "runs")
    if wide:
        table.add_column("title")
        table.add_column("latest run")
    for p in playbooks:
        row = [p.id, p.version, p.safety_mode, ",".join(p.allowed_roles), str(p.run_count)]
        table.add_row(
            *map(_lit, row), *([_lit(p.title), _lit(p.latest_run_id or "")] if wide else [])
        )
    out.print(table)


@playbook_app.command("show")
def playbook_show(playbook_id: str) -> None:
    """A playbook's manifest and registry record."""
    _require_schema(get_settings())
    info = registry.describe_workflow(playbook_id)
    if info.kind != "playbook":
        raise NeuralOpsError(f"'{playbook_id}' has runs but is not a registered playbook")
    manifest = registry.get_playbook(playbook_id).manifest
    signed = "signed" if info.signed else "unsigned"
    out.print(
        f"[bold]{_lit(info.id)}[/] {_lit(info.version)} ({signed}); {info.run_count} runs, "
        f"latest {_lit(info.latest_run_id or 'none')}",
        highlight=False,
    )
    # Not markup: a pattern such as ^[a-z0-9]... would lose its brackets to Rich.
    out.print(yaml.safe_dump(manifest, sort_keys=False, width=10**6), highlight=False, markup=False)


@playbook_app.command("runs")
def playbook_runs(
    playbook_id: str,
    limit: Annotated[int, typer.Option(min=1, max=500)] = 20,
    page: Annotated[int, typer.Option(min=1)] = 1,
) -> None:
    """A page of the playbook's runs, newest first."""
    _require_schema(get_settings())
    result = runs.list_runs(playbook_id, limit=limit, page=page)
    table = Table("run_id", "status", "duration", "created_at (UTC)")
    for r in result.items:
        table.add_row(
            _lit(r.run_id),
            _lit(r.status),
            f"{r.duration_ms / 1000:.1f}s",
            f"{r.created_at:%Y-%m-%d %H:%M:%S}",
        )
    out.print(table)
    hint = f"; next: --page {result.next_page}" if result.next_page else ""
    out.print(f"page {result.page} of {result.pages} ({result.total} runs){hint}")


# --- playbook signatures (docs/policies/safety.md) -------------------------------------------


def _playbook_ids(playbook_id: str | None, every: bool) -> list[str]:
    from neuralops.signing import registered_ids

    if every == (playbook_id is not None):
        raise typer.BadParameter("give one playbook ID, or --all (not both)", param_hint="ID")
    if playbook_id is not None:
        return [playbook_id]
    ids = registered_ids()
    if not ids:
        raise NeuralOpsError("the registry is empty: `neuralops playbook add DIR` first")
    return ids


def _actor() -> str:
    import getpass

    try:
        return f"cli:{getpass.getuser()}"
    except (OSError, KeyError):  # no login name in some containers
        return "cli"


@playbook_app.command("sign")
def playbook_sign(
    playbook_id: Annotated[str | None, typer.Argument(metavar="ID", help="Playbook id.")] = None,
    every: Annotated[bool, typer.Option("--all", help="Sign every registered playbook.")] = False,
) -> None:
    """Sign playbooks (ECDSA P-256 over the canonical manifest) with the Vault transit key, or,
    without VAULT_ADDR, with the DEV ONLY local key."""
    from neuralops import signing

    settings = get_settings()
    _require_schema(settings)
    ids = _playbook_ids(playbook_id, every)
    signer = signing.signer_from_settings(settings)
    if signer.dev:
        err.print(
            "[yellow]warning:[/] DEV ONLY: signing with the local key file "
            f"{escape(str(signing.dev_key_path(settings)))}; set VAULT_ADDR and VAULT_TOKEN to "
            "sign with Vault transit",
            highlight=False,
        )
    table = Table("playbook", "version", "sha256")
    signed: list[signing.SignResult] = []
    for pid in ids:
        signed.append(signing.sign_playbook(pid, signer, actor=_actor()))
        table.add_row(pid, signed[-1].version, signed[-1].sha256[:16])
    out.print(table)
    key_id = signed[-1].key_id
    kind = "the DEV key (not for production)" if signer.dev else "Vault transit"
    out.print(f"{len(signed)} signed with {_lit(key_id)}: {kind}", highlight=False)
    pinned = settings.signing_public_key
    signed_by = signing.split_key_id(key_id)[1]
    if pinned and signing.key_fingerprint(signing.trusted_public_key(settings)) != signed_by:
        err.print(
            f"[yellow]warning:[/] NEURALOPS_SIGNING_PUBLIC_KEY {escape(str(pinned))} is another "
            "key: these signatures will not verify until it is the signer's public key",
            highlight=False,
        )


@playbook_app.command("verify")
def playbook_verify(
    playbook_id: Annotated[str | None, typer.Argument(metavar="ID", help="Playbook id.")] = None,
    every: Annotated[bool, typer.Option("--all", help="Verify every registered playbook.")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Check signatures against the trusted key, as the dry-run does; exit 1 if any fails."""
    from neuralops import signing
    from neuralops.cosign_enforcer import SignatureRejected, enforce
    from neuralops.manifest import parse_manifest

    settings = get_settings()
    _require_schema(settings)
    ids = _playbook_ids(playbook_id, every)
    public_key = signing.trusted_public_key(settings)
    results = []
    for pid in ids:
        row = registry.get_playbook(pid)
        result = {"id": pid, "version": row.version, "key_id": row.key_id}
        try:
            enforce(parse_manifest(row.manifest, pid), row.signature, row.key_id, public_key)
            result |= {"verified": True, "reason": None, "detail": None}
        except SignatureRejected as exc:
            result |= {"verified": False, "reason": exc.reason, "detail": exc.detail}
        results.append(result)
    failed = [r for r in results if not r["verified"]]
    trusted = {
        "fingerprint": signing.key_fingerprint(public_key),
        "source": signing.trusted_key_source(settings),
    }
    if as_json:
        out.print_json(json.dumps({"trusted_key": trusted, "playbooks": results}))
    else:
        table = Table("playbook", "version", "result", "detail")
        for r in results:
            verdict = "[green]verified[/]" if r["verified"] else f"[red]{_lit(r['reason'])}[/]"
            detail = r["detail"] or r["key_id"] or ""
            table.add_row(_lit(r["id"]), _lit(r["version"]), verdict, _lit(detail))
        out.print(table)
        out.print(
            f"{len(results) - len(failed)} verified, {len(failed)} refused; trusted key "
            f"{trusted['fingerprint']} ({_lit(trusted['source'])})",
            highlight=False,
        )
        if failed:
            fix = f"neuralops playbook sign {failed[0]['id'] if len(failed) == 1 else '--all'}"
            out.print(f"after reviewing the manifests: `{fix}`", highlight=False, markup=False)
    if failed:
        raise typer.Exit(1)


# --- detection -------------------------------------------------------------------------------


def _labels(pairs: list[str]) -> dict[str, str]:
    labels = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise typer.BadParameter(f"{pair!r} is not KEY=VALUE", param_hint="--label")
        labels[key] = value
    return labels


@app.command()
def analyze(
    query: Annotated[str, typer.Option(help="PromQL query (a selector for a replay file).")],
    lookback: Annotated[str, typer.Option(help="History for the baseline: 30m, 1h, 1d.")] = "1h",
    step: Annotated[str | None, typer.Option(help="Resolution; default lookback/120.")] = None,
    method: Annotated[
        str | None,
        typer.Option(
            help="combined (default), zscore, ewma, robust, ensemble, context, change, "
            "variance, shape or likelihood."
        ),
    ] = None,
    recent: Annotated[
        str | None, typer.Option(help="An anomaly this recent counts (default 5m).")
    ] = None,
    label: Annotated[
        list[str] | None, typer.Option(help="KEY=VALUE added to a resulting signal; repeatable.")
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Is this query anomalous now? Scores it, explains it, and records a signal if it is."""
    from neuralops import signals
    from neuralops.sources import source_from_settings

    settings = get_settings()
    _require_schema(settings)
    try:
        request = signals.AnalyzeRequest(
            query=query,
            lookback=lookback,
            step=step,
            method=method,
            recent=recent,
            labels=_labels(label or []),
        )
    except ValidationError as exc:
        raise InvalidInput.from_validation(exc, "analyze") from exc
    source = source_from_settings(settings)
    try:
        result = signals.analyze(request, source)
    finally:
        source.close()
    if as_json:
        out.print_json(result.model_dump_json())
        return
    if result.score is None:
        out.print(f"{result.series} series; {result.hint}", highlight=False, markup=False)
        return
    anomalous = result.signal_id is not None
    verdict = "[red]anomalous[/]" if anomalous else "[green]normal[/]"
    out.print(
        f"{verdict}  score {result.score:.3f}  z {result.z:+.1f}  method {_lit(result.method)}  "
        f"({result.series} series)"
    )
    out.print(result.hint, highlight=False, markup=False)  # the query, brackets and all
    if anomalous:
        status = "new signal" if result.new_signal else "already signalled"
        out.print(f"{status}: {result.signal_id}")


@signals_app.command("list")
def signals_list(
    since: Annotated[
        str | None, typer.Option(help="Only signals newer than this: a duration (2h) or ISO time.")
    ] = None,
    rule: Annotated[str | None, typer.Option(help="Only this rule.")] = None,
    limit: Annotated[int, typer.Option(min=1, max=1000)] = 20,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Recorded signals, newest first."""
    from neuralops import signals

    _require_schema(get_settings())
    found = signals.list_signals(since=_since(since), rule=rule, limit=limit)
    if as_json:
        out.print_json(json.dumps([s.model_dump(mode="json") for s in found]))
        return
    if not found:
        out.print("no signals" + (" matching the filters" if since or rule else " yet"))
        return
    columns = [
        _Col("created (UTC)", drop=3),
        _Col("rule", shrink=10),
        _Col("score", justify="right"),
        _Col("seen", drop=4, justify="right"),
        _Col("hint", drop=1, shrink=16),
        _Col("id"),
    ]
    rows = [
        [
            f"{s.created_at:%Y-%m-%d %H:%M}",
            s.rule,
            f"{s.score:.3f}",
            str(s.occurrences),
            s.hint,
            str(s.id),
        ]
        for s in found
    ]
    _print_listing(columns, rows, what="neuralops signals list")


def _since(value: str | None) -> datetime | None:
    """'2h' (ago) or an ISO-8601 time; a time without zone is UTC."""
    if value is None:
        return None
    from neuralops.signals import parse_duration

    out_of_range = typer.BadParameter(
        f"{value!r} is out of range: the time must fall between the years 1 and 9999 in UTC",
        param_hint="--since",
    )
    try:
        return datetime.now(UTC) - parse_duration(value)
    except OverflowError:
        raise out_of_range from None
    except ValueError:
        pass
    try:
        moment = datetime.fromisoformat(value)
    except ValueError:
        raise typer.BadParameter(
            f"{value!r} is neither a duration (2h, 30m) nor an ISO time", param_hint="--since"
        ) from None
    try:  # 0001-01-01T00:00:00+14:00 has no UTC equivalent
        return (moment if moment.tzinfo else moment.replace(tzinfo=UTC)).astimezone(UTC)
    except OverflowError:
        raise out_of_range from None


@app.command("detect-file")
def detect_file(
    input_csv: Annotated[Path, typer.Argument(help="CSV with header timestamp,value.")],
    output_csv: Annotated[
        Path,
        typer.Argument(help="Written as timestamp,value,anomaly_score (or ...,detection)."),
    ],
    method: Annotated[
        str,
        typer.Option(
            help="combined (the default: level, time-of-day context, level shifts), zscore, "
            "ewma, robust, ensemble, context, change, variance, shape or likelihood."
        ),
    ] = "combined",
    output: Annotated[
        str,
        typer.Option(
            help="score: the anomaly score in [0, 1]; detections: 0/1, the detections the "
            "signals act on (threshold and hold of the rules' defaults)."
        ),
    ] = "score",
    strict_time: Annotated[
        bool,
        typer.Option(
            "--strict-time",
            help="Refuse a row whose timestamp is earlier than the row before (by default "
            "such rows are scored in arrival order, with one warning).",
        ),
    ] = False,
) -> None:
    """Score a file offline, as a stream in time order (no database, no server)."""
    from neuralops.detectors import DETECTORS
    from neuralops.offline import OUTPUTS
    from neuralops.offline import detect_file as score_file

    if method not in DETECTORS:
        raise typer.BadParameter(
            f"choose one of {', '.join(sorted(DETECTORS))}", param_hint="--method"
        )
    if output not in OUTPUTS:
        raise typer.BadParameter(f"choose one of {', '.join(OUTPUTS)}", param_hint="--output")

    def warn(message: str) -> None:
        err.print(f"[yellow]warning:[/] {escape(message)}", highlight=False)

    rows = score_file(
        input_csv, output_csv, method=method, output=output, strict_time=strict_time, warn=warn
    )
    what = "scored" if output == "score" else "judged (0/1 detections)"
    out.print(f"{rows} rows {what} with {method} → {output_csv}", highlight=False, markup=False)


# --- recommend -------------------------------------------------------------------------------

MAX_TOP = 100  # neuralops.recommend.MAX_TOP, not imported here: that module loads LanceDB


@app.command()
def recommend(
    signal_id: Annotated[
        str | None,
        typer.Option("--signal-id", help="A recorded signal's id (`neuralops signals list`)."),
    ] = None,
    text: Annotated[
        str | None,
        typer.Option(
            "--text", help="The incident in words: what is wrong and where (alert, service...)."
        ),
    ] = None,
    top: Annotated[int, typer.Option(min=1, max=MAX_TOP, help="How many playbooks.")] = 5,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Which registered playbooks fix this incident, best first, and why (past similar runs,
    their outcomes, the symptoms each treats). Give --signal-id or --text."""
    from neuralops import signals
    from neuralops.incident_model import Incident

    if (signal_id is None) == (text is None):
        raise typer.BadParameter(
            "give exactly one of --signal-id (a recorded signal) or --text (the incident in words)",
            param_hint="--signal-id / --text",
        )
    if text is not None and not text.strip():
        raise typer.BadParameter(
            "the incident text is empty: say what is wrong and where, e.g. "
            "--text 'payments-api pods OOMKilled in namespace payments'",
            param_hint="--text",
        )
    settings = get_settings()
    _require_schema(settings)
    signal = signals.get_signal(signal_id) if signal_id is not None else None  # NotFound: exit 2
    # Only now: this loads LanceDB (seconds), which an unknown signal id does not need.
    from neuralops.recommend import incident_from_signal, recommender_from_settings

    if signal is not None:
        incident = incident_from_signal(signal)
    else:
        try:
            incident = Incident.from_text(text or "")
        except ValidationError as exc:
            raise InvalidInput.from_validation(exc, "--text") from exc
    with err.status("loading the playbook catalogue and the embedding model"):
        recommender, warning = recommender_from_settings(settings)
    if warning:
        err.print(f"[yellow]warning:[/] {escape(warning)}", highlight=False)
    result = recommender.recommend(incident, top=top)
    if as_json:
        out.print_json(result.model_dump_json())
        return
    guides = {m.id: m for m in recommender.catalogue.manifests if m.is_runbook}
    _print_recommendation(result, guides)


def _print_recommendation(result: RecommendResult, guides: dict[str, Any] | None = None) -> None:
    from rich.text import Text

    out.print(Text.assemble(("incident  ", "bold"), result.query))
    symptoms = ", ".join(result.symptoms) or "none recognised"
    out.print(Text.assemble(("symptoms  ", "bold"), f"{symptoms} ({result.symptom_source})"))
    if result.recommendations:
        # The justification is the point: a column of its own where it fits, else a
        # numbered line under the table.
        wide = out.width >= 120
        table = Table("#", "playbook", "score", "success rate", "safety")
        if wide:
            table.add_column("justification")
        for rank, r in enumerate(result.recommendations, start=1):
            success = "-" if r.success_rate is None else f"{r.success_rate:.0%}"
            row = [str(rank), Text(r.playbook_id, no_wrap=True), f"{r.score:.3f}"]
            row += [f"{success} ({r.similar_runs} similar)", r.safety_mode]
            table.add_row(*row, *([Text(r.justification)] if wide else []))
        out.print(table)
        if not wide:
            for rank, r in enumerate(result.recommendations, start=1):
                out.print(Text(f"{rank}. {r.playbook_id}: {r.justification}"))
    else:
        out.print(Text.assemble(("no recommendation: ", "yellow"), result.reason or ""))
    for r in result.recommendations:  # runbooks: read, never executed
        if (guide := (guides or {}).get(r.playbook_id)) is not None:
            where = (
                guide.links[0].url if guide.links else "`neuralops playbook show " + guide.id + "`"
            )
            out.print(Text(f"guidance: {r.playbook_id} is a runbook (never executed): {where}"))
    for e in result.excluded:
        out.print(Text(f"not suggested: {e.playbook_id} ({e.reason})"), style="dim")


# --- seed and etl ----------------------------------------------------------------------------


def _progress(total: int | None, what: str):
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    columns = [TextColumn(f"[bold]{what}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn()]
    if total:
        columns.append(TimeRemainingColumn())
    return Progress(*columns, console=err, transient=True)


@seed_app.command("runs")
def seed_runs(
    count: Annotated[int, typer.Option(min=1, max=10_000_000, help="How many runs.")] = 1000,
    seed: Annotated[int, typer.Option(help="Same seed, same runs (ids syn-<seed>-<n>).")] = 0,
    start: Annotated[int, typer.Option(min=0, help="First run number (to add more).")] = 0,
    batch: Annotated[int, typer.Option(min=100, max=50_000, help="Runs per transaction.")] = 5000,
) -> None:
    """Log realistic synthetic run history (some runs carry planted personal data), as
    provenance `seed`: it teaches the recommender only where NEURALOPS_TRUSTED_WRITERS
    includes `seed`. Run ids already stored are kept as they are."""
    from itertools import islice

    from neuralops.synthetic import synthetic_runs

    _require_schema(get_settings())
    generated = synthetic_runs(count, seed=seed, start=start)
    with _progress(count, "seeding runs") as progress:
        task = progress.add_task("runs", total=count)
        while chunk := list(islice(generated, batch)):
            runs.log_runs(chunk, provenance=runs.SEED, keep_existing=True)
            progress.advance(task, len(chunk))
    out.print(f"{count} runs seeded (syn-{seed}-{start:07d} .. syn-{seed}-{start + count - 1:07d})")


@seed_app.command("signals")
def seed_signals(
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Record a few realistic demo signals (OOM kills in payments, p99 latency in checkout,
    a filling PostgreSQL volume) to try `neuralops recommend --signal-id` on. Running it again
    within a rule's cooldown records nothing new and prints the same ids."""
    from neuralops import signals

    _require_schema(get_settings())
    from neuralops.demo import demo_signals

    candidates, cooldowns = demo_signals(datetime.now(UTC))
    recorded = signals.record_signals(candidates, cooldowns)
    if as_json:
        out.print_json(
            json.dumps([{**r.signal.model_dump(mode="json"), "new": r.new} for r in recorded])
        )
        return
    table = Table("rule", "labels", "recorded")
    table.add_column("id", no_wrap=True, min_width=36)  # whole: it is copied into commands
    for r in recorded:
        shown = ", ".join(f"{k}={v}" for k, v in r.signal.labels.items() if k in _KEY_LABELS)
        table.add_row(
            _lit(r.signal.rule), _lit(shown), "new" if r.new else "already", str(r.signal.id)
        )
    out.print(table)
    out.print(f"Next: neuralops recommend --signal-id {recorded[0].signal.id}", highlight=False)


_KEY_LABELS = ("namespace", "service", "pod", "persistentvolumeclaim", "symptom")


@etl_app.command("export")
def etl_export(
    out_path: Annotated[Path, typer.Option("--out", help="runs.jsonl, .ndjson or .parquet")],
    since: Annotated[
        str | None,
        typer.Option(
            help="Rows updated since a duration ago (2h) or an ISO time; keeps the watermark."
        ),
    ] = None,
    full: Annotated[bool, typer.Option(help="Everything, and reset the watermark.")] = False,
) -> None:
    """Export runs changed since the last export, redacted, as JSONL or Parquet."""
    from neuralops import etl

    _require_schema(get_settings())
    pending = None if full or since else etl.count_pending()
    with _progress(pending, "exporting") as progress:
        task = progress.add_task("runs", total=pending)
        result = etl.export_runs(
            out_path,
            since=_since(since),
            full=full,
            progress=lambda n: progress.update(task, completed=n),
        )
    redacted = sum(result.redactions.values())
    out.print(
        f"{result.rows} runs exported to {result.path} ({result.format})",
        highlight=False,
        markup=False,
    )
    if redacted:
        kinds = ", ".join(f"{k} {n}" for k, n in sorted(result.redactions.items()))
        out.print(f"redacted {redacted} values: {kinds}", highlight=False, markup=False)
    _print_quarantined(result.quarantined, "could not be exported")


def _print_quarantined(quarantined: list, what: str, limit: int = 20) -> None:
    """Runs (or lines) left out, each with why (never its content); the rest went on."""
    if not quarantined:
        return
    count = len(quarantined)
    named = "; ".join(str(q) for q in quarantined[:limit])
    err.print(
        f"[yellow]quarantined {count} run{'s' if count != 1 else ''} that {what}:[/] "
        + escape(named)
        + (f"; and {count - limit} more" if count > limit else ""),
        highlight=False,
        soft_wrap=True,
    )


@etl_app.command("vectorize")
def etl_vectorize(
    in_path: Annotated[Path, typer.Option("--in", help="JSONL written by `etl export`.")],
    embedder: Annotated[
        str | None, typer.Option(help="auto (default: NEURALOPS_EMBEDDER), minilm or hashing.")
    ] = None,
    lock_wait: Annotated[
        float,
        typer.Option(
            min=0,
            help="Seconds to wait for another vectorize of the same store; 0 refuses at once.",
        ),
    ] = 900.0,
) -> None:
    """Embed exported runs and upsert them into LanceDB (unchanged runs are skipped). One
    vectorize at a time per store: a second one waits for the first (--lock-wait)."""
    from neuralops import vectorize
    from neuralops.embedding import load_embedder
    from neuralops.vectorstore import store_from_settings

    settings = get_settings()
    if not in_path.is_file():
        raise InvalidInput(f"--in {in_path}: no such file (write it with `neuralops etl export`)")
    model, warning = load_embedder(embedder or settings.embedder)
    if warning:
        err.print(f"[yellow]warning:[/] {_lit(warning)}", highlight=False)
    with in_path.open("rb") as lines:  # one cheap pass for the progress bar's total
        total = sum(1 for _ in lines)
    store = store_from_settings(settings)
    bad_lines: list[vectorize.Quarantined] = []
    with vectorize.vectorize_lock(
        store,
        timeout_s=lock_wait,
        on_wait=lambda message: err.print(f"[yellow]{_lit(message)}[/]", highlight=False),
    ):
        with _progress(total, "vectorizing") as progress:
            task = progress.add_task("runs", total=total)
            result = vectorize.vectorize_records(
                vectorize.read_jsonl(in_path, bad_lines),
                store,
                model,
                progress=lambda n: progress.update(task, completed=n),
                lock=False,  # held above, across the index update too
            )
        indexed = store.ensure_index()
    out.print(
        f"{result.written} vectors written ({result.skipped} unchanged, "
        f"{result.embedded_texts} texts embedded; model {result.model}; "
        f"{store.count()} in {settings.vector_uri}"
        + ("; ANN index built" if indexed else "")
        + ")",
        highlight=False,
        markup=False,
    )
    _print_quarantined(bad_lines + result.quarantined, "could not be vectorized")


# --- audit (docs/policies/audit.md) ----------------------------------------------------------

audit_app = typer.Typer(
    help="The hash-chained audit trail: verify it, ship it to the archive, list it.",
    no_args_is_help=True,
)
app.add_typer(audit_app, name="audit")

if TYPE_CHECKING:
    from neuralops.audit import ShipResult


@audit_app.command("verify")
def audit_verify(
    archive: Annotated[
        Path | None,
        typer.Option(
            help="Verify a copy of the archive in this directory instead (offline, no database)."
        ),
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Recompute the chain and report the first broken entry (exit 1 when broken)."""
    from neuralops import audit

    if archive is not None:
        result = audit.verify_archive(archive)
    else:
        _require_schema(get_settings())
        result = audit.verify_all()
    if as_json:
        out.print_json(
            json.dumps(
                {
                    "ok": result.ok,
                    "entries": result.entries,
                    "broken_seq": result.broken_seq,
                    "reason": result.reason,
                    "source": str(archive) if archive is not None else "database",
                }
            )
        )
    elif result.ok:
        out.print(f"[green]audit chain intact: {result.entries} entries[/]", highlight=False)
    else:
        out.print(
            f"[red]audit chain broken at entry {result.broken_seq}: "
            f"{escape(str(result.reason))}[/]",
            highlight=False,
        )
    if not result.ok:
        raise typer.Exit(1)


@audit_app.command("ship")
def audit_ship(
    batch_size: Annotated[
        int, typer.Option(min=1, max=100_000, help="Entries per archived batch.")
    ] = 1000,
    retries: Annotated[
        int, typer.Option(min=0, max=10, help="Retries per batch (waits 1 s, 2 s, 4 s, ...).")
    ] = 3,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Copy pending audit entries to the archive (S3_BUCKET, else the local audit directory).

    A batch that fails stays pending and is sent by the next run."""
    from neuralops import audit

    _require_schema(get_settings())
    sink = audit.sink_from_settings(get_settings())
    pending = audit.pending_count()
    total = -(-pending // batch_size)
    try:
        if total > 1:
            with _progress(pending, "shipping audit entries") as progress:
                task = progress.add_task("entries", total=pending)
                result = audit.ship(
                    sink,
                    batch_size=batch_size,
                    retries=retries,
                    progress=lambda _b, n: progress.update(task, completed=n),
                )
        else:
            result = audit.ship(sink, batch_size=batch_size, retries=retries)
    except audit.ShipIncomplete as exc:
        _print_shipped(exc.result, as_json)
        raise
    _print_shipped(result, as_json)


def _print_shipped(result: ShipResult, as_json: bool) -> None:
    if as_json:
        out.print_json(
            json.dumps(
                {
                    "batches": result.batches,
                    "entries": result.entries,
                    "pending_left": result.pending_left,
                    "sink": result.sink,
                }
            )
        )
        return
    out.print(
        f"{result.batches} batches ({result.entries} entries) shipped to {result.sink}; "
        f"{result.pending_left} pending",
        highlight=False,
        markup=False,
    )


@audit_app.command("list")
def audit_list(
    subject: Annotated[str | None, typer.Option(help="Only entries about this subject.")] = None,
    limit: Annotated[int, typer.Option(min=1, max=10_000, help="How many, newest first.")] = 20,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """The latest audit entries, newest first."""
    from neuralops import audit

    _require_schema(get_settings())
    found = audit.recent(subject=subject, limit=limit)
    if as_json:
        out.print_json(json.dumps([audit.entry_record(e) for e in found]))
        return
    columns = [
        _Col("seq", justify="right"),
        _Col("time (UTC)"),
        _Col("actor", drop=3, shrink=12),
        _Col("action"),
        _Col("subject", drop=1, shrink=16),
        _Col("payload", drop=2, shrink=20, cut=True),
        _Col("hash", drop=4),
    ]
    rows = []
    for e in found:
        payload = json.dumps(e.payload, sort_keys=True)
        rows.append(
            [
                str(e.seq),
                e.created_at.strftime("%Y-%m-%d %H:%M:%S"),
                e.actor,
                e.action,
                e.subject,
                payload if len(payload) <= 60 else payload[:57] + "...",
                e.hash[:12],
            ]
        )
    if found:
        _print_listing(columns, rows, what="neuralops audit list")
    if not found:
        out.print(
            "no audit entries" + (f" about {subject}" if subject else ""),
            highlight=False,
            markup=False,
        )


# --- api -------------------------------------------------------------------------------------


@app.command()
def api(
    host: Annotated[
        str | None,
        typer.Option(
            help="Default NEURALOPS_API_HOST (127.0.0.1). Beyond loopback only with "
            "authentication configured (NEURALOPS_API_PUBLIC_KEY or NEURALOPS_API_JWKS_URL)."
        ),
    ] = None,
    port: Annotated[int | None, typer.Option(help="Default NEURALOPS_API_PORT.")] = None,
) -> None:
    """Serve the HTTP API: bearer tokens with scopes on every operation but GET /healthz and
    GET /metrics; at most NEURALOPS_API_MAX_CONCURRENCY connections at once, each request
    body within NEURALOPS_API_BODY_TIMEOUT_S."""
    import uvicorn

    from neuralops.api import uvicorn_options
    from neuralops.api_auth import auth_configured, check_bind_host, keys_from_settings

    settings = get_settings()
    bind = host or settings.api_host
    check_bind_host(bind, settings)  # DEV ONLY keys never face a network
    if auth_configured(settings):
        keys_from_settings(settings)  # a bad key setting: one line here, not uvicorn's traceback
    _require_schema(settings)
    uvicorn.run(
        "neuralops.api:create_app",
        factory=True,
        host=bind,
        port=port or settings.api_port,
        **uvicorn_options(settings),
    )


# --- token (DEV ONLY) ------------------------------------------------------------------------


@token_app.command("issue-dev")
def token_issue_dev(
    incident: Annotated[
        str | None, typer.Option(help="Approval token: the incident id it approves.")
    ] = None,
    approver: Annotated[
        str | None, typer.Option(help="Approval token: the approver id (its `sub`).")
    ] = None,
    role: Annotated[
        list[str] | None,
        typer.Option("--role", help="Approval token: a role to carry (repeatable)."),
    ] = None,
    scope: Annotated[
        list[str] | None,
        typer.Option(
            "--scope",
            help="API token: a scope to carry (repeatable): runs:write, runs:read, "
            "signals:read, signals:write, recommend, clusters:admin.",
        ),
    ] = None,
    subject: Annotated[
        str | None, typer.Option(help="API token: who it speaks for (its `sub`).")
    ] = None,
    ttl: Annotated[int, typer.Option(min=1, max=7 * 86400, help="Lifetime in seconds.")] = 3600,
) -> None:
    """DEV ONLY: print a token signed with the local dev key (<data dir>/keys), which NeuralOps
    accepts only while no identity-provider key is configured. `--scope ...` makes an API
    token (for `neuralops api`); `--incident ... --approver ...` an approval token."""
    from neuralops import approval

    settings = get_settings()
    if bool(scope) == bool(incident):
        raise InvalidInput(
            "give either --scope (an API token) or --incident and --approver (an approval "
            "token), not both and not neither"
        )
    if scope:
        if approver or role:
            raise InvalidInput("--approver and --role are for approval tokens: drop them")
        _issue_dev_api_token(settings, scope, subject, ttl)
        return
    if subject:
        raise InvalidInput("--subject is for API tokens: an approval token's is --approver")
    if not approver:
        raise InvalidInput("--approver: an approval token names its approver")
    private, _ = approval.dev_keypair(settings.data_dir)
    token = approval.issue_dev_token(
        incident_id=incident,
        approver=approver,
        roles=tuple(role or [approval.REQUIRED_ROLE]),
        ttl_s=ttl,
        private_key_path=private,
        issuer=settings.approval_issuer or approval.DEV_ISSUER,
        audience=settings.approval_audience,
    )
    err.print(
        f"[yellow]warning:[/] DEV ONLY token signed with {_lit(private)}; never use dev keys in "
        "production (configure NEURALOPS_APPROVAL_PUBLIC_KEY or NEURALOPS_APPROVAL_JWKS_URL)",
        highlight=False,
    )
    if settings.approval_public_key is not None or settings.approval_jwks_url:
        err.print(
            "[yellow]warning:[/] an identity-provider key is configured, so this token "
            "will be refused (bad_signature)",
            highlight=False,
        )
    typer.echo(token)


def _issue_dev_api_token(
    settings: Settings, scopes: list[str], subject: str | None, ttl: int
) -> None:
    from neuralops import api_auth, approval

    private, _ = approval.dev_keypair(settings.data_dir)
    token = api_auth.dev_api_token(
        settings, scopes, subject=subject or api_auth.DEV_SUBJECT, ttl_s=ttl
    )
    err.print(
        f"[yellow]warning:[/] DEV ONLY API token signed with {_lit(private)}; never use dev keys "
        "in production (configure NEURALOPS_API_PUBLIC_KEY or NEURALOPS_API_JWKS_URL)",
        highlight=False,
    )
    if api_auth.auth_configured(settings):
        err.print(
            "[yellow]warning:[/] an identity-provider key is configured for the API, so this "
            "token will be refused (bad_signature)",
            highlight=False,
        )
    typer.echo(token)


# --- remediation: incidents and approval ----------------------------------------------------


@incidents_app.command("list")
def incidents_list(
    state: Annotated[str | None, typer.Option(help="Only incidents in this state.")] = None,
    limit: Annotated[int, typer.Option(min=1, max=1000)] = 20,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Incidents newest first: state, playbook, mode and outcome."""
    from neuralops import incidents

    _require_schema(get_settings())
    found = incidents.list_incidents(state=state, limit=limit)
    if as_json:
        out.print_json(json.dumps([i.model_dump(mode="json") for i in found]))
        return
    if not found:
        out.print(
            "no incidents" + (f" in state {state}" if state else " yet"),
            highlight=False,
            markup=False,
        )
        return
    columns = [
        _Col("created (UTC)", drop=3),
        _Col("state"),
        _Col("playbook", drop=1),
        _Col("mode", drop=4),
        _Col("outcome", drop=2),
        _Col("id"),
    ]
    rows = [
        [
            f"{i.created_at:%Y-%m-%d %H:%M}",
            i.state,
            i.playbook_id or "-",
            i.mode or "-",
            i.outcome or "-",
            str(i.id),
        ]
        for i in found
    ]
    _print_listing(columns, rows, what="neuralops incidents list")


@incidents_app.command("show")
def incidents_show(
    incident_id: Annotated[str, typer.Argument(help="Incident id.")],
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """One incident: its state, playbook, parameters, dry-run result and audit trail."""
    from neuralops import audit, incidents

    _require_schema(get_settings())
    current = incidents.get(incident_id)
    trail = audit.recent(subject=incidents.subject(current.id), limit=200)
    if as_json:
        body = current.model_dump(mode="json") | {
            "audit": [audit.entry_record(e) for e in reversed(trail)]
        }
        out.print_json(json.dumps(body, default=str))
        return
    out.print(f"[bold]incident {_lit(current.id)}[/]: {_lit(current.state)}", highlight=False)
    for label, value in (
        ("playbook", current.playbook_id),
        ("parameters", json.dumps(current.parameters or {})),
        ("mode", f"{current.mode or '-'} ({current.mode_reason or 'n/a'})"),
        ("approval deadline", current.expires_at),
        ("approver", current.approver),
        ("dry-run", (current.dry_run or {}).get("reason") or (current.dry_run and "passed")),
        ("execution run", current.run_id),
        ("outcome", current.outcome),
        ("flow run", current.flow_run_id),
    ):
        # Values are data (parameters, reasons, approver): never markup.
        shown = value if value is not None else "-"
        out.print(f"  {label}: {shown}", highlight=False, markup=False)
    out.print("[bold]audit trail[/]")
    for entry in reversed(trail):
        out.print(
            f"  {entry.seq:>6} {entry.created_at:%H:%M:%S} {entry.actor}: {entry.action}",
            highlight=False,
            markup=False,
        )


@app.command()
def approve(
    incident_id: Annotated[str, typer.Argument(help="Incident awaiting approval.")],
    token: Annotated[
        str,
        typer.Option(
            envvar="NEURALOPS_APPROVAL_TOKEN",
            help="JWT from the identity provider for this incident (org-admin role); "
            "or set NEURALOPS_APPROVAL_TOKEN.",
        ),
    ],
    approver: Annotated[str, typer.Option(help="Your id: the token's subject.")],
    reject: Annotated[bool, typer.Option("--reject", help="Reject instead of approve.")] = False,
    comment: Annotated[str, typer.Option(help="Why; kept in the audit trail.")] = "",
    plan_digest: Annotated[
        str | None,
        typer.Option(
            help="The plan digest you reviewed (dry-run artifact, Resume form); refused if the "
            "incident's plan is another. Default: the digest printed here."
        ),
    ] = None,
) -> None:
    """Approve (or reject) a remediation waiting for approval, with the same token check as
    the Prefect UI's Resume form; a valid decision resumes the waiting run with it. Prints the
    plan first (playbook, version, plan digest, steps): the approval binds to that plan."""
    _guard_runs(incident_id)  # its run's Prefect server, or a refusal naming the fix
    from neuralops import approval, incidents, remediation

    settings = get_settings()
    _require_schema(settings)
    current = incidents.get(incident_id)
    if current.state != "awaiting_approval":
        err.print(
            f"[red]error:[/] incident {_lit(current.id)} is {_lit(current.state)}, "
            "not awaiting approval",
            highlight=False,
        )
        raise typer.Exit(2)
    for line in remediation.plan_lines(current):  # what is approved, before approving it
        out.print(line, highlight=False, markup=False)
    try:
        decision = remediation.ApprovalDecision(
            decision="reject" if reject else "approve",
            approver=approver,
            token=token,
            comment=comment,
            plan_digest=plan_digest or current.plan_digest,
        )
    except ValidationError as exc:  # never echo the values: the token is one of them
        fields = ", ".join(f"--{str(e['loc'][0]).replace('_', '-')}" for e in exc.errors())
        err.print(f"[red]error:[/] invalid {fields} (a plan digest is 64 lowercase hex)")
        raise typer.Exit(2) from None
    keys = approval.keys_from_settings(settings)
    if current.flow_run_id is None:  # no run is waiting: apply it here
        current, refusal = remediation.apply_decision(current.id, decision, keys=keys)
        if refusal:
            err.print(f"[red]refused:[/] {escape(' '.join(refusal.split()))}", highlight=False)
            raise typer.Exit(2)
        out.print(f"incident {current.id} is {current.state}", highlight=False, markup=False)
        return
    # The same checks the run will make, so a bad token or plan fails here, not silently there.
    _, refusal = remediation.check_token(current.id, decision, keys=keys, via="cli")
    refusal = refusal or remediation.check_plan(current, decision, via="cli")
    from flows.remediate import REFUSED_ARTIFACT, refusal_markdown, repair_approval_form
    from tasks.remediate import publish_on_run

    if refusal:  # shown on the run too: the UI's operator sees why nothing happened
        import logging

        # The artifact's event is still queued when this process exits: Prefect's events
        # worker sends it then, noting "Still processing items" at WARNING on stderr, a
        # second line under the refusal's one.
        logging.getLogger("EventsWorker").setLevel(logging.ERROR)
        publish_on_run(
            current.flow_run_id,
            key=REFUSED_ARTIFACT,
            markdown=refusal_markdown(current, refusal, via="`neuralops approve`"),
            description=f"Incident {current.id}: the last approval attempt was refused",
            warning=f"approval of incident {current.id} refused (neuralops approve): {refusal}",
        )
        err.print(f"[red]refused:[/] {escape(' '.join(refusal.split()))}", highlight=False)
        raise typer.Exit(2)
    from prefect import resume_flow_run

    problem = _wait_for_waiting_run(current)
    if problem:
        err.print(f"[red]error:[/] {escape(problem)}", highlight=False)
        raise typer.Exit(2)
    if written := repair_approval_form(current):  # lost to a Prefect server restart
        err.print(
            f"[yellow]note:[/] re-created the run's lost Resume form ({_lit(', '.join(written))})",
            highlight=False,
        )
    try:
        resume_flow_run(current.flow_run_id, run_input=decision.as_input())
    except Exception as exc:  # not paused any more, or Prefect refused the input
        err.print(
            f"[red]error:[/] flow run {current.flow_run_id} was not resumed: "
            f"{escape(' '.join(str(exc).split()))}",
            highlight=False,
        )
        raise typer.Exit(2) from None
    out.print(
        f"{decision.decision}d: resumed flow run {current.flow_run_id} for incident {current.id}",
        highlight=False,
        markup=False,
    )


APPROVE_WAIT_S = 60.0  # how long `approve` waits for a run that is replaying to wait again


def _wait_for_waiting_run(current: Any) -> str | None:
    """None once the incident's run is Paused/Suspended (waiting for its decision); else why
    not. A run from a deployment replays from the top after each resume (a refused attempt
    included) before it waits again: that takes seconds, so wait for it."""
    from prefect.client.orchestration import get_client

    from neuralops import incidents

    deadline = time.monotonic() + APPROVE_WAIT_S
    while True:
        with get_client(sync_client=True) as client:
            state = client.read_flow_run(current.flow_run_id).state
        if state is not None and state.is_paused():
            return None
        now = incidents.get(current.id).state
        if now != "awaiting_approval":
            return f"incident {current.id} is {now} now, no longer awaiting approval"
        if state is not None and state.is_final():
            return f"flow run {current.flow_run_id} is {state.name}: it cannot be resumed"
        if time.monotonic() >= deadline:
            where = state.name if state else "no state"
            return (
                f"flow run {current.flow_run_id} is {where}, not waiting for approval after "
                f"{int(APPROVE_WAIT_S)} s: try again shortly"
            )
        time.sleep(1)


# --- clusters (BYOC connector) ---------------------------------------------------------------

clusters_app = typer.Typer(
    help="External clusters: registration, heartbeats and status.", no_args_is_help=True
)
app.add_typer(clusters_app, name="clusters")


@clusters_app.command("list")
def clusters_list(
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Registered clusters: labels, work pool, last heartbeat and status."""
    from neuralops import clusters

    _require_schema(get_settings())
    found = clusters.list_clusters()
    if as_json:
        out.print_json(json.dumps([c.model_dump(mode="json") for c in found]))
        return
    if not found:
        out.print("no clusters registered (`neuralops clusters register NAME --vault-token ...`)")
        return
    table = Table("name", "status", "work pool", "last heartbeat", "labels")
    for c in found:
        table.add_row(
            _lit(c.name),
            _lit(c.status),
            _lit(c.work_pool),
            f"{c.last_heartbeat:%Y-%m-%d %H:%M:%S}" if c.last_heartbeat else "never",
            _lit(",".join(f"{k}={v}" for k, v in sorted(c.labels.items())) or "-"),
        )
    out.print(table)


@clusters_app.command("register")
def clusters_register(
    name: Annotated[str, typer.Argument(help="Cluster name (DNS label, at most 40 chars).")],
    vault_token: Annotated[
        str,
        typer.Option(
            "--vault-token",
            envvar="NEURALOPS_REGISTRATION_TOKEN",
            help="Vault token proving the right to register (checked, never stored); "
            "or set NEURALOPS_REGISTRATION_TOKEN to keep it out of the process list.",
            show_default=False,
        ),
    ],
    label: Annotated[
        list[str] | None, typer.Option("--label", help="KEY=VALUE, repeatable.")
    ] = None,
    prometheus_url: Annotated[
        str | None, typer.Option(help="The cluster's own Prometheus, for stream-metrics.")
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Register a cluster (again: new labels, rotated credential) and create its work pool."""
    _use_stack()  # the running stack's Prefect API, for the work pool
    from neuralops import clusters

    settings = get_settings()
    _require_schema(settings)
    registered = clusters.register(
        name,
        vault_token=vault_token,
        labels=_labels(label or []),
        prometheus_url=prometheus_url,
        settings=settings,
        actor=_actor(),
    )
    pool_note = _ensure_cluster_pool(registered.work_pool)
    if as_json:
        body = registered.model_dump(mode="json") | {"work_pool_note": pool_note}
        out.print_json(json.dumps(body))
        return
    out.print(
        f"cluster [bold]{_lit(registered.name)}[/] registered: status {_lit(registered.status)}, "
        f"credential {_lit(registered.credential_id)}",
        highlight=False,
    )
    out.print(pool_note, highlight=False, markup=False)
    _print_heartbeat_key(registered)


def _print_heartbeat_key(registered: Any) -> None:
    """The cluster's heartbeat key, shown once (it is also in Vault KV for the connector)."""
    from neuralops.clusters import KV_MOUNT, kv_path

    out.print(
        f"heartbeat key (PUT /healthz, `Authorization: Bearer <key>`; shown once, also in Vault "
        f"at {KV_MOUNT}/{kv_path(registered.name)} field heartbeat_key; registering again "
        "rotates it):",
        highlight=False,
        markup=False,
    )
    out.print(
        f"HEARTBEAT_KEY={registered.heartbeat_key.get_secret_value()}",
        highlight=False,
        markup=False,
    )


def _ensure_cluster_pool(pool: str) -> str:
    """Create the cluster's work pool when a Prefect API is configured; else say how."""
    from prefect.settings import get_current_settings

    how = f"create it with `prefect work-pool create {pool} --type process`"
    if not get_current_settings().api.url:
        return f"work pool {pool}: no Prefect API configured (PREFECT_API_URL); {how}"
    from tasks.clusters import ensure_work_pool

    try:
        created = ensure_work_pool(pool)
    except Exception as exc:  # the API is down or refuses: registration itself stands
        return f"work pool {pool}: the Prefect API did not answer ({type(exc).__name__}); {how}"
    return f"work pool {pool} " + ("created" if created else "already exists")


@connector_app.command("install")
def connector_install(
    cluster: Annotated[str, typer.Option(help="Cluster name (DNS label, at most 40 chars).")],
    kubeconfig: Annotated[
        Path, typer.Option(help="kubeconfig of the cluster (its API server goes in the policy).")
    ],
    vault_token: Annotated[
        str,
        typer.Option(
            "--vault-token",
            envvar="NEURALOPS_REGISTRATION_TOKEN",
            help="Vault token proving the right to register (checked, exchanged, never stored).",
            show_default=False,
        ),
    ],
    label: Annotated[
        list[str] | None, typer.Option("--label", help="KEY=VALUE, repeatable.")
    ] = None,
    output: Annotated[
        Path | None, typer.Option(help="Where to write connector.yaml (default ./connector-NAME).")
    ] = None,
    prometheus_url: Annotated[
        str | None, typer.Option(help="The cluster's own Prometheus (in-cluster URL).")
    ] = None,
    image: Annotated[
        str | None, typer.Option(help="Connector image, pinned by digest (repo@sha256:...).")
    ] = None,
) -> None:
    """Register the cluster, create its work pool and render its connector's manifests
    (validated against the Kubernetes schemas) from the Helm chart in deployments/."""
    _use_stack()  # the running stack's Prefect API, for the work pool and the manifests
    from neuralops import clusters, connector
    from neuralops.registry import registered_manifests
    from neuralops.signing import trusted_public_key

    settings = get_settings()
    _require_schema(settings)
    api_server = connector.kubernetes_api_url(kubeconfig)
    manifests = registered_manifests()
    if not manifests:
        raise InvalidInput("no playbooks are registered: the connector's RBAC is derived from them")
    from prefect.settings import get_current_settings

    prefect_api = get_current_settings().api.url or settings.prefect_api_url
    if not prefect_api:
        raise InvalidInput(
            "set PREFECT_API_URL to the control plane's Prefect API: the connector polls it"
        )
    chart_values = connector.values(
        cluster,
        prefect_api_url=prefect_api,
        signing_public_key=trusted_public_key(settings),
        manifests=manifests,
        labels=_labels(label or []),
        prometheus_url=prometheus_url,
        kubernetes_api_url=api_server,
        image=image,
    )
    rendered = connector.render(chart_values)
    connector.validate(rendered.objects)
    registered = clusters.register(
        cluster,
        vault_token=vault_token,
        labels=_labels(label or []),
        prometheus_url=prometheus_url,
        settings=settings,
        actor=_actor(),
    )
    target = connector.write(rendered, output or Path(f"connector-{cluster}"))
    out.print(
        f"cluster [bold]{_lit(registered.name)}[/] registered "
        f"(credential {_lit(registered.credential_id)})",
        highlight=False,
    )
    _print_heartbeat_key(registered)
    pool_note = _ensure_cluster_pool(registered.work_pool)
    out.print(pool_note, highlight=False, markup=False)
    if pool_note.endswith(("created", "already exists")):
        from tasks.clusters import ensure_connector_deployments

        ensure_connector_deployments(registered.name)
        out.print(
            f"deployments execute-playbook/{registered.work_pool} and "
            f"stream-metrics/{registered.work_pool} (every minute) on its pool",
            highlight=False,
            markup=False,
        )
    out.print(
        f"{len(rendered.objects)} objects validated against Kubernetes "
        f"{connector.KUBERNETES_VERSION} and written to {target}",
        highlight=False,
        markup=False,
    )
    out.print(
        "Next, with the cluster's kubeconfig:\n"
        f"  kubectl apply -f {target}\n"
        "  kubectl -n neuralops-connector create secret generic neuralops-connector-prefect "
        "--from-file=profiles.toml   # a Prefect profile with PREFECT_API_KEY",
        highlight=False,
        markup=False,
    )
