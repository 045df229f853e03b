"""A real Prometheus on localhost, loaded with history: for tests, benchmarks and the demo.

Three pieces:

* :func:`write_openmetrics` streams series into an OpenMetrics file, the input format of
  ``promtool tsdb create-blocks-from openmetrics``;
* :class:`LocalPrometheus` backfills such files into a TSDB directory and runs the
  Debian ``prometheus`` binary on it (no scrape targets, so the data stays what was loaded);
* :func:`demo_history` is the shared synthetic history with one injected latency spike.
"""

from __future__ import annotations

import math
import re
import shutil
import socket
import subprocess
import time
import weakref
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Any, NamedTuple

import httpx
import numpy as np
import polars as pl

from neuralops.errors import NeuralOpsError

INSTALL_HINT = "install the Debian package: apt-get install prometheus (or run make system-deps)"
_METRIC_NAME = re.compile(r"[a-zA-Z_:][a-zA-Z0-9_:]*")
_LABEL_NAME = re.compile(r"[a-zA-Z_][a-zA-Z0-9_]*")
_CHUNK_SAMPLES = 500_000  # rows formatted per polars call: big enough to be fast, small in RAM


class LocalPrometheusError(NeuralOpsError):
    """promtool or prometheus failed; the message carries the tail of its output."""


class PrometheusNotInstalled(LocalPrometheusError):
    """The ``prometheus`` / ``promtool`` binaries are not on PATH."""


class Series(NamedTuple):
    """One series to write: unpacks as ``(name, labels, timestamps, values)``."""

    name: str
    labels: Mapping[str, str]
    timestamps: np.ndarray  # unix seconds
    values: np.ndarray  # NaN = no sample (not written)


# --- OpenMetrics ------------------------------------------------------------------------


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _series_prefix(name: str, labels: Mapping[str, str]) -> str:
    if not _METRIC_NAME.fullmatch(name):
        raise ValueError(f"invalid metric name {name!r}")
    parts = []
    for label, value in sorted(labels.items()):
        if label == "__name__":
            if value != name:
                raise ValueError(f"series {name!r} has __name__={value!r}")
            continue
        if not _LABEL_NAME.fullmatch(label) or label.startswith("__"):
            raise ValueError(f"series {name!r}: invalid label name {label!r}")
        if value != "":  # an empty value is no label in Prometheus
            parts.append(f'{label}="{_escape(str(value))}"')
    return f"{name}{{{','.join(parts)}}} " if parts else f"{name} "


def write_openmetrics(series: Iterable[Series | tuple], path: str | Path) -> int:
    """Write ``(name, labels, timestamps, values)`` series as OpenMetrics gauges; return samples.

    Streams: only one chunk of about half a million samples is formatted at a time (by
    polars, which is about 5x faster than Python string formatting). Series of one metric
    must come together (OpenMetrics forbids interleaved families); NaN values are gaps
    and are skipped; each series' samples are sorted by time, as promtool requires.
    """
    path = Path(path)
    written = 0
    families: set[str] = set()
    current: str | None = None
    chunk: list[tuple[str, np.ndarray, np.ndarray]] = []
    chunk_size = 0
    with path.open("wb") as out:
        for name, labels, timestamps, values in series:
            stamps = np.asarray(timestamps, dtype=np.float64).ravel()
            vals = np.asarray(values, dtype=np.float64).ravel()
            if stamps.shape != vals.shape:
                raise ValueError(f"series {name!r}: {len(stamps)} timestamps, {len(vals)} values")
            if not np.isfinite(stamps).all():
                raise ValueError(f"series {name!r}: timestamps must be finite unix seconds")
            prefix = _series_prefix(name, labels)
            if name != current:
                if name in families:
                    raise ValueError(
                        f"metric {name!r} appears again after other metrics: OpenMetrics needs "
                        "each family's series together (sort the series by name)"
                    )
                written += _flush(out, chunk)
                chunk, chunk_size = [], 0
                out.write(f"# TYPE {name} gauge\n".encode())
                families.add(name)
                current = name
            keep = ~np.isnan(vals)
            stamps, vals = stamps[keep], vals[keep]
            if len(stamps) > 1 and np.any(np.diff(stamps) < 0):
                order = np.argsort(stamps, kind="stable")
                stamps, vals = stamps[order], vals[order]
            chunk.append((prefix, stamps, vals))
            chunk_size += len(stamps)
            if chunk_size >= _CHUNK_SAMPLES:
                written += _flush(out, chunk)
                chunk, chunk_size = [], 0
        written += _flush(out, chunk)
        out.write(b"# EOF\n")
    return written


