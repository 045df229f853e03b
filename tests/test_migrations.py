"""Migrations create exactly the models, re-run as no-ops, and make audit_logs append-only."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from conftest import _admin, _admin_url, _postgres_reachable, skip_or_fail
from sqlalchemy.engine import URL

from neuralops import db
from neuralops.db.models import Base
from neuralops.errors import ConfigError


def test_upgrade_is_idempotent(database_url: URL) -> None:
    head = db.head_revision()
    assert db.current_revision(database_url) == head
    assert db.upgrade(database_url) == (head, head)


def test_fresh_sqlite_upgrade_from_nothing(tmp_path) -> None:
    url = URL.create("sqlite+pysqlite", database=str(tmp_path / "fresh.db"))
    assert db.upgrade(url) == (None, db.head_revision())


def test_schema_matches_models(database_url: URL) -> None:
    with db.get_engine(database_url).connect() as conn:
        context = MigrationContext.configure(conn, opts={"compare_type": True})
        assert compare_metadata(context, Base.metadata) == []


def test_json_columns_are_jsonb_on_postgresql(postgresql_url: URL) -> None:
    with db.get_engine(postgresql_url).connect() as conn:
        types = dict(
            conn.execute(
                sa.text(
                    "SELECT column_name, data_type FROM information_schema.columns "
                    "WHERE table_name = 'workflow_runs'"
                )
            ).all()
        )
    assert types["inputs"] == "jsonb"
    assert types["node_logs"] == "jsonb"


def _insert_audit_row(conn: sa.Connection) -> None:
    conn.execute(
        sa.text(
            "INSERT INTO audit_logs (created_at, actor, action, subject, payload, prev_hash, hash) "
            "VALUES (CURRENT_TIMESTAMP, 'tester', 'probe', 'incident:1', '{}', :prev, :hash)"
        ),
        {"prev": "0" * 64, "hash": "a" * 64},
    )


@pytest.mark.parametrize(
    "statement",
    ["UPDATE audit_logs SET actor = 'mallory'", "DELETE FROM audit_logs"],
)
def test_audit_logs_refuse_update_and_delete(database_url: URL, statement: str) -> None:
    engine = db.get_engine(database_url)
    with engine.begin() as conn:
        _insert_audit_row(conn)
    with pytest.raises(sa.exc.DatabaseError, match="append-only"), engine.begin() as conn:
        conn.execute(sa.text(statement))
    with engine.connect() as conn:
        assert conn.execute(sa.text("SELECT actor FROM audit_logs")).scalars().all() == ["tester"]


def test_audit_logs_refuse_truncate_on_postgresql(postgresql_url: URL) -> None:
    engine = db.get_engine(postgresql_url)
    with engine.begin() as conn:
        _insert_audit_row(conn)
    with pytest.raises(sa.exc.DatabaseError, match="append-only"), engine.begin() as conn:
        conn.execute(sa.text("TRUNCATE audit_logs"))


# ------------------------------------------------------------------ concurrent upgrades


@contextlib.contextmanager
def _empty_database(kind: str, tmp_path: Path) -> Iterator[tuple[URL, dict[str, str]]]:
    """A database with no schema at all, and the environment that points the CLI at it."""
    if kind == "sqlite":
        data = tmp_path / "data"
        yield (
            URL.create("sqlite+pysqlite", database=str(data / "neuralops.db")),
            {"NEURALOPS_DATA_DIR": str(data)},
        )
        return
    reason = _postgres_reachable()
    if reason:
        skip_or_fail(reason)
    name = f"neuralops_mig_{uuid.uuid4().hex[:10]}"
    _admin(f"CREATE DATABASE {name}")
    url = _admin_url().set(database=name)
    try:
        yield url, {"POSTGRES_DSN": url.render_as_string(hide_password=False)}
    finally:
        db.dispose_engines()
        _admin(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["sqlite", "postgresql"])
def test_concurrent_upgrades_take_turns_and_all_succeed(kind: str, tmp_path: Path) -> None:
    with _empty_database(kind, tmp_path) as (url, env):
        environ = {k: v for k, v in os.environ.items() if k != "POSTGRES_DSN"}
        procs = [
            subprocess.Popen(
                [sys.executable, "-m", "neuralops", "db", "upgrade"],
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
                env={**environ, **env},
            )
            for _ in range(4)
        ]
        results = [(p.wait(timeout=120), *p.communicate()) for p in procs]
        for rc, stdout, stderr in results:
            assert rc == 0, stderr
            assert "Traceback" not in stderr
            assert "database at revision" in stdout
        # exactly one did the work; the others waited, then found the schema at head
        assert sum("(was empty)" in stdout for _, stdout, _ in results) == 1
        assert db.current_revision(url) == db.head_revision()
        with db.get_engine(url).connect() as conn:
            context = MigrationContext.configure(conn, opts={"compare_type": True})
            assert compare_metadata(context, Base.metadata) == []


def test_a_held_migration_lock_makes_the_next_upgrade_wait_then_say_so(
    database_url: URL,
) -> None:
    with db.migration_lock(database_url):
        started = time.monotonic()
        with (
            pytest.raises(ConfigError, match=r"another `neuralops db upgrade` has held"),
            db.migration_lock(database_url, wait_s=0.5),
        ):
            pytest.fail("two holders of the migration lock")
        assert time.monotonic() - started >= 0.5
    with db.migration_lock(database_url, wait_s=0.5):  # released: free again
        pass
