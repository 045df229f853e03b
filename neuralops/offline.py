"""Offline detection over a CSV file: ``neuralops detect-file INPUT.csv OUTPUT.csv``.

The input (header ``timestamp,value``, NAB's format) is read and scored as a stream, in
pieces of ``chunk_rows`` rows, with the detector's state carried between pieces: the scores
equal those of the whole series scored at once, bit for bit, and memory stays flat however
long the file. The output, ``timestamp,value,anomaly_score``, repeats each input row as it
was written and adds the score in [0, 1] (0 where the detector has no opinion, NAB's
convention), or with ``output="detections"`` the 0/1 detections the signals act on
(``detections(score, DEFAULT_THRESHOLD, DEFAULT_HOLD)``, carried across pieces too). It
appears only when complete: rows go to a temporary file in the output's folder that
replaces the output at the end.

The seasonal detectors (context, combined) need the points in a day: unless ``params``
name a ``period``, it is read off the median spacing of the first rows. Real exports have
clocks that go back (a reset, a repeated hour): such rows are scored in arrival order and
reported once (count and first line) through ``warn``; ``strict_time=True`` refuses them.
"""

from __future__ import annotations

import contextlib
import csv
import dataclasses
import itertools
import math
import os
import stat
import uuid
import warnings
from collections.abc import Callable, Iterator, Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from neuralops.detectors import (
    CONTEXT_PERIOD,
    DEFAULT_HOLD,
    DEFAULT_METHOD,
    DEFAULT_THRESHOLD,
    Stream,
    detections,
)
from neuralops.errors import FieldProblem, InvalidInput

CHUNK_ROWS = 10_000
HEADER = ("timestamp", "value")
OUTPUT_HEADER = ("timestamp", "value", "anomaly_score")
DETECTIONS_HEADER = ("timestamp", "value", "detection")
OUTPUTS = ("score", "detections")
# Rows read before a seasonal detector starts, to measure the spacing (a day at 5 minutes).
PERIOD_SAMPLE_ROWS = 288
SECONDS_PER_DAY = 86_400.0


class TimeOrderWarning(UserWarning):
    """Rows whose timestamp goes back; they were scored in arrival order."""


def period_from_spacing(moments: list[float]) -> int:
    """Points per day at the median positive spacing of ``moments`` (CONTEXT_PERIOD when
    there is none to measure)."""
    steps = np.diff(np.asarray(moments, dtype=np.float64))
    steps = steps[steps > 0]
    if not len(steps):
        return CONTEXT_PERIOD
    return max(2, round(SECONDS_PER_DAY / float(np.median(steps))))


