"""The neuralops CLI: db, playbook add|list|show|runs, and errors an operator can act on."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from sqlalchemy.engine import URL
from typer.testing import CliRunner

from neuralops import registry, runs
from neuralops.cli import app

runner = CliRunner()


def invoke(*args: str):
    result = runner.invoke(app, list(args))
    assert result.exit_code == 0, result.output
    return result.output


def neuralops(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    """The real console entry point, in a subprocess, as an operator runs it."""
    return subprocess.run(
        [sys.executable, "-m", "neuralops", *args],
        capture_output=True,
        text=True,
        env={**os.environ, **(env or {})},
        timeout=60,
    )


def test_db_upgrade_is_idempotent(tmp_path: Path) -> None:
    assert "revision 0008 (was empty)" in invoke("db", "upgrade")
    assert "(already up to date)" in invoke("db", "upgrade")
    assert "applied: 0008; head: 0008" in invoke("db", "current")


def test_playbook_add_list_show(database_url: URL) -> None:
    added = invoke("playbook", "add", str(registry.catalogue_dir()))
    assert "restart-deployment" in added and "added" in added
    assert "unchanged" in invoke("playbook", "add", str(registry.catalogue_dir()))
    listing = invoke("playbook", "list")
    assert "raise-memory-limit" in listing and "org-admin" in listing
    shown = invoke("playbook", "show", "raise-memory-limit")
    manifest = yaml.safe_load(shown[shown.index("\nid: ") :])
    assert manifest["id"] == "raise-memory-limit" and manifest["steps"]


def test_playbook_runs_pages(database_url: URL) -> None:
    registry.add_playbooks(registry.load_manifests([registry.catalogue_dir()]))
    runs.log_runs(
        [
            {
                "wpk_id": "uncordon-node",
                "run_id": f"r-{n}",
                "status": "succeeded",
                "duration_ms": 1000 * n,
            }
            for n in range(5)
        ]
    )
    output = invoke("playbook", "runs", "uncordon-node", "--limit", "2", "--page", "2")
    assert "page 2 of 3 (5 runs); next: --page 3" in output
    assert output.count("r-") == 2


def test_commands_on_an_unmigrated_database_say_how_to_fix_it(tmp_path: Path) -> None:
    result = neuralops("playbook", "list")
    assert result.returncode == 2
    assert "run `neuralops db upgrade`" in result.stderr
    assert "Traceback" not in result.stderr


def test_sqlite_is_announced_once_on_stderr(tmp_path: Path) -> None:
    result = neuralops("db", "upgrade")
    assert result.returncode == 0
    assert result.stderr.count("POSTGRES_DSN is not set: using SQLite") == 1
    assert "POSTGRES_DSN" not in result.stdout


def test_invalid_manifest_exits_2_naming_file_and_field(tmp_path: Path) -> None:
    invoke("db", "upgrade")
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump({"id": "Bad Id", "version": "1.0.0"}))
    result = neuralops("playbook", "add", str(bad))
    assert result.returncode == 2
    assert f"{bad}: id:" in result.stderr and "steps: Field required" in result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize("name", ["[a-z0-9]", "[/a-z]", "[bold]x[/bold]"])
def test_error_messages_print_verbatim_not_as_rich_markup(tmp_path: Path, name: str) -> None:
    invoke("db", "upgrade")
    missing = tmp_path / name / "m.yaml"  # the error names the path, brackets and all
    result = neuralops("playbook", "add", str(missing))
    assert result.returncode == 2
    assert f"error: {missing}: no such file or directory" in result.stderr
    assert "Traceback" not in result.stderr and "MarkupError" not in result.stderr


def test_unreachable_postgres_names_the_fix_without_the_password(tmp_path: Path) -> None:
    dsn = "postgresql://ops:hunter2@127.0.0.1:1/neuralops"
    result = neuralops("db", "upgrade", env={"POSTGRES_DSN": dsn})
    assert result.returncode == 2
    assert "check POSTGRES_DSN" in result.stderr
    assert "hunter2" not in result.stderr + result.stdout


@pytest.mark.parametrize("command", [["playbook", "show", "nope"], ["playbook", "runs", "nope"]])
def test_unknown_playbook_exits_2(database_url: URL, command: list[str]) -> None:
    result = neuralops(*command)
    assert result.returncode == 2 and "'nope' not found" in result.stderr


# --- API tokens and where the API listens (issue 15) ------------------------------------------


def test_token_issue_dev_scope_prints_an_api_token_the_api_accepts(sqlite_url: URL) -> None:
    from neuralops import api_auth
    from neuralops.settings import get_settings

    result = runner.invoke(
        app,
        ["token", "issue-dev", "--scope", "runs:write", "--scope", "recommend", "--subject", "ci"],
    )
    assert result.exit_code == 0, result.output
    token = result.stdout.strip().splitlines()[-1]
    assert "DEV ONLY API token" in result.stderr
    principal = api_auth.verify_api_token(token, keys=api_auth.keys_from_settings(get_settings()))
    assert principal.subject == "ci" and principal.scopes == {"runs:write", "recommend"}


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ([], "give either --scope"),
        (["--scope", "runs:write", "--incident", "i-1", "--approver", "a"], "give either"),
        (["--scope", "root"], "'root' is not a scope"),
        (["--scope", "runs:write", "--approver", "a"], "--approver and --role"),
        (["--incident", "i-1"], "--approver"),
        (["--incident", "i-1", "--approver", "a", "--subject", "s"], "--subject is for API"),
    ],
)
def test_token_issue_dev_takes_one_kind_of_token(args: list[str], message: str) -> None:
    result = neuralops("token", "issue-dev", *args)
    assert result.returncode == 2, result.stdout + result.stderr
    assert message in result.stderr and "Traceback" not in result.stderr


def test_api_refuses_a_public_host_without_auth(sqlite_url: URL) -> None:
    result = neuralops("api", "--host", "0.0.0.0")
    assert result.returncode == 2
    [line] = [x for x in result.stderr.splitlines() if x.startswith("error:")]
    assert "refusing to serve the API on 0.0.0.0" in line
    assert "NEURALOPS_API_PUBLIC_KEY or NEURALOPS_API_JWKS_URL" in line


def test_make_run_prints_a_dev_api_token(sqlite_url: URL, capsys: pytest.CaptureFixture) -> None:
    from neuralops import api_auth
    from neuralops.cli import _print_api_access
    from neuralops.settings import get_settings

    _print_api_access(get_settings())
    printed = capsys.readouterr().out
    assert "DEV ONLY" in printed and "neuralops token issue-dev --scope" in printed
    [token] = [
        line.removeprefix("API_TOKEN=") for line in printed.splitlines() if "API_TOKEN=" in line
    ]
    keys = api_auth.keys_from_settings(get_settings())
    principal = api_auth.verify_api_token(token, keys=keys)
    assert principal.scopes == {"runs:read", "signals:read", "recommend"}


def test_api_with_an_unreadable_key_exits_2_naming_the_setting(
    sqlite_url: URL, tmp_path: Path
) -> None:
    missing = tmp_path / "idp.pem"
    result = neuralops("api", "--host", "0.0.0.0", env={"NEURALOPS_API_PUBLIC_KEY": str(missing)})
    assert result.returncode == 2
    assert "NEURALOPS_API_PUBLIC_KEY" in result.stderr and "Traceback" not in result.stderr


@pytest.mark.parametrize("since", ["0001-01-01T00:00:00+14:00", "9999999999h"])
def test_signals_since_out_of_range_is_a_clear_error(database_url: URL, since: str) -> None:
    result = runner.invoke(app, ["signals", "list", "--since", since])
    assert result.exit_code == 2, result.output
    assert "out of range" in result.output and "Traceback" not in result.output
