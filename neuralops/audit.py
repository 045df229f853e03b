"""The audit trail: append-only, hash-chained entries in ``audit_logs``.

Each entry stores the SHA-256 of the previous entry (``prev_hash``; the first one's is 64
zeros) and its own ``hash`` over its sequence number, time, actor, action, subject, payload
and ``prev_hash`` (canonical JSON). Changing, deleting or reordering any entry breaks the
chain at that point, and ``verify`` names the first broken entry. The database refuses
UPDATE and DELETE on the table (migration 0001), so a break means someone bypassed it.

``append`` writes inside the caller's transaction, so an incident's state change and its
audit entry commit together or not at all. Writers are serialised (an advisory lock on
PostgreSQL, the write lock on SQLite) so the chain stays linear.

``ship`` copies entries not yet shipped to an archive sink (a local directory by default, S3
with Object Lock in production) as JSONL batches, each with its SHA-256 beside it. A batch is
recorded in ``audit_shipments`` only after the sink accepted it, so a failed upload leaves
its entries pending and the next ``ship`` sends the same batch to the same key again. The
archive carries every field of every entry, so ``verify_lines``/``verify_archive`` check the
chain offline, without the database.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import json
import logging
import os
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING, Any, Literal, Protocol

from sqlalchemy import func, select, text
from sqlalchemy.engine import URL
from sqlalchemy.orm import Session

from neuralops.db import session_scope
from neuralops.db.models import AuditLog, AuditShipment
from neuralops.errors import ConfigError, InvalidInput, NeuralOpsError, Unavailable

if TYPE_CHECKING:
    from neuralops.settings import Settings

log = logging.getLogger(__name__)

GENESIS = "0" * 64
_LOCK_KEY = 0x6E6F_6175  # pg_advisory_xact_lock key for the audit chain ("noau")
_SHIP_LOCK_KEY = 0x6E6F_6173  # ... and for recording shipments ("noas")
_VERIFY_BATCH = 5000


HASHED_FIELDS = ("seq", "created_at", "actor", "action", "subject", "payload", "prev_hash")


def entry_hash(
    *,
    seq: int,
    created_at: datetime,
    actor: str,
    action: str,
    subject: str,
    payload: Mapping[str, Any],
    prev_hash: str,
) -> str:
    """SHA-256 of an entry's canonical JSON (sorted keys, UTC microsecond time)."""
    body = {
        "seq": seq,
        "created_at": _utc_iso(created_at),
        "actor": actor,
        "action": action,
        "subject": subject,
        "payload": payload,
        "prev_hash": prev_hash,
    }
    canonical = json.dumps(body, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()


def _utc_iso(moment: datetime) -> str:
    """The canonical time: UTC, microseconds, ``+00:00`` (naive times are taken as UTC)."""
    moment = moment if moment.tzinfo else moment.replace(tzinfo=UTC)
    return moment.astimezone(UTC).isoformat(timespec="microseconds")


def _lock_chain(session: Session) -> None:
    if session.get_bind().dialect.name == "postgresql":
        session.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": _LOCK_KEY})
    else:  # SQLite: take the database write lock now, not at the first INSERT
        session.execute(text("UPDATE audit_shipments SET sink = sink WHERE 0"))


def append(
    session: Session,
    *,
    actor: str,
    action: str,
    subject: str,
    payload: Mapping[str, Any] | None = None,
) -> AuditLog:
    """Add one entry to the chain in ``session``'s transaction (committed with it)."""
    _lock_chain(session)
    last = session.execute(
        select(AuditLog.seq, AuditLog.hash).order_by(AuditLog.seq.desc()).limit(1)
    ).first()
    seq = (last.seq + 1) if last else 1
    prev_hash = last.hash if last else GENESIS
    fields = {
        "seq": seq,
        "created_at": datetime.now(UTC),
        "actor": actor,
        "action": action,
        "subject": subject,
        "payload": json.loads(json.dumps(dict(payload or {}), default=str)),  # as stored
        "prev_hash": prev_hash,
    }
    entry = AuditLog(**fields, hash=entry_hash(**fields))
    session.add(entry)
    session.flush()
    return entry


def record(
    *,
    actor: str,
    action: str,
    subject: str,
    payload: Mapping[str, Any] | None = None,
    url: URL | None = None,
) -> int:
    """Append one entry in its own transaction; returns its sequence number."""
    with session_scope(url) as session:
        return append(session, actor=actor, action=action, subject=subject, payload=payload).seq


@dataclass(frozen=True)
class Verification:
    entries: int
    ok: bool
    broken_seq: int | None = None
    reason: str | None = None


def entries(session: Session, after: int = 0) -> Iterator[AuditLog]:
    """Every entry after ``after`` in sequence order, read in batches."""
    while True:
        batch = session.scalars(
            select(AuditLog).where(AuditLog.seq > after).order_by(AuditLog.seq).limit(_VERIFY_BATCH)
        ).all()
        if not batch:
            return
        yield from batch
        after = batch[-1].seq


# --- verification: one checker for the database and the archive -----------------------------


@dataclass(frozen=True)
class ArchivedEntry:
    """One line of a shipped batch, parsed."""

    seq: int
    created_at: datetime
    actor: str
    action: str
    subject: str
    payload: Mapping[str, Any]
    prev_hash: str
    hash: str


# What the chain checker reads: a database row or a line of a shipped batch.
EntryLike = AuditLog | ArchivedEntry


def check_chain(
    items: Iterable[EntryLike], *, prev_hash: str = GENESIS, first_seq: int | None = 1
) -> Verification:
    """Walk entries in order: sequence numbers contiguous from ``first_seq`` (any start when
    None), each ``prev_hash`` the previous entry's hash, each hash recomputed from content."""
    count, expected_seq = 0, first_seq
    for entry in items:
        count += 1
        if expected_seq is not None and entry.seq != expected_seq:
            reason = (
                f"entry {expected_seq} is missing (next is {entry.seq})"
                if entry.seq > expected_seq
                else f"entry {entry.seq} is out of order"
            )
            return Verification(count, False, entry.seq, reason)
        if entry.prev_hash != prev_hash:
            return Verification(
                count, False, entry.seq, "prev_hash does not match the previous entry"
            )
        recomputed = entry_hash(**{name: getattr(entry, name) for name in HASHED_FIELDS})
        if recomputed != entry.hash:
            return Verification(count, False, entry.seq, "its content does not match its hash")
        prev_hash, expected_seq = entry.hash, entry.seq + 1
    return Verification(count, True)


def verify(*, url: URL | None = None) -> Verification:
    """Recompute the chain; the first entry whose hash or link does not hold is reported."""
    with session_scope(url) as session:
        return check_chain(entries(session))


def verify_all(*, url: URL | None = None) -> Verification:
    """``verify``, plus what the chain alone cannot see: entries cut off its end after they
    were shipped (``audit_shipments`` remembers how far the archive reaches)."""
    result = verify(url=url)
    if not result.ok:
        return result
    shipped = shipped_through(url=url)
    if shipped > result.entries:  # a verified chain holds exactly seq 1..entries
        return Verification(
            result.entries,
            False,
            result.entries + 1,
            f"entries {result.entries + 1}..{shipped} were shipped to the archive "
            "but are missing from the database",
        )
    return result


class _BadLine(Exception):
    def __init__(self, number: int, seq: int | None, reason: str) -> None:
        super().__init__(reason)
        self.number, self.seq, self.reason = number, seq, reason


def parse_line(line: str | bytes) -> ArchivedEntry:
    """One archive line back into an entry; ValueError when it is not one."""
    record = json.loads(line)
    if not isinstance(record, dict):
        raise ValueError("not a JSON object")
    missing = sorted(set(ENTRY_FIELDS) - set(record))
    if missing:
        raise ValueError(f"missing {', '.join(missing)}")
    if not isinstance(record["payload"], dict) or not isinstance(record["seq"], int):
        raise ValueError("seq must be an integer and payload an object")
    return ArchivedEntry(
        seq=record["seq"],
        created_at=datetime.fromisoformat(record["created_at"]),
        actor=str(record["actor"]),
        action=str(record["action"]),
        subject=str(record["subject"]),
        payload=record["payload"],
        prev_hash=str(record["prev_hash"]),
        hash=str(record["hash"]),
    )


def _parsed(lines: Iterable[str | bytes], counter: list[int]) -> Iterator[ArchivedEntry]:
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        counter[0] += 1
        try:
            yield parse_line(line)
        except (ValueError, TypeError) as exc:
            seq = None
            with contextlib.suppress(Exception):
                seq = int(json.loads(line)["seq"])
            raise _BadLine(number, seq, f"line {number} is not an audit entry: {exc}") from None


def verify_lines(
    lines: Iterable[str | bytes], prev_hash: str = GENESIS, *, first_seq: int | None = None
) -> Verification:
    """Check archived JSONL lines offline, with the same rules as ``verify``. From the genesis
    the first line must be entry 1; after ``prev_hash`` (the hash of the entry before a batch)
    the chain may start at any seq unless ``first_seq`` says which."""
    if first_seq is None and prev_hash == GENESIS:
        first_seq = 1
    counter = [0]
    try:
        return check_chain(_parsed(lines, counter), prev_hash=prev_hash, first_seq=first_seq)
    except _BadLine as bad:
        return Verification(counter[0], False, bad.seq, bad.reason)


def verify_archive(directory: Path | str) -> Verification:
    """Check a local copy of the archive (``aws s3 sync s3://BUCKET/audit/ DIR`` for S3):
    every batch against its ``.sha256`` file, then the chain across all batches in order.
    Leading lines of a batch already covered by an earlier one (an upload whose recording
    failed, shipped again under another batch size) are skipped; the chain over the rest
    must hold."""
    root = Path(directory)
    if not root.is_dir():
        raise InvalidInput(f"{root}: no such directory (copy the archive there first)")
    batches = sorted(
        (_batch_range(path), path) for path in root.rglob("*.jsonl") if _batch_range(path)
    )
    for (first, _last), path in batches:
        digest_file = path.with_name(path.name + ".sha256")
        if not digest_file.is_file():
            return Verification(0, False, first, f"{path.name} has no .sha256 beside it")
        expected = digest_file.read_text(encoding="utf-8").split()[:1]
        if expected != [hashlib.sha256(path.read_bytes()).hexdigest()]:
            return Verification(0, False, first, f"{path.name} does not match its .sha256")

    def lines() -> Iterator[bytes]:
        covered = 0  # the last seq handed to the checker
        seen: dict[int, bytes] = {}  # lines a later batch may repeat, by seq
        for (first, _last), path in batches:
            seen = {seq: line for seq, line in seen.items() if seq >= first}
            with path.open("rb") as handle:
                overlap, previous = True, None
                for number, raw in enumerate(handle, 1):
                    line = raw.rstrip(b"\r\n")
                    if not line.strip():
                        continue
                    seq = _peek_seq(line)
                    # only a batch's leading lines may repeat, in order and byte for byte
                    if overlap and seq is not None and seq <= covered:
                        if seen.get(seq) != line or (previous is not None and seq != previous + 1):
                            raise _BadLine(
                                number,
                                seq,
                                f"{path.name} line {number} repeats entry {seq} "
                                "differently or out of order",
                            )
                        previous = seq
                        continue
                    overlap = False
                    if seq is not None:
                        covered, seen[seq] = seq, line
                    yield line

    return verify_lines(lines())


def _batch_range(path: Path) -> tuple[int, int] | None:
    first, _, last = path.stem.partition("-")
    if not (first.isdigit() and last.isdigit()):
        return None
    return int(first), int(last)


def _peek_seq(line: bytes) -> int | None:
    try:
        seq = json.loads(line).get("seq")
    except (ValueError, AttributeError):
        return None
    return seq if isinstance(seq, int) else None


# --- reading ---------------------------------------------------------------------------------

ENTRY_FIELDS = (
    "seq",
    "created_at",
    "actor",
    "action",
    "subject",
    "payload",
    "prev_hash",
    "hash",
)


def entry_record(entry: EntryLike) -> dict[str, Any]:
    """An entry as plain JSON data (the archive's line format, the CLI's ``--json``)."""
    return {
        "seq": entry.seq,
        "created_at": _utc_iso(entry.created_at),
        "actor": entry.actor,
        "action": entry.action,
        "subject": entry.subject,
        "payload": dict(entry.payload),
        "prev_hash": entry.prev_hash,
        "hash": entry.hash,
    }


def entry_line(entry: EntryLike) -> str:
    """One archive line (no newline): canonical JSON, so a batch's bytes are reproducible."""
    return json.dumps(
        entry_record(entry), sort_keys=True, separators=(",", ":"), ensure_ascii=False
    )


def recent(
    *, subject: str | None = None, limit: int = 20, url: URL | None = None
) -> list[AuditLog]:
    """The latest ``limit`` entries, newest first, optionally about one subject."""
    if limit < 1:
        raise InvalidInput(f"limit: must be at least 1, got {limit}")
    query = select(AuditLog).order_by(AuditLog.seq.desc()).limit(limit)
    if subject is not None:
        query = query.where(AuditLog.subject == subject)
    with session_scope(url) as session:
        return list(session.scalars(query))


# --- sinks -----------------------------------------------------------------------------------


class AuditSink(Protocol):
    """Where shipped batches go. ``put`` must be idempotent per key (a retry rewrites the same
    key with the same bytes) and raise ``Unavailable`` for failures worth retrying."""

    @property
    def name(self) -> str:
        """Where the sink writes (``audit_shipments.sink``); object key is appended to it."""
        ...

    def put(self, key: str, body: bytes, content_sha256: str) -> None: ...


def _digest_file(key: str, content_sha256: str) -> bytes:
    # sha256sum's format, so `sha256sum -c KEY.sha256` checks a batch on any machine
    return f"{content_sha256}  {PurePosixPath(key).name}\n".encode()


def _check_digest(body: bytes, content_sha256: str) -> None:
    if hashlib.sha256(body).hexdigest() != content_sha256:
        raise ValueError("content_sha256 is not the SHA-256 of body")


class LocalSink:
    """A directory: ``<dir>/<key>`` and ``<dir>/<key>.sha256``, each written atomically."""

    def __init__(self, directory: Path | str) -> None:
        self.directory = Path(directory).expanduser()

    @property
    def name(self) -> str:
        return self.directory.resolve().as_uri().rstrip("/") + "/"

    def put(self, key: str, body: bytes, content_sha256: str) -> None:
        _check_digest(body, content_sha256)
        relative = PurePosixPath(key)
        if relative.is_absolute() or ".." in relative.parts or not relative.parts:
            raise ValueError(f"object key {key!r} must be a relative path inside the sink")
        path = self.directory.joinpath(*relative.parts)
        try:
            # the batch first: a .sha256 without its batch never exists
            _write_atomic(path, body)
            _write_atomic(path.with_name(path.name + ".sha256"), _digest_file(key, content_sha256))
        except PermissionError:
            raise ConfigError(
                f"NEURALOPS_AUDIT_DIR: cannot write to {self.directory} (permission denied): "
                "make it writable, or point NEURALOPS_AUDIT_DIR elsewhere"
            ) from None
        except OSError as exc:  # disk full, a lost network mount: worth another try later
            raise Unavailable(
                f"audit directory {self.directory} refused the batch ({exc.strerror or exc}): "
                "the entries stay pending"
            ) from None


def _write_atomic(path: Path, data: bytes) -> None:
    """Readers see the old file or the whole new one, never a partial write."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, temp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temp)
        raise
    with contextlib.suppress(OSError):  # make the rename durable where the OS allows it
        dir_fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)


LockMode = Literal["COMPLIANCE", "GOVERNANCE"]
_S3_DENIED = {
    "AccessDenied",
    "AllAccessDisabled",
    "InvalidAccessKeyId",
    "SignatureDoesNotMatch",
    "ExpiredToken",
    "InvalidToken",
    "AccountProblem",
}
_S3_TRANSIENT = {
    "SlowDown",
    "RequestTimeout",
    "InternalError",
    "ServiceUnavailable",
    "Throttling",
    "ThrottlingException",
    "RequestTimeTooSkewed",
}


def make_s3_client(
    *,
    endpoint_url: str | None = None,
    region: str | None = None,
    access_key_id: str | None = None,
    secret_access_key: str | None = None,
    max_attempts: int = 3,
) -> Any:
    """A boto3 S3 client with short connect timeouts; unset credentials mean boto3's usual
    chain (environment, profile, instance role)."""
    import boto3  # slow to import: only where S3 is used
    from botocore.config import Config

    return boto3.session.Session().client(
        "s3",
        endpoint_url=endpoint_url,
        region_name=region,
        aws_access_key_id=access_key_id,
        aws_secret_access_key=secret_access_key,
        config=Config(
            connect_timeout=5,
            read_timeout=60,
            retries={"max_attempts": max_attempts, "mode": "standard"},
        ),
    )


class S3Sink:
    """An S3 bucket (or any S3-compatible store). Each batch is put with its SHA-256 as the
    request checksum, so S3 refuses a body corrupted on the way, and ``<key>.sha256`` beside it.

    When the bucket has Object Lock enabled, both objects get a COMPLIANCE-mode retention of
    ``retention_days``: in COMPLIANCE mode nobody, the account root included, can delete or
    overwrite that version or shorten its retention, which is what an audit archive needs
    (GOVERNANCE can be lifted by anyone with ``s3:BypassGovernanceRetention``; pass
    ``lock_mode="GOVERNANCE"`` to trial a setup). ``retention_days=None`` leaves retention to
    the bucket's default rule. Object Lock implies versioning: a retried batch adds a version
    with the same bytes and never removes the first.
    """

    def __init__(
        self,
        bucket: str,
        prefix: str = "audit/",
        client: Any = None,
        endpoint_url: str | None = None,
        retention_days: int | None = None,
        *,
        lock_mode: LockMode = "COMPLIANCE",
    ) -> None:
        if not bucket:
            raise ConfigError("S3_BUCKET is empty: name the audit archive bucket, or unset it")
        if retention_days is not None and retention_days < 1:
            raise ConfigError(
                f"NEURALOPS_AUDIT_RETENTION_DAYS must be at least 1, got {retention_days}"
            )
        if lock_mode not in ("COMPLIANCE", "GOVERNANCE"):
            raise ConfigError(f"Object Lock mode must be COMPLIANCE or GOVERNANCE, not {lock_mode}")
        self.bucket = bucket
        self.prefix = prefix.strip("/") + "/" if prefix.strip("/") else ""
        self.endpoint_url = endpoint_url
        self.retention_days = retention_days
        self.lock_mode = lock_mode
        self._client = client if client is not None else make_s3_client(endpoint_url=endpoint_url)
        self._object_lock: bool | None = None  # probed on the first put

    @property
    def name(self) -> str:
        return f"s3://{self.bucket}/{self.prefix}"

    @property
    def object_lock(self) -> bool:
        """Whether the bucket has Object Lock enabled (asks S3 once)."""
        if self._object_lock is None:
            self._object_lock = self._probe_object_lock()
        return self._object_lock

    def put(self, key: str, body: bytes, content_sha256: str) -> None:
        _check_digest(body, content_sha256)
        retention = self._retention()
        self._put(self.prefix + key, body, content_sha256, "application/x-ndjson", retention)
        digest = _digest_file(key, content_sha256)
        digest_sha = hashlib.sha256(digest).hexdigest()
        self._put(self.prefix + key + ".sha256", digest, digest_sha, "text/plain", retention)

    def _retention(self) -> dict[str, Any]:
        if not self.object_lock or not self.retention_days:
            return {}
        until = datetime.now(UTC) + timedelta(days=self.retention_days)
        return {"ObjectLockMode": self.lock_mode, "ObjectLockRetainUntilDate": until}

    def _put(
        self, key: str, body: bytes, sha256_hex: str, content_type: str, extra: dict[str, Any]
    ) -> None:
        checksum = base64.b64encode(bytes.fromhex(sha256_hex)).decode("ascii")
        self._call(
            self._client.put_object,
            Bucket=self.bucket,
            Key=key,
            Body=body,
            ContentType=content_type,
            ChecksumAlgorithm="SHA256",  # S3 requires a checksum with Object Lock retention
            ChecksumSHA256=checksum,
            **extra,
        )

    def _probe_object_lock(self) -> bool:
        from botocore.exceptions import ClientError

        try:
            answer = self._client.get_object_lock_configuration(Bucket=self.bucket)
        except ClientError as exc:
            code, status = _client_error(exc)
            if code == "ObjectLockConfigurationNotFoundError":
                return False
            if code in _S3_DENIED or status == 403:
                # may put but not read the lock setting: the bucket's default retention applies
                log.warning(
                    "cannot read the Object Lock setting of S3 bucket %s (%s): objects get the "
                    "bucket's default retention, if any",
                    self.bucket,
                    code,
                )
                return False
            raise self._error(exc) from None
        except Exception as exc:
            raise self._mapped(exc) from None
        return answer.get("ObjectLockConfiguration", {}).get("ObjectLockEnabled") == "Enabled"

    def _call(self, method: Callable[..., Any], **kwargs: Any) -> Any:
        try:
            return method(**kwargs)
        except Exception as exc:
            raise self._mapped(exc) from None

    def _mapped(self, exc: Exception) -> Exception:
        """S3 failures as NeuralOps errors (only those; anything else is a bug and stays)."""
        from botocore.exceptions import (
            ClientError,
            ConnectionError,
            HTTPClientError,
            NoCredentialsError,
            PartialCredentialsError,
        )

        known = (
            ClientError,
            NoCredentialsError,
            PartialCredentialsError,
            ConnectionError,  # refused, DNS, connect timeout
            HTTPClientError,  # read timeout, connection closed
        )
        if isinstance(exc, known):
            return self._error(exc)
        return exc

    def _error(self, exc: Exception) -> NeuralOpsError:
        # Messages are built here from the bucket, the endpoint and S3's error code only:
        # never str(exc), which may carry request details.
        from botocore.exceptions import ClientError

        where = f"S3 bucket '{self.bucket}'" + (
            f" at {self.endpoint_url}" if self.endpoint_url else ""
        )
        local = "or unset S3_BUCKET to archive to the local directory"
        if isinstance(exc, ClientError):
            code, status = _client_error(exc)
            if code == "NoSuchBucket":
                return ConfigError(
                    f"S3_BUCKET: {where} does not exist: create it (with Object Lock enabled, "
                    f"for a tamper-proof archive), correct S3_BUCKET, {local}"
                )
            if code in _S3_DENIED or status == 403:
                return ConfigError(
                    f"S3_BUCKET: {where} refused access ({code}): check the AWS credentials and "
                    "allow them s3:PutObject, s3:PutObjectRetention and "
                    f"s3:GetBucketObjectLockConfiguration on the bucket, {local}"
                )
            if status >= 500 or code in _S3_TRANSIENT:
                return Unavailable(
                    f"{where} failed ({code}, HTTP {status}); the batch stays pending"
                )
            return ConfigError(f"S3_BUCKET: {where} rejected the upload ({code}, HTTP {status})")
        if type(exc).__name__ in ("NoCredentialsError", "PartialCredentialsError"):
            return ConfigError(
                f"no AWS credentials for {where}: set AWS_ACCESS_KEY_ID and "
                f"AWS_SECRET_ACCESS_KEY (or a profile or instance role), {local}"
            )
        return Unavailable(
            f"{where} is unreachable ({type(exc).__name__}); the batch stays pending"
        )


def _client_error(exc: Any) -> tuple[str, int]:
    response = getattr(exc, "response", {}) or {}
    code = str(response.get("Error", {}).get("Code", "Unknown"))
    status = int(response.get("ResponseMetadata", {}).get("HTTPStatusCode") or 0)
    return code, status


def sink_from_settings(settings: Settings | None = None) -> AuditSink:
    """S3 when ``S3_BUCKET`` is set, else the local directory (``NEURALOPS_AUDIT_DIR``)."""
    if settings is None:
        from neuralops.settings import get_settings

        settings = get_settings()
    if settings.s3_bucket:
        return S3Sink(
            settings.s3_bucket,
            endpoint_url=settings.s3_endpoint_url,
            retention_days=settings.audit_retention_days,
        )
    return LocalSink(settings.audit_path)


# --- shipping --------------------------------------------------------------------------------


@dataclass(frozen=True)
class ShipResult:
    batches: int
    entries: int
    pending_left: int
    sink: str = ""


class ShipIncomplete(Unavailable):
    """The sink stayed unavailable; ``result`` says what was shipped before it failed."""

    def __init__(self, message: str, result: ShipResult) -> None:
        super().__init__(message)
        self.result = result


def shipped_through(*, url: URL | None = None) -> int:
    """The last sequence number the archive holds (0 when nothing was shipped)."""
    with session_scope(url) as session:
        return _last_shipped(session)


def _last_shipped(session: Session) -> int:
    return session.scalar(select(func.coalesce(func.max(AuditShipment.last_seq), 0))) or 0


def pending_count(url: URL | None = None) -> int:
    """Entries written but not yet shipped."""
    with session_scope(url) as session:
        after = _last_shipped(session)
        return session.scalar(select(func.count()).where(AuditLog.seq > after)) or 0


def batch_key(first_seq: int, last_seq: int) -> str:
    return f"{first_seq:012d}-{last_seq:012d}.jsonl"


def ship(
    sink: AuditSink,
    *,
    batch_size: int = 1000,
    url: URL | None = None,
    retries: int = 3,
    backoff_s: float = 1.0,
    progress: Callable[[int, int], None] | None = None,
    sleep: Callable[[float], None] = time.sleep,
) -> ShipResult:
    """Send every pending entry to ``sink`` in batches of ``batch_size``.

    Each upload is retried ``retries`` times on ``Unavailable`` (waits ``backoff_s``, then
    doubling). A batch is recorded in ``audit_shipments`` only after the sink accepted it;
    when one still fails, shipping stops there and ``ShipIncomplete`` (an ``Unavailable``)
    is raised, the batches before it recorded and the rest pending for the next call.
    ``ConfigError`` (no such bucket, access denied) is not retried. ``progress(batches,
    entries)`` is called after each recorded batch.
    """
    if batch_size < 1:
        raise InvalidInput(f"batch_size: must be at least 1, got {batch_size}")
    if retries < 0 or backoff_s < 0:
        raise InvalidInput("retries and backoff_s must not be negative")
    batches = shipped = 0
    while True:
        with session_scope(url) as session:
            after = _last_shipped(session)
            pending = select(AuditLog).where(AuditLog.seq > after).order_by(AuditLog.seq)
            batch = session.scalars(pending.limit(batch_size)).all()
            lines = [entry_line(entry) + "\n" for entry in batch]
        if not batch:
            break
        first, last = batch[0].seq, batch[-1].seq
        body = "".join(lines).encode("utf-8")
        digest = hashlib.sha256(body).hexdigest()
        key = batch_key(first, last)
        try:
            _put_with_retries(sink, key, body, digest, retries, backoff_s, sleep)
        except Unavailable as exc:
            done = ShipResult(batches, shipped, pending_count(url), sink.name)
            raise ShipIncomplete(
                f"{exc} ({done.batches} batches shipped first, {done.pending_left} entries "
                "pending; run `neuralops audit ship` again)",
                done,
            ) from None
        # Record only now, and only if no other shipper recorded a batch meanwhile (it then
        # wrote this same key with these same bytes, or covers them; re-read and go on).
        with session_scope(url) as session:
            _lock_shipments(session)
            if _last_shipped(session) != after:
                continue
            session.add(
                AuditShipment(
                    first_seq=first,
                    last_seq=last,
                    entries=len(batch),
                    sha256=digest,
                    object_key=key,
                    sink=sink.name[:512],
                    shipped_at=datetime.now(UTC),
                )
            )
        batches += 1
        shipped += len(batch)
        if progress is not None:
            progress(batches, shipped)
    return ShipResult(batches, shipped, pending_count(url), sink.name)


def _lock_shipments(session: Session) -> None:
    if session.get_bind().dialect.name == "postgresql":
        session.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": _SHIP_LOCK_KEY})
    else:  # SQLite: the write lock, before reading how far shipping got
        session.execute(text("UPDATE audit_shipments SET sink = sink WHERE 0"))


def _put_with_retries(
    sink: AuditSink,
    key: str,
    body: bytes,
    digest: str,
    retries: int,
    backoff_s: float,
    sleep: Callable[[float], None],
) -> None:
    for attempt in range(retries + 1):
        try:
            sink.put(key, body, digest)
            return
        except Unavailable as exc:
            if attempt == retries:
                raise
            wait = backoff_s * 2**attempt
            log.warning(
                "audit batch %s not shipped (%s); retry %d of %d in %.1f s",
                key,
                exc,
                attempt + 1,
                retries,
                wait,
            )
            sleep(wait)
