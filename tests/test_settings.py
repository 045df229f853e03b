"""One settings object from the environment; errors name the variable; secrets never print."""

from __future__ import annotations

from pathlib import Path

import pytest

from neuralops.errors import ConfigError
from neuralops.settings import get_settings


def test_defaults_to_sqlite_in_the_data_dir(tmp_path: Path) -> None:
    settings = get_settings()
    assert settings.uses_sqlite
    assert settings.database_url.database == str(tmp_path / "data" / "neuralops.db")
    assert settings.vector_uri == str(tmp_path / "data" / "lancedb")


def test_data_dir_default_is_home(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("NEURALOPS_DATA_DIR")
    assert get_settings().data_dir == Path.home() / ".neuralops"


@pytest.mark.parametrize(
    "dsn",
    [
        "postgresql://ops:s3cret@db:5432/neuralops",
        "postgres://ops:s3cret@db:5432/neuralops",
        "postgresql+psycopg://ops:s3cret@db:5432/neuralops",
    ],
)
def test_postgres_dsn_uses_psycopg3(monkeypatch: pytest.MonkeyPatch, dsn: str) -> None:
    monkeypatch.setenv("POSTGRES_DSN", dsn)
    settings = get_settings()
    assert settings.database_url.drivername == "postgresql+psycopg"
    assert "s3cret" not in settings.database_label()
    assert "s3cret" not in repr(settings)


def test_neuralops_prefixed_names_work_too(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NEURALOPS_PROM_URL", "http://prom:9090/")
    assert get_settings().prom_url == "http://prom:9090"


def test_unsupported_dsn_scheme_names_the_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("POSTGRES_DSN", "mysql://root@db/x")
    with pytest.raises(ConfigError, match="POSTGRES_DSN scheme 'mysql'"):
        _ = get_settings().database_url


@pytest.mark.parametrize(
    ("name", "value"),
    [("PROM_URL", "prom:9090"), ("NEURALOPS_API_PORT", "99999"), ("NEURALOPS_LOG_LEVEL", "LOUD")],
)
def test_invalid_values_name_the_variable(
    monkeypatch: pytest.MonkeyPatch, name: str, value: str
) -> None:
    monkeypatch.setenv(name, value)
    with pytest.raises(ConfigError, match=name):
        get_settings()


def test_metric_source_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PROM_USERNAME", "ops")
    monkeypatch.setenv("PROM_PASSWORD", "hunter2-secret")
    monkeypatch.setenv("NEURALOPS_PROM_TIMEOUT_S", "2.5")
    monkeypatch.setenv("NEURALOPS_REPLAY_FILE", "~/samples.parquet")
    settings = get_settings()
    assert settings.prom_username == "ops"
    assert settings.prom_password is not None
    assert settings.prom_password.get_secret_value() == "hunter2-secret"
    assert "hunter2-secret" not in repr(settings)
    assert settings.prom_timeout_s == 2.5
    assert settings.replay_file == Path.home() / "samples.parquet"


def test_metric_source_defaults() -> None:
    settings = get_settings()
    assert settings.prom_timeout_s == 10
    assert settings.replay_file is None and settings.prom_username is None


@pytest.mark.parametrize("value", ["0", "-1", "soon"])
def test_prom_timeout_must_be_positive(monkeypatch: pytest.MonkeyPatch, value: str) -> None:
    monkeypatch.setenv("NEURALOPS_PROM_TIMEOUT_S", value)
    with pytest.raises(ConfigError, match="NEURALOPS_PROM_TIMEOUT_S"):
        get_settings()
