"""The batch redaction (pre-filter + full redactor on the marked records) against the
per-record reference: identical output and counts on everything the redaction tests use,
on synthetic runs, through the PostgreSQL COPY export, and under hypothesis."""

from __future__ import annotations

import ast
import functools
import gc
import json
import weakref
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy.engine import URL
from test_redaction import BENIGN_JSON, benign_text, secrets

from neuralops import etl, etl_lines, redaction, runs
from neuralops.redaction import (
    DEFAULT_FIELD_RULES,
    TRIGGERS,
    Redactor,
    Scanner,
    SecretRedactor,
    compiled_scanners,
    load_scanners,
    scanner,
)
from neuralops.redaction_batch import MAX_BRACKETS, may_redact, redact_strings, triggers
from neuralops.synthetic import PLANT_EVERY, synthetic_runs

HERE = Path(__file__).parent


def _strings_in(path: Path) -> list[str]:
    """Every string literal of a test module: the redaction tests' examples, secret and benign."""
    tree = ast.parse(path.read_text())
    found = {
        node.value
        for node in ast.walk(tree)
        if isinstance(node, ast.Constant) and isinstance(node.value, str)
    }
    return sorted(found)


CORPUS = _strings_in(HERE / "test_redaction.py") + _strings_in(HERE / "test_trust.py")
# Shapes the triggers are near: text that must still be decided by the full redactor.
TRICKY = [
    "Kelvin \u212aey: x",  # Python folds the Kelvin sign onto k under IGNORECASE
    "pa\u017f\u017fword=hunter22",  # long s
    "pa\u00dfword: hunter22",  # casefold: ss
    'note "password is hunter2"',
    "line one\npassword: hunter2",
    "tab\tpassword\tis\thunter2",
    "call +44 20 7946 0958 now",
    "at 2026-01-05 10:00:00 the host 10.0.0.1 failed",
    "fe80::1%eth0",
    "dead::beef",
    "4111-1111-1111-1111",
    "1700000000000",
    "mysql -u root -phunter2 db",
    "kubectl logs -p pod-1",
    "docker run -p 8080:80 img",
    "Authorization: Basic dXNlcjpwYXNz",
    "<AWS_ACCESS_KEY> wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY",
    "x" * 30 + "AC" + "a" * 32,
    "plain words only, nothing to hide here",
    "",
]


class Ungated(Redactor):
    """The rules without their triggers' gate: every rule runs on every text. The reference
    that the pre-filter, the in-place path and the gate (``Redactor.text``) are held to."""


def reference(redactor: Redactor, record: dict[str, Any]) -> dict[str, Any]:
    return redactor.record(record)


