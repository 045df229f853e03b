"""Prefect Block classes holding connection settings an operator edits in the Prefect UI.

- ``prometheus.PrometheusConnection`` ("NeuralOps Prometheus"): where detection reads
  metrics; the `detect` and `analyze` flows take its name as ``prometheus_block``.
- ``vault.VaultConnection`` ("NeuralOps Vault"): the transit key that signs playbooks.
- ``approval.ApprovalKeysBlock`` ("NeuralOps Approval Keys"): the identity provider's key
  or JWKS that approval tokens must verify against.
- ``audit.AuditSinkBlock`` ("NeuralOps Audit Sink"): where audit batches are archived.

Clusters arrive with the connector.
"""
