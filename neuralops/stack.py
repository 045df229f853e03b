"""Where the running stack is: ``<data dir>/stack.json``, written by ``neuralops run``.

``neuralops run`` records the addresses of what it started or reuses (Prefect API and UI,
Prometheus, the NeuralOps API when one is served), the data dir, its own pid and when it
started; it writes the file atomically and marks it ``stopped`` on shutdown. Any other
terminal reads it to reach the same Prefect server without exporting ``PREFECT_API_URL``.

A file is trusted only while it is current: a ``running`` file whose pid is gone (on this
host) or whose Prefect API does not answer is *stale*, and is reported as such, never used.
No Prefect import here: plain files and HTTP health checks.
"""

from __future__ import annotations

import contextlib
import os
import socket
import tempfile
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Literal

import httpx
from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, ValidationError, field_validator

STACK_FILE = "stack.json"
PROBE_TIMEOUT_S = 2.0

State = Literal["running", "stale", "stopped", "absent", "invalid"]


class StackInfo(BaseModel):
    """What ``neuralops run`` writes: the addresses of the running stack."""

    model_config = ConfigDict(frozen=True, extra="ignore")

    version: Literal[1] = 1
    status: Literal["running", "stopped"] = "running"
    pid: int = Field(gt=0, description="The `neuralops run` process.")
    hostname: str = Field(description="Where that pid lives (a shared data dir may hold it).")
    started_at: AwareDatetime
    stopped_at: AwareDatetime | None = None
    data_dir: Path
    project_root: Path = Field(description="The clone `neuralops run` ran from.")
    prefect_api_url: str
    prefect_ui_url: str
    prometheus_url: str | None = None
    neuralops_api_url: str | None = None

    @field_validator("prefect_api_url", "prefect_ui_url", "prometheus_url", "neuralops_api_url")
    @classmethod
    def _http_url(cls, value: str | None) -> str | None:
        if value is not None and not value.startswith(("http://", "https://")):
            raise ValueError("must start with http:// or https://")
        return value.rstrip("/") if value else value

    def addresses(self) -> dict[str, str]:
        """Each address by what it is, in the order an operator reads them."""
        named = {
            "Prefect API": self.prefect_api_url,
            "Prefect UI": self.prefect_ui_url,
            "Prometheus": self.prometheus_url,
            "NeuralOps API": self.neuralops_api_url,
        }
        return {name: url for name, url in named.items() if url}


class StackCheck(BaseModel):
    """What a reader found in ``stack.json``: its state, why, and which addresses answered."""

    state: State
    path: Path
    reason: str = Field(description="One line: what was found, or why it is not usable.")
    info: StackInfo | None = None
    reachable: dict[str, bool] = Field(
        default_factory=dict, description="Address name → answered (only the ones probed)."
    )

    @property
    def running(self) -> bool:
        return self.state == "running"


class StackFileInvalid(ValueError):
    """``stack.json`` exists but is not a stack record (truncated, edited, another version)."""


def stack_path(data_dir: Path) -> Path:
    return Path(data_dir) / STACK_FILE


def write(data_dir: Path, info: StackInfo) -> Path:
    """Write ``stack.json`` atomically (a reader sees the old file or the new, never half)."""
    path = stack_path(data_dir)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".stack-", suffix=".json.tmp")
    try:
        with os.fdopen(fd, "w") as handle:
            handle.write(info.model_dump_json(indent=2) + "\n")
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    return path


def read(data_dir: Path) -> StackInfo | None:
    """The record, or None when there is none; ``StackFileInvalid`` when it is unreadable."""
    path = stack_path(data_dir)
    try:
        text = path.read_text()
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise StackFileInvalid(f"{path}: cannot read it ({exc.strerror})") from None
    try:
        return StackInfo.model_validate_json(text)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(map(str, e['loc'])) or '(root)'}: {e['msg']}"
            for e in exc.errors(include_url=False)
        )
        raise StackFileInvalid(f"{path}: not a stack record ({problems})") from None


def mark_stopped(data_dir: Path, pid: int, *, now: datetime | None = None) -> bool:
    """Mark the record stopped, if it is still the one ``pid`` wrote (another run's is left
    alone). True when it was marked."""
    try:
        info = read(data_dir)
    except StackFileInvalid:
        return False
    if info is None or info.pid != pid or info.hostname != socket.gethostname():
        return False
    write(
        data_dir,
        info.model_copy(update={"status": "stopped", "stopped_at": now or datetime.now(UTC)}),
    )
    return True


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


def probe_url(name: str, url: str, timeout_s: float = PROBE_TIMEOUT_S) -> bool:
    """Does the address answer? The Prefect API must pass its health check; the others must
    answer HTTP below 500 at their readiness path."""
    path = {
        "Prefect API": "/health",
        "Prometheus": "/-/ready",
        "NeuralOps API": "/healthz",
    }.get(name, "")
    try:
        response = httpx.get(f"{url}{path}", timeout=timeout_s, follow_redirects=True)
    except httpx.HTTPError:
        return False
    if name == "Prefect API":
        return response.status_code == 200
    return response.status_code < 500


def check(
    data_dir: Path,
    *,
    probe_all: bool = False,
    probe: Callable[[str, str], bool] = probe_url,
    alive: Callable[[int], bool] = pid_alive,
    hostname: str | None = None,
) -> StackCheck:
    """Read and validate ``stack.json``. ``running`` only when the file says so, its pid
    lives (when it is on this host) and its Prefect API answers; ``probe_all`` also probes
    the other addresses (for ``neuralops doctor``)."""
    path = stack_path(data_dir)
    try:
        info = read(data_dir)
    except StackFileInvalid as exc:
        return StackCheck(state="invalid", path=path, reason=str(exc))
    if info is None:
        return StackCheck(state="absent", path=path, reason=f"no {path}")
    since = f"{info.started_at.astimezone(UTC):%Y-%m-%d %H:%M:%S} UTC"
    if info.status == "stopped":
        when = info.stopped_at or info.started_at
        return StackCheck(
            state="stopped",
            path=path,
            info=info,
            reason=f"stopped at {when.astimezone(UTC):%Y-%m-%d %H:%M:%S} UTC (pid {info.pid})",
        )
    here = (hostname or socket.gethostname()) == info.hostname
    names = list(info.addresses()) if probe_all else ["Prefect API"]
    reachable = {name: probe(name, info.addresses()[name]) for name in names}
    if here and not alive(info.pid):
        reason = f"stale: its `neuralops run` (pid {info.pid}, started {since}) is gone"
        return StackCheck(state="stale", path=path, info=info, reason=reason, reachable=reachable)
    if not reachable["Prefect API"]:
        reason = f"stale: its Prefect API {info.prefect_api_url} does not answer"
        return StackCheck(state="stale", path=path, info=info, reason=reason, reachable=reachable)
    where = f"pid {info.pid}" + ("" if here else f" on {info.hostname}")
    return StackCheck(
        state="running",
        path=path,
        info=info,
        reason=f"running since {since} ({where})",
        reachable=reachable,
    )