def batched(redactor: Redactor, records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The batch path on plain records: only the marked ones go through the redactor."""
    texts = [json.dumps(r, ensure_ascii=False) for r in records]
    return [
        redactor.record(r) if marked else r
        for r, marked in zip(records, may_redact(texts, redactor), strict=True)
    ]


def _records_around(text: str) -> list[dict[str, Any]]:
    """The string in each place a run holds text: values, keys, lists, logs, field rules."""
    return [
        {"inputs": {"note": text}},
        {"inputs": {text: 1}},
        {"outputs": {"lines": [text, f"x {text} y"]}},
        {"node_logs": [{"name": "step", "message": text}]},
        {"inputs": {"alert": {"summary": f"({text})"}}},
    ]


def test_the_batch_path_equals_the_reference_on_the_redaction_corpus() -> None:
    records = [r for text in CORPUS + TRICKY for r in _records_around(text)]
    records += [{"inputs": {"email": "a"}}, {"inputs": {"x": {"password": "p"}}}]
    records += [{"inputs": {"n": 4111111111111111}}, {"inputs": {"api_key": None}}]
    ours, theirs = Redactor(), Ungated()
    assert batched(ours, records) == [reference(theirs, r) for r in records]
    assert ours.stats == theirs.stats  # the same replacements, counted the same


def test_every_unmarked_string_is_unchanged_by_the_reference() -> None:
    """The pre-filter's soundness, string by string (the core of the equivalence)."""
    redactor = Redactor()
    texts = CORPUS + TRICKY
    marks = may_redact([json.dumps(t) for t in texts], redactor)
    for text, marked in zip(texts, marks, strict=True):
        if not marked:
            assert Ungated().text(text) == text, text
    # and it does not mark everything: plain run text goes the fast way
    assert may_redact([json.dumps("rollout of payments-api finished in 42s")], redactor) == [False]


def test_synthetic_runs_equal_and_mostly_unmarked() -> None:
    records = [r.model_dump(mode="json") for r in synthetic_runs(4 * PLANT_EVERY, seed=3)]
    ours, theirs = Redactor(), Ungated()
    assert batched(ours, records) == [reference(theirs, r) for r in records]
    assert ours.stats == theirs.stats and sum(ours.stats.values()) > 0
    marked = may_redact([json.dumps(r) for r in records], Redactor())
    assert sum(marked) < len(records) / 2  # the planted ones (1 in 8) and a few more


def test_escapes_but_quotes_mark_the_record() -> None:
    redactor = Redactor()
    texts = ['say "hi" there', "multi\nline", "tab\there", "back\\slash", "bell\x07"]
    assert may_redact([json.dumps(t) for t in texts], redactor) == [False, True, True, True, True]
    deep = "[" * (MAX_BRACKETS + 1) + "]" * (MAX_BRACKETS + 1)
    objects = '{"a":' * (MAX_BRACKETS + 1) + "1" + "}" * (MAX_BRACKETS + 1)
    mixed = '[{"a":' * (MAX_BRACKETS // 2) + "1" + "}]" * (MAX_BRACKETS // 2)  # just enough
    closing = "[" + "]" * 500 + "{" * (MAX_BRACKETS - 1)  # only opening brackets count
    assert may_redact([deep, objects, mixed, closing, "{}"], redactor) == [
        True,
        True,
        False,
        False,
        False,
    ]


def test_a_non_ascii_character_marks_its_line_and_no_other() -> None:
    """Marked by a byte test, not a trigger: each line holding a byte of a non-ASCII
    character, wherever in the line, and only those (plain text on either side)."""
    texts = ["plain", "caf\u00e9", "plain", "\u212aelvin", "plain", "end \U0001f525", "plain"]
    lines = [json.dumps({"note": t}, ensure_ascii=False) for t in texts]
    assert may_redact(lines, Redactor()) == [False, True, False, True, False, True, False]
    assert may_redact(["\u00e9"], Redactor()) == [True]  # the chunk's first byte
    assert may_redact(["x", "y\u00e9"], Redactor()) == [False, True]  # its last line


def test_the_triggers_are_worked_out_once_and_keep_no_redactor_alive() -> None:
    redactor = Redactor(field_rules={"inputs.customer": "hash"})
    assert triggers(redactor) is triggers(redactor)  # the same tuple: worked out once
    assert triggers(redactor)[-1].pattern == '"(?:customer)"'
    gone = weakref.ref(redactor)
    del redactor
    gc.collect()
    assert gone() is None  # its caches and hash key go with it


def test_other_redactors_are_not_prefiltered() -> None:
    class Custom(Redactor):
        pass

    assert triggers(Custom()) is None and triggers(SecretRedactor()) is None
    assert may_redact(["{}", "{}"], Custom()) == [True, True]
    assert triggers(Redactor(field_rules={"inputs.*": "drop"})) is None
    assert '"(?:api_key|' in triggers(Redactor(DEFAULT_FIELD_RULES))[-1][0]


# --- hypothesis: the same properties as the reference, and equality with it ------------------

ALPHABET = (
    "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789"
    " \t\n.,:;=@+-_/\\'\"()[]{}<>%~#&|?!*"
    "\u212a\u017f\u00df\u0130\u0131\u00e9"
)
NEAR_MISS = st.sampled_from(
    ["pass", "pwd", "token", "key", "secret", "bearer ", "Basic ", "eyJ", "AKIA", "://", "-p ",
     "sk-", "xox", "ghp_", "hvs.", "+44 ", "10.0.", "::", "2026-01-05 ", "4111 1111 ", " is ",
     "authorization", "<HASH:0123456789abcdef>", "<EMAIL>", "@"]
)  # fmt: skip
TEXT = st.lists(st.text(ALPHABET, max_size=12) | NEAR_MISS | benign_text(), max_size=8).map("".join)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(TEXT, min_size=1, max_size=6))
def test_unmarked_text_is_unchanged(texts: list[str]) -> None:
    redactor = Redactor()
    marks = may_redact([json.dumps(t) for t in texts], redactor)
    for text, marked in zip(texts, marks, strict=True):
        if not marked:
            assert Ungated().text(text) == text


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.tuples(BENIGN_JSON, st.lists(secrets(), max_size=2), TEXT), max_size=5))
def test_batch_equals_reference_idempotent_and_benign_unchanged(
    cases: list[tuple[Any, list[tuple[str, list[str]]], str]],
) -> None:
    records = []
    for benign, planted, text in cases:
        records.append({"inputs": {"data": benign}})  # benign: unchanged
        records.append({"inputs": {"note": " ".join([text, *(s for s, _ in planted)])}})
    out = batched(Redactor(), records)
    assert out == [reference(Ungated(), r) for r in records]
    assert batched(Redactor(), out) == out  # idempotent
    for record, done in zip(records[::2], out[::2], strict=True):
        assert done == record


