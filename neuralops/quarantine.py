"""Rows left out of an export or a vectorize run, and why (never their content).

Kept apart from ``neuralops.vectorize`` so that the export does not import LanceDB (about
150 MiB of the exporting process's memory).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

__all__ = ["Quarantined", "unencodable"]


@dataclass(frozen=True)
class Quarantined:
    """A run (or input line) left out because it cannot be processed: its id and why, never
    its content."""

    run_id: str
    reason: str

    def __str__(self) -> str:
        return f"{self.run_id} ({self.reason})"


def unencodable(value: Any, path: str = "") -> str | None:
    """The first field (dotted path) holding text that cannot be encoded as UTF-8 (a lone
    surrogate), as a reason naming it; None when all text is fine. Never the text itself."""
    stack: list[tuple[str, Any]] = [(path, value)]
    while stack:
        where, item = stack.pop()
        if isinstance(item, str):
            if not item.isascii():
                try:
                    item.encode("utf-8")
                except UnicodeEncodeError:
                    return f"{where or '(root)'}: text that cannot be encoded (a lone surrogate)"
        elif isinstance(item, Mapping):
            for key, sub in item.items():
                name = f"{where}.{key}" if where else str(key)
                if isinstance(key, str) and unencodable(key) is not None:
                    return f"{where or '(root)'}: a key that cannot be encoded (a lone surrogate)"
                stack.append((name, sub))
        elif isinstance(item, list | tuple):
            stack.extend((f"{where}.{n}", sub) for n, sub in enumerate(item))
    return None
