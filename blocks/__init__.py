"""Prefect Block classes holding connection settings an operator edits in the Prefect UI
(Prometheus, Vault, vector store, audit sink, approval keys, clusters). The first ones arrive
with the components that need them."""