# --- the triggers as the rules' gate (Redactor.text) ------------------------------------------


def _rule_calls(text: str) -> list[tuple[str, str, str]]:
    """(rule, the text it was given, what it returned) for each rule the ungated redactor ran
    on ``text``, in order: later rules are given what earlier ones left."""
    redactor, calls = Ungated(), []

    def recording(rule: Callable[[str], str]) -> Callable[[str], str]:
        def call(value: str) -> str:
            out = rule(value)
            calls.append((rule.__name__, value, out))
            return out

        return call

    redactor._rules = tuple(map(recording, redactor._rules))
    redactor._numeric_rules = tuple(map(recording, redactor._numeric_rules))
    redactor.text(text)
    return calls


def _check_gate(texts: list[str]) -> set[str]:
    """Every rule that changed a text has a trigger that matches that text; the gated
    redactor's output and counts equal the ungated one's. The rules seen changing a text."""
    scan, changed = scanner(TRIGGERS), set()
    for text in texts:
        for rule, seen, out in _rule_calls(text):
            may_fire = scan.rules(seen)
            if out != seen:
                changed.add(rule)
                assert may_fire is None or rule in may_fire, (rule, seen)
        gated, ungated = Redactor(), Ungated()
        assert gated.text(text) == ungated.text(text), text
        assert gated.stats == ungated.stats, text
    return changed


def test_the_gate_skips_no_rule_that_would_fire_on_the_corpus() -> None:
    # every gated rule changes some text of the corpus: each one's triggers were put to it
    assert _check_gate(CORPUS + TRICKY) == {t.rule for t in TRIGGERS if t.rule}


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.tuples(TEXT, st.lists(secrets(), max_size=3)), min_size=1, max_size=4))
def test_the_gate_skips_no_rule_that_would_fire(cases: list[tuple[str, list[Any]]]) -> None:
    _check_gate([" ".join([text, *(s for s, _ in planted)]) for text, planted in cases])


def test_the_gate_runs_only_the_rules_a_trigger_matches(monkeypatch: pytest.MonkeyPatch) -> None:
    given: list[str] = []
    phones = Redactor._phones

    @functools.wraps(phones)
    def spy(self: Redactor, text: str) -> str:
        given.append(text)
        return phones(self, text)

    monkeypatch.setattr(Redactor, "_phones", spy)
    redactor = Redactor()
    assert redactor.text("retry 3 of 5 failed on node 7 at 10:42") == (
        "retry 3 of 5 failed on node 7 at 10:42"
    )
    assert given == []  # digits, but nothing shaped like a phone number
    assert redactor.text("call +44 20 7946 0958 now") == "call <PHONE> now"
    assert given == ["call +44 20 7946 0958 now"]
    given.clear()
    assert Ungated().text("retry 3 of 5 failed on node 7 at 10:42")
    assert given  # without the gate the rule runs on any text with digits


