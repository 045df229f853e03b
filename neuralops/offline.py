"""Offline detection over a CSV file: ``neuralops detect-file INPUT.csv OUTPUT.csv``.

The input (header ``timestamp,value``, NAB's format) is read and scored as a stream, in
pieces of ``chunk_rows`` rows, with the detector's state carried between pieces: the scores
equal those of the whole series scored at once, bit for bit, and memory stays flat however
long the file. The output, ``timestamp,value,anomaly_score``, repeats each input row as it
was written and adds the score in [0, 1] (0 where the detector has no opinion, NAB's
convention). It appears only when complete: rows go to a temporary file in the output's
folder that replaces the output at the end.
"""

from __future__ import annotations

import contextlib
import csv
import math
import os
import stat
import uuid
from collections.abc import Callable, Iterator, Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from neuralops.detectors import Stream
from neuralops.errors import FieldProblem, InvalidInput

CHUNK_ROWS = 10_000
HEADER = ("timestamp", "value")
OUTPUT_HEADER = ("timestamp", "value", "anomaly_score")


def detect_file(
    input_path: str | Path,
    output_path: str | Path,
    method: str = "ensemble",
    chunk_rows: int = CHUNK_ROWS,
    params: Mapping[str, Any] | None = None,
) -> int:
    """Score ``input_path`` with ``method`` (and its ``params``) into ``output_path``;
    returns the number of rows written. Bad input raises InvalidInput naming the line and
    column, and leaves no output behind."""
    if chunk_rows < 1:
        raise ValueError("chunk_rows must be at least 1")
    try:
        stream = Stream(method, **dict(params or {}))
    except ValueError as exc:
        raise InvalidInput(str(exc), [FieldProblem("method", str(exc))]) from exc
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
                writer.writerow(OUTPUT_HEADER)
                written = 0
                for stamps, texts, values in _chunks(reader, source, chunk_rows):
                    scores = np.nan_to_num(stream.update(values).score, nan=0.0)
                    writer.writerows(zip(stamps, texts, map(repr, scores.tolist()), strict=True))
                    written += len(stamps)
        except UnicodeDecodeError:
            line, offset = _first_bad_utf8(source)
            raise _problem(
                source, line, "-", f"byte {offset} is not UTF-8 text; save the file as UTF-8"
            ) from None
    return written


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
    reader: Any, source: Path, chunk_rows: int
) -> Iterator[tuple[list[str], list[str], np.ndarray]]:
    """Validated rows, ``chunk_rows`` at a time: timestamps and values as written, and the
    values as numbers (NaN for a gap: an empty value or NaN)."""
    previous = -math.inf
    previous_text = ""
    stamps: list[str] = []
    texts: list[str] = []
    values: list[float] = []
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
            raise _problem(
                source,
                line,
                "timestamp",
                f"{stamp} is earlier than the row before ({previous_text})",
            )
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
        if len(stamps) == chunk_rows:
            yield stamps, texts, np.array(values)
            stamps, texts, values = [], [], []
    if stamps:
        yield stamps, texts, np.array(values)


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
