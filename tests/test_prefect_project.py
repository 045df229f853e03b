"""prefect.yaml stays deployable: every entrypoint loads and its parameters fit the flow."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from prefect.flows import load_flow_from_entrypoint

ROOT = Path(__file__).resolve().parents[1]
DEPLOYMENTS = yaml.safe_load((ROOT / "prefect.yaml").read_text())["deployments"]


@pytest.mark.parametrize("deployment", DEPLOYMENTS, ids=lambda d: d["name"])
def test_entrypoint_loads_and_accepts_its_parameters(
    deployment: dict, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(ROOT)
    flow = load_flow_from_entrypoint(deployment["entrypoint"])
    flow.validate_parameters(deployment.get("parameters", {}))
    assert deployment["work_pool"]["name"]


def test_every_flow_records_its_runs() -> None:
    for deployment in DEPLOYMENTS:
        flow = load_flow_from_entrypoint(str(ROOT / deployment["entrypoint"]))
        assert flow.on_completion_hooks and flow.on_failure_hooks and flow.on_crashed_hooks