def test_a_subclass_runs_every_rule() -> None:
    """Its rules may not be the stock ones: the triggers say nothing about them."""

    class Custom(Redactor):
        def _emails(self, text: str) -> str:  # finds what no "@" trigger would
            return text.replace("ana at example", "<EMAIL>")

    assert Custom().text("write to ana at example dot com") == "write to <EMAIL> dot com"
    assert Redactor().text("write to ana at example dot com") == "write to ana at example dot com"


# --- one marked line, string by string (redact_strings) --------------------------------------


def _line(record: dict[str, Any], provenance: str = "seed") -> str:
    """A COPY line as PostgreSQL writes it: jsonb's spacing, provenance and verified last."""
    body = json.dumps({"run_id": "r-1", **record})[:-1]
    return f'{body},"provenance":{json.dumps(provenance)},"verified":false}}'


def _full_path(line: str, redactor: Redactor) -> dict[str, Any]:
    record = json.loads(line)
    return etl_lines.redacted(record, redactor, []) or {}


def _check_in_place(record: dict[str, Any]) -> bool:
    """The line redacted in place equals the record redacted whole, counts included; True
    when the in-place path took it."""
    line = _line(record)
    ours, theirs = Redactor(), Ungated()
    in_place = redact_strings(line, ours)
    expected = _full_path(line, theirs)
    if in_place is None:
        assert not ours.stats, line  # nothing counted: the whole way will count it
        return False
    assert json.loads(in_place) == expected, line
    assert ours.stats == theirs.stats, line
    return True


def test_in_place_equals_the_whole_record_on_the_redaction_corpus() -> None:
    records = [r for text in CORPUS + TRICKY for r in _records_around(text)]
    taken = [_check_in_place(r) for r in records]
    assert sum(taken) > len(taken) / 4  # the common case takes the cheap way


def test_what_needs_the_record_is_not_done_in_place() -> None:
    redactor = Redactor()
    needs_the_record = [
        {"inputs": {"user_email": "a@example.com"}},  # a field rule
        {"inputs": {"db_password": 1234}},  # a secret-named key, a number
        {"inputs": {"card": 4111111111111111}},  # a card stored as a number
        {"inputs": {"ops@example.com": "on call"}},  # a key the text rules change
        {"inputs": {"note": "caf\u00e9 at 10.0.0.1"}},  # non-ASCII (a \\u escape in _line)
        {"inputs": {"path": "C:\\temp", "note": "at 10.0.0.1"}},  # an escaped backslash
    ]
    for record in needs_the_record:
        assert redact_strings(_line(record), redactor) is None, record
    deep = {"inputs": {"x": [[]] * MAX_BRACKETS, "ip": "10.0.0.1"}}  # over MAX_BRACKETS
    assert redact_strings(_line(deep), redactor) is None


def test_a_value_with_a_line_break_is_redacted_in_place_as_its_text() -> None:
    """The triggers see a value's escaped form (``\\n-p``: no separator before ``-p``), so a
    value holding an escape is always redacted, as the text it decodes to."""
    for record in (
        {"inputs": {"cmd": "mysql -u root\n-phunter22 db", "n": 1}},  # the flag after a break
        {"outputs": {"error": "Traceback:\n  File x\n\tconnect(10.0.0.7)\nTimeout"}},
        {"outputs": {"error": "Traceback:\n  File x\nTimeout"}},  # nothing to redact
    ):
        line, ours, theirs = _line(record), Redactor(), Ungated()
        in_place = redact_strings(line, ours)
        assert in_place is not None, record
        assert json.loads(in_place) == _full_path(line, theirs) and ours.stats == theirs.stats
    assert "hunter22" not in redact_strings(
        _line({"inputs": {"cmd": "mysql\n-phunter22"}}), Redactor()
    )
    plain = _line({"outputs": {"error": "Traceback:\n  File x\nTimeout"}})
    assert redact_strings(plain, Redactor()) == plain  # unchanged values keep their bytes


