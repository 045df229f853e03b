"""Prefect Block classes holding connection settings an operator edits in the Prefect UI.

- ``prometheus.PrometheusConnection`` ("NeuralOps Prometheus"): where detection reads
  metrics; the `detect` and `analyze` flows take its name as ``prometheus_block``.

Vault, vector store, audit sink, approval keys and clusters arrive with their components.
"""
