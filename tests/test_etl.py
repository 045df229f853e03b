"""Export: incremental by watermark, batch boundaries, JSONL and Parquet, redaction, atomicity."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import polars as pl
import pytest
from sqlalchemy.engine import URL
from typer.testing import CliRunner

from neuralops import etl, runs
from neuralops.cli import app
from neuralops.errors import InvalidInput
from neuralops.redaction import Redactor
from neuralops.synthetic import PLANT_EVERY, planted, synthetic_runs


def seed(count: int, start: int = 0) -> list[str]:
    return runs.log_runs(synthetic_runs(count, start=start))


def run_ids(path: Path) -> list[str]:
    return [json.loads(line)["run_id"] for line in path.read_text().splitlines()]


def test_incremental_export_writes_each_change_once(database_url: URL, tmp_path: Path) -> None:
    seed(40)
    live = {**next(synthetic_runs(1, start=99)).model_dump(), "run_id": "live", "status": "running"}
    runs.log_run(live)  # still running: its writer will report how it ended
    first = etl.export_runs(tmp_path / "a.jsonl", batch_rows=7)
    assert first.rows == 41 and first.previous is None
    expected = sorted(f"syn-0-{n:07d}" for n in range(40))
    assert sorted(run_ids(tmp_path / "a.jsonl")) == ["live", *expected]

    assert etl.export_runs(tmp_path / "b.jsonl").rows == 0
    assert (tmp_path / "b.jsonl").read_text() == ""
    assert etl.count_pending() == 0

    seed(5, start=40)  # five new runs
    runs.log_run({**live, "status": "failed"})  # a change to an exported run
    assert etl.count_pending() == 6
    third = etl.export_runs(tmp_path / "c.jsonl", batch_rows=2)
    assert third.previous == first.watermark
    assert sorted(run_ids(tmp_path / "c.jsonl")) == ["live"] + [
        f"syn-0-{n:07d}" for n in range(40, 45)
    ]
    assert third.quarantined == []


def test_full_resets_and_since_slices_without_moving_the_watermark(
    database_url: URL, tmp_path: Path
) -> None:
    seed(10)
    etl.export_runs(tmp_path / "a.jsonl")
    mark = etl.read_watermark()
    assert etl.export_runs(tmp_path / "all.jsonl", full=True).rows == 10
    sliced = etl.export_runs(tmp_path / "s.jsonl", since=datetime.now(UTC) - timedelta(hours=1))
    assert sliced.rows == 10 and etl.read_watermark() == mark
    future = etl.export_runs(tmp_path / "f.jsonl", since=datetime.now(UTC) + timedelta(hours=1))
    assert future.rows == 0
    with pytest.raises(InvalidInput, match="choose one"):
        etl.export_runs(tmp_path / "x.jsonl", full=True, since=datetime.now(UTC))


def test_parquet_holds_the_same_runs(sqlite_url: URL, tmp_path: Path) -> None:
    seed(12)
    result = etl.export_runs(tmp_path / "runs.parquet", batch_rows=5)
    frame = pl.read_parquet(tmp_path / "runs.parquet")
    assert result.rows == 12 and frame.height == 12
    assert set(frame.columns) >= {"run_id", "wpk_id", "status", "inputs", "node_logs"}
    assert json.loads(frame["inputs"][0])["alert"]["alertname"]
    empty = etl.export_runs(tmp_path / "empty.parquet")
    assert empty.rows == 0 and pl.read_parquet(tmp_path / "empty.parquet").height == 0


def _copy_line(**fields: str) -> bytes:
    """A line as the COPY export reads it: the query's order, nested values as jsonb text."""
    values = {
        "run_id": '"r-1"', "wpk_id": '"w"', "status": '"failed"', "duration_ms": "7",
        "inputs": "{}", "outputs": "{}", "node_logs": "[]", "cluster": '"c"',
        "flow_run_id": "null", "created_at": '"2026-01-05T10:00:00+00:00"',
        "updated_at": '"2026-01-05T10:00:00+00:00"', "provenance": '"seed"', "verified": "false",
    } | fields  # fmt: skip
    return ("{" + ",".join(f'"{k}":{v}' for k, v in values.items()) + "}\n").encode()


