"""The Prometheus connection as a Prefect block, edited in the Prefect UI (Blocks page)."""

from __future__ import annotations

from prefect.blocks.core import Block
from pydantic import Field, SecretStr

from neuralops.sources import PrometheusSource


class PrometheusConnection(Block):
    """Where detection reads metrics: a Prometheus-compatible HTTP API (Prometheus, Thanos,
    Mimir, VictoriaMetrics). Bearer token or basic auth, not both."""

    _block_type_name = "NeuralOps Prometheus"
    _block_type_slug = "neuralops-prometheus"
    _description = "Prometheus HTTP API that NeuralOps detection queries."

    url: str = Field(
        title="URL", description="Base URL of the HTTP API, e.g. http://prometheus:9090."
    )
    token: SecretStr | None = Field(
        None, title="Bearer token", description="Sent as `Authorization: Bearer ...`."
    )
    username: str | None = Field(None, title="Username", description="Basic auth user.")
    password: SecretStr | None = Field(None, title="Password", description="Basic auth password.")
    timeout_s: float = Field(
        10.0, gt=0, le=600, title="Timeout (s)", description="Per-request timeout."
    )

    def source(self) -> PrometheusSource:
        return PrometheusSource(
            self.url,
            token=self.token,
            username=self.username,
            password=self.password,
            timeout_s=self.timeout_s,
        )
