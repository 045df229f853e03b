"""detect_file: a CSV scored as a stream, equal to scoring it whole, validated, atomic."""

from __future__ import annotations

import csv
import os
import stat
from pathlib import Path

import numpy as np
import pytest

from neuralops.detectors import DEFAULT_HOLD, DEFAULT_THRESHOLD, DETECTORS, detections
from neuralops.errors import InvalidInput
from neuralops.offline import TimeOrderWarning, detect_file

METHODS = sorted(DETECTORS)
# The test files have a point a minute: the seasonal detectors get 1,440 points a day.
PERIOD = {name: {"period": 1440} for name in ("context", "combined", "likelihood")}


def series(n: int = 600, seed: int = 3) -> np.ndarray:
    rng = np.random.default_rng(seed)
    values = 100 + 10 * np.sin(np.arange(n) / 30) + rng.normal(0, 1, n)
    values[450] += 40  # the anomaly
    return values


def write_input(path: Path, values: np.ndarray, gaps: tuple[int, ...] = ()) -> Path:
    lines = ["timestamp,value"]
    for i, value in enumerate(values):
        stamp = f"2024-01-{1 + i // 1440:02d} {i // 60 % 24:02d}:{i % 60:02d}:00"
        lines.append(f"{stamp},{'' if i in gaps else repr(float(value))}")
    path.write_text("\n".join(lines) + "\n")
    return path


def read_output(path: Path) -> tuple[list[str], list[list[str]]]:
    with open(path, newline="") as handle:
        rows = list(csv.reader(handle))
    return rows[0], rows[1:]


@pytest.mark.parametrize("method", METHODS)
def test_chunked_scores_equal_whole_file_scores(tmp_path: Path, method: str) -> None:
    values = series()
    gaps = (5, 100, 101, 102, 333)
    source = write_input(tmp_path / "in.csv", values, gaps)
    whole = values.copy()
    whole[list(gaps)] = np.nan
    expected = np.nan_to_num(DETECTORS[method](whole, **PERIOD.get(method, {})).score, nan=0.0)
    outputs = []
    for chunk_rows in (1, 7, 64, 10_000):
        target = tmp_path / f"out-{chunk_rows}.csv"
        assert detect_file(source, target, method=method, chunk_rows=chunk_rows) == len(values)
        outputs.append(target.read_bytes())
        _, rows = read_output(target)
        np.testing.assert_array_equal([float(r[2]) for r in rows], expected)  # bit for bit
    assert all(output == outputs[0] for output in outputs)


def test_output_repeats_the_input_and_adds_a_score_in_0_1(tmp_path: Path) -> None:
    source = write_input(tmp_path / "in.csv", series(), gaps=(200,))
    detect_file(source, tmp_path / "out.csv")
    header, rows = read_output(tmp_path / "out.csv")
    with open(source, newline="") as handle:
        given = list(csv.reader(handle))[1:]
    assert header == ["timestamp", "value", "anomaly_score"]
    assert [r[:2] for r in rows] == given
    scores = np.array([float(r[2]) for r in rows])
    assert ((scores >= 0) & (scores <= 1)).all()
    assert scores[0] == 0.0 and scores[200] == 0.0  # no opinion (warm-up, gap) is written 0
    assert rows[200][1] == ""


# change, variance and likelihood average over recent points: shifts, spreads, bursts.
@pytest.mark.parametrize(
    "method", [m for m in METHODS if m not in ("change", "variance", "likelihood")]
)
def test_a_spike_scores_high(tmp_path: Path, method: str) -> None:
    source = write_input(tmp_path / "in.csv", series())
    # 600 points a minute apart hold no earlier day: the context detector gets the series'
    # own cycle (sin(t / 30) repeats every 188.5 points).
    params = {"period": 188} if method == "context" else None
    detect_file(source, tmp_path / "out.csv", method=method, chunk_rows=50, params=params)
    scores = np.array([float(r[2]) for r in read_output(tmp_path / "out.csv")[1]])
    assert scores[450] > 0.99
    assert scores[450] == scores.max()


def test_parameters_reach_the_detector(tmp_path: Path) -> None:
    source = write_input(tmp_path / "in.csv", series())
    detect_file(source, tmp_path / "a.csv", method="zscore", params={"window": 20})
    detect_file(source, tmp_path / "b.csv", method="zscore", params={"window": 200})
    assert (tmp_path / "a.csv").read_bytes() != (tmp_path / "b.csv").read_bytes()
    with pytest.raises(InvalidInput, match="no parameter"):
        detect_file(source, tmp_path / "c.csv", method="zscore", params={"alpha": 0.1})
    with pytest.raises(InvalidInput, match="unknown method"):
        detect_file(source, tmp_path / "c.csv", method="magic")


