"""The running stack from any terminal: `<data dir>/stack.json` (neuralops/stack.py), what
reads it, and the commands on existing runs that reach that stack or refuse naming the fix,
never starting Prefect's temporary server. Also the CLI polish of issue 16: the SQLite
notice only where a database is touched, listings that fit 80 columns."""

from __future__ import annotations

import json
import os
import shlex
import socket
import subprocess
import sys
import threading
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from conftest import free_port, wait_until
from sqlalchemy.engine import URL

from neuralops import incidents, stack
from neuralops.settings import get_settings

ROOT = Path(__file__).resolve().parents[1]
NEURALOPS = Path(sys.executable).with_name("neuralops")
FIX = "start the stack with `make run`, or set PREFECT_API_URL / NEURALOPS_DATA_DIR"
# What a terminal on the demo's SQLite and dev key is told before a refusal (stderr).
DEV_NOTES = ["POSTGRES_DSN is not set", "DEV ONLY"]


def _info(data_dir: Path, **changes) -> stack.StackInfo:
    return stack.StackInfo(
        pid=os.getpid(),
        hostname=socket.gethostname(),
        started_at=datetime.now(UTC),
        data_dir=data_dir,
        project_root=ROOT,
        prefect_api_url="http://127.0.0.1:4200/api",
        prefect_ui_url="http://127.0.0.1:4200",
        prometheus_url="http://127.0.0.1:9090",
    ).model_copy(update=changes)


def _dead_pid() -> int:
    process = subprocess.Popen([sys.executable, "-c", "pass"])
    process.wait()
    return process.pid  # reaped: no process has it (pids are not reused this fast)


def new_terminal(data_dir: Path, home: Path) -> dict[str, str]:
    """What a new terminal holds: PATH, HOME and NEURALOPS_DATA_DIR; no PREFECT_* at all."""
    home.mkdir(parents=True, exist_ok=True)
    return {"PATH": os.environ["PATH"], "HOME": str(home), "NEURALOPS_DATA_DIR": str(data_dir)}


def neuralops(*args: str, env: dict[str, str], timeout: float = 120) -> tuple:
    started = time.monotonic()
    result = subprocess.run(
        [str(NEURALOPS), *args], env=env, cwd=ROOT, capture_output=True, text=True, timeout=timeout
    )
    return result, time.monotonic() - started


# --- the record: pure functions ---------------------------------------------------------------


def test_write_is_atomic_and_reads_back(tmp_path: Path) -> None:
    info = _info(tmp_path)
    path = stack.write(tmp_path, info)
    assert path == tmp_path / "stack.json"
    assert stack.read(tmp_path) == info
    assert [p.name for p in tmp_path.iterdir()] == ["stack.json"]  # no temporary file left
    assert json.loads(path.read_text())["prefect_api_url"] == "http://127.0.0.1:4200/api"


def test_check_states(tmp_path: Path) -> None:
    up = lambda name, url: True  # noqa: E731
    down = lambda name, url: False  # noqa: E731
    assert stack.check(tmp_path).state == "absent"

    stack.write(tmp_path, _info(tmp_path))
    found = stack.check(tmp_path, probe=up, probe_all=True)
    assert found.running and "running since" in found.reason
    assert set(found.reachable) == {"Prefect API", "Prefect UI", "Prometheus"}

    gone = stack.check(tmp_path, probe=up, alive=lambda pid: False)
    assert gone.state == "stale" and f"pid {os.getpid()}" in gone.reason and "gone" in gone.reason
    silent = stack.check(tmp_path, probe=down)
    assert silent.state == "stale" and "does not answer" in silent.reason
    # Another host's pid means nothing here: its Prefect API answering is what counts.
    stack.write(tmp_path, _info(tmp_path, hostname="elsewhere"))
    assert stack.check(tmp_path, probe=up, alive=lambda pid: False).running

    stack.write(tmp_path, _info(tmp_path))
    assert stack.mark_stopped(tmp_path, os.getpid() + 1) is False  # another run's: left alone
    assert stack.mark_stopped(tmp_path, os.getpid()) is True
    stopped = stack.check(tmp_path, probe=up)
    assert stopped.state == "stopped" and stopped.info.stopped_at is not None

    (tmp_path / "stack.json").write_text('{"pid": "twelve"')
    invalid = stack.check(tmp_path, probe=up)
    assert invalid.state == "invalid" and "not a stack record" in invalid.reason


# --- commands on existing runs: the stack, or a refusal naming the fix -----------------------


def _waiting_incident(flow_run_id: uuid.UUID | None = None) -> incidents.IncidentOut:
    """An incident awaiting approval in a (pretend) remediate flow run."""
    current = incidents.create(
        signal_id=None,
        playbook_id="raise-memory-limit",
        recommendations=[{"playbook_id": "raise-memory-limit", "score": 0.9}],
        parameters={"container": "api", "memory_limit": "2Gi"},
        actor="test",
    )
    for state in ("dry_run_passed", "awaiting_approval"):
        incidents.transition(current.id, state, actor="test")
    incidents.attach_flow_run(current.id, flow_run_id or uuid.uuid4())
    return incidents.get(current.id)