def test_a_line_that_goes_the_whole_way_is_counted_once() -> None:
    """A string redacted before the line turns out to need the record (a field rule's key,
    a card stored as a number, after it) was once counted twice."""
    for record in (
        {"inputs": {"note": "mail ana@example.com", "user_email": "x@example.com"}},
        {"inputs": {"a": "mail ana@example.com", "n": 4111111111111111}},
    ):
        line, ours, theirs = _line(record), Redactor(), Ungated()
        assert json.loads(etl_lines.redact_line(line, ours)) == _full_path(line, theirs)
        assert ours.stats == theirs.stats and ours.stats["<EMAIL>"] == 1, record


def test_in_place_keeps_the_line_and_leaves_provenance_alone() -> None:
    record = {"inputs": {"n": 3}, "outputs": {"error": "dial tcp 10.96.0.1:443: i/o timeout"}}
    line = _line(record, provenance="api:alice@example.com")
    done = redact_strings(line, Redactor())
    assert done == line.replace("10.96.0.1", "<IPV4>")  # PostgreSQL's spacing kept
    assert json.loads(done)["provenance"] == "api:alice@example.com"  # never redacted
    plain = _line({"outputs": {"message": "rollout finished"}})
    assert redact_strings(plain, Redactor()) == plain


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.tuples(st.sampled_from(["note", "error", "msg"]), TEXT), max_size=4), TEXT)
def test_in_place_equals_the_whole_record(fields: list[tuple[str, str]], log: str) -> None:
    record = {
        "inputs": dict(fields),
        "outputs": {"lines": [log, "ok"]},
        "node_logs": [{"name": "step", "message": log, "n": 7}],
    }
    _check_in_place(record)


# Log-shaped values: line breaks, tabs and quotes (escaped in the line) around what the rules
# catch, so that most lines hold an escape and still go the in-place way.
LOG_PIECES = st.sampled_from(
    ["\n", "\t", "\r", "\f", "\b", '"', "'", " ", ":", "=", "{", "}", ",", "/", "x",
     "Traceback", "10.0.0.1", "::1", "a@b.co", "-p", "-phunter22", "mysql", "password: x",
     "secret=", "token is abc123", "eyJhbGciOi.eyJzdWIi.sig", "4111 1111 1111 1111",
     "+44 20 7946 0958", "AKIAABCDEFGHIJKLMNOP", "<EMAIL>"]
)  # fmt: skip
LOG = st.lists(LOG_PIECES, max_size=10).map("".join)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.tuples(st.sampled_from(["note", "error", "cmd", "a"]), LOG), max_size=4), LOG)
def test_in_place_with_escapes_equals_the_whole_record(
    fields: list[tuple[str, str]], log: str
) -> None:
    record = {
        "inputs": dict(fields),
        "outputs": {"lines": [log, "ok"]},
        "node_logs": [{"name": "step", "message": log, "n": 7}],
    }
    assert _check_in_place(record)  # none of these needs the record


# --- through the PostgreSQL COPY export ------------------------------------------------------


def _reference_export(url: URL) -> list[dict[str, Any]]:
    """The per-record path: keyset batches through SQLAlchemy, each record redacted."""
    redactor, quarantined, out = Redactor(), [], []
    for batch, _, _ in etl._batches(url, None, inclusive=False, batch_rows=7):
        for record in batch:
            if not isinstance(record, etl.Quarantined):
                done = etl_lines.redacted(record, redactor, quarantined)
                if done is not None:
                    out.append(done)
    return out


