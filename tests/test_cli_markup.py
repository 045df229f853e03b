"""The CLI prints data as written: a regex, a path, a label, a parameter or an audit actor with
Rich markup in it (``[bold]``, ``[a-z0-9]``, a stray ``[/]``) neither styles the line, loses its
brackets, nor raises MarkupError."""

from __future__ import annotations

import os
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import yaml
from sqlalchemy.engine import URL
from typer.testing import CliRunner

from neuralops import incidents, registry, signals
from neuralops.cli import app

MARKUP = "[bold]x[/bold] [/] [red]"  # [/] alone makes Rich raise MarkupError
PATTERN = "^[a-z0-9](?:[a-z0-9-]{0,62}[a-z0-9])?$"  # the playbook id pattern


def bracketed(root: Path, name: str) -> Path:
    """``root/[bold]x[/]<name>``: a folder ``[bold]x[`` holding ``]<name>``, so the path's text
    has a stray ``[/]`` (a file name alone cannot hold a slash)."""
    folder = root / "[bold]x["
    folder.mkdir(exist_ok=True)
    return folder / f"]{name}"


def invoke(*args: str) -> str:
    result = CliRunner().invoke(app, list(args))
    assert result.exit_code == 0, result.output
    assert result.exception is None
    return result.output


def test_a_pattern_error_prints_the_pattern_verbatim(sqlite_url: URL, tmp_path: Path) -> None:
    bad = bracketed(tmp_path, "bad.yaml")
    bad.write_text(yaml.safe_dump({"id": "Bad_Id", "version": "1.0.0"}))
    result = subprocess.run(
        [sys.executable, "-m", "neuralops", "playbook", "add", str(bad)],
        capture_output=True,
        text=True,
        env=os.environ.copy(),
        timeout=60,
    )
    assert result.returncode == 2, result.stderr
    assert f"error: {bad}: id: String should match pattern '{PATTERN}'" in result.stderr
    assert "Traceback" not in result.stderr


def test_titles_alert_rules_and_hints_print_verbatim(
    sqlite_url: URL, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("COLUMNS", "220")  # wide enough for every column, title included
    manifest = yaml.safe_load((registry.catalogue_dir() / "restart-deployment.yaml").read_text())
    manifest |= {"id": "marked-up", "title": f"Restart {MARKUP}"}
    (tmp_path / "marked-up.yaml").write_text(yaml.safe_dump(manifest))
    assert "marked-up" in invoke("playbook", "add", str(tmp_path / "marked-up.yaml"))
    assert f"Restart {MARKUP}" in invoke("playbook", "list")

    base = datetime(2026, 11, 23, 12, 0, tzinfo=UTC)
    alert = signals.SignalIn(
        rule="KubePodCrashLooping",  # as POST /alerts stores an alertname
        query="q",
        labels={"pod": "p"},
        value=1.0,
        score=0.9,
        z=None,
        method="alertmanager",
        hint=f"{MARKUP} {PATTERN}",
        window_start=base,
        window_end=base + timedelta(minutes=1),
        fingerprint=signals.fingerprint("KubePodCrashLooping", {"pod": "p"}),
    )
    signals.record_signals([alert], {})
    listed = invoke("signals", "list", "--rule", "KubePodCrashLooping")
    assert "KubePodCrashLooping" in listed and f"{MARKUP} {PATTERN}" in listed


def test_incident_values_and_audit_lines_print_verbatim(sqlite_url: URL) -> None:
    incident = incidents.create(
        signal_id=None,
        playbook_id="restart-deployment",
        recommendations=[],
        parameters={"deployment": MARKUP},
        actor=f"cli:{MARKUP}",
    )
    shown = invoke("incidents", "show", str(incident.id))
    assert f'"deployment": "{MARKUP}"' in shown  # the parameters line
    assert f"cli:{MARKUP}: incident.suggested" in shown  # the audit line


def test_detect_file_names_an_output_path_with_brackets(tmp_path: Path) -> None:
    source = tmp_path / "in.csv"
    start = datetime(2026, 1, 1, tzinfo=UTC)
    rows = [f"{(start + timedelta(minutes=n)).isoformat()},{n % 7}" for n in range(40)]
    source.write_text("timestamp,value\n" + "\n".join(rows) + "\n")
    target = bracketed(tmp_path, "scores.csv")
    output = invoke("detect-file", str(source), str(target), "--method", "zscore")
    assert f"→ {target}" in output.replace("\n", "") and target.is_file()


def test_vectorize_prints_its_warning_and_wait_message_verbatim(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The embedder's warning and the wait for another vectorize (which names the store, a
    path that may hold brackets) are data, not markup."""
    from neuralops import embedding
    from neuralops.errors import Conflict
    from neuralops.settings import get_settings
    from neuralops.vectorize import vectorize_lock
    from neuralops.vectorstore import VectorStore

    store = bracketed(tmp_path, "vectors")
    monkeypatch.setenv("LANCEDB_URI", str(store))
    get_settings.cache_clear()
    monkeypatch.setattr(
        embedding,
        "load_embedder",
        lambda kind: (embedding.HashingEmbedder(), f"no model: {MARKUP}"),
    )
    exported = tmp_path / "runs.jsonl"
    exported.write_text("")
    with vectorize_lock(VectorStore(str(store))):  # another vectorize holds the store
        result = CliRunner().invoke(
            app, ["etl", "vectorize", "--in", str(exported), "--lock-wait", "0.3"]
        )
    assert isinstance(result.exception, Conflict), result.output
    assert f"warning: no model: {MARKUP}" in result.stderr
    assert f"waiting for another vectorize of {store}" in result.stderr.replace("\n", "")