def test_timestamps_may_be_iso_with_zone_or_unix_seconds_and_repeat(tmp_path: Path) -> None:
    source = tmp_path / "in.csv"
    rows = ["2024-01-01T00:00:00Z", "2024-01-01T01:00:00+01:00", "1704070800", "1704070860.5"]
    source.write_text("timestamp,value\n" + "".join(f"{t},{i}\n" for i, t in enumerate(rows)))
    assert detect_file(source, tmp_path / "out.csv") == 4


@pytest.mark.parametrize(
    ("body", "where"),
    [
        ("time,value\n2024-01-01 00:00:00,1\n", "line 1, column header"),
        ("timestamp,value,extra\n", "line 1, column header"),
        ("", "line 1"),
        ("timestamp,value\n2024-01-01 00:00:00,1\nyesterday,2\n", "line 3, column timestamp"),
        (
            "timestamp,value\n2024-01-01 00:00:00,1\n2024-01-01 00:01:00,abc\n",
            "line 3, column value",
        ),
        ("timestamp,value\n2024-01-01 00:00:00,inf\n", "line 2, column value"),
        ("timestamp,value\n2024-01-01 00:00:00,1,2\n", "line 2"),
    ],
)
def test_bad_input_names_the_line_and_leaves_nothing_behind(
    tmp_path: Path, body: str, where: str
) -> None:
    source = tmp_path / "in.csv"
    source.write_text(body)
    target = tmp_path / "out.csv"
    with pytest.raises(InvalidInput, match=where):
        detect_file(source, target, chunk_rows=1)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.csv"]


def test_an_error_late_in_the_file_keeps_the_previous_output(tmp_path: Path) -> None:
    target = tmp_path / "out.csv"
    target.write_text("the previous result\n")
    source = write_input(tmp_path / "in.csv", series())
    source.write_text(source.read_text() + "2030-01-01 00:00:00,oops\n")
    with pytest.raises(InvalidInput, match="line 602, column value: 'oops' is not a number"):
        detect_file(source, target, chunk_rows=10)  # 60 chunks already written
    assert target.read_text() == "the previous result\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.csv", "out.csv"]


def test_missing_input_or_output_folder_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(InvalidInput, match="cannot read"):
        detect_file(tmp_path / "absent.csv", tmp_path / "out.csv")
    source = write_input(tmp_path / "in.csv", series())
    with pytest.raises(InvalidInput, match="cannot write"):
        detect_file(source, tmp_path / "no" / "such" / "out.csv")


def test_blank_lines_and_a_byte_order_mark_are_tolerated(tmp_path: Path) -> None:
    source = tmp_path / "in.csv"
    source.write_bytes(
        "\ufefftimestamp,value\n2024-01-01 00:00:00,1\n\n2024-01-01 00:01:00,2\n".encode()
    )
    assert detect_file(source, tmp_path / "out.csv") == 2


@pytest.mark.parametrize("kind", ["fifo", "symlink", "dangling symlink", "directory"])
def test_a_non_regular_output_is_refused_and_left_alone(tmp_path: Path, kind: str) -> None:
    source = write_input(tmp_path / "in.csv", series())
    elsewhere = tmp_path / "elsewhere.txt"
    elsewhere.write_text("keep me\n")
    target = tmp_path / "out.csv"
    if kind == "fifo":
        os.mkfifo(target)
    elif kind == "symlink":
        target.symlink_to(elsewhere)
    elif kind == "dangling symlink":
        target.symlink_to(tmp_path / "nothing-here")
    else:
        target.mkdir()
    before = sorted(p.name for p in tmp_path.iterdir())
    with pytest.raises(InvalidInput, match=r"OUTPUT_CSV .*out\.csv is a .*: name a new file"):
        detect_file(source, target)
    assert sorted(p.name for p in tmp_path.iterdir()) == before  # no temporary file either
    assert elsewhere.read_text() == "keep me\n"
    assert (kind == "fifo") == stat.S_ISFIFO(os.lstat(target).st_mode)
    assert kind.endswith("symlink") == target.is_symlink()


def test_a_device_output_is_refused(tmp_path: Path) -> None:
    source = write_input(tmp_path / "in.csv", series())
    with pytest.raises(InvalidInput, match="OUTPUT_CSV /dev/null is a character device"):
        detect_file(source, "/dev/null")
    assert stat.S_ISCHR(os.stat("/dev/null").st_mode)


@pytest.mark.parametrize("how", ["same path", "symlink to the input", "hard link"])
def test_the_output_is_never_the_input(tmp_path: Path, how: str) -> None:
    source = write_input(tmp_path / "in.csv", series())
    original = source.read_bytes()
    if how == "same path":
        args = (source, source)
    elif how == "symlink to the input":  # the input named through a link, output the file
        link = tmp_path / "link.csv"
        link.symlink_to(source)
        args = (link, source)
    else:
        hard = tmp_path / "hard.csv"
        os.link(source, hard)
        args = (source, hard)
    with pytest.raises(InvalidInput, match=r"OUTPUT_CSV .* is the input file .*name another"):
        detect_file(*args)
    assert source.read_bytes() == original
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]


