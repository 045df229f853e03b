"""Export: incremental by watermark, batch boundaries, JSONL and Parquet, redaction, atomicity."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

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
    first = etl.export_runs(tmp_path / "a.jsonl", batch_rows=7)
    assert first.rows == 40 and first.previous is None
    assert sorted(run_ids(tmp_path / "a.jsonl")) == sorted(f"syn-0-{n:07d}" for n in range(40))

    assert etl.export_runs(tmp_path / "b.jsonl").rows == 0
    assert (tmp_path / "b.jsonl").read_text() == ""
    assert etl.count_pending() == 0

    seed(5, start=40)  # five new runs
    changed = next(synthetic_runs(1, start=3)).model_copy(update={"status": "failed"})
    runs.log_run(changed)  # a change to an exported run
    assert etl.count_pending() == 6
    third = etl.export_runs(tmp_path / "c.jsonl", batch_rows=2)
    assert third.previous == first.watermark
    assert sorted(run_ids(tmp_path / "c.jsonl")) == ["syn-0-0000003"] + [
        f"syn-0-{n:07d}" for n in range(40, 45)
    ]


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
