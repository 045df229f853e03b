"""Engine, sessions and migrations for the run-history database (PostgreSQL or SQLite)."""

from __future__ import annotations

import fcntl
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

from sqlalchemy import Engine, create_engine, event, text
from sqlalchemy.engine import URL
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session, sessionmaker

from neuralops.errors import ConfigError
from neuralops.settings import get_settings

if TYPE_CHECKING:  # alembic is imported where used: ~11 MiB a process that never migrates spares
    from alembic.config import Config

MIGRATIONS = Path(__file__).with_name("migrations")


_ENGINES: dict[URL, Engine] = {}


def get_engine(url: URL | None = None) -> Engine:
    """One pooled engine per database URL, created on first use."""
    url = url or get_settings().database_url
    if url not in _ENGINES:
        _ENGINES[url] = _create_engine(url)
    return _ENGINES[url]


def _create_engine(url: URL) -> Engine:
    if url.get_backend_name() == "sqlite":
        Path(url.database).parent.mkdir(parents=True, exist_ok=True)
        engine = create_engine(url, connect_args={"timeout": 30})
        event.listen(engine, "connect", _sqlite_pragmas)
        return engine
    return create_engine(url, pool_pre_ping=True, pool_size=10, max_overflow=20)


def _sqlite_pragmas(dbapi_conn, _record) -> None:
    # WAL lets readers run beside the one writer; the busy timeout queues concurrent writers
    # instead of failing with "database is locked".
    cursor = dbapi_conn.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA busy_timeout=30000")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.close()


def dispose_engines() -> None:
    """Close every pooled connection (tests, and before a process forks)."""
    while _ENGINES:
        _ENGINES.popitem()[1].dispose()


@contextmanager
def session_scope(url: URL | None = None) -> Iterator[Session]:
    """One transaction: committed on success, rolled back on any error."""
    session = sessionmaker(get_engine(url), expire_on_commit=False)()
    try:
        with session.begin():
            yield session
    finally:
        session.close()


def alembic_config(url: URL | None = None) -> Config:
    from alembic.config import Config

    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    config.attributes["url"] = url
    return config


def upgrade(url: URL | None = None, revision: str = "head") -> tuple[str | None, str | None]:
    """Apply migrations up to ``revision``; returns (before, after). Safe to run again, and
    at the same time from several processes: they take turns (``migration_lock``)."""
    from alembic import command

    url = url or get_settings().database_url
    with migration_lock(url):
        before = current_revision(url)
        command.upgrade(alembic_config(url), revision)
        return before, current_revision(url)


# pg_advisory_lock key of migrations: any constant the application uses for nothing else
# ("nops_mig" in ASCII).
MIGRATION_LOCK_KEY = 0x6E6F70735F6D6967
MIGRATION_LOCK_WAIT_S = 600.0


@contextmanager
def migration_lock(url: URL, wait_s: float = MIGRATION_LOCK_WAIT_S) -> Iterator[None]:
    """Hold the database's migration lock: one ``db upgrade`` at a time, the others wait
    (then find the schema already at head). PostgreSQL: a session advisory lock on a
    connection of its own; SQLite: an exclusive ``flock`` on ``<database>.migrate.lock``
    beside the file. Waits up to ``wait_s`` seconds, then raises ConfigError."""
    if url.get_backend_name() == "postgresql":
        with _pg_advisory_lock(url, wait_s):
            yield
    elif url.get_backend_name() == "sqlite" and url.database not in (None, "", ":memory:"):
        with _file_lock(Path(f"{url.database}.migrate.lock"), wait_s):
            yield
    else:  # an in-memory database belongs to one process
        yield


def _waited_too_long(where: str, wait_s: float) -> ConfigError:
    return ConfigError(
        f"another `neuralops db upgrade` has held the migration lock on {where} for "
        f"{wait_s:.0f} s: let it finish, or stop it, then run this again"
    )


@contextmanager
def _pg_advisory_lock(url: URL, wait_s: float) -> Iterator[None]:
    key = {"key": MIGRATION_LOCK_KEY}
    with get_engine(url).connect() as conn:
        deadline = time.monotonic() + wait_s
        while not conn.execute(text("SELECT pg_try_advisory_lock(:key)"), key).scalar():
            conn.rollback()
            if time.monotonic() > deadline:
                raise _waited_too_long(f"database {url.database} at {url.host}", wait_s)
            time.sleep(0.1)
        conn.commit()  # a session lock outlives the transaction: nothing stays open
        try:
            yield
        finally:
            try:
                conn.execute(text("SELECT pg_advisory_unlock(:key)"), key)
                conn.commit()
            except SQLAlchemyError:
                conn.invalidate()  # closing the session releases the lock too


@contextmanager
def _file_lock(path: Path, wait_s: float) -> Iterator[None]:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as handle:  # closing it releases the lock, also when killed
        deadline = time.monotonic() + wait_s
        while True:
            try:
                fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    raise _waited_too_long(str(path), wait_s) from None
                time.sleep(0.05)
        yield


_LOCAL_SCHEMA_CHECKED: set[URL] = set()


def ensure_local_schema(url: URL) -> None:
    """Give a local SQLite database with no schema at all (a fresh data dir) the current
    one, once per process: a script's first ``log_run`` works without a prior ``neuralops db
    upgrade``. A database at an older revision, and PostgreSQL (its operators own its
    migrations), are left alone: those still need ``neuralops db upgrade``."""
    if url in _LOCAL_SCHEMA_CHECKED or url.get_backend_name() != "sqlite":
        return
    if current_revision(url) is None:
        with migration_lock(url):  # another process may be creating it too
            if current_revision(url) is None:
                from alembic import command

                command.upgrade(alembic_config(url), "head")
    _LOCAL_SCHEMA_CHECKED.add(url)


def current_revision(url: URL | None = None) -> str | None:
    from alembic.runtime.migration import MigrationContext

    with get_engine(url).connect() as conn:
        return MigrationContext.configure(conn).get_current_revision()


def head_revision() -> str | None:
    from alembic.script import ScriptDirectory

    return ScriptDirectory.from_config(alembic_config()).get_current_head()
