"""The audit trail: hash chain, tamper detection, append-only enforcement, shipping to the
archive (a local directory, and a real S3 protocol server: moto's, over HTTP)."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import threading
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import sqlalchemy as sa
from sqlalchemy.engine import URL
from typer.testing import CliRunner

from neuralops import audit, db
from neuralops.audit import GENESIS, LocalSink, S3Sink, ShipIncomplete
from neuralops.cli import app
from neuralops.db.models import AuditLog, AuditShipment
from neuralops.errors import ConfigError, Unavailable
from neuralops.local_prometheus import free_port
from neuralops.settings import get_settings

runner = CliRunner()
FAKE_KEY_ID = "AKIATESTINGFAKEKEY01"
FAKE_SECRET = "testing-secret-do-not-print-0123456789"


def add_entries(url: URL, count: int, *, subject: str = "incident-1") -> None:
    """``count`` entries in one transaction, with payloads of every JSON kind."""
    with db.session_scope(url) as session:
        for n in range(count):
            audit.append(
                session,
                actor=f"user-{n % 3}",
                action=("suggest", "dry_run", "approve", "execute")[n % 4],
                subject=subject,
                payload={
                    "n": n,
                    "ratio": n / 7,
                    "ok": n % 2 == 0,
                    "none": None,
                    "note": 'café ✓ "quoted"\nnewline',
                    "nested": {"list": [1, "two", {"three": 3.5}]},
                },
            )


@contextmanager
def bypassing_append_only(url: URL) -> Iterator[sa.Connection]:
    """What someone with table-owner rights could do: switch off the database's refusal."""
    with db.get_engine(url).begin() as conn:
        if conn.dialect.name == "postgresql":
            conn.execute(sa.text("ALTER TABLE audit_logs DISABLE TRIGGER USER"))
            yield conn
            conn.execute(sa.text("ALTER TABLE audit_logs ENABLE TRIGGER USER"))
        else:
            conn.execute(sa.text("DROP TRIGGER audit_logs_no_update"))
            conn.execute(sa.text("DROP TRIGGER audit_logs_no_delete"))
            yield conn


def shipments(url: URL) -> list[tuple[int, int]]:
    with db.session_scope(url) as session:
        rows = session.execute(
            sa.select(AuditShipment.first_seq, AuditShipment.last_seq).order_by(
                AuditShipment.first_seq
            )
        )
        return [tuple(row) for row in rows]


# --- the chain -------------------------------------------------------------------------------


