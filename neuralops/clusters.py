"""External clusters (BYOC): registration, heartbeats and reachability.

A cluster registers with a Vault token its owner holds. NeuralOps checks that token against
Vault (``auth/token/lookup-self`` with that token) and exchanges it for the cluster's own
credential: an orphan Vault token with the policy ``neuralops-cluster-<name>``, created with
the operator's token (``VAULT_TOKEN``) and stored in Vault KV v2 at
``secret/neuralops/clusters/<name>``. The clusters row keeps only the reference to that KV
entry (``credential_id``); the registering token is never stored, logged or echoed.
Registering again updates the labels and rotates the credential (the previous token is
revoked).

Registration also issues the cluster's heartbeat key (``PUT /healthz``): a random
``secrets.token_urlsafe`` key returned once to the registrant, stored in the same KV entry
(``heartbeat_key``) for the connector, and kept in the clusters row only as its SHA-256.
A heartbeat through the API must present it and moves that cluster only; registering again
rotates it.

Each cluster's worker serves its own work pool ``cluster-<name>`` and heartbeats; a cluster
silent for ``missed`` heartbeat intervals is marked ``unreachable``.
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import logging
import re
import secrets
from collections.abc import Iterator, Mapping
from datetime import UTC, datetime, timedelta
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_serializer
from sqlalchemy import select
from sqlalchemy.engine import URL

from neuralops import audit
from neuralops.db import session_scope
from neuralops.db.models import Cluster
from neuralops.errors import (
    ConfigError,
    FieldProblem,
    InvalidInput,
    NeuralOpsError,
    NotFound,
    Unavailable,
)
from neuralops.settings import Settings, get_settings

log = logging.getLogger(__name__)

# A DNS label of at most 40 characters, so ``cluster-<name>`` and the Kubernetes objects
# named after it stay well inside 63.
CLUSTER_NAME = r"^[a-z0-9]([a-z0-9-]{0,38}[a-z0-9])?$"
_NAME = re.compile(CLUSTER_NAME)
LABEL_KEY = r"^[A-Za-z0-9]([A-Za-z0-9._/-]{0,61}[A-Za-z0-9])?$"
_LABEL_KEY = re.compile(LABEL_KEY)
MAX_LABELS = 64
MAX_LABEL_VALUE = 253

KV_MOUNT = "secret"
KV_PREFIX = "neuralops/clusters"
CREDENTIAL_TTL = "768h"  # 32 days; the connector renews its token (renew-self)
HEARTBEAT_INTERVAL_S = 30
MISSED_HEARTBEATS = 3
ACTOR = "neuralops:clusters"
HEARTBEAT_KEY_BYTES = 32  # 256 random bits, URL-safe base64: 43 characters


class TokenRefused(InvalidInput):
    """Vault refused the registering token (invalid, expired or revoked). The API answers 401."""


class HeartbeatRefused(NeuralOpsError):
    """A heartbeat without the cluster's own key: ``status`` 401 (no key) or 403 (not this
    cluster's key, or the cluster has none). Nothing was written."""

    def __init__(self, status: int, reason: str, message: str) -> None:
        super().__init__(message)
        self.status, self.reason = status, reason


class ClusterOut(BaseModel):
    """A registered cluster as the CLI and API show it (no secret in it)."""

    model_config = ConfigDict(from_attributes=True)

    name: str
    labels: dict[str, str] = Field(default_factory=dict)
    work_pool: str = Field(description="The cluster's own Prefect work pool, cluster-<name>.")
    registered_at: datetime
    last_heartbeat: datetime | None = None
    status: str = Field(description="pending | healthy | unreachable | disabled")
    credential_id: str | None = Field(
        None, description="Where the cluster's credential lives in Vault (a reference only)."
    )
    prometheus_url: str | None = None


class Registered(ClusterOut):
    """What registration returns: the cluster, and its heartbeat key, shown this once."""

    heartbeat_key: SecretStr = Field(
        description="The cluster's heartbeat key for `PUT /healthz` (Authorization: Bearer). "
        "Shown once; NeuralOps keeps only its SHA-256, and the connector reads it from Vault "
        "KV (secret/neuralops/clusters/<name>, field heartbeat_key). Registering again "
        "rotates it."
    )

    @field_serializer("heartbeat_key", when_used="json")
    def _reveal(self, key: SecretStr) -> str:  # the registrant's one copy; repr stays masked
        return key.get_secret_value()


