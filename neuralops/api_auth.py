"""Who may call the HTTP API: bearer JWTs with scopes, and per-cluster heartbeat keys.

Every API operation except ``GET /healthz`` and ``GET /metrics`` needs a bearer JWT verified
as approval tokens are (:mod:`neuralops.approval`: PyJWT, a PEM key or a JWKS, asymmetric
algorithms only, ``exp`` required, issuer and audience) and carrying the operation's scope
(:data:`SCOPES`) in ``scope`` (space-separated, as OAuth 2 puts it) and/or ``scp`` (a list).
The audience defaults to ``neuralops-api``, so an approval token is never an API token.

``PUT /healthz`` takes no JWT: the connector presents its cluster's heartbeat key, issued at
registration (:mod:`neuralops.clusters`), which moves that cluster only.

Pure functions here (:func:`verify_api_token`, :func:`require_scope`, :func:`bearer_token`,
:func:`keys_from_settings`); :mod:`neuralops.api` wires them in as FastAPI dependencies.
Refusals raise :class:`AuthRefused`: a status (401 or 403), a reason code and a one-line
message that never holds the token.

DEV ONLY: with neither ``NEURALOPS_API_PUBLIC_KEY`` nor ``NEURALOPS_API_JWKS_URL`` set,
tokens are checked against the local dev key under ``<data dir>/keys`` (the one
``neuralops token issue-dev`` signs with), with a loud warning, and ``neuralops api``
refuses to listen anywhere but loopback (:func:`check_bind_host`).
"""

from __future__ import annotations

import ipaddress
import logging
from collections.abc import Iterable, Mapping, Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict

from neuralops import approval
from neuralops.approval import ApprovalKeys
from neuralops.errors import ConfigError, Unavailable
from neuralops.settings import Settings

log = logging.getLogger(__name__)

SCOPES: dict[str, str] = {
    "runs:write": "POST /runs: log runs (the run loggers)",
    "runs:read": "GET /workflows/..., GET /playbooks: run history and the registry",
    "signals:read": "GET /signals, GET /signals/{id}",
    "signals:write": "POST /analyze, POST /probe: score a query and record a signal (it can "
    "start a remediation)",
    "recommend": "POST /recommend",
    "alerts:write": "POST /alerts: Alertmanager's webhook (records and closes signals, "
    "answers with recommendations)",
    "clusters:admin": "POST /register, GET /clusters",
}
REALM = "neuralops-api"
API_TOKEN = approval.TokenKind(
    "API", "NEURALOPS_API", "send the request again", "request a token for the NeuralOps API"
)
DEV_SUBJECT = "dev@localhost"
SETTINGS_HINT = "NEURALOPS_API_PUBLIC_KEY or NEURALOPS_API_JWKS_URL (and NEURALOPS_API_ISSUER)"
LOOPBACK_NAMES = {"localhost", "localhost.localdomain", "ip6-localhost"}


class AuthRefused(Exception):
    """The request does not prove the right to call the operation.

    ``status`` 401 (no or bad credential) or 403 (a good credential without the right),
    ``reason`` a short code, ``message`` one line that says what to do and never holds the
    token; ``scope`` the scope that was needed (403)."""

    def __init__(self, status: int, reason: str, message: str, scope: str | None = None):
        super().__init__(message)
        self.status, self.reason, self.message, self.scope = status, reason, message, scope

    def www_authenticate(self, realm: str = REALM) -> str:
        """The ``WWW-Authenticate`` challenge (RFC 6750): no error code when nothing was
        sent, ``invalid_token`` for a bad one, ``insufficient_scope`` naming the scope."""
        if self.reason == "missing":
            return f'Bearer realm="{realm}"'
        if self.status == 403:
            return f'Bearer realm="{realm}", error="insufficient_scope", scope="{self.scope}"'
        return f'Bearer realm="{realm}", error="invalid_token"'


class ApiPrincipal(BaseModel):
    """Who a verified API token speaks for (``sub``) and what it may do."""

    model_config = ConfigDict(frozen=True)

    subject: str
    scopes: frozenset[str]
    issuer: str | None = None
    expires_at: datetime
    fingerprint: str
    dev: bool = False


# --- keys -------------------------------------------------------------------------------------


