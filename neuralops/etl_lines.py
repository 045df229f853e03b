"""The export's per-record redaction, apart from the database stack.

``neuralops.etl`` uses these on every record it redacts; its worker processes (``etl``'s
``_Redaction``) import only this module, so that each costs the redactor's memory (about
30 MiB) and not the exporter's (SQLAlchemy, polars, pyarrow). A worker receives the COPY
lines the pre-filter marked and returns, for each, the line as the export writes it, its
``Quarantined`` verdict, or None when the line must be read again the reference way (which
needs the database, so the exporting process does it).
"""

from __future__ import annotations

import json
import pickle
import queue
import re
import sys
import threading
from collections.abc import Mapping
from typing import Any, BinaryIO

from neuralops.quarantine import Quarantined, unencodable
from neuralops.redaction import FieldAction, Redactor, Trigger, load_scanners
from neuralops.redaction_batch import redact_strings

__all__ = [
    "UNREDACTED",
    "BadRow",
    "decoded",
    "finite",
    "init_worker",
    "no_constant",
    "public",
    "receive",
    "redact_line",
    "redact_lines",
    "redacted",
    "redacted_line",
    "send",
]

# Kept as stored, not redacted (NeuralOps' own metadata: see neuralops.etl's docstring).
UNREDACTED = ("provenance", "verified")


class BadRow(ValueError):
    pass


def no_constant(name: str) -> Any:
    raise BadRow(f"{name} is not JSON")


def finite(text: str) -> float:
    value = float(text)
    if value in (float("inf"), float("-inf")):
        raise BadRow("a number out of range")
    return value


_SURROGATE = re.compile("[\ud800-\udfff]")


def decoded(line: str) -> dict[str, Any] | None:
    """A COPY line as ``etl._record`` would have built the record, or None when it does not
    decode cleanly (the row is then read again and judged the reference way)."""
    try:
        record = json.loads(line, parse_constant=no_constant, parse_float=finite)
    except (ValueError, RecursionError):  # BadRow is a ValueError
        return None
    if not isinstance(record, dict):
        return None
    # Lone surrogates come only from backslash-u escapes or undecodable bytes: walk only then.
    suspect = "\\u" in line or (not line.isascii() and _SURROGATE.search(line) is not None)
    if suspect and unencodable(record) is not None:
        return None
    return record


def public(record: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in record.items() if not k.startswith("_")}


def redacted(
    record: dict[str, Any], redactor: Redactor, quarantined: list[Quarantined]
) -> dict[str, Any] | None:
    """The record redacted, or None (and the reason in ``quarantined``) when it cannot be."""
    line = redacted_line(record, redactor, quarantined)
    return None if line is None else line[0]


def redacted_line(
    record: dict[str, Any], redactor: Redactor, quarantined: list[Quarantined]
) -> tuple[dict[str, Any], str] | None:
    """``redacted``, and the record as the JSONL writer writes it (compact JSON)."""
    try:
        done = redactor.record({k: v for k, v in public(record).items() if k not in UNREDACTED})
        done |= {k: record[k] for k in UNREDACTED}
        # What the writers will do with it: text that cannot be encoded fails here, not there.
        line = json.dumps(done, ensure_ascii=False, allow_nan=False, separators=(",", ":"))
        line.encode("utf-8")
    except (ValueError, TypeError, RecursionError) as exc:
        reason = unencodable(record) or f"could not be redacted ({type(exc).__name__})"
        quarantined.append(Quarantined(record["run_id"], reason))
        return None
    return done, line


# --- in a worker process ---------------------------------------------------------------------
# ``python -m neuralops.etl_lines``, started by the exporter: no multiprocessing, so nothing of
# the exporter's main module runs again here and no thread's lock is inherited through fork.
# Messages both ways are pickles, each preceded by its length (8 bytes, big-endian); the
# first one in is (field rules, hash key, compiled scanners), then lists of lines, answered
# in order by ("ok", (results, stats)) or ("error", exception).

_redactor: Redactor | None = None


def init_worker(
    field_rules: Mapping[str, FieldAction],
    hash_key: bytes,
    scanners: Mapping[tuple[Trigger, ...], bytes] | None = None,
) -> None:
    """The worker's redactor: the exporter's field rules and hash key; ``scanners``: the
    exporter's compiled trigger scanners (``redaction.compiled_scanners``)."""
    global _redactor
    load_scanners(scanners or {})
    _redactor = Redactor(field_rules=field_rules, hash_key=hash_key)


def redact_line(line: str, redactor: Redactor) -> str | Quarantined | None:
    """A marked COPY line as the export writes it, its Quarantined verdict, or None (read it
    again). Where only string values change, they are redacted in the line itself
    (``redaction_batch.redact_strings``); else the record is, written as compact JSON."""
    record = decoded(line)
    if record is None:
        return None
    if (in_place := redact_strings(line, redactor)) is not None:
        return in_place
    quarantined: list[Quarantined] = []
    done = redacted_line(record, redactor, quarantined)
    return quarantined[0] if done is None else done[1]


def redact_lines(lines: list[str]) -> tuple[list[str | Quarantined | None], dict[str, int]]:
    """``redact_line`` for each marked COPY line, and the replacements made
    (``Redactor.stats``), which the exporter adds to its own."""
    redactor = _redactor
    assert redactor is not None, "init_worker first"
    redactor.stats.clear()
    return [redact_line(line, redactor) for line in lines], dict(redactor.stats)


def send(stream: BinaryIO, message: Any) -> None:
    data = pickle.dumps(message, protocol=pickle.HIGHEST_PROTOCOL)
    stream.write(len(data).to_bytes(8, "big"))
    stream.write(data)
    stream.flush()


def receive(stream: BinaryIO) -> Any:
    """The next message, or EOFError when the other side closed the pipe."""
    head = stream.read(8)
    if len(head) < 8:
        raise EOFError
    size = int.from_bytes(head, "big")
    data = stream.read(size)
    if len(data) < size:
        raise EOFError
    return pickle.loads(data)


def _serve(inp: BinaryIO, out: BinaryIO) -> None:
    init_worker(*receive(inp))
    # A thread takes the tasks in as they come, so the exporter never waits on a full pipe
    # to send the next one while this worker is busy (nor deadlocks with its answers).
    tasks: queue.SimpleQueue[Any] = queue.SimpleQueue()

    def take() -> None:
        try:
            while True:
                tasks.put(receive(inp))
        except EOFError:
            tasks.put(None)

    threading.Thread(target=take, daemon=True).start()
    while (lines := tasks.get()) is not None:
        try:
            answer: tuple[str, Any] = ("ok", redact_lines(lines))
        except Exception as exc:  # handed to the exporter, raised there
            answer = ("error", exc)
        send(out, answer)


if __name__ == "__main__":
    answers = sys.stdout.buffer
    sys.stdout = sys.stderr  # a stray print must not corrupt the answers
    _serve(sys.stdin.buffer, answers)