def test_parquet_columns_keep_nested_json_as_written() -> None:
    """Nested fields are cut out of the lines, not decoded and written again: numbers keep
    their text, a bare string its quotes; non-ASCII before them does not shift the cut."""
    copied = [
        _copy_line(
            run_id='"r-\u00e9"', status='"caf\u00e9 \u20ac"', inputs='{"a": 1.50, "b": 1E+5}'
        ),
        _copy_line(inputs='"just text"', outputs="null", node_logs='[{"m": "x,\\"outputs\\":1"}]'),
        _copy_line(inputs='{"n": 123456789012345678901234567890}', cluster='",\\"inputs\\":"'),
    ]
    redacted = '{"run_id":"r-2","wpk_id":"w","status":"ok","duration_ms":1,"inputs":{"outputs":1},'
    redacted += '"outputs":{},"node_logs":[],"cluster":"c","flow_run_id":null,'
    redacted += '"created_at":"t","updated_at":"t","provenance":"api:x","verified":true}'
    record = json.loads(redacted) | {"run_id": "r-3", "inputs": {"k": ["v", 2.5]}}
    pieces = [etl._Lines(b"".join(copied), 3), redacted, record]
    frame = etl._parquet_columns(etl._json_lines(pieces, etl._copy_shaped))
    assert frame["inputs"].to_list() == [
        '{"a": 1.50, "b": 1E+5}',
        '"just text"',
        '{"n": 123456789012345678901234567890}',
        '{"outputs": 1}',
        '{"k": ["v", 2.5]}',
    ]
    assert frame["outputs"].to_list() == ["{}", "null", "{}", "{}", "{}"]
    assert json.loads(frame["node_logs"][1]) == [{"m": 'x,"outputs":1'}]
    assert frame["run_id"].to_list() == ["r-é", "r-1", "r-1", "r-2", "r-3"]
    assert frame["status"][0] == "caf\u00e9 \u20ac" and frame["cluster"][2] == ',"inputs":'
    assert frame["verified"].to_list() == [False, False, False, True, True]
    assert frame["duration_ms"][0] == 7 and frame["flow_run_id"][0] is None


def test_parquet_columns_of_a_batch_polars_cannot_parse() -> None:
    """A number past polars' range (jsonb keeps any numeric): Python's json decodes it."""
    huge = "1" + "0" * 400
    frame = etl._parquet_columns(_copy_line(inputs=f'{{"n": {huge}}}') + _copy_line())
    assert [json.loads(text) for text in frame["inputs"]] == [{"n": int(huge)}, {}]
    assert frame["run_id"].to_list() == ["r-1", "r-1"]


def test_no_planted_secret_leaves_the_database(database_url: URL, tmp_path: Path) -> None:
    seed(3 * PLANT_EVERY)
    result = etl.export_runs(tmp_path / "runs.jsonl")
    text = (tmp_path / "runs.jsonl").read_text()
    for n in range(0, 3 * PLANT_EVERY, PLANT_EVERY):
        row = runs.get_run(f"syn-0-{n:07d}")
        stored = json.dumps([row.inputs, row.outputs, row.node_logs])
        for kind, value in planted(0, n).items():
            for piece in value.split("\n")[1:-1] or [value]:  # a key block: its body lines
                assert json.dumps(piece)[1:-1] in stored, f"{kind} was not planted"
                assert piece not in text, f"{kind} survived the export: {piece}"
    assert sum(result.redactions.values()) > 0


def test_a_failure_leaves_no_file_and_the_watermark_where_it_was(
    sqlite_url: URL, tmp_path: Path
) -> None:
    seed(10)

    class Broken(Redactor):
        def record(self, run):  # a real redactor that fails on the sixth record
            self.seen = getattr(self, "seen", 0) + 1
            if self.seen == 6:
                raise RuntimeError("disk full")
            return super().record(run)

    with pytest.raises(RuntimeError, match="disk full"):
        etl.export_runs(tmp_path / "runs.jsonl", redactor=Broken(), batch_rows=3)
    assert list(tmp_path.iterdir()) == [tmp_path / "data"]
    assert etl.read_watermark() is None
    with pytest.raises(InvalidInput, match=r"\.jsonl, \.ndjson or \.parquet"):
        etl.export_runs(tmp_path / "runs.csv")