def test_approve_without_a_stack_refuses_fast_naming_the_fix(
    sqlite_url: URL, tmp_path: Path
) -> None:
    current = _waiting_incident()
    env = new_terminal(get_settings().data_dir, tmp_path / "home")
    args = ("approve", str(current.id), "--approver", "ana", "--token", "x.y.z")
    result, took = neuralops(*args, env=env)
    assert result.returncode == 2, result.stderr
    assert FIX in result.stderr and f"no {get_settings().data_dir / 'stack.json'}" in result.stderr
    assert "temporary server" not in result.stderr.lower() and "Traceback" not in result.stderr
    assert took < 15, f"took {took:.1f} s"  # Prefect's temporary server alone takes ~20 s

    # A stack.json whose run is gone is reported as stale, and not used.
    stack.write(get_settings().data_dir, _info(get_settings().data_dir, pid=_dead_pid()))
    result, took = neuralops(*args, env=env)
    assert result.returncode == 2 and "stale" in result.stderr and FIX in result.stderr
    assert took < 15, f"took {took:.1f} s"

    # `make approve` runs the same command (the environment's stamp taken as up to date).
    make = subprocess.run(
        ["make", "approve", f"INCIDENT={current.id}", "TOKEN=x.y.z", "APPROVER=ana"],
        env=env | {"MAKEFLAGS": "-o .venv/.installed"},
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert make.returncode == 2 and FIX in make.stderr and "x.y.z" not in make.stdout


def test_a_stack_whose_prefect_api_is_down_is_stale(sqlite_url: URL, tmp_path: Path) -> None:
    current = _waiting_incident()
    data_dir = get_settings().data_dir
    api = f"http://127.0.0.1:{free_port()}/api"
    stack.write(data_dir, _info(data_dir, prefect_api_url=api))  # our pid: alive
    env = new_terminal(data_dir, tmp_path / "home")
    result, _ = neuralops(
        "approve", str(current.id), "--approver", "ana", "--token", "x.y.z", env=env
    )
    assert result.returncode == 2
    assert f"stale: its Prefect API {api} does not answer" in result.stderr and FIX in result.stderr


def test_make_approve_says_how_to_call_it() -> None:
    make = subprocess.run(
        ["make", "approve"],
        env=os.environ | {"MAKEFLAGS": "-o .venv/.installed"},
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert make.returncode == 2 and "usage: make approve INCIDENT=<id> TOKEN=<token>" in make.stderr


def test_make_run_passes_args() -> None:
    dry = subprocess.run(
        ["make", "-n", "run", "ARGS=--port 4300 --workers 2"],
        env=os.environ | {"MAKEFLAGS": "-o .venv/.installed"},
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert dry.returncode == 0 and ".venv/bin/neuralops run --port 4300 --workers 2" in dry.stdout


def test_printed_approve_lines_name_the_environment_and_the_data_dir(
    sqlite_url: URL, capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    from neuralops.cli import _print_approve_commands

    monkeypatch.chdir(ROOT)
    settings = get_settings()
    _print_approve_commands("0b0e-id", "sre-oncall@example.com", "aaa.bbb.ccc", settings)
    printed = capsys.readouterr().out.splitlines()
    data = shlex.quote(str(settings.data_dir))
    assert (
        f"NEURALOPS_DATA_DIR={data} .venv/bin/neuralops approve 0b0e-id "
        "--approver sre-oncall@example.com --token aaa.bbb.ccc"
    ) in printed
    assert (
        f"NEURALOPS_DATA_DIR={data} make approve INCIDENT=0b0e-id "
        "APPROVER=sre-oncall@example.com TOKEN=aaa.bbb.ccc"
    ) in printed

    monkeypatch.chdir(settings.data_dir)  # elsewhere: absolute paths
    _print_approve_commands("0b0e-id", "ana", "aaa.bbb.ccc", settings)
    printed = capsys.readouterr().out
    assert f"{NEURALOPS} approve 0b0e-id" in printed and f"make -C {ROOT} approve" in printed


@pytest.mark.slow
def test_a_new_terminal_approves_with_the_printed_command(
    signed_catalogue: dict, prefect_server: None, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """The whole point: a remediation paused on a real Prefect server, stack.json naming that
    server, and the approve line `neuralops run` prints, pasted into a terminal that holds only
    PATH, HOME and NEURALOPS_DATA_DIR: it reaches the run and the remediation completes."""
    from prefect.settings import PREFECT_API_URL

    from flows.remediate import remediate
    from neuralops import cli
    from neuralops.approval import issue_dev_token
    from neuralops.cli import DEMO_APPROVER, _print_approve_commands

    monkeypatch.setenv("NEURALOPS_EMBEDDER", "hashing")
    monkeypatch.setenv("NEURALOPS_SETTLE_S", "0")
    get_settings.cache_clear()
    settings = get_settings()
    box: dict = {}

    def run() -> None:
        try:
            box["result"] = remediate(
                signal_id=str(signed_catalogue["signals"]["oom-kills"].id),
                parameters={"container": "api", "memory_limit": "2Gi"},
            )
        except BaseException as exc:  # surfaced below
            box["error"] = exc

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    current = wait_until(
        lambda: next(iter(incidents.list_incidents(state="awaiting_approval")), None),
        timeout=120,
        what="the incident to await approval",
    )
    api_url = PREFECT_API_URL.value()
    stack.write(
        settings.data_dir,
        _info(settings.data_dir, prefect_api_url=api_url, prefect_ui_url=api_url[:-4]),
    )
    token = issue_dev_token(
        incident_id=current.id,
        approver=DEMO_APPROVER,
        private_key_path=signed_catalogue["private_key"],
        ttl_s=600,
    )
    monkeypatch.chdir(ROOT)
    # Console.capture, not monkeypatch.setattr(cli.out, "file", ...): undoing that pins the
    # console to this test's captured stdout, and every later CLI test in the process (its
    # output read through CliRunner) would read nothing.
    with cli.out.capture() as captured:
        _print_approve_commands(str(current.id), DEMO_APPROVER, token, settings)
    printed = [line for line in captured.get().splitlines() if "neuralops approve" in line]
    assert len(printed) == 1, captured.get()

    env = new_terminal(settings.data_dir, tmp_path / "home")
    # The line with a token that does not verify: refused in one line, after the notes on
    # the stack, the database and the dev key (no Prefect log line: the note on the queued
    # artifact event is quieted).
    tampered = token.rsplit(".", 1)[0] + "." + "A" * 86
    refused = subprocess.run(
        ["bash", "-c", printed[0].replace(token, tampered)],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert refused.returncode == 2, refused.stdout + refused.stderr
    *notes, why = refused.stderr.strip().splitlines()
    assert why.startswith("refused: approval token refused (bad_signature)"), why
    assert [n.split(":")[0] for n in notes] == ["PREFECT_API_URL is not set", *DEV_NOTES], notes
    result = subprocess.run(
        ["bash", "-c", printed[0]], env=env, cwd=ROOT, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"using the running stack's Prefect API {api_url}" in result.stderr
    assert f"resumed flow run {current.flow_run_id}" in result.stdout
    thread.join(120)
    assert "error" not in box, box.get("error")
    assert box["result"]["state"] == "succeeded"
    assert incidents.get(current.id).approver == DEMO_APPROVER


# --- CLI polish -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "args",
    [["--help"], ["approve", "--help"], ["incidents", "list", "--help"], ["token", "issue-dev"]],
)
def test_no_database_notice_where_no_database_is_touched(tmp_path: Path, args: list[str]) -> None:
    env = new_terminal(tmp_path / "data", tmp_path / "home")
    if args == ["token", "issue-dev"]:
        args = [*args, "--scope", "runs:read"]
    result, _ = neuralops(*args, env=env, timeout=60)
    assert result.returncode == 0, result.stderr
    assert "POSTGRES_DSN" not in result.stderr


def test_detect_file_prints_no_database_notice(tmp_path: Path) -> None:
    env = new_terminal(tmp_path / "data", tmp_path / "home")
    samples = tmp_path / "samples.csv"
    start = datetime(2026, 1, 1, tzinfo=UTC)
    rows = [f"{(start + timedelta(minutes=n)).isoformat()},{n % 3}" for n in range(30)]
    samples.write_text("timestamp,value\n" + "\n".join(rows) + "\n")
    scored = tmp_path / "scored.csv"
    result, _ = neuralops("detect-file", str(samples), str(scored), env=env, timeout=60)
    assert result.returncode == 0, result.stderr
    assert "POSTGRES_DSN" not in result.stderr and scored.is_file()


def test_listings_fit_80_columns_and_json_has_the_full_record(
    sqlite_url: URL, tmp_path: Path
) -> None:
    from neuralops import signals
    from neuralops.demo import demo_signals

    candidates, cooldowns = demo_signals(datetime.now(UTC))
    signals.record_signals(candidates, cooldowns)
    for _ in range(3):
        _waiting_incident()
    env = new_terminal(get_settings().data_dir, tmp_path / "home") | {"COLUMNS": "80"}
    for listing in (["incidents", "list"], ["audit", "list"], ["signals", "list"]):
        result, _ = neuralops(*listing, env=env, timeout=60)
        assert result.returncode == 0, result.stderr
        lines = result.stdout.splitlines()
        assert len(lines) > 3 and max(map(len, lines)) <= 80, result.stdout
        assert result.stderr.count("POSTGRES_DSN is not set") == 1  # once, where it is touched
        full, _ = neuralops(*listing, "--json", env=env, timeout=60)
        records = json.loads(full.stdout)
        assert records and len(records) <= 20
    incident_list = json.loads(neuralops("incidents", "list", "--json", env=env)[0].stdout)
    assert {"id", "state", "playbook_id", "created_at", "recommendations"} <= set(incident_list[0])
    table = neuralops("incidents", "list", env=env)[0].stdout
    assert all(str(i["id"]) in table for i in incident_list)  # ids whole: they are what one acts on
    assert "awaiting_approval" in table and "not shown at 80 columns" in table
