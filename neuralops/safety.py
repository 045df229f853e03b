"""Safety mode: does a remediation wait for a human, and why.

Manual is the default. A playbook runs without approval only when its manifest says
``safety.mode: auto`` and its ``allowed_roles`` include ``org-admin``, and no breaker is
tripped: the global kill switch (``NEURALOPS_KILL_SWITCH``), an incident storm (more than
``storm_max_incidents`` incidents within ``storm_window_s``), or a playbook whose last
``storm_max_failures`` executions all failed. Every reason is listed, so the incident can
say exactly why it waits (the remediate flow stores them in ``incidents.mode_reason``).
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Literal

from pydantic import BaseModel
from sqlalchemy import func, select
from sqlalchemy.engine import URL

from neuralops.db import session_scope
from neuralops.db.models import Incident
from neuralops.manifest import Manifest, SafetyMode
from neuralops.settings import Settings

AUTO_ROLE = "org-admin"


class ModeDecision(BaseModel):
    mode: Literal["manual", "auto"]
    reasons: list[str]

    @property
    def reason(self) -> str:
        """The reasons as one line (what ``incidents.mode_reason`` holds)."""
        return "; ".join(self.reasons)


def decide_mode(
    manifest: Manifest,
    *,
    settings: Settings,
    url: URL | None = None,
    now: datetime | None = None,
) -> ModeDecision:
    """Manual or auto for a remediation with ``manifest`` at ``now``, with every reason."""
    now = now or datetime.now(UTC)
    reasons: list[str] = []
    if manifest.safety.mode is not SafetyMode.auto:
        reasons.append(f"playbook {manifest.id} is manual")
    elif AUTO_ROLE not in manifest.safety.allowed_roles:
        reasons.append(
            f"playbook {manifest.id} asks for auto, but auto mode needs {AUTO_ROLE} in "
            f"allowed_roles (it has {', '.join(manifest.safety.allowed_roles)})"
        )
    if settings.kill_switch:
        reasons.append("kill switch is on (NEURALOPS_KILL_SWITCH)")
    # The breakers are checked even for manual playbooks: the approver should know.
    reasons += _storm_reasons(manifest.id, settings=settings, url=url, now=now)
    if reasons:
        return ModeDecision(mode="manual", reasons=reasons)
    return ModeDecision(
        mode="auto",
        reasons=[
            f"playbook {manifest.id} is auto and {AUTO_ROLE} is in its allowed_roles; "
            "no kill switch or storm breaker is on"
        ],
    )


def _storm_reasons(
    playbook_id: str, *, settings: Settings, url: URL | None, now: datetime
) -> list[str]:
    reasons: list[str] = []
    since = now - timedelta(seconds=settings.storm_window_s)
    failures = settings.storm_max_failures
    with session_scope(url) as session:
        recent = session.scalar(
            select(func.count())
            .select_from(Incident)
            .where(Incident.created_at > since, Incident.created_at <= now)
        )
        if recent and recent > settings.storm_max_incidents:
            window = _duration(settings.storm_window_s)
            reasons.append(
                f"incident storm: {recent} incidents in the last {window}, more than the limit of "
                f"{settings.storm_max_incidents} "
                "(NEURALOPS_STORM_MAX_INCIDENTS / NEURALOPS_STORM_WINDOW_S)"
            )
        # Finished executions of this playbook, newest first (updated_at is when it ended).
        last = session.execute(
            select(Incident.state, Incident.outcome)
            .where(
                Incident.playbook_id == playbook_id,
                Incident.state.in_(("succeeded", "failed")),
                Incident.updated_at <= now,
            )
            .order_by(Incident.updated_at.desc(), Incident.created_at.desc())
            .limit(failures)
        ).all()
    # An execution that ran but did not resolve the signal failed too.
    if len(last) == failures and all(
        state == "failed" or outcome == "not_resolved" for state, outcome in last
    ):
        reasons.append(
            f"playbook {playbook_id} failed its last {failures} executions in a row "
            f"(NEURALOPS_STORM_MAX_FAILURES={failures})"
        )
    return reasons


def _duration(seconds: int) -> str:
    if seconds % 3600 == 0:
        return f"{seconds // 3600} h"
    if seconds % 60 == 0:
        return f"{seconds // 60} min"
    return f"{seconds} s"