def test_cli_seed_export_and_again(sqlite_url: URL, tmp_path: Path) -> None:
    runner = CliRunner()
    seeded = runner.invoke(app, ["seed", "runs", "--count", "30", "--batch", "100"])
    assert seeded.exit_code == 0, seeded.output
    assert "30 runs seeded (syn-0-0000000 .. syn-0-0000029)" in seeded.output
    out = str(tmp_path / "runs.jsonl")
    first = runner.invoke(app, ["etl", "export", "--out", out])
    assert first.exit_code == 0, first.output
    assert "30 runs exported" in first.output and "redacted" in first.output
    again = runner.invoke(app, ["etl", "export", "--out", out])
    assert "0 runs exported" in again.output


def test_no_planted_secret_reaches_the_vectors(sqlite_url: URL, tmp_path: Path) -> None:
    import lancedb

    from neuralops.embedding import HashingEmbedder
    from neuralops.vectorize import read_jsonl, vectorize_records
    from neuralops.vectorstore import VectorStore

    seed(2 * PLANT_EVERY)
    etl.export_runs(tmp_path / "runs.jsonl")
    store = VectorStore(str(tmp_path / "lancedb"))
    result = vectorize_records(read_jsonl(tmp_path / "runs.jsonl"), store, HashingEmbedder())
    assert result.written == 2 * PLANT_EVERY
    stored = lancedb.connect(str(tmp_path / "lancedb")).open_table("runs").to_arrow()
    text = json.dumps(stored.drop_columns(["vector"]).to_pylist(), default=str)
    for n in range(0, 2 * PLANT_EVERY, PLANT_EVERY):
        for kind, value in planted(0, n).items():
            for piece in value.split("\n")[1:-1] or [value]:
                assert piece not in text, f"{kind} reached LanceDB"


# --- bad stored rows are quarantined (issue 15) ---------------------------------------------


def _corrupt(url: URL, run_id: str, column: str, sql_value: str) -> None:
    """Write a value the run logger refuses today straight into a stored row (a row written
    before the fix, or by another tool)."""
    import sqlalchemy as sa

    from neuralops.db import get_engine

    with get_engine(url).begin() as conn:
        conn.execute(
            sa.text(f"UPDATE workflow_runs SET {column} = {sql_value} WHERE run_id = :id"),
            {"id": run_id},
        )


def test_an_export_quarantines_bad_rows_and_exports_the_rest(
    database_url: URL, tmp_path: Path
) -> None:
    seed(12)
    postgres = database_url.get_backend_name() == "postgresql"
    deep = "[" * 3000 + "]" * 3000  # PostgreSQL stores it; Python cannot parse it
    jsonb = "::jsonb" if postgres else ""
    _corrupt(database_url, "syn-0-0000002", "outputs", f"'{{\"deep\": {deep}}}'{jsonb}")
    bad = {"syn-0-0000002": "outputs: nested too deeply"}
    if not postgres:  # what only SQLite can hold: PostgreSQL refuses these on write
        _corrupt(database_url, "syn-0-0000005", "inputs", '\'{"note": "\\ud800"}\'')
        _corrupt(database_url, "syn-0-0000007", "node_logs", "'[{not json'")
        _corrupt(database_url, "syn-0-0000009", "cluster", "CAST(X'FF00FE' AS TEXT)")
        bad |= {
            "syn-0-0000005": "inputs.note: text that cannot be encoded (a lone surrogate)",
            "syn-0-0000007": "node_logs: not valid JSON",
            "syn-0-0000009": "cluster: not valid UTF-8",
        }
    for kind in ("jsonl", "parquet"):
        result = etl.export_runs(tmp_path / f"runs.{kind}", full=True, batch_rows=4)
        assert {q.run_id: q.reason for q in result.quarantined} == bad
        assert result.rows == 12 - len(bad)
    exported = run_ids(tmp_path / "runs.jsonl")
    assert sorted(exported) == sorted(
        f"syn-0-{n:07d}" for n in range(12) if f"syn-0-{n:07d}" not in bad
    )
    assert "ud800" not in (tmp_path / "runs.jsonl").read_text()
    # The watermark moved past them: the next export neither meets nor repeats them.
    assert etl.count_pending() == 0
    again = etl.export_runs(tmp_path / "again.jsonl")
    assert (again.rows, again.quarantined) == (0, [])


