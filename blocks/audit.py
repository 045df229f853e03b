"""The audit archive as a Prefect block, edited in the Prefect UI (Blocks page)."""

from __future__ import annotations

from prefect.blocks.core import Block
from pydantic import Field, SecretStr

from neuralops.audit import AuditSink, LocalSink, S3Sink, make_s3_client


class AuditSinkBlock(Block):
    """Where `audit ship` copies the hash-chained audit entries: an S3 bucket (Object Lock
    recommended) when a bucket is set, else a local directory."""

    _block_type_name = "NeuralOps Audit Sink"
    _block_type_slug = "neuralops-audit-sink"
    _description = "Archive of NeuralOps audit batches: S3 with Object Lock, or a directory."

    bucket: str | None = Field(
        None,
        title="S3 bucket",
        description="Bucket for the archive; create it with Object Lock enabled. "
        "Empty means the local directory below.",
    )
    prefix: str = Field("audit/", title="Key prefix", description="Batches go under this prefix.")
    endpoint_url: str | None = Field(
        None,
        title="Endpoint URL",
        description="For S3-compatible stores (MinIO, Ceph); empty means AWS S3.",
    )
    region: str | None = Field(None, title="Region", description="e.g. eu-west-1.")
    access_key_id: str | None = Field(
        None,
        title="Access key id",
        description="Empty means boto3's usual chain (environment, profile, instance role).",
    )
    secret_access_key: SecretStr | None = Field(None, title="Secret access key")
    retention_days: int | None = Field(
        365,
        ge=1,
        title="Retention (days)",
        description="Object Lock (COMPLIANCE) retention of each batch, where the bucket has "
        "Object Lock enabled; empty means the bucket's default retention.",
    )
    local_dir: str | None = Field(
        None,
        title="Local directory",
        description="Archive directory when no bucket is set; empty means NEURALOPS_AUDIT_DIR "
        "(default <data dir>/audit).",
    )

    def sink(self) -> AuditSink:
        if self.bucket:
            client = make_s3_client(
                endpoint_url=self.endpoint_url,
                region=self.region,
                access_key_id=self.access_key_id,
                secret_access_key=(
                    self.secret_access_key.get_secret_value() if self.secret_access_key else None
                ),
            )
            return S3Sink(
                self.bucket,
                prefix=self.prefix,
                client=client,
                endpoint_url=self.endpoint_url,
                retention_days=self.retention_days,
            )
        if self.local_dir:
            return LocalSink(self.local_dir)
        from neuralops.settings import get_settings

        return LocalSink(get_settings().audit_path)