def _flush(out: IO[bytes], chunk: list[tuple[str, np.ndarray, np.ndarray]]) -> int:
    if not chunk:
        return 0
    counts = np.array([len(s) for _, s, _ in chunk])
    if counts.sum() == 0:
        return 0
    ms = np.rint(np.concatenate([s for _, s, _ in chunk]) * 1000).astype(np.int64)
    vals = np.concatenate([v for _, _, v in chunk])
    seconds = pl.Series(ms // 1000).cast(pl.String)
    if np.any(ms % 1000):
        seconds = seconds + "." + pl.Series(ms % 1000).cast(pl.String).str.zfill(3)
    value = pl.Series(vals)
    text = (
        pl.select(
            pl.when(value.is_infinite())
            .then(pl.when(value > 0).then(pl.lit("+Inf")).otherwise(pl.lit("-Inf")))
            .otherwise(value.cast(pl.String))
        )
        .to_series()
        .rename("v")
    )
    prefixes = pl.Series([p for p, _, _ in chunk]).gather(np.repeat(np.arange(len(chunk)), counts))
    frame = pl.DataFrame({"p": prefixes, "v": text, "t": seconds})
    frame.select(pl.concat_str(["p", "v", pl.lit(" "), "t"])).write_csv(
        out, include_header=False, quote_style="never"
    )
    return int(counts.sum())


# --- the server -------------------------------------------------------------------------


def prometheus_binaries() -> tuple[str, str]:
    """Paths of ``prometheus`` and ``promtool``, or :class:`PrometheusNotInstalled`."""
    found = {name: shutil.which(name) for name in ("prometheus", "promtool")}
    missing = [name for name, where in found.items() if where is None]
    if missing:
        raise PrometheusNotInstalled(f"{' and '.join(missing)} not found on PATH: {INSTALL_HINT}")
    return found["prometheus"], found["promtool"]  # type: ignore[return-value]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


_CONFIG = """\
# Written by neuralops.local_prometheus: no scrape targets, the data is what was backfilled.
global:
  scrape_interval: 1m
  evaluation_interval: 1m
scrape_configs: []
"""


def _tail(path: Path, lines: int = 20) -> str:
    try:
        text = path.read_text(errors="replace").splitlines()
    except OSError:
        return "(no log)"
    return "\n".join(text[-lines:])


class LocalPrometheus:
    """A ``prometheus`` process on 127.0.0.1 over a TSDB in ``workdir/tsdb``.

    ``workdir`` also holds ``prometheus.yml`` (no scrape targets) and ``prometheus.log``.
    :meth:`backfill` loads OpenMetrics files with ``promtool tsdb create-blocks-from
    openmetrics`` while the server is stopped; :meth:`start` / :meth:`stop` can be repeated
    and keep the port and the data, so a test can take Prometheus down mid-run.

    What is queryable (measured with Prometheus 2.42): everything backfilled before
    :meth:`start`, immediately once ``/-/ready`` answers, whatever its age: data ending
    now, or even in the future, and data weeks old. The server loads backfilled blocks at
    startup; with no scrape targets the head block stays empty, so nothing overlaps it.
    Old data needs the long retention set here (``100y``): with Prometheus' default 15 d
    retention, blocks older than that are deleted at startup. An *instant* query at
    wall-clock now sees a series only if its last sample is at most 5 minutes old (the
    lookback delta); range queries over the data's own timestamps always work.
    Backfilling into a running server is refused: its blocks would only appear after the
    server's next reload and must then be older than the head block.
    """

    def __init__(
        self,
        workdir: str | Path,
        *,
        port: int | None = None,
        retention: str = "100y",
        ready_timeout_s: float = 30.0,
        extra_args: Sequence[str] = (),
    ) -> None:
        self.prometheus_bin, self.promtool_bin = prometheus_binaries()
        self.workdir = Path(workdir)
        self.tsdb_dir = self.workdir / "tsdb"
        self.config_path = self.workdir / "prometheus.yml"
        self.log_path = self.workdir / "prometheus.log"
        self.port = port or free_port()
        self.retention = retention
        self.ready_timeout_s = ready_timeout_s
        self.extra_args = list(extra_args)
        self._proc: subprocess.Popen[bytes] | None = None
        self._finalizer: weakref.finalize | None = None
        self.tsdb_dir.mkdir(parents=True, exist_ok=True)
        self.config_path.write_text(_CONFIG)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def __repr__(self) -> str:
        state = "running" if self.running else "stopped"
        return f"LocalPrometheus({self.url}, {state}, {self.workdir})"

    def backfill(self, openmetrics_file: str | Path) -> None:
        if self.running:
            raise LocalPrometheusError("stop the server before backfilling (see the docstring)")
        result = subprocess.run(
            [
                self.promtool_bin,
                "tsdb",
                "create-blocks-from",
                "openmetrics",
                "--quiet",
                str(openmetrics_file),
                str(self.tsdb_dir),
            ],
            capture_output=True,
            text=True,
            check=False,
        )
        if result.returncode != 0:
            tail = "\n".join((result.stdout + result.stderr).strip().splitlines()[-20:])
            raise LocalPrometheusError(
                f"promtool could not backfill {openmetrics_file} (exit {result.returncode}):\n"
                f"{tail}"
            )

    def start(self) -> None:
        if self.running:
            return
        command = [
            self.prometheus_bin,
            f"--config.file={self.config_path}",
            f"--storage.tsdb.path={self.tsdb_dir}",
            f"--storage.tsdb.retention.time={self.retention}",
            f"--web.listen-address=127.0.0.1:{self.port}",
            *self.extra_args,
        ]
        with self.log_path.open("ab") as log:
            log.write(f"\n--- {datetime.now(UTC).isoformat()} {' '.join(command)}\n".encode())
            log.flush()
            self._proc = subprocess.Popen(
                command, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL
            )
        # If the owner forgets stop() (or the test process ends), do not leave it running.
        self._finalizer = weakref.finalize(self, _kill, self._proc)
        self._wait_ready()

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + self.ready_timeout_s
        assert self._proc is not None
        with httpx.Client(timeout=1.0) as client:
            while True:
                code = self._proc.poll()
                if code is not None:
                    self._proc = None
                    raise LocalPrometheusError(
                        f"prometheus exited with code {code} before it was ready; "
                        f"{self.log_path}:\n{_tail(self.log_path)}"
                    )
                try:
                    if client.get(f"{self.url}/-/ready").status_code == 200:
                        return
                except httpx.TransportError:
                    pass
                if time.monotonic() > deadline:
                    self.stop()
                    raise LocalPrometheusError(
                        f"prometheus at {self.url} not ready after {self.ready_timeout_s:g} s; "
                        f"{self.log_path}:\n{_tail(self.log_path)}"
                    )
                time.sleep(0.05)

    def stop(self, timeout_s: float = 10.0) -> None:
        """SIGTERM, then SIGKILL after ``timeout_s``; the data directory stays."""
        proc, self._proc = self._proc, None
        if self._finalizer is not None:
            self._finalizer.detach()
            self._finalizer = None
        if proc is not None:
            _kill(proc, timeout_s)

    def __enter__(self) -> LocalPrometheus:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _kill(proc: subprocess.Popen[bytes], timeout_s: float = 5.0) -> None:
    if proc.poll() is not None:
        return
    proc.terminate()
    try:
        proc.wait(timeout_s)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


# --- the shared demo history ------------------------------------------------------------

LATENCY = "http_request_duration_seconds_p99"
REQUESTS = "http_requests_total"
SERVICES = ("api", "web", "db")


@dataclass(frozen=True)
class InjectedSpike:
    """The anomaly planted in :func:`demo_history`: a step up lasting ``points`` samples."""

    metric: str
    labels: dict[str, str]  # without __name__
    timestamp: float  # unix seconds of the first anomalous sample (on the grid)
    end: float  # unix seconds of the last anomalous sample
    points: int
    value: float  # the sample value at ``timestamp``
    baseline: float  # what the series would have been there without the spike

    @property
    def at(self) -> datetime:
        return datetime.fromtimestamp(self.timestamp, UTC)

    @property
    def selector(self) -> str:
        matchers = ",".join(f'{k}="{v}"' for k, v in sorted(self.labels.items()))
        return f"{self.metric}{{{matchers}}}"


@dataclass(frozen=True)
class DemoHistory:
    """Synthetic history, iterable as :class:`Series` (so it goes straight to write_openmetrics).

    ``start``/``end`` are the first and last sample times (unix seconds, whole minutes).
    """

    start: float
    end: float
    step_s: int
    spike: InjectedSpike
    series: list[Series] = field(repr=False)

    def __iter__(self) -> Iterator[Series]:
        return iter(self.series)

    @property
    def timestamps(self) -> np.ndarray:
        return self.series[0].timestamps

    @property
    def start_at(self) -> datetime:
        return datetime.fromtimestamp(self.start, UTC)

    @property
    def end_at(self) -> datetime:
        return datetime.fromtimestamp(self.end, UTC)

    def to_frame(self) -> pl.DataFrame:
        """Long format (timestamp in unix seconds, value, __name__, labels): a replay file.

        ``history.to_frame().write_csv(path)`` (or ``write_parquet``) gives a file that
        ``ReplaySource`` reads back as the same series Prometheus serves.
        """
        return pl.concat(
            [
                pl.DataFrame(
                    {"timestamp": s.timestamps, "value": s.values, "__name__": s.name}
                ).with_columns(**{k: pl.lit(v) for k, v in s.labels.items()})
                for s in self.series
            ],
            how="diagonal",
        )


def demo_history(
    now: datetime,
    *,
    hours: float = 6,
    step_s: int = 60,
    end_offset_s: int = 180,
    spike_before_end_s: int = 15 * 60,
    spike_points: int = 5,
    seed: int = 7,
) -> DemoHistory:
    """Six hours of three services' latency and request counters, ending 3 min before ``now``.

    * ``http_request_duration_seconds_p99{service="api"|"web"|"db"}``: quiet daily-ish sine
      plus small Gaussian noise (sd about 2% of the level). ``service="api"`` has the
      injected spike: +1.5 s for ``spike_points`` samples starting ``spike_before_end_s``
      before the last sample (about 10x its level, over 100 noise standard deviations).
    * ``http_requests_total{service="api"|"web"}``: counters (written as gauges) rising at
      about 40 and 25 requests per second with a slow sine, so ``rate()`` works on them.

    Timestamps are whole minutes (``end`` = ``now`` floored to the minute minus
    ``end_offset_s``), so range queries with a 60 s step land on the samples exactly.
    Deterministic for a given ``now`` and ``seed``.
    """
    rng = np.random.default_rng(seed)
    end = math.floor(now.timestamp() / 60) * 60 - end_offset_s
    n_points = int(hours * 3600 // step_s) + 1
    stamps = end - step_s * np.arange(n_points - 1, -1, -1, dtype=np.float64)
    phase = 2 * np.pi * stamps / 86_400  # one cycle a day: a gentle drift over six hours
    levels = {"api": 0.18, "web": 0.25, "db": 0.05}
    series: list[Series] = []
    for service in SERVICES:
        level = levels[service]
        clean = level * (1 + 0.15 * np.sin(phase + SERVICES.index(service)))
        series.append(
            Series(
                LATENCY, {"service": service}, stamps, clean + rng.normal(0, 0.02 * level, n_points)
            )
        )
    api = series[0]
    first = n_points - 1 - spike_before_end_s // step_s
    baseline = float(api.values[first])
    api.values[first : first + spike_points] += 1.5
    spike = InjectedSpike(
        metric=LATENCY,
        labels={"service": "api"},
        timestamp=float(stamps[first]),
        end=float(stamps[first + spike_points - 1]),
        points=spike_points,
        value=float(api.values[first]),
        baseline=baseline,
    )
    for service, rps in (("api", 40.0), ("web", 25.0)):
        rate = rps * (1 + 0.2 * np.sin(phase)) + rng.normal(0, 0.5, n_points)
        counter = 1_000_000 + np.cumsum(np.maximum(rate, 0) * step_s)
        series.append(Series(REQUESTS, {"service": service}, stamps, np.round(counter)))
    return DemoHistory(float(stamps[0]), float(end), step_s, spike, series)


@dataclass
class DemoPrometheus:
    """A running :class:`LocalPrometheus` holding a :class:`DemoHistory`."""

    server: LocalPrometheus
    history: DemoHistory

    @property
    def url(self) -> str:
        return self.server.url

    @property
    def spike(self) -> InjectedSpike:
        return self.history.spike


@contextmanager
def demo_prometheus(
    workdir: str | Path, now: datetime | None = None, **history_options: Any
) -> Iterator[DemoPrometheus]:
    """Write :func:`demo_history` (``history_options`` are its keywords), backfill it and run
    Prometheus on it until the block ends."""
    workdir = Path(workdir)
    history = demo_history(now or datetime.now(UTC), **history_options)
    server = LocalPrometheus(workdir)  # checks the binaries before writing anything
    openmetrics = workdir / "history.om"
    write_openmetrics(history, openmetrics)
    server.backfill(openmetrics)
    with server:
        yield DemoPrometheus(server, history)
