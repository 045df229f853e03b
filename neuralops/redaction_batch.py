"""Batch redaction: find, over a whole batch at once, the records the redactor could change.

Most run records hold nothing to redact, yet ``Redactor.record`` walks every string of every
record through a dozen rules (about 11k records/s on one core). ``marked_lines`` runs every
rule's trigger over a whole chunk of serialised records in one pass (Hyperscan: all the
triggers compiled into one automaton, scanned over the chunk's bytes as they came from the
database) and marks only the records where some rule *could* fire; the rest are already
what the redactor would return. The full redactor still decides every marked record, so
what is caught cannot change: each trigger (``neuralops.redaction.TRIGGERS``, beside the
rules, which also use them to skip the rules that cannot fire on a text) is a necessary
condition of one rule (a rule's pattern with its lookarounds dropped, or the literal its
gate needs), so a record none of them matches is left unchanged by every rule, field rule
and secret-named key. ``tests/test_redaction_batch.py`` checks that property against the
reference over the redaction tests' corpus and with hypothesis.

The input is JSON text, one record a line (a record serialised, or a COPY line), scanned as
it is. Escapes would hide text from the triggers, so any escape but ``\\"`` marks its record
(line breaks, tabs, backslashes and ``\\uXXXX`` in run text are rare); ``\\"`` only adds a
backslash before a quote, which the one trigger that spans a quote allows. Any non-ASCII
byte also marks its record, so the triggers only ever meet ASCII (where Hyperscan's and
Python's classes and case folding agree; Python folds a few non-ASCII letters onto ASCII
ones, such as the Kelvin sign or the long s, which the redactor's case-insensitive rules
would match).

The lines are scanned as one block: a match is counted for the line it ends in. A match
inside a line is found as it would be in that line alone; the few triggers that start with
"the start of the line or a separator" see the newline before the line as that separator;
a match that spans lines only marks a line more, never one less.

Only the stock ``Redactor`` is pre-filtered: for a subclass (other rules) every record is
marked.
"""

from __future__ import annotations

import json
import re
import weakref
from collections import Counter
from collections.abc import Sequence
from typing import TYPE_CHECKING

from neuralops.redaction import _PLACEHOLDER, TRIGGERS, Redactor, Trigger, scanner

if TYPE_CHECKING:
    import numpy as np

__all__ = [
    "MAX_BRACKETS",
    "TRIGGERS",
    "line_ends",
    "marked_lines",
    "may_redact",
    "redact_strings",
    "triggers",
]

# More opening brackets than this (an upper bound of the nesting depth) goes the full way:
# the reference path refuses deep nesting (quarantine) and must be the one to decide.
MAX_BRACKETS = 200


# Asked once per marked line; a Redactor's field rules never change. Weak keys: the cache
# does not keep a redactor (its caches, its hash key) alive after its export.
_TRIGGERS_OF: weakref.WeakKeyDictionary[Redactor, tuple[tuple[Trigger, ...] | None]] = (
    weakref.WeakKeyDictionary()
)


def triggers(redactor: Redactor) -> tuple[Trigger, ...] | None:
    """The triggers for ``redactor``'s rules, or None when it cannot be pre-filtered (a
    subclass, or a field rule ending in ``*``)."""
    known = _TRIGGERS_OF.get(redactor)
    if known is None:
        known = _TRIGGERS_OF[redactor] = (_triggers(redactor),)
    return known[0]


def _triggers(redactor: Redactor) -> tuple[Trigger, ...] | None:
    if type(redactor) is not Redactor:
        return None
    leaves = {path.split(".")[-1] for path in redactor.field_rules}
    if "*" in leaves or not all(
        leaf.isascii() and '"' not in leaf and "\\" not in leaf for leaf in leaves
    ):
        return None  # a leaf that may match any key, or one written with escapes
    if not leaves:
        return TRIGGERS
    # a field rule acts only on its leaf key, which appears in the text as "leaf"
    keys = "|".join(sorted(re.escape(leaf) for leaf in leaves))
    return (*TRIGGERS, Trigger(f'"(?:{keys})"', False, None))


# numpy is imported where it is used: the export's worker processes import this module for
# redact_strings only, and do without numpy's 16 MiB each.


def line_ends(data: bytes) -> np.ndarray:
    """The offset of each line's newline in ``data`` (lines each ended by a newline)."""
    import numpy as np

    if data[-1:] not in (b"", b"\n"):
        raise ValueError("the last line has no newline")
    return np.flatnonzero(np.frombuffer(data, dtype=np.uint8) == 10)


def marked_lines(data: bytes, redactor: Redactor, ends: np.ndarray | None = None) -> np.ndarray:
    """For each line of ``data`` (JSON texts, each ended by a newline, as COPY sends them;
    ``ends``: ``line_ends(data)`` if already known): True where the redactor could change
    the record (or refuse it), False where it certainly returns it unchanged."""
    import numpy as np

    if ends is None:
        ends = line_ends(data)
    patterns = triggers(redactor)
    if patterns is None:
        return np.ones(len(ends), dtype=bool)
    marked = np.zeros(len(ends), dtype=bool)
    if found := scanner(patterns).matches(data):
        # a match ending at offset e (exclusive) lies in the line holding byte e - 1
        marked[np.searchsorted(ends, np.asarray([end for _, end in found]) - 1)] = True
    if len(ends):
        starts = np.concatenate(([0], ends[:-1] + 1))
        view = np.frombuffer(data, dtype=np.uint8)
        if not data.isascii():  # a byte of a non-ASCII character marks the line holding it
            marked[np.searchsorted(ends, np.flatnonzero(view >= 128))] = True
        opening = (view | 32) == 123  # [ (91) and { (123): one comparison, not two
        marked |= np.add.reduceat(opening, starts, dtype=np.int32) > MAX_BRACKETS
    return marked


