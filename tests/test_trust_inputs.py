"""Trust boundary (issue 15), the inputs part: each hole replayed as an attacker would, through
the real console script, and shown refused with nothing written; and every secret kind that
redaction used to miss, planted in a stored run, kept out of the export.

(To be merged into tests/test_trust.py.)
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import stat
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import _admin, _admin_url, _postgres_reachable, skip_or_fail
from sqlalchemy.engine import URL

from neuralops import db, etl, registry, runs

NEURALOPS = str(Path(sys.executable).with_name("neuralops"))  # the installed console script


def neuralops(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [NEURALOPS, *args],
        capture_output=True,
        text=True,
        env={**os.environ, **(env or {})},
        timeout=120,
    )


def refused(result: subprocess.CompletedProcess, *must_say: str) -> str:
    """rc 2, one line of error (after the SQLite notice), no traceback; returns the line."""
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    lines = [line for line in result.stderr.splitlines() if "POSTGRES_DSN is not set" not in line]
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    for text in must_say:
        assert text in lines[0], lines[0]
    return lines[0]


def snapshot(folder: Path) -> dict[str, tuple[int, bytes | str]]:
    """Every entry of ``folder``: its kind and its bytes (or a link's target)."""
    found: dict[str, tuple[int, bytes | str]] = {}
    for entry in sorted(folder.iterdir()):
        mode = os.lstat(entry).st_mode
        if stat.S_ISLNK(mode):
            found[entry.name] = (stat.S_IFMT(mode), os.readlink(entry))
        elif stat.S_ISREG(mode):
            found[entry.name] = (stat.S_IFMT(mode), entry.read_bytes())
        else:
            found[entry.name] = (stat.S_IFMT(mode), b"")
    return found


CSV = "timestamp,value\n" + "".join(f"2024-01-01 00:{m:02d}:00,{m % 7}\n" for m in range(60))


# ----------------------------------------------------------------- detect-file: the output


@pytest.mark.slow
@pytest.mark.parametrize(
    "attack", ["/dev/null", "fifo", "symlink to a victim", "the input", "a hard link to the input"]
)
def test_detect_file_never_replaces_what_is_not_its_own_regular_output(
    tmp_path: Path, attack: str
) -> None:
    work = tmp_path / "work"
    work.mkdir()
    source = work / "in.csv"
    source.write_text(CSV)
    victim = tmp_path / "victim.conf"
    victim.write_text("do not touch\n")
    if attack == "/dev/null":
        target, expect = Path("/dev/null"), "is a character device"
    elif attack == "fifo":
        target, expect = work / "out.csv", "is a FIFO"
        os.mkfifo(target)
    elif attack == "symlink to a victim":
        target, expect = work / "out.csv", "is a symbolic link"
        target.symlink_to(victim)
    elif attack == "the input":
        target, expect = source, "is the input file"
    else:
        target, expect = work / "out.csv", "is the input file"
        os.link(source, target)
    before = snapshot(work)
    line = refused(neuralops("detect-file", str(source), str(target)), "OUTPUT_CSV", expect)
    assert "name a new file" in line or "name another file" in line  # the fix
    assert snapshot(work) == before  # nothing written, renamed or left behind
    assert victim.read_text() == "do not touch\n"
    assert stat.S_ISCHR(os.stat("/dev/null").st_mode)


@pytest.mark.slow
def test_detect_file_through_a_symlinked_input_does_not_overwrite_it(tmp_path: Path) -> None:
    source = tmp_path / "in.csv"
    source.write_text(CSV)
    (tmp_path / "alias.csv").symlink_to(source)
    refused(neuralops("detect-file", str(tmp_path / "alias.csv"), str(source)), "is the input file")
    assert source.read_text() == CSV


@pytest.mark.slow
def test_detect_file_non_utf8_input_is_one_line_naming_line_and_byte(tmp_path: Path) -> None:
    source = tmp_path / "latin1.csv"
    source.write_bytes(CSV.encode() + "2024-01-01 01:00:00,caf\xe9\n".encode("latin-1"))
    line = refused(
        neuralops("detect-file", str(source), str(tmp_path / "out.csv")),
        str(source),
        "line 62",
        f"byte {len(CSV.encode()) + 23} is not UTF-8",
    )
    assert "caf" not in line
    assert sorted(p.name for p in tmp_path.iterdir()) == ["latin1.csv"]


# -------------------------------------------------------------- db upgrade, several at once


@contextlib.contextmanager
def _empty_database(kind: str, tmp_path: Path) -> Iterator[tuple[URL, dict[str, str]]]:
    if kind == "sqlite":
        data = tmp_path / "data"
        url = URL.create("sqlite+pysqlite", database=str(data / "neuralops.db"))
        yield url, {"NEURALOPS_DATA_DIR": str(data)}
        return
    reason = _postgres_reachable()
    if reason:
        skip_or_fail(reason)
    name = f"neuralops_trust_{uuid.uuid4().hex[:10]}"
    _admin(f"CREATE DATABASE {name}")
    url = _admin_url().set(database=name)
    try:
        yield url, {"POSTGRES_DSN": url.render_as_string(hide_password=False)}
    finally:
        db.dispose_engines()
        _admin(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["sqlite", "postgresql"])
def test_four_db_upgrades_at_once_all_succeed(kind: str, tmp_path: Path) -> None:
    with _empty_database(kind, tmp_path) as (url, env):
        environ = {k: v for k, v in os.environ.items() if k != "POSTGRES_DSN"}
        procs = [
            subprocess.Popen(
                [NEURALOPS, "db", "upgrade"],
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
                env={**environ, **env},
            )
            for _ in range(4)
        ]
        results = [(p.wait(timeout=120), *p.communicate()) for p in procs]
        assert [rc for rc, _, _ in results] == [0, 0, 0, 0], [e for _, _, e in results]
        assert not any("Traceback" in stderr for _, _, stderr in results)
        assert db.current_revision(url) == db.head_revision()


# --------------------------------------------------------- playbook add never echoes a file


SECRET_LINE = "db_password: hunter2-ZQX\nroot:x:0:0:hunter2-ZQX:/root: [\n"


@pytest.mark.slow
@pytest.mark.parametrize(
    "target", ["/etc/passwd", "a broken yaml with a secret", "a text file", "a yaml list"]
)
def test_playbook_add_on_a_symlink_names_the_file_never_its_content(
    tmp_path: Path, target: str
) -> None:
    assert neuralops("db", "upgrade").returncode == 0
    link = tmp_path / "manifest.yaml"
    if target == "/etc/passwd":
        if not Path("/etc/passwd").is_file():
            pytest.skip("no /etc/passwd here")
        link.symlink_to("/etc/passwd")
        content = Path("/etc/passwd").read_text(errors="replace").splitlines()
    else:
        body = {
            "a broken yaml with a secret": SECRET_LINE,
            "a text file": "the password is hunter2-ZQX\nnothing else\n",
            "a yaml list": "- hunter2-ZQX\n- token: hunter2-ZQX\n",
        }[target]
        (tmp_path / "other.txt").write_text(body)
        link.symlink_to(tmp_path / "other.txt")
        content = body.splitlines()
    line = refused(neuralops("playbook", "add", str(link)), str(link))
    assert "hunter2" not in line
    for text in content:  # not one line of the file, nor a piece of one
        for piece in text.split(":"):
            if len(piece) >= 6:
                assert piece not in line.removeprefix(f"error: {link}"), piece
    assert registry.list_playbooks() == []  # nothing registered


@pytest.mark.slow
def test_a_broken_kubeconfig_is_located_never_quoted(tmp_path: Path) -> None:
    assert neuralops("db", "upgrade").returncode == 0
    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text("users:\n- name: admin\n  user: {token: hunter2-ZQX\n")
    install = ["connector", "install", "--cluster", "c1", "--kubeconfig", str(kubeconfig)]
    line = refused(
        neuralops(*install, "--vault-token", "unused"), "--kubeconfig", "not valid YAML at line"
    )
    assert "hunter2" not in line and "token" not in line


@pytest.mark.slow
def test_error_messages_with_brackets_print_verbatim(tmp_path: Path) -> None:
    assert neuralops("db", "upgrade").returncode == 0
    missing = tmp_path / "[a-z0-9]" / "[/b]" / "m.yaml"
    refused(neuralops("playbook", "add", str(missing)), f"{missing}: no such file")


# ------------------------------------------------ redaction: the kinds it used to miss


def _value(kind: str, where: str) -> str:
    digest = hashlib.sha256(f"{kind}/{where}".encode()).hexdigest()
    # mixed case and digits, as real tokens are
    return "".join(c.upper() if i % 3 == 0 else c for i, c in enumerate(digest)) + "Zq9"


def _digits(kind: str, where: str) -> str:
    return str(int(hashlib.sha256(f"{kind}/{where}#".encode()).hexdigest(), 16))[:13]


def plants(where: str) -> list[tuple[str, str]]:
    """(text to plant, the secret that must not be exported) for every kind issue 15 names."""
    v = {kind: _value(kind, where) for kind in ("gh", "pat", "slack", "sk", "pw", "p", "phrase")}
    slack = f"xoxb-{_digits('s1', where)}-{_digits('s2', where)}-{v['slack'][:24]}"
    return [
        (f"cloned with ghp_{v['gh'][:36]}", f"ghp_{v['gh'][:36]}"),
        (f"pushed with github_pat_{v['pat'][:22]}_{v['pat'][:59]} to origin", v["pat"][:22]),
        (f"notify {slack} done", slack),
        (f"embedded with sk-proj-{v['sk'][:48]} (ada)", v["sk"][:48]),
        (f"pg_dump --password {v['pw'][:14]} -h db", v["pw"][:14]),
        (f"mysql -u root -p{v['p'][:14]} app", v["p"][:14]),
        (f"mysql -u root -p {v['p'][14:28]} app", v["p"][14:28]),
        (f"the password is {v['phrase'][:12]}.", v["phrase"][:12]),
        (f"gpg --batch --passphrase {v['phrase'][12:26]}", v["phrase"][12:26]),
        (f'{{"passphrase": "{v["phrase"][26:40]}"}}', v["phrase"][26:40]),
    ]


def test_no_missed_secret_kind_reaches_the_export(database_url: URL, tmp_path: Path) -> None:
    must_go: list[str] = []
    stored = []
    for n in range(3):
        inputs_plants, outputs_plants, logs_plants = (
            plants(f"in{n}"),
            plants(f"out{n}"),
            plants(f"log{n}"),
        )
        passphrases = {
            "in": f"Pp{_value('key', f'in{n}')[:16]}",
            "out": f"Pp{_value('key', f'out{n}')[:16]}",
            "deep": f"Pp{_value('key', f'deep{n}')[:16]}",
        }
        must_go += [s for _, s in inputs_plants + outputs_plants + logs_plants]
        must_go += list(passphrases.values())
        stored.append(
            {
                "wpk_id": "restart-deployment",
                "run_id": f"trust-redact-{n}",
                "status": "succeeded",
                "duration_ms": 1200,
                "inputs": {
                    "notes": [text for text, _ in inputs_plants],
                    "passphrase": passphrases["in"],
                    "gpg": {"keyring": {"GPG_PASSPHRASE": passphrases["deep"]}},
                },
                "outputs": {f"step{i}": text for i, (text, _) in enumerate(outputs_plants)}
                | {"Passphrase": passphrases["out"]},
                "node_logs": [
                    {"name": f"step{i}", "status": "Completed", "message": text}
                    for i, (text, _) in enumerate(logs_plants)
                ],
            }
        )
    runs.log_runs(stored, url=database_url)
    out = tmp_path / "export.jsonl"
    result = etl.export_runs(out, url=database_url, full=True)
    assert result.rows == 3
    exported = out.read_text()
    assert len(exported.splitlines()) == 3
    leaked = [secret for secret in must_go if secret in exported]
    assert leaked == []
    records = [json.loads(line) for line in exported.splitlines()]
    assert all(r["node_logs"] and r["outputs"] for r in records)  # redacted, not dropped
    assert result.redactions.get("<API_TOKEN>", 0) >= 3 * 3 * 4
    assert result.redactions.get("<SECRET>", 0) >= 3 * 3 * 6