def test_a_regular_output_is_still_replaced_atomically(tmp_path: Path) -> None:
    source = write_input(tmp_path / "in.csv", series())
    target = tmp_path / "out.csv"
    target.write_text("old\n")
    inode = os.stat(target).st_ino
    assert detect_file(source, target) == 600
    assert read_output(target)[0] == ["timestamp", "value", "anomaly_score"]
    assert os.stat(target).st_ino != inode  # a new file renamed over the old one


@pytest.mark.parametrize(
    ("body", "line", "offset"),
    [
        (b"timestamp,value\n2024-01-01 00:00:00,1\n2024-01-01 00:01:00,\xff\n", 3, 58),
        (b"time\xe9stamp,value\n", 1, 4),  # Latin-1, in the header
        (b"timestamp,value\n" + b"2024-01-01 00:00:00,1\n" * 3000 + b"x\xc3(", 3002, 66017),
    ],
)
def test_non_utf8_input_names_the_line_and_byte(
    tmp_path: Path, body: bytes, line: int, offset: int
) -> None:
    source = tmp_path / "in.csv"
    source.write_bytes(body)
    with pytest.raises(InvalidInput) as raised:
        detect_file(source, tmp_path / "out.csv", chunk_rows=7)
    message = str(raised.value)
    assert f"line {line}," in message and f"byte {offset} is not UTF-8" in message
    assert "\n" not in message and str(source) in message
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.csv"]


def test_strict_time_refuses_a_timestamp_that_goes_back(tmp_path: Path) -> None:
    source = tmp_path / "in.csv"
    source.write_text(
        "timestamp,value\n2024-01-01 00:05:00,1\n2024-01-01 00:06:00,1\n2024-01-01 00:04:00,1\n"
    )
    with pytest.raises(InvalidInput, match="line 4, column timestamp"):
        detect_file(source, tmp_path / "out.csv", chunk_rows=1, strict_time=True)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.csv"]


def test_a_clock_that_goes_back_is_scored_in_arrival_order_with_one_warning(
    tmp_path: Path,
) -> None:
    values = series()
    source = write_input(tmp_path / "in.csv", values)
    lines = source.read_text().splitlines()
    # A repeated hour (rows 301-360 repeat the times of 241-300) and a clock reset at 500.
    for i in range(300, 360):
        lines[i + 1] = lines[i - 60 + 1].split(",")[0] + "," + lines[i + 1].split(",")[1]
    lines[501] = "2023-12-31 00:00:00," + lines[501].split(",")[1]
    source.write_text("\n".join(lines) + "\n")
    messages: list[str] = []
    target = tmp_path / "out.csv"
    assert detect_file(source, target, method="ewma", chunk_rows=64, warn=messages.append) == 600
    assert len(messages) == 1
    assert "2 row(s) go back in time, first line 302" in messages[0]
    assert "--strict-time" in messages[0]
    scores = np.array([float(r[2]) for r in read_output(target)[1]])
    expected = np.nan_to_num(DETECTORS["ewma"](values).score, nan=0.0)  # arrival order
    np.testing.assert_array_equal(scores, expected)
    with pytest.warns(TimeOrderWarning, match="2 row"):
        detect_file(source, target, method="ewma")


def test_detections_output_is_the_held_0_1_the_signals_act_on(tmp_path: Path) -> None:
    values = series(3000)
    values[[1000, 1030, 2000]] += 60  # 1030 falls within the hold of 1000: one episode
    source = write_input(tmp_path / "in.csv", values)
    expected = detections(
        np.nan_to_num(DETECTORS["ewma"](values).score, nan=0.0), DEFAULT_THRESHOLD, DEFAULT_HOLD
    )
    for chunk_rows in (7, 10_000):  # the hold carries across pieces
        target = tmp_path / f"out-{chunk_rows}.csv"
        detect_file(source, target, method="ewma", chunk_rows=chunk_rows, output="detections")
        header, rows = read_output(target)
        assert header == ["timestamp", "value", "detection"]
        found = np.array([int(r[2]) for r in rows])
        np.testing.assert_array_equal(found, expected.astype(int))
    assert found[1000] == 1 and found[1030] == 0 and found[2000] == 1
    with pytest.raises(InvalidInput, match="output must be one of"):
        detect_file(source, tmp_path / "x.csv", output="both")


def test_the_default_reads_the_points_per_day_off_the_spacing(tmp_path: Path) -> None:
    values = series(600)
    source = write_input(tmp_path / "in.csv", values)
    detect_file(source, tmp_path / "a.csv")  # one point a minute: 1,440 a day
    detect_file(source, tmp_path / "b.csv", params={"period": 1440})
    detect_file(source, tmp_path / "c.csv", params={"period": 100})
    assert (tmp_path / "a.csv").read_bytes() == (tmp_path / "b.csv").read_bytes()
    assert (tmp_path / "a.csv").read_bytes() != (tmp_path / "c.csv").read_bytes()
