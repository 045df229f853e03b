"""Flow parameters as the Prefect UI's run form shows them: a title and help text each.

Prefect builds a deployment's form from the flow's signature: it titles each field with the
parameter's name and takes its help text from the default's ``Field(description=...)``; a
``json_schema_extra`` title is merged last and replaces the name. Optional parameters are
plain types with an empty default (``""``, ``{}``) rather than ``X | None``, which the form
shows as a choice of types, one of them "None".
"""

from __future__ import annotations

from typing import Any

from pydantic import Field


def param(default: Any, title: str, description: str, **schema: Any) -> Any:
    """The default of a flow parameter with its form title and help text; ``schema`` adds
    JSON-schema keywords the form enforces (``minimum``, ``maximum``, ``examples``...)."""
    return Field(default, description=description, json_schema_extra={"title": title, **schema})
