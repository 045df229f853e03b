"""`neuralops detect-file` as an operator runs it: the default detector, 0/1 detections,
clocks that go back, and input that is not UTF-8."""

from __future__ import annotations

import csv
import os
import subprocess
import sys
from pathlib import Path

import numpy as np

from neuralops.detectors import DEFAULT_HOLD, DEFAULT_THRESHOLD, combined, detections


def neuralops(*args: str) -> subprocess.CompletedProcess:
    """The real console entry point, in a subprocess."""
    return subprocess.run(
        [sys.executable, "-m", "neuralops", *args],
        capture_output=True,
        text=True,
        env={**os.environ, "COLUMNS": "200"},
        timeout=60,
    )


def write(path: Path, stamps: list[str], values: np.ndarray) -> Path:
    path.write_text(
        "timestamp,value\n"
        + "".join(f"{t},{v!r}\n" for t, v in zip(stamps, values.tolist(), strict=True))
    )
    return path


def five_minutes(n: int) -> list[str]:
    start = np.datetime64("2024-03-01T00:00:00")
    return [str(t).replace("T", " ") for t in start + np.arange(n) * np.timedelta64(300, "s")]


def test_detect_file_writes_detections_of_the_default_and_warns_once_on_a_clock_reset(
    tmp_path: Path,
) -> None:
    n = 288 * 5  # five days of 5-minute points: 288 a day for the context part
    t = np.arange(n)
    values = 50 + 20 * (t % 288 < 144) + np.random.default_rng(4).normal(0, 1, n)
    values[288 * 4 + 200] = 70.0  # the busy level, at a quiet time
    stamps = five_minutes(n)
    stamps[700] = stamps[640]  # the clock goes back an hour, once
    source = write(tmp_path / "in.csv", stamps, values)
    target = tmp_path / "out.csv"

    result = neuralops("detect-file", str(source), str(target), "--output", "detections")
    assert result.returncode == 0, result.stderr
    assert f"{n} rows judged (0/1 detections) with combined" in result.stdout
    warning = [line for line in result.stderr.splitlines() if "warning" in line]
    assert len(warning) == 1, result.stderr
    assert "1 row(s) go back in time, first line 702" in warning[0]
    with open(target, newline="") as handle:
        rows = list(csv.reader(handle))
    assert rows[0] == ["timestamp", "value", "detection"]
    found = np.array([int(r[2]) for r in rows[1:]])
    expected = detections(
        np.nan_to_num(combined(values, period=288).score, nan=0.0), DEFAULT_THRESHOLD, DEFAULT_HOLD
    )
    np.testing.assert_array_equal(found, expected.astype(int))
    assert found[288 * 4 + 200] == 1

    strict = neuralops("detect-file", str(source), str(tmp_path / "s.csv"), "--strict-time")
    assert strict.returncode == 2
    assert "line 702, column timestamp" in strict.stderr
    assert not (tmp_path / "s.csv").exists()


def test_detect_file_refuses_input_that_is_not_utf8_in_one_line(tmp_path: Path) -> None:
    source = tmp_path / "latin1.csv"
    source.write_bytes(
        "timestamp,value\n2024-03-01 00:00:00,1\n2024-03-01 00:05:00,\xe9\n".encode("latin-1")
    )
    result = neuralops("detect-file", str(source), str(tmp_path / "out.csv"))
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "line 3" in lines[0] and "not UTF-8" in lines[0], result.stderr
    assert "Traceback" not in result.stderr
