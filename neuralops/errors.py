"""Errors an operator reads: each names the bad field and, where it can, the fix."""

from __future__ import annotations

from dataclasses import dataclass

from pydantic import ValidationError


@dataclass(frozen=True)
class FieldProblem:
    field: str
    message: str


class NeuralOpsError(Exception):
    """Base for errors the CLI and API turn into a clear message instead of a traceback."""


class InvalidInput(NeuralOpsError, ValueError):
    """Input failed validation; ``problems`` lists each bad field."""

    def __init__(self, message: str, problems: list[FieldProblem] | None = None) -> None:
        super().__init__(message)
        self.problems = problems or []

    @classmethod
    def from_validation(cls, exc: ValidationError, source: str) -> InvalidInput:
        problems = [
            FieldProblem(".".join(str(p) for p in err["loc"]) or "(root)", err["msg"])
            for err in exc.errors(include_url=False)
        ]
        lines = "; ".join(f"{p.field}: {p.message}" for p in problems)
        return cls(f"{source}: {lines}", problems)


class NotFound(NeuralOpsError, LookupError):
    """An id that does not exist."""


class Conflict(NeuralOpsError):
    """The request contradicts what is stored (e.g. same version, different content)."""


class ConfigError(NeuralOpsError):
    """A setting is missing or malformed; the message names the environment variable."""


class Unavailable(NeuralOpsError, ConnectionError):
    """A server NeuralOps depends on (Prometheus, Vault, S3) did not answer; retrying may help."""
