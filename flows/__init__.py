"""Prefect flows composing tasks; one file per flow family. Every flow records its own runs."""