def new_heartbeat_key() -> str:
    return secrets.token_urlsafe(HEARTBEAT_KEY_BYTES)


def key_digest(key: str) -> str:
    """The SHA-256 (hex) of a heartbeat key: what the clusters row stores."""
    return hashlib.sha256(key.encode()).hexdigest()


def work_pool_name(name: str) -> str:
    return f"cluster-{name}"


def policy_name(name: str) -> str:
    return f"neuralops-cluster-{name}"


def kv_path(name: str) -> str:
    return f"{KV_PREFIX}/{name}"


def cluster_policy(name: str) -> str:
    """What a cluster's own token may do: read its own credential entry (and, through the
    default policy, look up and renew itself)."""
    return f'path "{KV_MOUNT}/data/{kv_path(name)}" {{\n  capabilities = ["read"]\n}}\n'


def subject(name: str) -> str:
    return f"cluster:{name}"


# --- validation ------------------------------------------------------------------------------


def check_name(name: str) -> str:
    if not isinstance(name, str) or not _NAME.match(name):
        raise InvalidInput(
            f"name: {name!r} is not a cluster name: use 1 to 40 lowercase letters, digits and "
            "'-', starting and ending with a letter or digit (e.g. edge-1)",
            [FieldProblem("name", "1-40 chars of [a-z0-9-], starting and ending alphanumeric")],
        )
    return name


def _check_labels(labels: Mapping[str, Any] | None) -> dict[str, str]:
    problems: list[FieldProblem] = []
    checked: dict[str, str] = {}
    for key, value in (labels or {}).items():
        if not isinstance(key, str) or not _LABEL_KEY.match(key):
            problems.append(FieldProblem(f"labels.{key}", "keys are 1-63 chars of [A-Za-z0-9._/-]"))
        elif not isinstance(value, str) or len(value) > MAX_LABEL_VALUE:
            problems.append(
                FieldProblem(f"labels.{key}", f"values are strings of at most {MAX_LABEL_VALUE}")
            )
        else:
            checked[key] = value
    if len(checked) > MAX_LABELS:
        problems.append(FieldProblem("labels", f"at most {MAX_LABELS} labels"))
    if problems:
        lines = "; ".join(f"{p.field}: {p.message}" for p in problems)
        raise InvalidInput(f"labels: {lines}", problems)
    return checked


def _check_prometheus_url(value: str | None) -> str | None:
    if value is None or value == "":
        return None
    if not value.startswith(("http://", "https://")) or len(value) > 500:
        raise InvalidInput(
            f"prometheus_url: {value!r} must start with http:// or https:// (500 chars at most)",
            [FieldProblem("prometheus_url", "must start with http:// or https://")],
        )
    return value.rstrip("/")


# --- Vault -----------------------------------------------------------------------------------


@contextlib.contextmanager
def _vault_errors(addr: str, doing: str, *, refused_is_token: bool = False) -> Iterator[None]:
    """Vault failures as NeuralOps errors; messages never carry a token (nor str(exc), which
    may hold request details)."""
    import hvac.exceptions
    import requests

    where = f"Vault at {addr}"
    try:
        yield
    except requests.exceptions.SSLError:
        raise ConfigError(
            f"{where}: TLS verification failed; set VAULT_CACERT to the CA bundle that signed "
            "its certificate"
        ) from None
    except requests.exceptions.Timeout:
        raise Unavailable(f"{where} unreachable while trying to {doing}: no answer") from None
    except requests.exceptions.ConnectionError as exc:
        raise Unavailable(
            f"{where} unreachable while trying to {doing}: {_connection_reason(exc)}"
        ) from None
    except (hvac.exceptions.Forbidden, hvac.exceptions.Unauthorized) as exc:
        if refused_is_token:
            reason = _vault_reason(exc) or "permission denied"
            raise TokenRefused(
                f"vault_token: the Vault token was refused: {reason} (it is invalid, expired or "
                "revoked): ask the NeuralOps operator for a fresh registration token",
                [FieldProblem("vault_token", f"the Vault token was refused: {reason}")],
            ) from None
        raise ConfigError(
            f"{where} denied the request to {doing} (permission denied): VAULT_TOKEN must be "
            "valid and allowed to write sys/policy/neuralops-cluster-*, auth/token/create-orphan "
            f"and {KV_MOUNT}/data/{KV_PREFIX}/*"
        ) from None
    except hvac.exceptions.InvalidPath as exc:
        if "no handler for route" in str(exc):
            raise ConfigError(
                f"{where} has no KV v2 engine at '{KV_MOUNT}/': enable it "
                f"(`vault secrets enable -path={KV_MOUNT} -version=2 kv`)"
            ) from None
        raise ConfigError(f"{where}: not found while trying to {doing}") from None
    except (hvac.exceptions.VaultDown, hvac.exceptions.VaultNotInitialized):
        raise Unavailable(f"{where} is sealed or not initialised") from None
    except hvac.exceptions.InvalidRequest as exc:
        raise ConfigError(
            f"{where} refused to {doing}: {_vault_reason(exc) or 'no detail'}"
        ) from None
    except hvac.exceptions.VaultError as exc:
        raise Unavailable(
            f"{where} failed to {doing}: {type(exc).__name__}: {_vault_reason(exc) or 'no detail'}"
        ) from None


