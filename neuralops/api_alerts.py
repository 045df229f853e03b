"""``POST /alerts``: Alertmanager's webhook receiver (scope ``alerts:write``).

Configure Alertmanager with a ``webhook_configs`` receiver whose ``http_config.authorization``
sends the API token (docs/operations.md has the alertmanager.yml snippet)."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query
from sqlalchemy.engine import URL

from neuralops import alerts
from neuralops.api import AuthenticatedRoute, auth_responses, authorized
from neuralops.errors import ConfigError
from neuralops.recommend import MAX_TOP

SCOPE = "alerts:write"


def alerts_router(url: URL, recommenders: Any) -> APIRouter:
    """The router; ``recommenders.get()`` gives the app's recommender (ConfigError when no
    playbook is registered: the alerts are still recorded, without recommendations)."""
    router = APIRouter(route_class=AuthenticatedRoute, tags=["alerts"])

    @router.post(
        "/alerts",
        response_model=alerts.AlertsReceived,
        dependencies=[Depends(authorized(SCOPE))],
        responses={
            **auth_responses(SCOPE),
            200: {
                "description": "Each alert's signal (opened, repeated, closed) and, for a firing "
                "one, its recommendation; a re-sent webhook changes nothing."
            },
            413: {
                "description": "The body is over the API's limit (NEURALOPS_API_MAX_BODY_BYTES)."
            },
            422: {
                "description": "Not Alertmanager's webhook payload (version 4): `loc` names "
                "the field."
            },
        },
    )
    def post_alerts(
        webhook: alerts.AlertmanagerWebhook,
        top: Annotated[
            int, Query(ge=1, le=MAX_TOP, description="Playbooks per firing alert, best first.")
        ] = 3,
    ) -> alerts.AlertsReceived:
        """Alertmanager's webhook: each firing alert becomes a signal (deduplicated by its
        labels) with its recommendation, where a playbook whose alias is the alertname (a
        runbook imported with `neuralops playbook import-runbooks`) comes first; each resolved
        alert closes its signal."""
        try:
            recommender = recommenders.get()
        except ConfigError:  # no playbooks yet: record the alerts all the same
            recommender = None
        return alerts.receive(webhook, recommender, top=top, url=url)

    return router