def detect_file(
    input_path: str | Path,
    output_path: str | Path,
    method: str = DEFAULT_METHOD,
    chunk_rows: int = CHUNK_ROWS,
    params: Mapping[str, Any] | None = None,
    *,
    output: str = "score",
    strict_time: bool = False,
    warn: Callable[[str], None] | None = None,
) -> int:
    """Score ``input_path`` with ``method`` (and its ``params``) into ``output_path``;
    returns the number of rows written. Bad input raises InvalidInput naming the line and
    column, and leaves no output behind. ``output``: "score" (the anomaly score) or
    "detections" (0/1). Rows that go back in time are scored in arrival order and reported
    once through ``warn`` (default: a TimeOrderWarning); ``strict_time`` refuses them."""
    if chunk_rows < 1:
        raise ValueError("chunk_rows must be at least 1")
    if output not in OUTPUTS:
        message = f"output must be one of {', '.join(OUTPUTS)}, got {output!r}"
        raise InvalidInput(message, [FieldProblem("output", message)])
    params = dict(params or {})
    try:
        Stream(method, **params)  # refuse a bad method or parameter before reading
    except ValueError as exc:
        raise InvalidInput(str(exc), [FieldProblem("method", str(exc))]) from exc
    seasonal = "period" in Stream(method).params and "period" not in params
    source, target = Path(input_path), Path(output_path)
    try:
        handle = open(source, newline="", encoding="utf-8-sig")  # noqa: SIM115 (closed below)
    except OSError as exc:
        raise InvalidInput(f"{source}: cannot read ({exc.strerror})") from exc
    with handle:
        source_stat = os.fstat(handle.fileno())
        _check_output(source, target, source_stat)
        try:
            reader = csv.reader(handle)
            _check_header(next(reader, None), source)
            with _atomic_output(target, lambda: _check_output(source, target, source_stat)) as out:
                writer = csv.writer(out, lineterminator="\n")
                writer.writerow(OUTPUT_HEADER if output == "score" else DETECTIONS_HEADER)
                written = 0
                back = _Backwards()
                chunks = _chunks(reader, source, chunk_rows, strict_time, back)
                if seasonal:  # the spacing of the first rows gives the points per day
                    chunks, moments = _peek(chunks, PERIOD_SAMPLE_ROWS)
                    params["period"] = period_from_spacing(moments)
                stream = Stream(method, **params)
                recent = np.zeros(0, dtype=bool)  # the last DEFAULT_HOLD points reached
                for stamps, texts, values, _ in chunks:
                    scores = np.nan_to_num(stream.update(values).score, nan=0.0)
                    if output == "score":
                        column = map(repr, scores.tolist())
                    else:
                        reached = np.concatenate([recent, scores >= DEFAULT_THRESHOLD])
                        found = detections(reached.astype(np.float64), 1.0, DEFAULT_HOLD)
                        column = map(str, found[len(recent) :].astype(int).tolist())
                        recent = reached[len(reached) - min(len(reached), DEFAULT_HOLD) :]
                    writer.writerows(zip(stamps, texts, column, strict=True))
                    written += len(stamps)
        except UnicodeDecodeError:
            line, offset = _first_bad_utf8(source)
            raise _problem(
                source, line, "-", f"byte {offset} is not UTF-8 text; save the file as UTF-8"
            ) from None
    if back.count:
        message = (
            f"{source}: {back.count} row(s) go back in time, first line {back.line} "
            f"({back.stamp} is earlier than {back.previous}); scored in arrival order "
            "(--strict-time refuses such files)"
        )
        if warn is None:
            warnings.warn(message, TimeOrderWarning, stacklevel=2)
        else:
            warn(message)
    return written


@dataclasses.dataclass
class _Backwards:
    """Rows whose timestamp is earlier than the row before: how many, and the first."""

    count: int = 0
    line: int = 0
    stamp: str = ""
    previous: str = ""


Chunk = tuple[list[str], list[str], np.ndarray, list[float]]


def _peek(chunks: Iterator[Chunk], rows: int) -> tuple[Iterator[Chunk], list[float]]:
    """The first chunks holding at least ``rows`` rows (or all), and their times; the
    iterator returned yields them again, then the rest."""
    held: list[Chunk] = []
    moments: list[float] = []
    for chunk in chunks:
        held.append(chunk)
        moments += chunk[3]
        if len(moments) >= rows:
            break
    return itertools.chain(held, chunks), moments


_KINDS = (
    (stat.S_ISLNK, "a symbolic link"),
    (stat.S_ISDIR, "a directory"),
    (stat.S_ISCHR, "a character device"),
    (stat.S_ISBLK, "a block device"),
    (stat.S_ISFIFO, "a FIFO"),
    (stat.S_ISSOCK, "a socket"),
)


def _check_output(source: Path, target: Path, source_stat: os.stat_result) -> None:
    """The output is a new file or a regular one (never a link, device, FIFO or socket,
    which the final rename would replace), and never the input itself (by a link too)."""
    try:
        found = os.lstat(target)
    except FileNotFoundError:
        return
    except OSError as exc:
        raise InvalidInput(f"OUTPUT_CSV {target}: cannot check it ({exc.strerror})") from exc
    kind = next((name for test, name in _KINDS if test(found.st_mode)), None)
    if kind is not None or not stat.S_ISREG(found.st_mode):
        raise InvalidInput(
            f"OUTPUT_CSV {target} is {kind or 'not a regular file'}: name a new file or a "
            "regular file to replace"
        )
    if (found.st_dev, found.st_ino) == (source_stat.st_dev, source_stat.st_ino):
        raise InvalidInput(
            f"OUTPUT_CSV {target} is the input file {source}: name another file for the scores"
        )


