"""Approval tokens: the proof of who approved a remediation (policy 4).

Prefect's open-source UI has no user identity, so the Resume form's "approver" field is only
a claim. What proves it is a JWT signed by the organisation's identity provider (IdP): this
module checks that the token is well formed, signed by a configured IdP key with an
asymmetric algorithm, unexpired, bound to this incident, carries the ``org-admin`` role and
names the same approver as the form. ``docs/policies/approval_workflow.md`` is the
specification; change both together.

No Prefect here: the ``remediate`` flow, the ``neuralops approve`` CLI and the
``blocks.approval`` block all call :func:`verify_approval_token`.

Refusals raise :class:`ApprovalRefused` with a ``reason`` code and a message an operator
can act on. Neither the message nor anything logged here contains the token: audit entries
record :func:`token_fingerprint` instead.

The ``dev_keypair`` / ``issue_dev_token`` helpers at the bottom are DEV ONLY: a local ES256
key pair for the demo and tests, used when no IdP key is configured (with a loud warning).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import uuid
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Literal

import jwt
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509 import load_pem_x509_certificate
from jwt import PyJWK, PyJWKClient, PyJWKSet
from jwt.exceptions import (
    DecodeError,
    InvalidKeyError,
    InvalidSignatureError,
    PyJWKClientConnectionError,
    PyJWKClientError,
    PyJWKError,
    PyJWKSetError,
    PyJWTError,
)
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PrivateAttr,
    ValidationError,
    field_validator,
    model_validator,
)

from neuralops.errors import ConfigError, FieldProblem, InvalidInput, Unavailable
from neuralops.settings import Settings

log = logging.getLogger(__name__)

REQUIRED_ROLE = "org-admin"
INCIDENT_CLAIMS = ("incident", "incident_id")  # the first is what NeuralOps issues
DEV_ISSUER = "neuralops-dev"
DEV_PRIVATE_KEY = "approval-dev.pem"
DEV_PUBLIC_KEY = "approval-dev.pub.pem"
FINGERPRINT_HEX = 16
MAX_TOKEN_CHARS = 16 * 1024  # IdP tokens with many groups run to a few KiB, not more

# Asymmetric only. HS* would let anyone holding the verification key (which is public) mint
# tokens; ``none`` is no signature at all.
ASYMMETRIC_ALGORITHMS = (
    "RS256",
    "RS384",
    "RS512",
    "PS256",
    "PS384",
    "PS512",
    "ES256",
    "ES384",
    "ES512",
)
_EC_CURVES = {"ES256": "secp256r1", "ES384": "secp384r1", "ES512": "secp521r1"}

RefusalReason = Literal[
    "missing",
    "malformed",
    "alg_not_allowed",
    "bad_signature",
    "unknown_key",
    "expired",
    "not_yet_valid",
    "wrong_incident",
    "wrong_role",
    "approver_mismatch",
    "wrong_issuer",
    "wrong_audience",
]
REFUSAL_REASONS: tuple[str, ...] = RefusalReason.__args__  # type: ignore[attr-defined]

PublicKey = rsa.RSAPublicKey | ec.EllipticCurvePublicKey


class ApprovalRefused(InvalidInput):
    """The approval token does not prove this approval; ``reason`` is one of
    ``REFUSAL_REASONS``, ``fingerprint`` the token's (None if there was no token).

    The message says what is wrong and how to get a good token; it never holds the token.
    """

    def __init__(self, reason: RefusalReason, message: str, fingerprint: str | None = None):
        super().__init__(
            f"approval token refused ({reason}): {message}", [FieldProblem("token", message)]
        )
        self.reason: RefusalReason = reason
        self.detail = message
        self.fingerprint = fingerprint

    def audit_payload(self) -> dict[str, Any]:
        """What an ``approval.refused`` audit entry records (no token, only its fingerprint)."""
        return {
            "reason": self.reason,
            "message": self.detail,
            "token_fingerprint": self.fingerprint,
        }


# --- keys ------------------------------------------------------------------------------------


class ApprovalKeys(BaseModel):
    """Where the IdP's public keys come from and what the tokens must look like.

    Exactly one key source: ``public_key_pem`` (an RSA or EC public key, or a certificate),
    ``jwks`` (a JWKS document) or ``jwks_url`` (fetched with PyJWT's ``PyJWKClient``,
    cached for ``jwks_cache_s``; a key id not in the cache triggers one refetch, so key
    rotation works). Build with the ``from_*`` constructors or :func:`keys_from_settings`
    (they raise ConfigError naming the source); build anew rather than ``model_copy(update=)``,
    which would keep the old keys.
    """

    model_config = ConfigDict(frozen=True)

    public_key_pem: str | None = Field(None, description="PEM public key or certificate.")
    jwks: dict[str, Any] | None = Field(None, description="A JWKS document ({'keys': [...]}).")
    jwks_url: str | None = Field(None, description="The IdP's JWKS URL (http or https).")
    algorithms: tuple[str, ...] = Field(
        ("RS256", "PS256", "ES256"), description="Allowed `alg` values (asymmetric only)."
    )
    issuer: str | None = Field(None, description="Required `iss`; None: not checked.")
    audience: str | None = Field(None, description="Required in `aud`; None: not checked.")
    roles_claim: str = Field(
        "roles", description="Dotted path of the roles list, e.g. `realm_access.roles`."
    )
    approver_claim: str = Field(
        "sub", description="Claim that must equal the approver id given in the form."
    )
    jwks_timeout_s: float = Field(10.0, gt=0, le=120)
    jwks_cache_s: float = Field(300.0, gt=0)
    label: str = Field("", description="Where the keys came from, for messages (no secrets).")
    dev: bool = Field(False, description="True for the local DEV ONLY key.")

    _public_key: PublicKey | None = PrivateAttr(None)
    _jwk_set: list[PyJWK] = PrivateAttr(default_factory=list)
    _client: PyJWKClient | None = PrivateAttr(None)

    @field_validator("algorithms")
    @classmethod
    def _asymmetric_only(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        if not value:
            raise ValueError(f"allow at least one of {', '.join(ASYMMETRIC_ALGORITHMS)}")
        bad = [a for a in value if a not in ASYMMETRIC_ALGORITHMS]
        if bad:
            raise ValueError(
                f"{', '.join(map(repr, bad))} not allowed: approval tokens must be signed with "
                f"an asymmetric algorithm ({', '.join(ASYMMETRIC_ALGORITHMS)}); "
                "never HS* (the verification key would be able to mint tokens) or none"
            )
        return tuple(dict.fromkeys(value))

    @field_validator("roles_claim", "approver_claim")
    @classmethod
    def _claim_path(cls, value: str) -> str:
        value = value.strip()
        if not value or any(not part for part in value.split(".")):
            raise ValueError("a claim name or dotted path such as `realm_access.roles`")
        return value

    @field_validator("jwks_url")
    @classmethod
    def _http_url(cls, value: str | None) -> str | None:
        if value is not None and not value.startswith(("http://", "https://")):
            raise ValueError("must start with http:// or https://")
        return value

    @model_validator(mode="after")
    def _load_keys(self) -> ApprovalKeys:
        sources = [
            n for n in ("public_key_pem", "jwks", "jwks_url") if getattr(self, n) is not None
        ]
        if len(sources) != 1:
            raise ValueError(
                "give exactly one key source: public_key_pem, jwks or jwks_url"
                + (f" (got {', '.join(sources)})" if sources else "")
            )
        if self.public_key_pem is not None:
            self._public_key = _load_public_pem(self.public_key_pem)
        elif self.jwks is not None:
            self._jwk_set = _load_jwks(self.jwks)
        else:
            self._client = PyJWKClient(
                str(self.jwks_url),
                cache_keys=False,
                cache_jwk_set=True,
                lifespan=self.jwks_cache_s,
                timeout=self.jwks_timeout_s,
            )
        return self

    # Key objects and the JWKS client do not pickle or deep-copy: rebuild them from the fields
    # (Prefect may pickle or copy task parameters).
    def __reduce__(self) -> tuple[Any, ...]:
        return (_rebuild_keys, (self.model_dump(),))

    def __deepcopy__(self, memo: dict[int, Any] | None = None) -> ApprovalKeys:
        return _rebuild_keys(self.model_dump())

    def __eq__(self, other: object) -> bool:  # the fields, not the loaded key objects
        if not isinstance(other, ApprovalKeys):
            return NotImplemented
        return self.model_dump() == other.model_dump()

    def __hash__(self) -> int:
        return hash(json.dumps(self.model_dump(), sort_keys=True, default=str))

    # constructors: configuration errors become ConfigError naming ``source``

    @classmethod
    def build(cls, source: str, *, what: str = "approval keys", **fields: Any) -> ApprovalKeys:
        """``ApprovalKeys(**fields)``, a bad value raising ConfigError that names ``source``
        (``what`` the keys are, e.g. "API keys", leads the message)."""
        try:
            return cls(**fields)
        except ValidationError as exc:
            problems = "; ".join(
                (".".join(str(p) for p in e["loc"]) + ": " if e["loc"] else "")
                + e["msg"].removeprefix("Value error, ")
                for e in exc.errors(include_url=False)
            )
            raise ConfigError(f"{what} from {source}: {problems}") from None

    @classmethod
    def from_pem(cls, pem: str | bytes, **options: Any) -> ApprovalKeys:
        text = pem.decode() if isinstance(pem, bytes) else pem
        options.setdefault("label", "PEM public key")
        return cls.build("a PEM public key", public_key_pem=text, **options)

    @classmethod
    def from_pem_file(cls, path: Path | str, **options: Any) -> ApprovalKeys:
        path = Path(path).expanduser()
        try:
            text = path.read_text()
        except OSError as exc:
            raise ConfigError(
                f"approval public key {path}: cannot read it ({exc.strerror or exc}); "
                "point NEURALOPS_APPROVAL_PUBLIC_KEY at the IdP's PEM public key"
            ) from None
        options.setdefault("label", f"PEM public key {path}")
        return cls.build(str(path), public_key_pem=text, **options)

    @classmethod
    def from_jwks(cls, document: Mapping[str, Any] | str | Path, **options: Any) -> ApprovalKeys:
        """A JWKS given as a dict, a JSON string or a file path."""
        source = "a JWKS document"
        if isinstance(document, Path) or (
            isinstance(document, str) and not document.lstrip().startswith("{")
        ):
            path = Path(document).expanduser()
            source = str(path)
            try:
                document = path.read_text()
            except OSError as exc:
                raise ConfigError(f"JWKS file {path}: cannot read it ({exc.strerror})") from None
        if isinstance(document, str):
            try:
                document = json.loads(document)
            except ValueError as exc:
                raise ConfigError(f"JWKS from {source}: not JSON ({exc})") from None
        if not isinstance(document, Mapping):
            raise ConfigError(f"JWKS from {source}: must be a JSON object with 'keys'")
        options.setdefault("label", f"JWKS {source}")
        return cls.build(source, jwks=dict(document), **options)

    @classmethod
    def from_jwks_url(cls, url: str, **options: Any) -> ApprovalKeys:
        options.setdefault("label", f"JWKS {url}")
        return cls.build(url, jwks_url=url, **options)

    # key lookup

    def candidates(self, kid: str | None) -> list[tuple[PublicKey, str | None]]:
        """The public keys a token with header ``kid`` may be signed with, each with its
        JWK ``alg`` (None when the key does not pin one).

        Raises Unavailable when the JWKS URL does not answer, and ``ApprovalRefused``
        (unknown_key) when the key set holds no key with this ``kid``.
        """
        if self._public_key is not None:
            return [(self._public_key, None)]
        jwks = self._jwk_set if self._client is None else self._remote_keys()
        if kid is None or not any(k.key_id for k in jwks):  # no key ids to select by
            return [(k.key, _jwk_alg(k)) for k in jwks]
        found = [k for k in jwks if k.key_id == kid]
        if not found and self._client is not None:
            found = self._remote_key(kid)  # refetches once: a key rotated in since caching
        if not found:
            known = ", ".join(sorted(repr(k.key_id) for k in jwks if k.key_id)) or "none"
            raise ApprovalRefused(
                "unknown_key",
                f"the token names signing key id {_short(kid)!r}, which {self.label} does not "
                f"hold (its key ids: {known}); the token comes from another identity provider "
                "or realm, or the IdP rotated its keys: get a new token from the configured IdP",
            )
        return [(k.key, _jwk_alg(k)) for k in found]

    def _remote_keys(self) -> list[PyJWK]:
        assert self._client is not None
        try:
            return _usable(self._client.get_jwk_set().keys)
        except PyJWKClientConnectionError as exc:
            raise Unavailable(
                f"approval keys: the JWKS URL {self.jwks_url} did not answer ({_cause(exc)}); "
                "check NEURALOPS_APPROVAL_JWKS_URL and that the identity provider is up"
            ) from None
        except (PyJWKClientError, PyJWKSetError, PyJWKError) as exc:
            raise Unavailable(
                f"approval keys: the JWKS URL {self.jwks_url} returned no usable keys ({exc}); "
                "it must serve a JSON Web Key Set ({'keys': [...]}) with RSA or EC keys"
            ) from None

    def _remote_key(self, kid: str) -> list[PyJWK]:
        assert self._client is not None
        try:
            return _usable([self._client.get_signing_key(kid)])
        except PyJWKClientConnectionError as exc:
            raise Unavailable(
                f"approval keys: the JWKS URL {self.jwks_url} did not answer ({_cause(exc)})"
            ) from None
        except PyJWTError:
            return []


def _rebuild_keys(fields: dict[str, Any]) -> ApprovalKeys:
    return ApprovalKeys(**fields)


def _jwk_alg(key: PyJWK) -> str | None:
    data = getattr(key, "_jwk_data", None)
    alg = data.get("alg") if isinstance(data, dict) else None
    return alg if isinstance(alg, str) else None


def _usable(keys: Iterable[PyJWK]) -> list[PyJWK]:
    """RSA and EC signing keys only: an ``oct`` (shared secret) key is never a verifier."""
    return [
        k
        for k in keys
        if k.key_type in ("RSA", "EC")
        and k.public_key_use in ("sig", None)
        and isinstance(k.key, rsa.RSAPublicKey | ec.EllipticCurvePublicKey)
    ]


def _load_jwks(document: Mapping[str, Any]) -> list[PyJWK]:
    try:
        keys = _usable(PyJWKSet.from_dict(dict(document)).keys)
    except (PyJWKSetError, PyJWKError) as exc:
        raise ValueError(f"not a usable JSON Web Key Set: {exc}") from None
    if not keys:
        raise ValueError(
            "the JWKS holds no RSA or EC public signing key (private or symmetric keys are refused)"
        )
    return keys


def _load_public_pem(text: str) -> PublicKey:
    data = text.strip().encode()
    if b"PRIVATE KEY" in data:
        raise ValueError("this is a private key: configure the IdP's PUBLIC key")
    try:
        if b"BEGIN CERTIFICATE" in data:
            key = load_pem_x509_certificate(data).public_key()
        else:
            key = serialization.load_pem_public_key(data)
    except (ValueError, TypeError, UnsupportedAlgorithm):
        raise ValueError(
            "not a PEM public key or certificate (expected -----BEGIN PUBLIC KEY-----)"
        ) from None
    if not isinstance(key, rsa.RSAPublicKey | ec.EllipticCurvePublicKey):
        raise ValueError(f"{type(key).__name__} is not supported: use an RSA or EC key")
    return key


def keys_from_settings(settings: Settings) -> ApprovalKeys:
    """The approval keys the settings configure (``NEURALOPS_APPROVAL_*``).

    ``approval_public_key`` is a PEM file path; ``approval_jwks_url`` a JWKS URL; setting
    both is an error. With neither,
    DEV ONLY: the local dev key under ``<data dir>/keys`` (created if absent), with a loud
    warning, and tokens must come from ``neuralops token issue-dev``.
    """
    options: dict[str, Any] = {
        "issuer": settings.approval_issuer,
        "audience": settings.approval_audience,
    }
    pem, url = settings.approval_public_key, settings.approval_jwks_url
    if pem is not None and url:
        raise ConfigError(
            "set one of NEURALOPS_APPROVAL_PUBLIC_KEY or NEURALOPS_APPROVAL_JWKS_URL, not both"
        )
    if pem is not None:
        if str(pem).lstrip().startswith("-----BEGIN"):  # a Path would mangle the PEM's "//"
            raise ConfigError(
                "NEURALOPS_APPROVAL_PUBLIC_KEY is the path of a PEM file, not the PEM text: "
                "write the key to a file (or paste it into the NeuralOps Approval Keys block)"
            )
        return ApprovalKeys.from_pem_file(pem, **options)
    if url:
        return ApprovalKeys.from_jwks_url(url, **options)
    _, public = dev_keypair(settings.data_dir)
    log.warning(
        "DEV ONLY: no approval key configured (NEURALOPS_APPROVAL_PUBLIC_KEY or "
        "NEURALOPS_APPROVAL_JWKS_URL); approval tokens are checked against the local dev key "
        "%s, so anyone who can read the data dir can approve remediations. Configure the "
        "identity provider's key before production.",
        public,
    )
    options["issuer"] = settings.approval_issuer or DEV_ISSUER
    return ApprovalKeys.build(
        str(public),
        public_key_pem=public.read_text(),
        algorithms=("ES256",),
        label=f"DEV ONLY key {public}",
        dev=True,
        **options,
    )


# --- verification ----------------------------------------------------------------------------


class ApprovalClaims(BaseModel):
    """What a verified approval token proved; ``audit_payload()`` is what to record."""

    model_config = ConfigDict(frozen=True)

    approver: str
    roles: tuple[str, ...]
    incident_id: str
    issued_at: datetime | None
    expires_at: datetime
    not_before: datetime | None = None
    jti: str | None = None
    issuer: str | None = None
    algorithm: str
    key_id: str | None = None
    fingerprint: str
    dev: bool = False

    def audit_payload(self) -> dict[str, Any]:
        return {
            "approver": self.approver,
            "roles": list(self.roles),
            "issuer": self.issuer,
            "jti": self.jti,
            "token_fingerprint": self.fingerprint,
            "token_expires_at": self.expires_at.isoformat(),
            "dev_key": self.dev,
        }


def token_fingerprint(token: str) -> str:
    """First 16 hex digits of the SHA-256 of the token: what audit entries record instead."""
    return hashlib.sha256(_normalise(token).encode()).hexdigest()[:FINGERPRINT_HEX]


def _normalise(token: str) -> str:
    token = token.strip()
    scheme, _, rest = token.partition(" ")
    if scheme.lower() == "bearer" or token.lower() == "bearer":
        token = rest.strip()
    return token


@dataclass(frozen=True)
class TokenKind:
    """What a verified JWT is for, in refusal messages: its name, the settings that configure
    it and what to do with a fresh token."""

    name: str
    env_prefix: str
    again: str
    audience_hint: str


APPROVAL_TOKEN = TokenKind(
    "approval", "NEURALOPS_APPROVAL", "submit the approval again", "request a token for NeuralOps"
)


class VerifiedJwt(BaseModel):
    """A JWT whose signature, algorithm, times, issuer and audience were checked."""

    model_config = ConfigDict(frozen=True)

    claims: dict[str, Any]
    algorithm: str
    key_id: str | None
    exp: float
    nbf: float | None
    iat: float | None


def verify_signed_claims(
    token: str,
    *,
    keys: ApprovalKeys,
    refuse: Any,
    now: datetime | float | None = None,
    leeway_s: float = 30,
    kind: TokenKind = APPROVAL_TOKEN,
) -> VerifiedJwt:
    """The checks every NeuralOps bearer JWT passes (approval and API tokens alike): a JWT,
    an allowed asymmetric ``alg``, a signature by one of ``keys``, ``exp`` required and not
    past, ``nbf``/``iat`` not in the future, and the issuer and audience ``keys`` require.

    ``token`` is already normalised (no ``Bearer``); ``refuse(reason, message)`` builds the
    exception to raise. What the token proves beyond that is the caller's to check.
    """
    if len(token) > MAX_TOKEN_CHARS or token.count(".") != 2:
        raise refuse("malformed", "this is not a JWT (three base64url parts separated by dots)")
    try:
        header = jwt.get_unverified_header(token)
    except (DecodeError, ValueError):
        raise refuse(
            "malformed", "this is not a JWT (its header does not decode); copy the whole token"
        ) from None

    alg = header.get("alg")
    if not isinstance(alg, str) or alg not in keys.algorithms:
        shown = repr(_short(alg)) if isinstance(alg, str) else "no algorithm"
        raise refuse(
            "alg_not_allowed",
            f"the token is signed with {shown}; only {', '.join(keys.algorithms)} are accepted "
            "(unsigned and shared-secret tokens never are)",
        )
    kid = header.get("kid")
    if kid is not None and not isinstance(kid, str):
        raise refuse("malformed", "the token header's `kid` is not a string")

    claims = _verified_payload(token, alg, kid, keys, refuse)

    moment = _timestamp(now)
    exp = _numeric(claims, "exp", refuse, required=True, kind=kind.name)
    nbf = _numeric(claims, "nbf", refuse)
    iat = _numeric(claims, "iat", refuse)
    assert exp is not None
    if exp <= moment - leeway_s:
        raise refuse(
            "expired",
            f"the token expired at {_iso(exp)} ({_ago(moment - exp)} ago): get a fresh token "
            f"from the identity provider and {kind.again}",
        )
    if nbf is not None and nbf > moment + leeway_s:
        raise refuse(
            "not_yet_valid",
            f"the token is not valid before {_iso(nbf)}: check this machine's and the IdP's "
            "clocks, or wait and submit again",
        )
    if iat is not None and iat > moment + leeway_s:
        raise refuse(
            "not_yet_valid",
            f"the token claims to be issued at {_iso(iat)}, in the future: check the clocks",
        )
    if iat is not None and iat > exp:
        raise refuse("malformed", "the token's `iat` is after its `exp`")

    if keys.issuer is not None and claims.get("iss") != keys.issuer:
        raise refuse(
            "wrong_issuer",
            f"the token was issued by {_show(claims.get('iss'))}, not by {keys.issuer!r} "
            f"({kind.env_prefix}_ISSUER): get it from the configured identity provider",
        )
    if keys.audience is not None:
        aud = claims.get("aud")
        audiences = [aud] if isinstance(aud, str) else aud if isinstance(aud, list) else []
        if keys.audience not in audiences:
            raise refuse(
                "wrong_audience",
                f"the token is for audience {_show(aud)}, not {keys.audience!r} "
                f"({kind.env_prefix}_AUDIENCE): {kind.audience_hint}",
            )
    return VerifiedJwt(claims=claims, algorithm=alg, key_id=kid, exp=exp, nbf=nbf, iat=iat)


def verify_approval_token(
    token: str | None,
    *,
    incident_id: str | uuid.UUID,
    approver: str,
    keys: ApprovalKeys,
    now: datetime | float | None = None,
    leeway_s: float = 30,
) -> ApprovalClaims:
    """Check that ``token`` proves ``approver`` (an ``org-admin``) approved ``incident_id``.

    Returns the verified claims, or raises ``ApprovalRefused`` (reason code and message) or
    ``Unavailable`` (the JWKS URL did not answer: retry, the token may be fine).
    """
    if token is None or not isinstance(token, str) or not _normalise(token):
        raise ApprovalRefused(
            "missing",
            "no approval token was given: paste the JWT your identity provider issued to you "
            f"(it must carry the {REQUIRED_ROLE!r} role and the incident id {str(incident_id)!r})",
        )
    token = _normalise(token)
    fp = token_fingerprint(token)

    def refuse(reason: RefusalReason, message: str) -> ApprovalRefused:
        return ApprovalRefused(reason, message, fp)

    verified = verify_signed_claims(token, keys=keys, refuse=refuse, now=now, leeway_s=leeway_s)
    claims, alg, kid = verified.claims, verified.algorithm, verified.key_id
    exp, nbf, iat = verified.exp, verified.nbf, verified.iat

    bound = _incident_claim(claims, refuse)
    if not _same_incident(bound, incident_id):
        raise refuse(
            "wrong_incident",
            f"the token approves incident {_show(bound)}, not {str(incident_id)!r}: "
            "a token is valid for one incident only; request one for this incident",
        )

    roles = _roles(_claim_at(claims, keys.roles_claim))
    if roles is None:
        raise refuse(
            "wrong_role",
            f"the token carries no roles claim at `{keys.roles_claim}`; it must list "
            f"{REQUIRED_ROLE!r} (set the roles claim path if your IdP puts roles elsewhere)",
        )
    if REQUIRED_ROLE not in roles:
        raise refuse(
            "wrong_role",
            f"the token's roles ({', '.join(map(repr, roles[:10])) or 'none'}) do not include "
            f"{REQUIRED_ROLE!r}: only an organisation admin may approve a remediation",
        )

    subject = _claim_at(claims, keys.approver_claim)
    wanted = (approver or "").strip()
    if not wanted:
        raise refuse(
            "approver_mismatch",
            f"the approver field is empty: enter your id as the token's `{keys.approver_claim}` "
            "names it",
        )
    if not isinstance(subject, str) or subject != wanted:
        raise refuse(
            "approver_mismatch",
            f"the token belongs to {_show(subject)} (claim `{keys.approver_claim}`), but the "
            f"approver given is {_short(wanted)!r}: approve under your own id with your own token",
        )

    jti = claims.get("jti")
    iss = claims.get("iss")
    return ApprovalClaims(
        approver=subject,
        roles=tuple(roles),
        incident_id=str(bound),
        issued_at=_dt(iat),
        expires_at=_dt(exp),
        not_before=_dt(nbf),
        jti=jti if isinstance(jti, str) else None,
        issuer=iss if isinstance(iss, str) else None,
        algorithm=alg,
        key_id=kid,
        fingerprint=fp,
        dev=keys.dev,
    )


def _verified_payload(token, alg, kid, keys, refuse) -> dict[str, Any]:
    try:
        found = keys.candidates(kid)
    except ApprovalRefused as exc:  # unknown_key: add this token's fingerprint
        raise refuse(exc.reason, exc.detail) from None
    candidates = [
        key for key, pinned in found if (pinned is None or pinned == alg) and _fits(key, alg)
    ]
    if not candidates:
        raise refuse(
            "bad_signature",
            f"the token is signed with {alg}, which no key of {keys.label} can verify: it was "
            "signed by another key; get a token from the configured identity provider",
        )
    off = {
        "verify_exp": False,
        "verify_nbf": False,
        "verify_iat": False,
        "verify_aud": False,
        "verify_iss": False,
        "verify_sub": False,
        "verify_jti": False,
    }
    for key in candidates:
        try:
            return jwt.decode(token, key, algorithms=[alg], options=off)  # type: ignore[arg-type]
        except (InvalidSignatureError, InvalidKeyError):
            continue
        except DecodeError:
            raise refuse("malformed", "the token's payload is not a JSON object") from None
        except PyJWTError:
            continue
    raise refuse(
        "bad_signature",
        f"the signature does not verify with {keys.label}: the token was signed by another "
        "key or altered; get a token from the configured identity provider",
    )


def _fits(key: PublicKey, alg: str) -> bool:
    if alg.startswith(("RS", "PS")):
        return isinstance(key, rsa.RSAPublicKey)
    return isinstance(key, ec.EllipticCurvePublicKey) and key.curve.name == _EC_CURVES.get(alg)


def _numeric(
    claims: Mapping[str, Any], name: str, refuse, required: bool = False, kind: str = "approval"
) -> float | None:
    value = claims.get(name)
    if value is None:
        if required:
            raise refuse("malformed", f"the token has no `{name}` claim: {kind} tokens must expire")
        return None
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise refuse("malformed", f"the token's `{name}` is not a number of seconds")
    return float(value)


def _incident_claim(claims: Mapping[str, Any], refuse) -> str | None:
    values = [claims[n] for n in INCIDENT_CLAIMS if claims.get(n) is not None]
    if not values:
        raise refuse(
            "wrong_incident",
            "the token is not bound to an incident (no `incident` claim): request a token "
            "for this incident",
        )
    if any(not isinstance(v, str) for v in values):
        raise refuse("wrong_incident", "the token's `incident` claim is not a string")
    if len(set(values)) > 1:
        raise refuse("wrong_incident", "the token's `incident` and `incident_id` claims differ")
    return values[0]


def _same_incident(bound: str | None, incident_id: str | uuid.UUID) -> bool:
    if bound is None:
        return False
    wanted = str(incident_id).strip()
    try:
        return uuid.UUID(bound) == uuid.UUID(wanted)
    except ValueError:
        return bound.strip() == wanted


def _claim_at(claims: Mapping[str, Any], path: str) -> Any:
    if path in claims:  # a claim whose name holds dots (some IdPs use URLs as names)
        return claims[path]
    value: Any = claims
    for part in path.split("."):
        if not isinstance(value, Mapping) or part not in value:
            return None
        value = value[part]
    return value


def _roles(value: Any) -> list[str] | None:
    """A list of role names, or a space/comma separated string of them."""
    if isinstance(value, str):
        return [r for r in value.replace(",", " ").split() if r]
    if isinstance(value, list | tuple):
        return [r for r in value if isinstance(r, str)]
    return None


def _timestamp(now: datetime | float | None) -> float:
    if now is None:
        return datetime.now(UTC).timestamp()
    if isinstance(now, datetime):
        return (now if now.tzinfo else now.replace(tzinfo=UTC)).timestamp()
    return float(now)


def _dt(value: float | None) -> datetime | None:
    return None if value is None else datetime.fromtimestamp(value, UTC)


def _iso(value: float) -> str:
    return datetime.fromtimestamp(value, UTC).isoformat(timespec="seconds")


def _ago(seconds: float) -> str:
    return str(timedelta(seconds=round(max(seconds, 0))))


def _short(value: Any, limit: int = 80) -> str:
    text = str(value)
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _show(value: Any) -> str:
    return "nothing" if value is None else repr(_short(value) if isinstance(value, str) else value)


def _cause(exc: Exception) -> str:
    reason = getattr(exc.__cause__, "reason", None) or exc.__cause__ or exc
    return _short(reason, 160)


# --- DEV ONLY: a local key pair and tokens for the demo and tests ------------------------------


def dev_keypair(data_dir: Path | str) -> tuple[Path, Path]:
    """DEV ONLY. ``(private_pem, public_pem)`` of an ES256 (P-256) pair under
    ``<data_dir>/keys/``, created if absent (private key mode 0600). Anyone who can read the
    private key can approve remediations: never use it where an IdP is available."""
    keys_dir = Path(data_dir).expanduser() / "keys"
    keys_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    private, public = keys_dir / DEV_PRIVATE_KEY, keys_dir / DEV_PUBLIC_KEY
    if not private.exists():
        key = ec.generate_private_key(ec.SECP256R1())
        pem = key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
        try:
            fd = os.open(private, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:
            pass  # another process made it first: use theirs
        else:
            with os.fdopen(fd, "wb") as fh:
                fh.write(pem)
            public.unlink(missing_ok=True)  # a stale public key from an older pair
    if not public.exists():
        key = _load_dev_private(private)
        tmp = public.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_bytes(
            key.public_key().public_bytes(
                serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
            )
        )
        tmp.replace(public)
    return private, public


def _load_dev_private(path: Path) -> ec.EllipticCurvePrivateKey:
    try:
        key = serialization.load_pem_private_key(path.read_bytes(), password=None)
    except (OSError, ValueError, TypeError, UnsupportedAlgorithm) as exc:
        raise ConfigError(f"dev approval key {path}: cannot load it ({exc})") from None
    if not isinstance(key, ec.EllipticCurvePrivateKey) or key.curve.name != "secp256r1":
        raise ConfigError(f"dev approval key {path}: must be an EC P-256 private key")
    return key


def issue_dev_token(
    *,
    incident_id: str | uuid.UUID,
    approver: str,
    roles: Sequence[str] = (REQUIRED_ROLE,),
    ttl_s: int = 3600,
    private_key_path: Path | str,
    issuer: str = DEV_ISSUER,
    kid: str | None = None,
    audience: str | None = None,
    now: datetime | float | None = None,
    extra_claims: Mapping[str, Any] | None = None,
) -> str:
    """DEV ONLY. An ES256 approval token signed with the dev key, as an IdP would issue it:
    ``sub`` = approver, ``roles``, ``incident``, ``iss``, ``iat``/``nbf``/``exp``, ``jti``."""
    if not str(approver).strip():
        raise InvalidInput("approver: give the approver id the token is for")
    if not str(incident_id).strip():
        raise InvalidInput("incident: give the incident id the token approves")
    if ttl_s <= 0:
        raise InvalidInput("ttl_s: must be a positive number of seconds")
    issued = int(_timestamp(now))
    claims: dict[str, Any] = {
        "iss": issuer,
        "sub": str(approver).strip(),
        "iat": issued,
        "nbf": issued,
        "exp": issued + int(ttl_s),
        "jti": uuid.uuid4().hex,
        "incident": str(incident_id).strip(),
        "roles": list(roles),
    }
    if audience is not None:
        claims["aud"] = audience
    claims.update(extra_claims or {})
    key = _load_dev_private(Path(private_key_path).expanduser())
    headers = {"kid": kid} if kid else None
    return jwt.encode(claims, key, algorithm="ES256", headers=headers)