def _vault_reason(exc: Exception) -> str:
    errors = getattr(exc, "errors", None)
    return "; ".join(str(e) for e in errors) if errors else ""


def _connection_reason(exc: Exception) -> str:
    found = re.search(r"\[Errno -?\d+\][^'\")]*", str(exc))
    return found.group(0).strip() if found else type(exc).__name__


def _client(addr: str, token: str, timeout_s: float = 10.0) -> Any:
    import hvac  # pulls in requests: only where Vault is used

    return hvac.Client(url=addr, token=token, timeout=timeout_s)


def check_token(addr: str, token: str) -> dict[str, Any]:
    """Vault's view of ``token`` (its policies, ttl, ...) via lookup-self with that token;
    ``TokenRefused`` when Vault refuses it, ``Unavailable`` when Vault does not answer."""
    if not token:
        raise TokenRefused(
            "vault_token: empty; give the Vault token you were handed for registration",
            [FieldProblem("vault_token", "required")],
        )
    with _vault_errors(addr, "look up the registration token", refused_is_token=True):
        return dict(_client(addr, token).auth.token.lookup_self()["data"])


def _issue_credential(
    addr: str, operator_token: str, name: str, heartbeat_key: str
) -> tuple[str, str, str | None]:
    """Create the cluster's own token and store it in KV with the cluster's heartbeat key;
    returns (credential_id, the new token's accessor, the previous credential's accessor if
    one was stored)."""
    import hvac.exceptions

    client = _client(addr, operator_token)
    path = kv_path(name)
    previous: str | None = None
    with _vault_errors(addr, f"read {KV_MOUNT}/{path}"):
        try:
            stored = client.secrets.kv.v2.read_secret_version(
                path=path, mount_point=KV_MOUNT, raise_on_deleted_version=False
            )
            previous = ((stored or {}).get("data") or {}).get("data", {}).get("accessor")
        except hvac.exceptions.InvalidPath as exc:
            if "no handler for route" in str(exc):
                raise
    with _vault_errors(addr, f"write policy {policy_name(name)}"):
        client.sys.create_or_update_policy(name=policy_name(name), policy=cluster_policy(name))
    with _vault_errors(addr, "create the cluster's token (auth/token/create-orphan)"):
        auth = client.auth.token.create_orphan(
            policies=[policy_name(name)],
            meta={"cluster": name, "issued_by": "neuralops"},
            ttl=CREDENTIAL_TTL,
            renewable=True,
            display_name=f"neuralops-cluster-{name}",
        )["auth"]
    token, accessor = auth["client_token"], auth["accessor"]
    try:
        with _vault_errors(addr, f"store the cluster's credential at {KV_MOUNT}/{path}"):
            written = client.secrets.kv.v2.create_or_update_secret(
                path=path,
                mount_point=KV_MOUNT,
                secret={
                    "token": token,
                    "accessor": accessor,
                    "policies": [policy_name(name)],
                    "heartbeat_key": heartbeat_key,
                    "issued_at": datetime.now(UTC).isoformat(),
                },
            )
    except Exception:
        _revoke(addr, operator_token, accessor)
        raise
    version = (written or {}).get("data", {}).get("version")
    credential_id = f"vault:{KV_MOUNT}/{path}" + (f"?version={version}" if version else "")
    return credential_id, accessor, previous


def _revoke(addr: str, operator_token: str, accessor: str) -> None:
    """Best effort: a credential that could not be revoked expires with its TTL."""
    try:
        with _vault_errors(addr, "revoke the previous cluster token"):
            _client(addr, operator_token).auth.token.revoke_accessor(accessor)
    except (Unavailable, ConfigError) as exc:
        log.warning("could not revoke a cluster token by accessor (%s); it expires by TTL", exc)