def test_the_copy_export_equals_the_reference(postgresql_url: URL, tmp_path: Path) -> None:
    runs.log_runs(synthetic_runs(3 * PLANT_EVERY, seed=5))
    tricky = next(synthetic_runs(1, seed=6)).model_dump()
    for n, text in enumerate(TRICKY + CORPUS[:: max(1, len(CORPUS) // 60)]):
        clean = text.encode("utf-8", "ignore").decode().replace("\x00", "")  # what PG stores
        inputs = {"note": clean, clean[:40]: [clean]}
        outputs = {"price": 1.50, "n": 4111111111111111}
        runs.log_run({**tricky, "run_id": f"tricky-{n}", "inputs": inputs, "outputs": outputs})
    result = etl.export_runs(tmp_path / "runs.jsonl", batch_rows=9)
    lines = (tmp_path / "runs.jsonl").read_text().splitlines()
    assert [json.loads(line) for line in lines] == _reference_export(postgresql_url)
    assert result.rows == len(lines) and result.quarantined == []
    # unmarked lines are PostgreSQL's own JSON; timestamps as isoformat() writes them
    first = json.loads(lines[0])
    assert first["created_at"].endswith("+00:00") and "T" in first["created_at"]


@pytest.mark.parametrize("kind", ["jsonl", "parquet"])
def test_copy_export_parquet_and_jsonl_hold_the_same(
    postgresql_url: URL, tmp_path: Path, kind: str
) -> None:
    import polars as pl

    runs.log_runs(synthetic_runs(2 * PLANT_EVERY, seed=8))
    etl.export_runs(tmp_path / f"runs.{kind}", full=True, batch_rows=5)
    if kind == "parquet":
        frame = pl.read_parquet(tmp_path / "runs.parquet")
        got = [{**row, **{k: json.loads(row[k]) for k in etl.NESTED}} for row in frame.to_dicts()]
    else:
        got = [json.loads(x) for x in (tmp_path / "runs.jsonl").read_text().splitlines()]
    assert got == _reference_export(postgresql_url)


def test_a_failed_copy_export_leaves_nothing_and_stops_its_reader(
    postgresql_url: URL, tmp_path: Path
) -> None:
    import threading

    runs.log_runs(synthetic_runs(12, seed=9))

    class Broken(Redactor):  # not the stock Redactor: every record goes through record()
        def record(self, run):
            self.seen = getattr(self, "seen", 0) + 1
            if self.seen == 6:
                raise RuntimeError("disk full")
            return super().record(run)

    with pytest.raises(RuntimeError, match="disk full"):
        etl.export_runs(tmp_path / "runs.jsonl", redactor=Broken(), batch_rows=3)
    assert not list(tmp_path.glob("*runs.jsonl*"))  # no file, no temporary left
    assert etl.read_watermark() is None
    assert not [t for t in threading.enumerate() if t.name == "neuralops-export-copy"]
    assert etl.export_runs(tmp_path / "runs.jsonl").rows == 12  # and it runs again


# --- the worker processes (etl._Redaction): the same lines, verdicts and counts ---------------


def _copy_lines(records: list[dict[str, Any]]) -> list[str]:
    """Records as COPY lines (run_id first, provenance and verified last)."""
    return [
        json.dumps(
            {"run_id": f"r-{n}", **r, "provenance": "seed", "verified": False},
            separators=(",", ":"),
        )
        for n, r in enumerate(records)
    ]


def _as_records(pieces: list[Any]) -> list[dict[str, Any]]:
    """What the export writes, as records: redacted lines, records, lines written as they came."""
    out: list[dict[str, Any]] = []
    for piece in pieces:
        if isinstance(piece, etl._Lines):
            out += [json.loads(line) for line in piece.data.decode().splitlines()]
        else:
            out.append(json.loads(piece) if isinstance(piece, str) else piece)
    return out


def _chunk(lines: list[str]) -> bytes:
    """COPY lines as the export reads them: one chunk of bytes, each line ended by a newline."""
    return "".join(line + "\n" for line in lines).encode()


def _pooled(monkeypatch: pytest.MonkeyPatch) -> list[Any]:
    """Workers from the first marked line; the list of those started, to check they ran."""
    started: list[Any] = []
    real = etl._Worker

    def worker(redactor: Redactor) -> Any:
        started.append(real(redactor))
        return started[-1]

    monkeypatch.setattr(etl, "POOL_MIN_REDACTION_S", 0)
    monkeypatch.setattr(etl, "POOL_MIN_SHARE", 0)
    monkeypatch.setattr(etl, "_Worker", worker)
    return started


def test_worker_processes_equal_the_reference_line_by_line(monkeypatch: pytest.MonkeyPatch) -> None:
    records = [r for text in CORPUS + TRICKY for r in _records_around(text)]
    records += [r.model_dump(mode="json") for r in synthetic_runs(3 * PLANT_EVERY, seed=4)]
    records += [{"inputs": {"n": 4111111111111111}}, {"inputs": {"api_key": None}}]
    lines = _copy_lines(records)
    lines.insert(5, lines[5].replace('"seed"', "NaN"))  # does not decode: read again
    batches = [_chunk(lines[i : i + 97]) for i in range(0, len(lines), 97)]

    def reread(run_id: str) -> Any:
        return etl.Quarantined(run_id, "read again")

    inline, theirs, q_inline = Redactor(), [], []
    for batch in batches:
        theirs += etl._redact_batch(batch, inline, q_inline, reread)

    started = _pooled(monkeypatch)
    ours, pooled, q_pooled = Redactor(), [], []
    redaction = etl._Redaction(ours, workers=2)
    try:
        jobs = [redaction.submit(batch, reread) for batch in batches]
        for job in jobs:
            pooled += job.result(q_pooled)
    finally:
        redaction.close()
    assert len(started) == 2  # the lines went through the workers
    assert _as_records(pooled) == _as_records(theirs)
    assert len(_as_records(theirs)) + len(q_inline) == len(lines)
    assert q_pooled == q_inline  # the NaN line, and the corpus's lone surrogates
    assert etl.Quarantined("r-5", "read again") in q_inline
    assert ours.stats == inline.stats and sum(ours.stats.values()) > 0


def test_workers_start_once_redacting_here_has_cost_enough(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Few lines to redact: the export redacts them itself. The pool starts once redacting
    has taken POOL_MIN_REDACTION_S of the exporting thread's CPU (and POOL_MIN_SHARE of it),
    and the output is the same either way."""
    records = [r.model_dump(mode="json") for r in synthetic_runs(80 * PLANT_EVERY, seed=6)]
    batches = [_chunk(_copy_lines(records[i : i + 20])) for i in range(0, len(records), 20)]
    reference, expected = Redactor(), []
    for batch in batches:
        expected += etl._redact_batch(batch, reference, [])
    started = _pooled(monkeypatch)
    monkeypatch.setattr(etl, "POOL_MIN_REDACTION_S", 0.01)
    redactor, out = Redactor(), []
    redaction = etl._Redaction(redactor, workers=1)
    costs = []
    try:
        for batch in batches:
            costs.append((redaction.redacting_s, len(started)))
            out += redaction.submit(batch, None).result([])
    finally:
        redaction.close()
    assert costs[0] == (0.0, 0) and costs[-1][1] == 1  # not at once, but in the end
    assert all(spent >= 0.01 for spent, pool in costs if pool)
    assert _as_records(out) == _as_records(expected) and redactor.stats == reference.stats

    # Redacting is never all of the thread's time (the scans are not): a share of 1 keeps
    # the workers off, however long redacting takes.
    monkeypatch.setattr(etl, "POOL_MIN_REDACTION_S", 0)
    monkeypatch.setattr(etl, "POOL_MIN_SHARE", 1.0)
    redaction, out = etl._Redaction(Redactor(), workers=1), []
    try:
        for batch in batches:
            out += redaction.submit(batch, None).result([])
    finally:
        redaction.close()
    assert len(started) == 1 and redaction.redacting_s > 0.01
    assert _as_records(out) == _as_records(expected)


def test_workers_take_the_field_rules_and_the_hash_key(monkeypatch: pytest.MonkeyPatch) -> None:
    rules = {"inputs.customer": "hash", "inputs.debug": "drop"}
    record = {"inputs": {"customer": "c-1", "debug": "x", "note": "mail a@example.com"}}
    lines = _copy_lines([record] * 3)
    expected = Redactor(field_rules=rules, hash_key=b"k2").record(record)
    _pooled(monkeypatch)
    redactor = Redactor(field_rules=rules, hash_key=b"k2")
    redaction = etl._Redaction(redactor, workers=1)
    try:
        out = redaction.submit(_chunk(lines), None).result([])
    finally:
        redaction.close()
    assert [json.loads(x)["inputs"] for x in out] == [expected["inputs"]] * 3
    assert expected["inputs"]["customer"].startswith("<HASH:") and "debug" not in expected["inputs"]
    assert redactor.stats["<HASH>"] == 3 and redactor.stats["<DROPPED>"] == 3


def test_a_failing_worker_fails_the_export_and_is_stopped(monkeypatch: pytest.MonkeyPatch) -> None:
    started = _pooled(monkeypatch)
    redaction = etl._Redaction(Redactor(), workers=1)
    bad = '{"run_id": "r-1", "inputs": {"note": "a@example.com"}}'  # no provenance: KeyError
    try:
        with pytest.raises(KeyError, match="provenance"):
            redaction.submit(_chunk([bad]), None).result([])
    finally:
        redaction.close(failed=True)
    assert started and all(w.process.poll() is not None for w in started)


def test_the_pooled_copy_export_equals_the_inline_one(
    postgresql_url: URL, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    runs.log_runs(synthetic_runs(3 * PLANT_EVERY, seed=5))
    deep = "[" * 3000 + "]" * 3000  # PostgreSQL stores it; Python cannot parse it
    from neuralops.db import get_engine

    with get_engine(postgresql_url).begin() as conn:
        conn.exec_driver_sql(
            "UPDATE workflow_runs SET outputs = %s::jsonb WHERE run_id = 'syn-5-0000008'",
            (f'{{"deep": {deep}, "n": 1e400}}',),
        )
    inline = etl.export_runs(tmp_path / "inline.jsonl", full=True, batch_rows=9, workers=0)
    started = _pooled(monkeypatch)
    pooled = etl.export_runs(tmp_path / "pooled.jsonl", full=True, batch_rows=9, workers=2)
    assert len(started) == 2
    read = lambda name: [json.loads(x) for x in (tmp_path / name).read_text().splitlines()]  # noqa: E731
    assert read("pooled.jsonl") == read("inline.jsonl") == _reference_export(postgresql_url)
    assert pooled.quarantined == inline.quarantined and len(inline.quarantined) == 1
    assert pooled.redactions == inline.redactions and pooled.rows == inline.rows


def test_a_worker_loads_the_scanners_the_exporter_compiled(monkeypatch: pytest.MonkeyPatch) -> None:
    """The export's workers take the compiled trigger databases from the exporter: loaded, a
    database finds exactly what the one compiled here finds."""
    patterns = triggers(Redactor())
    assert patterns is not None
    data = "".join(json.dumps(text) + "\n" for text in CORPUS if text.isascii()).encode()
    compiled = compiled_scanners(TRIGGERS, patterns)
    assert set(compiled) == {TRIGGERS, patterns}
    expected = scanner(patterns).matches(data)
    assert len({trigger for trigger, _ in expected}) > len(TRIGGERS) // 2
    expected_text = scanner(TRIGGERS).matches(data)  # by the database compiled here

    monkeypatch.setattr(redaction, "_SCANNERS", {})  # a new process: nothing compiled yet

    def no_compiling(*_: Any, **__: Any) -> None:
        raise AssertionError("compiled again")

    monkeypatch.setattr(redaction.hyperscan, "Database", no_compiling)
    load_scanners(compiled)
    assert set(redaction._SCANNERS) == {TRIGGERS, patterns}
    assert scanner(patterns).matches(data) == expected
    assert scanner(TRIGGERS).matches(data) == expected_text
    assert Scanner(TRIGGERS, compiled[TRIGGERS]).matches(data) == expected_text