def auth_configured(settings: Settings) -> bool:
    """Whether an identity provider's key is configured (else DEV ONLY mode)."""
    return settings.api_public_key is not None or bool(settings.api_jwks_url)


def keys_from_settings(settings: Settings) -> ApprovalKeys:
    """The keys API tokens must be signed with (``NEURALOPS_API_*``), as
    :func:`neuralops.approval.keys_from_settings` builds approval keys; with none
    configured, DEV ONLY: the local dev key, with a loud warning."""
    options: dict[str, Any] = {
        "issuer": settings.api_issuer,
        "audience": settings.api_audience,
        "what": "API keys",
    }
    pem, url = settings.api_public_key, settings.api_jwks_url
    if pem is not None and url:
        raise ConfigError("set one of NEURALOPS_API_PUBLIC_KEY or NEURALOPS_API_JWKS_URL, not both")
    if pem is not None:
        if str(pem).lstrip().startswith("-----BEGIN"):
            raise ConfigError(
                "NEURALOPS_API_PUBLIC_KEY is the path of a PEM file, not the PEM text: write "
                "the identity provider's public key to a file"
            )
        path = Path(pem).expanduser()
        try:
            text = path.read_text()
        except OSError as exc:
            raise ConfigError(
                f"API public key {path}: cannot read it ({exc.strerror or exc}); point "
                "NEURALOPS_API_PUBLIC_KEY at the identity provider's PEM public key"
            ) from None
        return ApprovalKeys.from_pem(text, label=f"PEM public key {path}", **options)
    if url:
        return ApprovalKeys.from_jwks_url(url, **options)
    _, public = approval.dev_keypair(settings.data_dir)
    log.warning(
        "DEV ONLY: no API key configured (NEURALOPS_API_PUBLIC_KEY or NEURALOPS_API_JWKS_URL); "
        "API tokens are checked against the local dev key %s, so anyone who can read the data "
        "dir can call the API. `neuralops api` serves loopback only until the identity "
        "provider's key is configured.",
        public,
    )
    options["issuer"] = settings.api_issuer or approval.DEV_ISSUER
    return ApprovalKeys.build(
        str(public),
        public_key_pem=public.read_text(),
        algorithms=("ES256",),
        label=f"DEV ONLY key {public}",
        dev=True,
        **options,
    )


# --- verification -----------------------------------------------------------------------------


def bearer_token(authorization: str | None) -> str | None:
    """The token of an ``Authorization: Bearer <token>`` header; None for none or another
    scheme."""
    if not authorization:
        return None
    scheme, _, token = authorization.strip().partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        return None
    return token.strip()


def scopes_of(claims: Mapping[str, Any]) -> frozenset[str]:
    """The scopes a token grants: ``scope`` (space-separated) and ``scp`` (a list or a
    space-separated string), together."""
    found: set[str] = set()
    for name in ("scope", "scp"):
        value = claims.get(name)
        if isinstance(value, str):
            found.update(value.split())
        elif isinstance(value, list | tuple):
            found.update(v for v in value if isinstance(v, str))
    return frozenset(found)


def verify_api_token(
    token: str | None,
    *,
    keys: ApprovalKeys,
    now: datetime | float | None = None,
    leeway_s: float = 30,
) -> ApiPrincipal:
    """The principal ``token`` proves, or ``AuthRefused`` (401) saying why not, or
    ``Unavailable`` (the JWKS URL did not answer: 503, the token may be fine)."""
    if token is None or not token.strip():
        raise AuthRefused(
            401,
            "missing",
            "no API token: send `Authorization: Bearer <token>` with a token from the "
            "identity provider (locally: `neuralops token issue-dev --scope ...`)",
        )
    token = token.strip()
    fp = approval.token_fingerprint(token)

    def refuse(reason: str, message: str) -> AuthRefused:
        return AuthRefused(401, reason, f"API token refused ({reason}): {_one_line(message)}")

    try:
        verified = approval.verify_signed_claims(
            token, keys=keys, refuse=refuse, now=now, leeway_s=leeway_s, kind=API_TOKEN
        )
    except Unavailable:
        raise Unavailable(
            f"API keys: the JWKS URL {keys.jwks_url} did not answer or served no usable keys; "
            "check NEURALOPS_API_JWKS_URL and that the identity provider is up"
        ) from None
    claims = verified.claims
    subject = claims.get("sub")
    if not isinstance(subject, str) or not subject.strip():
        raise refuse("malformed", "the token names no subject (`sub`)")
    issuer = claims.get("iss")
    return ApiPrincipal(
        subject=subject.strip(),
        scopes=scopes_of(claims),
        issuer=issuer if isinstance(issuer, str) else None,
        expires_at=approval._dt(verified.exp),
        fingerprint=fp,
        dev=keys.dev,
    )