def test_a_long_chain_verifies(database_url: URL, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(audit, "_VERIFY_BATCH", 37)  # read in many pages
    add_entries(database_url, 250)
    seq = audit.record(actor="ops", action="approve", subject="incident-2", url=database_url)
    assert seq == 251
    assert audit.verify(url=database_url) == audit.Verification(251, True)
    with db.session_scope(database_url) as session:
        first = session.get(AuditLog, 1)
        assert first is not None and first.prev_hash == GENESIS


def test_concurrent_appends_keep_the_chain_linear(database_url: URL) -> None:
    audit.record(actor="warmup", action="suggest", subject="s", url=database_url)
    errors: list[BaseException] = []

    def writer(n: int) -> None:
        try:
            for i in range(15):
                audit.record(
                    actor=f"thread-{n}",
                    action="execute",
                    subject="s",
                    payload={"i": i},
                    url=database_url,
                )
        except BaseException as exc:  # surfaced below, with the thread's error
            errors.append(exc)

    threads = [threading.Thread(target=writer, args=(n,)) for n in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert not errors, errors
    with db.session_scope(database_url) as session:
        rows = session.execute(sa.select(AuditLog.seq, AuditLog.prev_hash)).all()
    assert sorted(r.seq for r in rows) == list(range(1, 62))
    assert len({r.prev_hash for r in rows}) == 61  # no two entries claim the same predecessor
    assert audit.verify(url=database_url).ok


def test_the_database_refuses_update_and_delete(database_url: URL) -> None:
    add_entries(database_url, 3)
    statements = [
        "UPDATE audit_logs SET actor = 'mallory' WHERE seq = 2",
        "DELETE FROM audit_logs WHERE seq = 3",
    ]
    if database_url.get_backend_name() == "postgresql":
        statements.append("TRUNCATE audit_logs")
    for statement in statements:
        with (
            pytest.raises(sa.exc.DBAPIError) as refused,
            db.get_engine(database_url).begin() as conn,
        ):
            conn.execute(sa.text(statement))
        assert "audit_logs is append-only" in str(refused.value.orig), statement
    assert audit.verify(url=database_url) == audit.Verification(3, True)


def test_a_tampered_payload_is_reported_at_its_seq(database_url: URL) -> None:
    add_entries(database_url, 8)
    with bypassing_append_only(database_url) as conn:
        conn.execute(sa.update(AuditLog).where(AuditLog.seq == 4).values(payload={"n": 999}))
    result = audit.verify(url=database_url)
    assert (result.ok, result.broken_seq) == (False, 4)
    assert result.reason == "its content does not match its hash"


def test_a_tampered_hash_breaks_the_next_link(database_url: URL) -> None:
    """Recomputing the edited entry's own hash still breaks the next entry's link."""
    add_entries(database_url, 6)
    with db.session_scope(database_url) as session:
        row = session.get(AuditLog, 3)
        assert row is not None
        forged = audit.entry_hash(
            seq=3,
            created_at=row.created_at,
            actor="mallory",
            action=row.action,
            subject=row.subject,
            payload=row.payload,
            prev_hash=row.prev_hash,
        )
    with bypassing_append_only(database_url) as conn:
        conn.execute(
            sa.update(AuditLog).where(AuditLog.seq == 3).values(actor="mallory", hash=forged)
        )
    result = audit.verify(url=database_url)
    assert (result.ok, result.broken_seq) == (False, 4)
    assert result.reason == "prev_hash does not match the previous entry"


def test_a_deleted_entry_is_reported(database_url: URL) -> None:
    add_entries(database_url, 8)
    with bypassing_append_only(database_url) as conn:
        conn.execute(sa.delete(AuditLog).where(AuditLog.seq == 5))
    result = audit.verify(url=database_url)
    assert (result.ok, result.broken_seq) == (False, 6)
    assert result.reason == "entry 5 is missing (next is 6)"


def test_two_swapped_entries_are_reported(database_url: URL) -> None:
    add_entries(database_url, 8)
    with bypassing_append_only(database_url) as conn:
        for old, new in ((3, -3), (4, 3), (-3, 4)):
            conn.execute(sa.update(AuditLog).where(AuditLog.seq == old).values(seq=new))
    result = audit.verify(url=database_url)
    assert (result.ok, result.broken_seq) == (False, 3)


def test_entries_cut_off_the_end_after_shipping_are_reported(
    database_url: URL, tmp_path: Path
) -> None:
    """A chain cut at its end still links; what was shipped tells the cut."""
    add_entries(database_url, 6)
    audit.ship(LocalSink(tmp_path / "archive"), url=database_url)
    with bypassing_append_only(database_url) as conn:
        conn.execute(sa.delete(AuditLog).where(AuditLog.seq >= 5))
    assert audit.verify(url=database_url).ok  # the chain alone cannot see it
    result = audit.verify_all(url=database_url)
    assert (result.ok, result.broken_seq) == (False, 5)
    assert "entries 5..6 were shipped to the archive" in (result.reason or "")


# --- CLI -------------------------------------------------------------------------------------


def test_cli_verify_exit_codes_and_messages(database_url: URL) -> None:
    add_entries(database_url, 5)
    intact = runner.invoke(app, ["audit", "verify"])
    assert intact.exit_code == 0, intact.output
    assert "audit chain intact: 5 entries" in intact.stdout

    with bypassing_append_only(database_url) as conn:
        conn.execute(sa.update(AuditLog).where(AuditLog.seq == 2).values(subject="other"))
    broken = runner.invoke(app, ["audit", "verify"])
    assert broken.exit_code == 1, broken.output
    assert "audit chain broken at entry 2: its content does not match its hash" in broken.stdout
    as_json = runner.invoke(app, ["audit", "verify", "--json"])
    assert as_json.exit_code == 1
    assert json.loads(as_json.stdout) == {
        "ok": False,
        "entries": 2,
        "broken_seq": 2,
        "reason": "its content does not match its hash",
        "source": "database",
    }


def test_cli_ship_list_and_verify_the_archive(sqlite_url: URL) -> None:
    add_entries(sqlite_url, 30, subject="incident-7")
    audit.record(actor="ops", action="approve", subject="incident-8", url=sqlite_url)
    shipped = runner.invoke(app, ["audit", "ship", "--batch-size", "8", "--json"])
    assert shipped.exit_code == 0, shipped.output
    archive = get_settings().audit_path
    assert json.loads(shipped.stdout) == {
        "batches": 4,
        "entries": 31,
        "pending_left": 0,
        "sink": archive.resolve().as_uri() + "/",
    }
    again = runner.invoke(app, ["audit", "ship"])
    assert "0 batches (0 entries) shipped to" in again.stdout and "0 pending" in again.stdout

    listed = runner.invoke(
        app, ["audit", "list", "--subject", "incident-7", "--limit", "3", "--json"]
    )
    assert listed.exit_code == 0, listed.output
    assert [e["seq"] for e in json.loads(listed.stdout)] == [30, 29, 28]
    table = runner.invoke(app, ["audit", "list", "--limit", "2"])
    assert "incident-8" in table.stdout and "approve" in table.stdout

    offline = runner.invoke(app, ["audit", "verify", "--archive", str(archive)])
    assert offline.exit_code == 0, offline.output
    assert "audit chain intact: 31 entries" in offline.stdout


# --- shipping to a local directory -----------------------------------------------------------


def test_local_sink_ships_batches_with_their_sha256(database_url: URL, tmp_path: Path) -> None:
    add_entries(database_url, 30)
    sink = audit.sink_from_settings(get_settings())
    assert isinstance(sink, LocalSink) and sink.directory == get_settings().audit_path
    assert audit.pending_count(database_url) == 30

    result = audit.ship(sink, batch_size=7, url=database_url)
    assert result == audit.ShipResult(5, 30, 0, sink.name)
    assert shipments(database_url) == [(1, 7), (8, 14), (15, 21), (22, 28), (29, 30)]
    files = sorted(sink.directory.glob("*.jsonl"))
    assert [f.name for f in files][:2] == [
        "000000000001-000000000007.jsonl",
        "000000000008-000000000014.jsonl",
    ]
    for path in files:
        digest = (path.parent / f"{path.name}.sha256").read_text()
        assert digest == f"{hashlib.sha256(path.read_bytes()).hexdigest()}  {path.name}\n"
    assert not list(sink.directory.glob(".*.tmp"))

    lines = [line for path in files for line in path.read_text(encoding="utf-8").splitlines()]
    assert audit.verify_lines(lines) == audit.Verification(30, True)
    # one batch alone verifies from the hash of the entry before it
    second = files[1].read_bytes().splitlines()
    assert audit.verify_lines(second, prev_hash=json.loads(lines[6])["hash"]).ok
    assert audit.verify_archive(sink.directory) == audit.Verification(30, True)

    # nothing new, nothing shipped; new entries continue the archive's chain
    assert audit.ship(sink, batch_size=7, url=database_url).batches == 0
    add_entries(database_url, 3)
    assert audit.ship(sink, url=database_url) == audit.ShipResult(1, 3, 0, sink.name)
    assert audit.verify_archive(sink.directory) == audit.Verification(33, True)


def test_an_edited_archive_line_fails_verification(tmp_path: Path, sqlite_url: URL) -> None:
    add_entries(sqlite_url, 10)
    sink = LocalSink(tmp_path / "archive")
    audit.ship(sink, batch_size=5, url=sqlite_url)
    path = sink.directory / audit.batch_key(6, 10)
    lines = path.read_text(encoding="utf-8").splitlines()
    record = json.loads(lines[2])  # seq 8
    record["payload"]["n"] = 12345
    lines[2] = json.dumps(record)
    edited = path.parent / "000000000001-000000000005.jsonl"
    all_lines = edited.read_text(encoding="utf-8").splitlines() + lines

    result = audit.verify_lines(all_lines)
    assert (result.ok, result.broken_seq, result.reason) == (
        False,
        8,
        "its content does not match its hash",
    )
    garbage = audit.verify_lines([*all_lines[:3], "{not json"])
    assert (garbage.ok, garbage.entries) == (False, 4)
    assert "line 4 is not an audit entry" in (garbage.reason or "")
    dropped = audit.verify_lines(all_lines[:4] + all_lines[5:])
    assert (dropped.ok, dropped.broken_seq) == (False, 6)

    path.write_text("\n".join(lines) + "\n", encoding="utf-8")  # the .sha256 no longer matches
    archived = audit.verify_archive(sink.directory)
    assert (archived.ok, archived.broken_seq) == (False, 6)
    assert "does not match its .sha256" in (archived.reason or "")
    cli = runner.invoke(app, ["audit", "verify", "--archive", str(sink.directory)])
    assert cli.exit_code == 1 and "audit chain broken at entry 6" in cli.stdout


def test_archive_overlaps_are_tolerated_but_reordering_is_not(
    tmp_path: Path, sqlite_url: URL
) -> None:
    add_entries(sqlite_url, 10)
    sink = LocalSink(tmp_path / "archive")
    audit.ship(sink, batch_size=5, url=sqlite_url)
    lines = (sink.directory / audit.batch_key(6, 10)).read_bytes().splitlines(keepends=True)
    # an upload whose recording failed, shipped again later under another batch size
    orphan = b"".join(lines[:3])
    sink.put(audit.batch_key(6, 8), orphan, hashlib.sha256(orphan).hexdigest())
    assert audit.verify_archive(sink.directory) == audit.Verification(10, True)

    swapped = [*lines[:1], lines[2], lines[1], *lines[3:]]
    body = b"".join(swapped)
    sink.put(audit.batch_key(6, 10), body, hashlib.sha256(body).hexdigest())  # digest redone
    result = audit.verify_archive(sink.directory)
    assert (result.ok, result.broken_seq) == (False, 8)
    assert "repeats entry 8 differently or out of order" in (result.reason or "")
    alone = audit.verify_lines(swapped, prev_hash=json.loads(orphan.splitlines()[0])["prev_hash"])
    assert (alone.ok, alone.broken_seq, alone.reason) == (
        False,
        8,
        "entry 7 is missing (next is 8)",
    )


class FlakySink:
    """Delegates to a real sink, but the first ``failures`` puts raise Unavailable."""

    def __init__(self, inner: audit.AuditSink, failures: int) -> None:
        self.inner, self.failures, self.calls = inner, failures, 0

    @property
    def name(self) -> str:
        return self.inner.name

    def put(self, key: str, body: bytes, content_sha256: str) -> None:
        self.calls += 1
        if self.calls <= self.failures:
            raise Unavailable("archive down")
        self.inner.put(key, body, content_sha256)


def test_a_failed_upload_is_retried_with_backoff(sqlite_url: URL, tmp_path: Path) -> None:
    add_entries(sqlite_url, 5)
    sink = FlakySink(LocalSink(tmp_path / "archive"), failures=2)
    waits: list[float] = []
    result = audit.ship(sink, url=sqlite_url, retries=3, backoff_s=0.5, sleep=waits.append)
    assert (result.batches, result.entries, result.pending_left) == (1, 5, 0)
    assert waits == [0.5, 1.0] and sink.calls == 3


def test_a_batch_that_keeps_failing_stays_pending(database_url: URL, tmp_path: Path) -> None:
    add_entries(database_url, 12)
    local = LocalSink(tmp_path / "archive")
    with pytest.raises(ShipIncomplete) as failed:
        audit.ship(
            FlakySink(local, failures=99),
            batch_size=5,
            url=database_url,
            retries=2,
            sleep=lambda _: None,
        )
    assert failed.value.result == audit.ShipResult(0, 0, 12, local.name)
    assert isinstance(failed.value, Unavailable)
    assert audit.pending_count(database_url) == 12 and shipments(database_url) == []

    class DiesAfterOne(FlakySink):
        def put(self, key: str, body: bytes, content_sha256: str) -> None:
            self.calls += 1
            if self.calls > 1:
                raise Unavailable("archive down")
            self.inner.put(key, body, content_sha256)

    with pytest.raises(ShipIncomplete) as partly:
        audit.ship(DiesAfterOne(local, 0), batch_size=5, url=database_url, retries=0)
    assert partly.value.result == audit.ShipResult(1, 5, 7, local.name)
    assert "1 batches shipped first, 7 entries pending" in str(partly.value)
    assert shipments(database_url) == [(1, 5)]

    assert audit.ship(local, batch_size=5, url=database_url).entries == 7
    assert shipments(database_url) == [(1, 5), (6, 10), (11, 12)]
    assert audit.verify_archive(local.directory) == audit.Verification(12, True)


# --- shipping to S3 (moto's S3 server, a real HTTP endpoint) ---------------------------------


@pytest.fixture
def s3(moto_s3: str, monkeypatch: pytest.MonkeyPatch):
    """A boto3 client on the moto server, with fake static credentials in the environment."""
    for name, value in {
        "AWS_ACCESS_KEY_ID": FAKE_KEY_ID,
        "AWS_SECRET_ACCESS_KEY": FAKE_SECRET,
        "AWS_DEFAULT_REGION": "us-east-1",
    }.items():
        monkeypatch.setenv(name, value)
    for name in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3"):
        monkeypatch.delenv(name, raising=False)
    return audit.make_s3_client(endpoint_url=moto_s3)


def _bucket(s3, *, locked: bool) -> str:
    name = f"audit-{uuid.uuid4().hex[:12]}"
    s3.create_bucket(Bucket=name, **({"ObjectLockEnabledForBucket": True} if locked else {}))
    return name


def _keys(s3, bucket: str) -> list[str]:
    return sorted(o["Key"] for o in s3.list_objects_v2(Bucket=bucket).get("Contents", []))


@pytest.mark.slow
def test_s3_with_object_lock_keeps_each_batch_under_retention(
    s3, moto_s3: str, database_url: URL
) -> None:
    bucket = _bucket(s3, locked=True)
    add_entries(database_url, 12)
    sink = S3Sink(bucket, endpoint_url=moto_s3, retention_days=30)
    result = audit.ship(sink, batch_size=5, url=database_url)
    assert result == audit.ShipResult(3, 12, 0, f"s3://{bucket}/audit/")
    assert sink.object_lock is True

    key = "audit/" + audit.batch_key(1, 5)
    assert _keys(s3, bucket)[:2] == [key, key + ".sha256"]
    body = s3.get_object(Bucket=bucket, Key=key)["Body"].read()
    digest = s3.get_object(Bucket=bucket, Key=key + ".sha256")["Body"].read().decode()
    assert digest.split()[0] == hashlib.sha256(body).hexdigest()
    expected_until = datetime.now(UTC) + timedelta(days=30)
    for object_key in (key, key + ".sha256"):
        head = s3.head_object(Bucket=bucket, Key=object_key)
        assert head["ObjectLockMode"] == "COMPLIANCE"
        assert abs(head["ObjectLockRetainUntilDate"] - expected_until) < timedelta(minutes=5)

    lines = [
        line
        for k in _keys(s3, bucket)
        if k.endswith(".jsonl")
        for line in s3.get_object(Bucket=bucket, Key=k)["Body"].read().splitlines()
    ]
    assert audit.verify_lines(lines) == audit.Verification(12, True)


@pytest.mark.slow
def test_s3_without_object_lock_works_and_settings_pick_it(
    s3, moto_s3: str, sqlite_url: URL, monkeypatch: pytest.MonkeyPatch
) -> None:
    bucket = _bucket(s3, locked=False)
    monkeypatch.setenv("S3_BUCKET", bucket)
    monkeypatch.setenv("NEURALOPS_S3_ENDPOINT_URL", moto_s3)
    get_settings.cache_clear()
    sink = audit.sink_from_settings()
    assert isinstance(sink, S3Sink) and sink.retention_days == 365
    add_entries(sqlite_url, 4)
    assert audit.ship(sink, url=sqlite_url).entries == 4
    assert sink.object_lock is False
    key = "audit/" + audit.batch_key(1, 4)
    assert "ObjectLockMode" not in s3.head_object(Bucket=bucket, Key=key)
    assert _keys(s3, bucket) == [key, key + ".sha256"]


@pytest.mark.slow
def test_s3_unreachable_keeps_entries_pending_then_ships_each_once(
    s3, moto_s3: str, database_url: URL
) -> None:
    bucket = _bucket(s3, locked=True)
    add_entries(database_url, 11)
    closed = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    down = S3Sink(
        bucket,
        client=audit.make_s3_client(endpoint_url=closed, max_attempts=1),
        endpoint_url=closed,
        retention_days=1,
    )
    with pytest.raises(Unavailable) as failed:
        audit.ship(down, batch_size=4, url=database_url, retries=1, sleep=lambda _: None)
    message = str(failed.value)
    assert bucket in message and "unreachable" in message
    assert FAKE_KEY_ID not in message and FAKE_SECRET not in message
    assert audit.pending_count(database_url) == 11 and shipments(database_url) == []

    class LiveThenDown:
        """The first batch reaches S3, then the network to it goes away."""

        name = down.name

        def __init__(self) -> None:
            self.live, self.puts = S3Sink(bucket, endpoint_url=moto_s3, retention_days=1), 0

        def put(self, key: str, body: bytes, content_sha256: str) -> None:
            self.puts += 1
            (self.live if self.puts == 1 else down).put(key, body, content_sha256)

    with pytest.raises(ShipIncomplete) as partly:
        audit.ship(LiveThenDown(), batch_size=4, url=database_url, retries=0)
    assert partly.value.result.batches == 1 and audit.pending_count(database_url) == 7

    up = S3Sink(bucket, endpoint_url=moto_s3, retention_days=1)
    assert audit.ship(up, batch_size=4, url=database_url) == audit.ShipResult(2, 7, 0, up.name)
    assert shipments(database_url) == [(1, 4), (5, 8), (9, 11)]
    versions = s3.list_object_versions(Bucket=bucket, Prefix="audit/")["Versions"]
    batch_versions = sorted(v["Key"] for v in versions if v["Key"].endswith(".jsonl"))
    assert batch_versions == ["audit/" + audit.batch_key(*r) for r in shipments(database_url)]
    assert audit.verify_all(url=database_url).ok


@pytest.mark.slow
def test_s3_errors_name_the_fix_and_no_secret(s3, moto_s3: str, sqlite_url: URL) -> None:
    add_entries(sqlite_url, 2)
    missing = S3Sink("no-such-audit-bucket", endpoint_url=moto_s3)
    with pytest.raises(ConfigError) as refused:
        audit.ship(missing, url=sqlite_url)
    message = str(refused.value)
    assert "S3_BUCKET" in message and "no-such-audit-bucket" in message and "create it" in message
    assert FAKE_KEY_ID not in message and FAKE_SECRET not in message
    assert audit.pending_count(sqlite_url) == 2


@pytest.mark.slow
def test_cli_ship_to_an_unreachable_bucket_exits_2_without_secrets(
    s3, sqlite_url: URL, monkeypatch: pytest.MonkeyPatch
) -> None:
    add_entries(sqlite_url, 3)
    env = {
        **os.environ,
        "S3_BUCKET": "audit-archive",
        "NEURALOPS_S3_ENDPOINT_URL": f"http://127.0.0.1:{free_port()}",
    }
    done = subprocess.run(
        [sys.executable, "-m", "neuralops", "audit", "ship", "--retries", "0"],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert done.returncode == 2, done.stderr
    assert "audit-archive" in done.stderr and "unreachable" in done.stderr
    assert "Traceback" not in done.stderr
    assert FAKE_KEY_ID not in done.stderr + done.stdout
    assert FAKE_SECRET not in done.stderr + done.stdout
    assert "0 batches (0 entries) shipped" in done.stdout and "3 pending" in done.stdout
    assert audit.pending_count(sqlite_url) == 3


# --- the Prefect block -----------------------------------------------------------------------


def test_block_builds_the_core_sink(tmp_path: Path) -> None:
    from blocks.audit import AuditSinkBlock

    block = AuditSinkBlock(
        bucket="archive",
        prefix="prod/audit",
        endpoint_url="http://127.0.0.1:9",
        access_key_id=FAKE_KEY_ID,
        secret_access_key=FAKE_SECRET,
        retention_days=7,
    )
    assert FAKE_SECRET not in repr(block)
    sink = block.sink()
    assert isinstance(sink, S3Sink)
    assert (sink.name, sink.retention_days) == ("s3://archive/prod/audit/", 7)
    local = AuditSinkBlock(local_dir=str(tmp_path / "a")).sink()
    assert isinstance(local, LocalSink) and local.directory == tmp_path / "a"
    default = AuditSinkBlock().sink()
    assert isinstance(default, LocalSink) and default.directory == get_settings().audit_path