# --- registration ----------------------------------------------------------------------------


def register(
    name: str,
    *,
    vault_token: str,
    labels: Mapping[str, Any] | None = None,
    prometheus_url: str | None = None,
    settings: Settings | None = None,
    url: URL | None = None,
    actor: str = ACTOR,
) -> Registered:
    """Register ``name`` (or register it again: new labels, rotated credential and heartbeat
    key); the result carries the new heartbeat key, which is nowhere else in clear but Vault.

    ``vault_token`` is checked against Vault and then forgotten. Raises ``InvalidInput``
    for a bad name, labels or URL, ``TokenRefused`` (an ``InvalidInput``) when Vault refuses
    the token, ``ConfigError`` when VAULT_ADDR / VAULT_TOKEN are missing or lack rights, and
    ``Unavailable`` when Vault does not answer."""
    check_name(name)
    checked_labels = _check_labels(labels)
    prometheus = _check_prometheus_url(prometheus_url)
    settings = settings or get_settings()
    if not settings.vault_addr:
        raise ConfigError(
            "VAULT_ADDR is not set: cluster registration checks the token against Vault"
        )
    if settings.vault_token is None or not settings.vault_token.get_secret_value():
        raise ConfigError(
            "VAULT_TOKEN is not set: NeuralOps needs its own Vault token to issue the cluster's "
            "credential"
        )
    addr, operator_token = settings.vault_addr, settings.vault_token.get_secret_value()
    looked_up = check_token(addr, vault_token)
    heartbeat_key = new_heartbeat_key()
    digest = key_digest(heartbeat_key)
    credential_id, issued, previous = _issue_credential(addr, operator_token, name, heartbeat_key)
    try:
        with session_scope(url) as session:
            row = session.get(Cluster, name, with_for_update=True)
            again = row is not None
            now = datetime.now(UTC)
            if row is None:
                row = Cluster(
                    name=name,
                    work_pool=work_pool_name(name),
                    registered_at=now,
                    status="pending",
                )
                session.add(row)
            row.labels = checked_labels
            row.work_pool = work_pool_name(name)
            row.credential_id = credential_id
            row.prometheus_url = prometheus
            row.heartbeat_key_sha256 = digest
            session.flush()
            audit.append(
                session,
                actor=actor,
                action="cluster.registered",
                subject=subject(name),
                payload={
                    "cluster": name,
                    "labels": checked_labels,
                    "work_pool": row.work_pool,
                    "credential_id": credential_id,
                    "rotated": again,
                    "heartbeat_key_sha256": digest,
                    "prometheus_url": prometheus,
                    # who registered, as Vault knows the token (never the token itself)
                    "registered_by": looked_up.get("display_name"),
                    "registered_by_entity": looked_up.get("entity_id") or None,
                },
            )
            result = Registered(
                **ClusterOut.model_validate(row).model_dump(), heartbeat_key=heartbeat_key
            )
    except Exception:
        # nothing half-written: the row did not change, so the new credential goes
        _revoke(addr, operator_token, issued)
        raise
    if previous:
        _revoke(addr, operator_token, previous)
    log.info(
        "cluster %s registered (pool %s, credential %s)", name, result.work_pool, credential_id
    )
    return result


# --- heartbeats and status -------------------------------------------------------------------


def _not_found(name: str) -> NotFound:
    return NotFound(
        f"cluster '{name}' is not registered: `neuralops clusters register {name} "
        "--vault-token ...` first"
    )


def heartbeat(name: str, *, at: datetime | None = None, url: URL | None = None) -> ClusterOut:
    """Record that ``name`` is alive: last_heartbeat = ``at`` (default now), status healthy
    (a ``disabled`` cluster stays disabled). Coming back from ``unreachable`` is audited.

    For callers NeuralOps trusts (the connector's flow on the cluster's own pool, the worker
    heartbeats read from Prefect); the API uses :func:`authenticated_heartbeat`."""
    check_name(name)
    at = _aware(at)
    with session_scope(url) as session:
        row = session.get(Cluster, name, with_for_update=True)
        if row is None:
            raise _not_found(name)
        return _beat(session, row, at)