def may_redact(texts: Sequence[str], redactor: Redactor) -> list[bool]:
    """``marked_lines`` for JSON texts given one by one (a text holding a newline, which
    serialised JSON never does, is marked)."""
    if not texts:
        return []
    # lone surrogates (undecodable input) come out as non-ASCII bytes: marked
    data = "".join(t.replace("\n", "\x80") + "\n" for t in texts).encode("utf-8", "surrogatepass")
    return marked_lines(data, redactor).tolist()


# --- one marked line, string by string --------------------------------------------------------

# An escaped backslash, or a \u escape (which may decode to anything, a lone surrogate
# included: the whole way's to judge). Without them every backslash in a line starts a
# one-character escape (\" \n \t \r \b \f \/), which ``_string_around`` relies on.
_UNSAFE_ESCAPE = re.compile(r"\\[\\u]")
_KEY_AFTER = re.compile(r"[ \t]*:")


def _string_around(line: str, at: int) -> tuple[int, int] | None:
    """(start, end) of the JSON string whose content holds ``line[at]``, quotes included; None
    when ``line[at]`` is outside every string or a quote. The line holds no escaped backslash
    (``_UNSAFE_ESCAPE`` sent it the whole way), so a quote is escaped exactly when a backslash
    precedes it, and the quotes before ``at`` that none precedes tell whether it is inside a
    string."""
    if line[at] == '"' or (line.count('"', 0, at) - line.count('\\"', 0, at)) % 2 == 0:
        return None
    start = line.rfind('"', 0, at)
    while line[start - 1] == "\\":
        start = line.rfind('"', 0, start - 1)
    stop = line.find('"', at)
    while line[stop - 1] == "\\":
        stop = line.find('"', stop + 1)
    return start, stop + 1


def redact_strings(line: str, redactor: Redactor) -> str | None:
    """A marked COPY line with its string values redacted in place, when that is all the
    redactor would do to it; None when the whole record must go through ``Redactor.record``.

    The triggers are scanned again over the line alone. A string value none of them ends in
    is one ``Redactor.text`` returns unchanged (the property the pre-filter rests on), so only
    the values a match ends in are decoded and redacted; the rest of the line, keys, numbers
    and spacing included, is written as PostgreSQL serialised it. A match that ends anywhere
    else (in a key, on a quote: a field rule's key, a secret-named key; in a number: a card
    stored as one), an escaped backslash or a \\u escape, a non-ASCII character or deep
    nesting sends the record the whole way, which knows the record's shape. A value holding
    any other escape (a line break, a tab: a log's traceback) is always decoded and redacted,
    as the triggers saw its escaped form and not its text: the escape trigger (the first of
    ``TRIGGERS``) ends in it. ``provenance`` and ``verified`` (last in a COPY line) are
    never redacted."""
    patterns = triggers(redactor)
    if patterns is None or not line.isascii():
        return None
    if line.count("[") + line.count("{") > MAX_BRACKETS:
        return None
    kept = line.rfind(',"provenance":')
    if kept < 0:
        return None
    if _UNSAFE_ESCAPE.search(line) is not None:
        return None
    found = scanner(patterns).matches(line.encode())
    if any(trigger >= len(TRIGGERS) and end <= kept for trigger, end in found):
        return None  # a field rule's key
    # Where each match ends, first: all inside string values, or the line goes the whole way
    # before anything is redacted (and counted).
    spans: list[tuple[int, int]] = []  # (start, end) of each string to redact, quotes included
    for end in sorted({end for _, end in found if end <= kept}):
        if spans and end - 1 < spans[-1][1]:
            continue  # in the string just found (a match ending at ``end`` holds end - 1)
        span = _string_around(line, end - 1)
        if span is None or _KEY_AFTER.match(line, span[1]):
            return None  # outside every string's content, or in a key
        spans.append(span)
    pieces: list[str] = []
    memo: dict[str, tuple[str, Counter[str]]] = {}
    done = 0  # the offset up to which the line is in ``pieces``
    for start, stop in spans:
        text = json.loads(line[start:stop])
        if text in memo:  # the same text twice (an error in outputs and in its step's log)
            redacted, counted = memo[text]
            redactor.stats.update(counted)
        elif _PLACEHOLDER.fullmatch(text):  # as Redactor._walk
            redacted = text
        else:
            before = redactor.stats.copy()
            redacted = redactor.text(text)
            memo[text] = (redacted, redactor.stats - before)
        if redacted != text:
            pieces += (line[done:start], json.dumps(redacted, ensure_ascii=False))
            done = stop
    pieces.append(line[done:])
    return "".join(pieces)