def _first_bad_utf8(source: Path) -> tuple[int, int]:
    """Line (1-based) and byte offset (0-based, in the file) of the first byte that is not
    UTF-8. Line by line: no UTF-8 sequence holds a newline byte."""
    line, offset = 1, 0
    with open(source, "rb") as raw:
        for line, data in enumerate(raw, start=1):
            try:
                data.decode("utf-8")
            except UnicodeDecodeError as exc:
                return line, offset + exc.start
            offset += len(data)
    return line, offset  # not found again: the file changed meanwhile


def _problem(source: Path, line: int, column: str, message: str) -> InvalidInput:
    where = f"line {line}, column {column}"
    return InvalidInput(f"{source} {where}: {message}", [FieldProblem(where, message)])


def _check_header(header: list[str] | None, source: Path) -> None:
    if header is None:
        raise _problem(source, 1, "timestamp", "the file is empty; expected a header")
    names = [name.strip().lower() for name in header]
    if names != list(HEADER):
        raise _problem(
            source, 1, "header", f"expected the header timestamp,value, got {','.join(header)}"
        )


def _parse_time(text: str) -> float:
    """Seconds since the epoch of an ISO 8601 time (naive means UTC) or of a plain number of
    Unix seconds."""
    try:
        seconds = float(text)
    except ValueError:
        moment = datetime.fromisoformat(text)
        return (moment if moment.tzinfo else moment.replace(tzinfo=UTC)).timestamp()
    if not math.isfinite(seconds):
        raise ValueError(text)
    return seconds


def _chunks(
    reader: Any, source: Path, chunk_rows: int, strict_time: bool, back: _Backwards
) -> Iterator[Chunk]:
    """Validated rows, ``chunk_rows`` at a time: timestamps and values as written, the
    values as numbers (NaN for a gap: an empty value or NaN) and the times in seconds.
    A row earlier than the one before is refused when ``strict_time``, else counted in
    ``back``."""
    previous = -math.inf
    previous_text = ""
    stamps: list[str] = []
    texts: list[str] = []
    values: list[float] = []
    moments: list[float] = []
    for row in reader:
        if not row:  # a blank line
            continue
        line = reader.line_num
        if len(row) != 2:
            raise _problem(
                source, line, "-", f"expected 2 columns (timestamp,value), got {len(row)}"
            )
        stamp, text = row
        try:
            moment = _parse_time(stamp.strip())
        except (ValueError, OverflowError, OSError):
            raise _problem(
                source, line, "timestamp", f"{stamp!r} is not an ISO 8601 time or Unix seconds"
            ) from None
        if moment < previous:
            if strict_time:
                raise _problem(
                    source,
                    line,
                    "timestamp",
                    f"{stamp} is earlier than the row before ({previous_text})",
                )
            if not back.count:
                back.line, back.stamp, back.previous = line, stamp, previous_text
            back.count += 1
        previous, previous_text = moment, stamp
        value = text.strip()
        try:
            number = float(value) if value else math.nan
        except ValueError:
            raise _problem(source, line, "value", f"{text!r} is not a number") from None
        if math.isinf(number):
            raise _problem(
                source, line, "value", f"{text!r} is not finite; leave it empty for a gap"
            )
        stamps.append(stamp)
        texts.append(text)
        values.append(number)
        moments.append(moment)
        if len(stamps) == chunk_rows:
            yield stamps, texts, np.array(values), moments
            stamps, texts, values, moments = [], [], [], []
    if stamps:
        yield stamps, texts, np.array(values), moments


@contextlib.contextmanager
def _atomic_output(target: Path, check: Callable[[], None] = lambda: None) -> Iterator[Any]:
    """A text file that becomes ``target`` when the block succeeds and vanishes otherwise;
    ``check`` runs just before the rename (and may refuse it)."""
    # A fresh name beside the target (same file system, so the rename is atomic); open()
    # rather than mkstemp so the file gets the usual permissions, not 0600.
    temp = target.parent / f".{target.name}.{uuid.uuid4().hex[:12]}.tmp"
    try:
        out = open(temp, "x", newline="")  # noqa: SIM115 (closed below)
    except OSError as exc:
        raise InvalidInput(f"{target}: cannot write there ({exc.strerror})") from exc
    try:
        with out:
            yield out
            out.flush()
            os.fsync(out.fileno())
        check()  # again: the output may have changed while the input was scored
        os.replace(temp, target)
    except BaseException:
        temp.unlink(missing_ok=True)
        raise
