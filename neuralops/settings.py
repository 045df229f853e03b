"""One settings object, read from the environment.

Names are ``NEURALOPS_*``; the connection settings also answer to the plain names an
operator already exports (``POSTGRES_DSN``, ``PROM_URL``, ``VAULT_ADDR``, ...).
Secrets are ``SecretStr`` so they never print in a repr or a log line.
"""

from __future__ import annotations

import re
from functools import lru_cache
from pathlib import Path
from typing import Literal

from pydantic import AliasChoices, Field, SecretStr, ValidationError, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict
from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import ArgumentError

from neuralops.errors import ConfigError

POSTGRES_SCHEMES = {"postgres", "postgresql", "postgresql+psycopg"}
DASK_SCHEMES = {"tcp", "tls", "ws", "wss", "inproc", "ucx"}


def _env(name: str) -> AliasChoices:
    """Accept both NEURALOPS_<NAME> and the plain <NAME>."""
    return AliasChoices(f"NEURALOPS_{name}", name)


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="NEURALOPS_", extra="ignore", frozen=True)

    data_dir: Path = Field(
        Path("~/.neuralops"),
        description="Holds the SQLite database, LanceDB, local dev keys and the local audit sink.",
    )
    postgres_dsn: SecretStr | None = Field(
        None,
        validation_alias=_env("POSTGRES_DSN"),
        description="postgresql://user:pass@host:5432/db; unset means SQLite in the data dir.",
    )
    prom_url: str | None = Field(None, validation_alias=_env("PROM_URL"))
    prom_token: SecretStr | None = Field(None, validation_alias=_env("PROM_TOKEN"))
    prom_username: str | None = Field(None, validation_alias=_env("PROM_USERNAME"))
    prom_password: SecretStr | None = Field(None, validation_alias=_env("PROM_PASSWORD"))
    prom_timeout_s: float = Field(10.0, gt=0, le=600, description="Per Prometheus request.")
    replay_file: Path | None = Field(
        None, description="CSV or Parquet samples to detect on when PROM_URL is unset."
    )
    vault_addr: str | None = Field(None, validation_alias=_env("VAULT_ADDR"))
    vault_role: str | None = Field(None, validation_alias=_env("VAULT_ROLE"))
    vault_token: SecretStr | None = Field(None, validation_alias=_env("VAULT_TOKEN"))
    vault_transit_mount: str = Field("transit", description="Mount path of Vault's transit engine.")
    signing_key: str = Field(
        "neuralops-playbooks", description="Vault transit key (ecdsa-p256) that signs playbooks."
    )
    signing_key_file: Path | None = Field(
        None,
        description="DEV ONLY: a local P-256 private key (PEM) used when VAULT_ADDR is unset; "
        "unset means <data dir>/keys/signing-dev.pem.",
    )
    signing_public_key: Path | None = Field(
        None,
        description="PEM public key that playbook signatures must verify against (pinned); "
        "unset means the key exported from Vault transit, or the dev key's.",
    )
    approval_public_key: Path | None = Field(
        None, description="PEM public key of the identity provider that signs approval tokens."
    )
    approval_jwks_url: str | None = Field(
        None, description="JWKS URL of the identity provider (instead of a PEM key)."
    )
    approval_issuer: str | None = Field(None, description="Required `iss` of approval tokens.")
    approval_audience: str | None = Field(None, description="Required `aud` of approval tokens.")
    approval_timeout_s: int = Field(
        3600, gt=0, le=7 * 86400, description="How long a remediation waits for approval."
    )
    remediate_min_score: float = Field(
        0.9999,
        gt=0,
        le=1,
        description="Signals scoring at least this start the remediate flow (the event trigger).",
    )
    kill_switch: bool = Field(
        False, description="Force manual approval for every remediation, whatever the playbook."
    )
    storm_max_incidents: int = Field(
        10, ge=1, description="More incidents than this within storm_window_s forces manual."
    )
    storm_window_s: int = Field(900, gt=0)
    storm_max_failures: int = Field(
        3, ge=1, description="This many consecutive failed executions of a playbook force manual."
    )
    max_remediations_per_cluster: int = Field(
        2, ge=1, description="Concurrent remediations per cluster (a Prefect concurrency limit)."
    )
    settle_s: int = Field(
        120, ge=0, le=3600, description="Wait after execution before checking the signal again."
    )
    s3_bucket: str | None = Field(None, validation_alias=_env("S3_BUCKET"))
    audit_dir: Path | None = Field(
        None, description="Local audit archive (the default sink); unset means <data dir>/audit."
    )
    audit_retention_days: int = Field(
        365, ge=1, description="S3 Object Lock retention of shipped audit batches, where enabled."
    )
    s3_endpoint_url: str | None = Field(
        None,
        validation_alias=AliasChoices(
            "NEURALOPS_S3_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL"
        ),
    )
    lancedb_uri: str | None = Field(None, validation_alias=_env("LANCEDB_URI"))
    embedder: Literal["auto", "minilm", "hashing"] = Field(
        "auto",
        description="auto: MiniLM, or hashing with a warning if its package is absent.",
    )
    redaction_key: SecretStr | None = Field(
        None,
        description="HMAC key for hashed fields in exported runs; unset means the dev key.",
    )
    rules_file: Path | None = Field(
        None, description="Detection rules (YAML); unset means the shipped neuralops/rules."
    )
    trusted_writers: str = Field(
        "",
        description="Comma-separated run provenances whose runs teach the recommender although "
        "unverified (e.g. `api:ci-bot,seed`); verified runs (NeuralOps' executions, flow runs "
        "the Prefect API confirms) always do. docs/run-history.md.",
    )
    dask_address: str | None = Field(
        None,
        description="Dask scheduler (tcp://host:8786) that runs the detect flow's per-rule "
        "tasks; `local` starts a temporary LocalCluster per run; unset means Prefect's "
        "thread pool. Needs the `dask` extra.",
    )
    prefect_api_url: str | None = Field(None, validation_alias=AliasChoices("PREFECT_API_URL"))
    cluster: str | None = Field(
        None, description="Name of the cluster this process runs in (connectors set it)."
    )
    api_host: str = "127.0.0.1"
    api_port: int = Field(8787, ge=1, le=65535)
    api_max_body_bytes: int = Field(2 * 1024 * 1024, gt=0)
    api_public_key: Path | None = Field(
        None,
        description="PEM public key (a file) of the identity provider that signs API tokens. "
        "With NEURALOPS_API_JWKS_URL unset too: DEV ONLY, tokens from `neuralops token "
        "issue-dev --scope ...` (the local dev key), and `neuralops api` serves loopback only.",
    )
    api_jwks_url: str | None = Field(
        None, description="JWKS URL of the identity provider that signs API tokens."
    )
    api_issuer: str | None = Field(None, description="Required `iss` of API tokens.")
    api_audience: str = Field(
        "neuralops-api",
        min_length=1,
        description="Required `aud` of API tokens (never an approval token's audience).",
    )
    api_body_timeout_s: float = Field(
        30.0, gt=0, le=3600, description="The whole request body must arrive within this: 408."
    )
    api_max_concurrency: int = Field(
        64, ge=1, le=100_000, description="Connections and requests at once; beyond it, 503."
    )
    api_keep_alive_s: int = Field(5, ge=1, le=300, description="Idle keep-alive connections close.")
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"

    @field_validator(
        "data_dir",
        "replay_file",
        "signing_key_file",
        "signing_public_key",
        "audit_dir",
        "api_public_key",
    )
    @classmethod
    def _expand(cls, value: Path | None) -> Path | None:
        return value.expanduser() if value is not None else None

    @field_validator(
        "prom_url",
        "vault_addr",
        "s3_endpoint_url",
        "prefect_api_url",
        "approval_jwks_url",
        "api_jwks_url",
    )
    @classmethod
    def _http_url(cls, value: str | None) -> str | None:
        if value and not value.startswith(("http://", "https://")):
            raise ValueError("must start with http:// or https://")
        return value.rstrip("/") if value else value

    @field_validator("trusted_writers")
    @classmethod
    def _trusted_writers(cls, value: str) -> str:
        from neuralops.runs import PROVENANCE_PATTERN

        items = [item.strip() for item in value.split(",") if item.strip()]
        bad = [item for item in items if not re.fullmatch(PROVENANCE_PATTERN, item)]
        if bad:
            raise ValueError(
                f"{', '.join(map(repr, bad))}: each must be prefect, neuralops, seed, local, "
                "unknown or api:<subject>"
            )
        return ",".join(dict.fromkeys(items))

    @field_validator("dask_address")
    @classmethod
    def _dask_address(cls, value: str | None) -> str | None:
        if not value or not value.strip():
            return None
        value = value.strip()
        if value == "local":
            return value
        if value.startswith(("http://", "https://")):
            raise ValueError(
                "give the Dask scheduler's address (tcp://host:8786), not its dashboard URL"
            )
        scheme, _, rest = value.rpartition("://")
        if scheme and scheme not in DASK_SCHEMES:
            raise ValueError(
                f"scheme '{scheme}' is not a Dask scheduler's: use tcp://host:8786 or `local`"
            )
        if scheme != "inproc" and ":" not in rest:  # inproc: a cluster in this process
            raise ValueError("must name host and port (tcp://host:8786), or be `local`")
        return value

    @property
    def trusted(self) -> frozenset[str]:
        """The provenances of ``trusted_writers``."""
        return frozenset(filter(None, self.trusted_writers.split(",")))

    @property
    def uses_sqlite(self) -> bool:
        return self.postgres_dsn is None

    @property
    def sqlite_path(self) -> Path:
        return self.data_dir / "neuralops.db"

    @property
    def database_url(self) -> URL:
        """SQLAlchemy URL for the run-history database (psycopg 3 on PostgreSQL)."""
        if self.postgres_dsn is None:
            return URL.create("sqlite+pysqlite", database=str(self.sqlite_path))
        return postgres_url(self.postgres_dsn.get_secret_value())

    @property
    def audit_path(self) -> Path:
        return self.audit_dir or self.data_dir / "audit"

    @property
    def vector_uri(self) -> str:
        return self.lancedb_uri or str(self.data_dir / "lancedb")

    def database_label(self) -> str:
        """Where the database is, safe to print (password hidden)."""
        if self.uses_sqlite:
            return f"SQLite at {self.sqlite_path}"
        return f"PostgreSQL at {self.database_url.render_as_string(hide_password=True)}"


def postgres_url(dsn: str) -> URL:
    try:
        url = make_url(dsn)
    except ArgumentError:
        raise ConfigError(
            "POSTGRES_DSN is not a URL: use postgresql://user:password@host:5432/dbname"
        ) from None
    if url.drivername not in POSTGRES_SCHEMES:
        raise ConfigError(
            f"POSTGRES_DSN scheme '{url.drivername}' is not supported: "
            "use postgresql://user:password@host:5432/dbname"
        )
    return url.set(drivername="postgresql+psycopg")


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """The process's settings; tests call ``get_settings.cache_clear()`` after changing env."""
    try:
        return Settings()
    except ValidationError as exc:
        problems = "; ".join(
            f"{_env_name(err['loc'])}: {err['msg']}" for err in exc.errors(include_url=False)
        )
        raise ConfigError(f"invalid configuration: {problems}") from None


def _env_name(loc: tuple) -> str:
    field = str(loc[0]) if loc else "?"
    return field if field.isupper() else f"NEURALOPS_{field.upper()}"