def test_cli_names_what_it_quarantined(sqlite_url: URL, tmp_path: Path) -> None:
    seed(5)
    _corrupt(sqlite_url, "syn-0-0000001", "inputs", '\'{"note": "\\udfff secret"}\'')
    runner = CliRunner()
    out = str(tmp_path / "runs.jsonl")
    exported = runner.invoke(app, ["etl", "export", "--out", out])
    assert exported.exit_code == 0, exported.output
    assert "4 runs exported" in exported.output
    assert "quarantined 1 run that could not be exported" in exported.output
    assert "syn-0-0000001 (inputs.note: text that cannot be encoded" in exported.output
    assert "secret" not in exported.output
    # A bad line in the file given to vectorize: quarantined too, the rest embedded.
    with open(out, "a") as handle:
        handle.write('{"run_id": "x-1", "outputs": {"error": "\\ud800"}}\n{broken\n')
    vectorized = runner.invoke(app, ["etl", "vectorize", "--in", out, "--embedder", "hashing"])
    assert vectorized.exit_code == 0, vectorized.output
    assert "4 vectors written" in vectorized.output
    assert "quarantined 2" in vectorized.output
    assert "x-1 (outputs.error: text that cannot be encoded" in vectorized.output
    assert "line 6 (not valid JSON" in vectorized.output


def test_each_copy_slice_streams_in_index_order(postgresql_url: URL) -> None:
    """A slice is read along the (updated_at, id) index from its first row, not sorted first:
    even where updated_at is out of step with the rows' places on disk, as after updates."""
    from neuralops.db import get_engine

    seed(200)
    with get_engine(postgresql_url).begin() as conn:
        # each run's updated_at moved by a different amount: the order on disk is lost
        conn.exec_driver_sql(
            "UPDATE workflow_runs SET updated_at = updated_at "
            "+ (('x' || substr(md5(run_id), 1, 6))::bit(24)::int * interval '1 second')"
        )
        conn.exec_driver_sql("ANALYZE workflow_runs")
        conn.exec_driver_sql(etl._STREAMING)
        where = "(updated_at, id) > (%s, %s) AND (updated_at, id) <= (%s, %s)"
        low, high = datetime(2000, 1, 1, tzinfo=UTC), datetime(2100, 1, 1, tzinfo=UTC)
        zero, top = "00000000-0000-0000-0000-000000000000", "ffffffff-ffff-ffff-ffff-ffffffffffff"
        plan = "\n".join(
            row[0]
            for row in conn.exec_driver_sql(
                "EXPLAIN " + etl._SLICE.format(where=where), (low, zero, high, top)
            )
        )
    assert "Index Scan using ix_workflow_runs_updated_at_id" in plan, plan
    assert "Sort" not in plan, plan


def test_the_export_reads_its_slices_with_sorting_off(postgresql_url: URL, tmp_path: Path) -> None:
    """The setting the plan above rests on is the export's own: set in the transaction its
    COPYs run in, before any of them, and gone with it."""
    from sqlalchemy import event

    from neuralops.db import get_engine

    seed(5)
    engine = get_engine(postgresql_url)
    seen: list[tuple[int, str]] = []

    def record(conn: Any, _cursor: Any, statement: str, *_: Any) -> None:
        seen.append((id(conn.connection.dbapi_connection), statement))

    event.listen(engine, "before_cursor_execute", record)
    try:
        assert etl.export_runs(tmp_path / "runs.jsonl", full=True).rows == 5
    finally:
        event.remove(engine, "before_cursor_execute", record)
    ours = [connection for connection, statement in seen if statement == etl._STREAMING]
    assert len(ours) == 1
    on_it = [statement for connection, statement in seen if connection == ours[0]]
    assert on_it[0] == etl._STREAMING  # first thing on the reader's connection
    assert "max(workflow_runs.updated_at)" in on_it[1]  # then the transaction's first read
    with engine.connect() as conn:  # SET LOCAL: no other transaction sees it
        assert conn.exec_driver_sql("SHOW enable_sort").scalar() == "on"