def authenticated_heartbeat(
    name: str, key: str | None, *, at: datetime | None = None, url: URL | None = None
) -> ClusterOut:
    """:func:`heartbeat`, only for the holder of ``name``'s own heartbeat key: no key is a
    ``HeartbeatRefused`` 401, another cluster's key (or none registered, or an unknown
    cluster) a 403; a refused heartbeat writes nothing, no audit entry either."""
    if not key:
        raise HeartbeatRefused(
            401,
            "missing",
            "no heartbeat key: send `Authorization: Bearer <key>` with the key issued when the "
            f"cluster registered (Vault KV {KV_MOUNT}/{KV_PREFIX}/<name>, field heartbeat_key)",
        )
    check_name(name)
    at = _aware(at)
    presented = key_digest(key)
    with session_scope(url) as session:
        row = session.get(Cluster, name, with_for_update=True)
        stored = row.heartbeat_key_sha256 if row is not None else None
        # Compared even when there is nothing to compare with, so timing tells nothing.
        matches = hmac.compare_digest(presented, stored or key_digest(""))
        if row is None or stored is None or not matches:
            log.warning("heartbeat for cluster %s refused: not its heartbeat key", name)
            if row is not None and stored is None:
                raise HeartbeatRefused(
                    403,
                    "no_key",
                    f"cluster '{name}' has no heartbeat key (registered before keys were "
                    f"issued): register it again (`neuralops clusters register {name}`) to "
                    "issue one",
                )
            raise HeartbeatRefused(
                403,
                "wrong_key",
                f"this is not the heartbeat key of cluster '{name}' (or '{name}' is not "
                "registered): each cluster's key moves that cluster only",
            )
        return _beat(session, row, at)


def _aware(at: datetime | None) -> datetime:
    at = at or datetime.now(UTC)
    if at.tzinfo is None:
        raise InvalidInput("at: a timezone-aware time is needed", [FieldProblem("at", "naive")])
    return at


def _beat(session: Any, row: Cluster, at: datetime) -> ClusterOut:
    if row.last_heartbeat is None or at > row.last_heartbeat:
        row.last_heartbeat = at
    if row.status != "disabled":
        if row.status == "unreachable":
            audit.append(
                session,
                actor=ACTOR,
                action="cluster.recovered",
                subject=subject(row.name),
                payload={"cluster": row.name, "last_heartbeat": at.isoformat()},
            )
        row.status = "healthy"
    session.flush()
    return ClusterOut.model_validate(row)


def mark_unreachable(
    *,
    interval_s: float = HEARTBEAT_INTERVAL_S,
    missed: int = MISSED_HEARTBEATS,
    now: datetime | None = None,
    url: URL | None = None,
) -> list[str]:
    """Mark ``unreachable`` every healthy cluster whose last heartbeat is older than
    ``interval_s * missed``; returns the names that changed (each audited). Pending clusters
    (no heartbeat yet) and disabled ones are left as they are."""
    if interval_s <= 0 or missed < 1:
        raise InvalidInput(
            "interval_s must be positive and missed at least 1",
            [FieldProblem("interval_s", "> 0"), FieldProblem("missed", ">= 1")],
        )
    now = now or datetime.now(UTC)
    cutoff = now - timedelta(seconds=interval_s * missed)
    with session_scope(url) as session:
        stale = session.scalars(
            select(Cluster)
            .where(Cluster.status == "healthy", Cluster.last_heartbeat < cutoff)
            .order_by(Cluster.name)
            .with_for_update()
        ).all()
        for row in stale:
            row.status = "unreachable"
            audit.append(
                session,
                actor=ACTOR,
                action="cluster.unreachable",
                subject=subject(row.name),
                payload={
                    "cluster": row.name,
                    "last_heartbeat": row.last_heartbeat.isoformat()
                    if row.last_heartbeat
                    else None,
                    "silent_s": (now - row.last_heartbeat).total_seconds()
                    if row.last_heartbeat
                    else None,
                    "interval_s": interval_s,
                    "missed": missed,
                },
            )
        return [row.name for row in stale]


def list_clusters(url: URL | None = None) -> list[ClusterOut]:
    with session_scope(url) as session:
        rows = session.scalars(select(Cluster).order_by(Cluster.name)).all()
        return [ClusterOut.model_validate(row) for row in rows]


def get_cluster(name: str, url: URL | None = None) -> ClusterOut:
    with session_scope(url) as session:
        row = session.get(Cluster, name)
        if row is None:
            raise _not_found(name)
        return ClusterOut.model_validate(row)
