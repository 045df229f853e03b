"""Migrations create exactly the models, re-run as no-ops, and make audit_logs append-only."""

from __future__ import annotations

import pytest
import sqlalchemy as sa
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy.engine import URL

from neuralops import db
from neuralops.db.models import Base


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