def require_scope(principal: ApiPrincipal, scope: str) -> ApiPrincipal:
    """``principal`` if it holds ``scope``, else ``AuthRefused`` (403) naming it."""
    if scope not in SCOPES:
        raise ValueError(f"unknown scope {scope!r}")
    if scope not in principal.scopes:
        held = ", ".join(sorted(principal.scopes)) or "none"
        raise AuthRefused(
            403,
            "insufficient_scope",
            f"this operation needs the scope {scope!r}; the token of {principal.subject!r} "
            f"carries {held}",
            scope=scope,
        )
    return principal


def _one_line(text: str) -> str:
    return " ".join(text.split())


# --- where the API may listen -----------------------------------------------------------------


def is_loopback(host: str) -> bool:
    """Whether ``host`` is a loopback address or name (127.0.0.0/8, ::1, localhost)."""
    host = host.strip().strip("[]").lower()
    if host in LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check_bind_host(host: str, settings: Settings) -> None:
    """ConfigError when the API would listen beyond loopback without configured
    authentication (DEV ONLY keys must never face a network)."""
    if auth_configured(settings) or is_loopback(host):
        return
    raise ConfigError(
        f"refusing to serve the API on {host}: authentication is not configured (DEV ONLY "
        f"keys); set {SETTINGS_HINT}, or serve on 127.0.0.1"
    )


# --- DEV ONLY: tokens signed with the local dev key -------------------------------------------


def issue_dev_api_token(
    *,
    scopes: Sequence[str] | Iterable[str],
    private_key_path: Path | str,
    subject: str = DEV_SUBJECT,
    audience: str = REALM,
    issuer: str = approval.DEV_ISSUER,
    ttl_s: int = 3600,
    now: datetime | float | None = None,
    extra_claims: Mapping[str, Any] | None = None,
) -> str:
    """DEV ONLY. An ES256 API token signed with the dev key: ``sub``, ``scope``
    (space-separated), ``aud``, ``iss``, ``iat``/``nbf``/``exp``, ``jti``; no ``incident``
    and no roles, so it never approves anything."""
    import uuid

    import jwt

    from neuralops.errors import InvalidInput

    wanted = list(dict.fromkeys(scopes))
    unknown = [s for s in wanted if s not in SCOPES]
    if not wanted or unknown:
        what = f"{', '.join(map(repr, unknown))} is not a scope" if unknown else "none given"
        raise InvalidInput(f"scope: {what}; give one or more of {', '.join(SCOPES)}")
    if not str(subject).strip():
        raise InvalidInput("subject: give the subject (`sub`) the token speaks for")
    if ttl_s <= 0:
        raise InvalidInput("ttl_s: must be a positive number of seconds")
    issued = int(approval._timestamp(now))
    claims: dict[str, Any] = {
        "iss": issuer,
        "sub": str(subject).strip(),
        "aud": audience,
        "iat": issued,
        "nbf": issued,
        "exp": issued + int(ttl_s),
        "jti": uuid.uuid4().hex,
        "scope": " ".join(wanted),
    }
    claims.update(extra_claims or {})
    key = approval._load_dev_private(Path(private_key_path).expanduser())
    return jwt.encode(claims, key, algorithm="ES256")


def dev_api_token(
    settings: Settings, scopes: Iterable[str], *, subject: str = DEV_SUBJECT, ttl_s: int = 3600
) -> str:
    """DEV ONLY. A token the API of these ``settings`` accepts in dev mode."""
    private, _ = approval.dev_keypair(settings.data_dir)
    return issue_dev_api_token(
        scopes=list(scopes),
        private_key_path=private,
        subject=subject,
        audience=settings.api_audience,
        issuer=settings.api_issuer or approval.DEV_ISSUER,
        ttl_s=ttl_s,
    )
