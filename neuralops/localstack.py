"""The processes `neuralops run` keeps alive on this machine: a Prefect server, workers and the
demo's Prometheus.

Each child runs in its own session (process group), so a Ctrl-C in the terminal reaches only
`neuralops run`, which then stops its children in reverse order of start: workers before
the server they talk to. What was already running (a Prefect server someone else started)
is reused and left alone. Output goes to one log file per process under ``<data dir>/logs``.
No Prefect import here: these are plain subprocesses and HTTP health checks.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from neuralops.errors import NeuralOpsError

PROJECT_ROOT = Path(__file__).resolve().parents[1]  # where prefect.yaml and flows/ live


class StackError(NeuralOpsError):
    """A process of the local stack failed to start or died; the message says which and
    carries the tail of its log."""


def tail(path: Path, lines: int = 15) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return ""
    return "\n".join(text.splitlines()[-lines:])


def prefect_bin() -> str:
    """The ``prefect`` command of this environment (beside the running Python)."""
    candidate = Path(sys.executable).with_name("prefect")
    return str(candidate) if candidate.exists() else "prefect"


@dataclass
class Managed:
    """A child process this run started, and its log file."""

    name: str
    process: subprocess.Popen[bytes]
    log: Path

    @property
    def pid(self) -> int:
        return self.process.pid

    def alive(self) -> bool:
        return self.process.poll() is None

    def stop(self, timeout_s: float = 15.0) -> None:
        """SIGTERM to the whole process group (a worker's flow-run children too), then
        SIGKILL after ``timeout_s``."""
        if not self.alive():
            return
        for sig, wait_s in ((signal.SIGTERM, timeout_s), (signal.SIGKILL, 5.0)):
            try:
                os.killpg(self.process.pid, sig)
            except ProcessLookupError:
                return
            try:
                self.process.wait(timeout=wait_s)
                return
            except subprocess.TimeoutExpired:
                continue


@dataclass
class Stack:
    """The processes started by one `neuralops run`; ``stop()`` ends them, newest first."""

    logs: Path
    started: list[Managed] = field(default_factory=list)

    def start(
        self, name: str, argv: Sequence[str], env: Mapping[str, str], cwd: Path = PROJECT_ROOT
    ) -> Managed:
        self.logs.mkdir(parents=True, exist_ok=True)
        log = self.logs / f"{name}.log"
        with log.open("ab") as out:
            process = subprocess.Popen(
                list(argv),
                cwd=cwd,
                env=dict(env),
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # Ctrl-C reaches us; we stop the children in order
            )
        managed = Managed(name, process, log)
        self.started.append(managed)
        return managed

    def check(self) -> None:
        """Raise if a process this run started has exited."""
        for managed in self.started:
            if not managed.alive():
                raise StackError(
                    f"{managed.name} exited with code {managed.process.returncode}; "
                    f"its log {managed.log} ends:\n{tail(managed.log)}"
                )

    def stop(self) -> list[str]:
        """Stop everything this run started; returns the names, in the order stopped."""
        stopped = []
        for managed in reversed(self.started):
            if managed.alive():
                managed.stop()
                stopped.append(managed.name)
        self.started.clear()
        return stopped

    def __enter__(self) -> Stack:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def healthy(api_url: str, timeout_s: float = 2.0) -> bool:
    """Does a Prefect API answer its health check at ``api_url`` (ending in /api)?"""
    try:
        return httpx.get(f"{api_url.rstrip('/')}/health", timeout=timeout_s).status_code == 200
    except httpx.HTTPError:
        return False


def wait_healthy(api_url: str, process: Managed | None, *, timeout_s: float = 180.0) -> float:
    """Wait until the API answers; seconds waited. Fails early if ``process`` died."""
    started = time.monotonic()
    while not healthy(api_url):
        if process is not None and not process.alive():
            raise StackError(
                f"{process.name} exited with code {process.process.returncode} before "
                f"{api_url} answered; its log {process.log} ends:\n{tail(process.log)}"
            )
        if time.monotonic() - started > timeout_s:
            raise StackError(
                f"{api_url} did not answer within {timeout_s:.0f} s"
                + (f"; {process.log} ends:\n{tail(process.log)}" if process else "")
            )
        time.sleep(0.5)
    return time.monotonic() - started


def server_argv(host: str, port: int) -> list[str]:
    return [prefect_bin(), "server", "start", "--host", host, "--port", str(port)]


def worker_argv(pool: str, name: str) -> list[str]:
    return [prefect_bin(), "worker", "start", "--pool", pool, "--type", "process", "--name", name]


def deploy(env: Mapping[str, str], log: Path, *, timeout_s: float = 600.0) -> None:
    """``prefect --no-prompt deploy --all`` from the project root: every deployment of
    prefect.yaml, with its schedules and triggers (updated in place on a second run)."""
    log.parent.mkdir(parents=True, exist_ok=True)
    with log.open("ab") as out:
        result = subprocess.run(
            [prefect_bin(), "--no-prompt", "deploy", "--all"],
            cwd=PROJECT_ROOT,
            env=dict(env),
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            timeout=timeout_s,
            check=False,
        )
    if result.returncode != 0:
        raise StackError(
            f"prefect deploy --all failed (exit {result.returncode}); {log} ends:\n{tail(log)}"
        )
