"""Prefect tasks: thin wrappers over neuralops core functions, adding retries and timeouts."""

from __future__ import annotations

from typing import Any

from neuralops.errors import NeuralOpsError, Unavailable


def retry_unless_invalid(task: Any, task_run: Any, state: Any) -> bool:
    """Retry I/O failures (a server that did not answer); never retry any other NeuralOps
    error (bad input, conflict, not found): the same input would fail the same way."""
    error = state.data
    return isinstance(error, Unavailable) or not isinstance(error, NeuralOpsError)


# Backoff for tasks that talk to a database or a server.
IO_RETRIES: dict[str, Any] = {
    "retries": 3,
    "retry_delay_seconds": [1, 4, 15],
    "retry_condition_fn": retry_unless_invalid,
}
