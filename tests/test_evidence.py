"""What an approver decides from, without Prefect: the dry-run against the demo workload's
current spec (512Mi → 2Gi), every policy rule's verdict, why approval is needed, the signal's
series around the incident (or why it is not shown), and the ad-hoc analysis."""

from __future__ import annotations

import base64
from datetime import UTC, datetime
from pathlib import Path

import polars as pl
import pytest

from neuralops import demo, evidence, policy, remediation, safety, signals
from neuralops.embedding import HashingEmbedder
from neuralops.mock_cluster import MockCluster
from neuralops.recommend import Recommender
from neuralops.settings import get_settings
from neuralops.sources import ReplaySource
from neuralops.vectorstore import VectorStore

DEPLOYMENT = "Deployment/payments/payments-api"
MEMORY = "spec.template.spec.containers[payments-api].resources.limits.memory"


@pytest.fixture
def env(signed_catalogue, tmp_path: Path):
    store = VectorStore(str(tmp_path / "lancedb"))
    return signed_catalogue | {
        "recommender": Recommender(store, HashingEmbedder(), signed_catalogue["manifests"]),
        "public_key": signed_catalogue["signer"].public_key_pem(),
    }


def oom_dry_run(env, runtime: MockCluster, **parameters):
    current = remediation.suggest(
        env["recommender"],
        signal_id=str(env["signals"]["oom-kills"].id),
        playbook_id="raise-memory-limit",
        parameters={"container": "payments-api", "memory_limit": "2Gi", **parameters},
    )
    return remediation.dry_run(current.id, public_key_pem=env["public_key"], runtime=runtime)


def test_the_local_runtime_starts_with_the_demo_workloads_real_spec(tmp_path: Path) -> None:
    from tasks.remediate import runtime

    deployment = runtime().get("Deployment", "payments", "payments-api")
    [container] = deployment["spec"]["template"]["spec"]["containers"]
    assert container["name"] == "payments-api"
    assert container["resources"]["limits"]["memory"] == demo.MEMORY_LIMIT == "512Mi"
    # The metrics tell the same story: the working set climbs to that limit.
    [memory] = [
        s
        for s in demo.incident_metrics(datetime(2026, 11, 23, 12, tzinfo=UTC))
        if s.name == demo.MEMORY and s.labels["pod"] == demo.OOM_POD["pod"]
    ]
    assert memory.values.max() <= demo.MEMORY_LIMIT_MIB * demo.MIB
    assert memory.values[-1] > 0.95 * demo.MEMORY_LIMIT_MIB * demo.MIB
    # Once written, the mock's file is the state: initial objects do not come back.
    empty = MockCluster(tmp_path / "mock.json", initial=demo.workloads())
    empty._save({})
    assert empty.get("Deployment", "payments", "payments-api") is None
    # Until the demo starts a new incident: then it runs the 512Mi spec again.
    empty.reset()
    spec = empty.get("Deployment", "payments", "payments-api")["spec"]["template"]["spec"]
    assert spec["containers"][0]["resources"]["limits"]["memory"] == "512Mi"


def test_the_dry_run_diffs_against_the_current_spec_and_checks_every_rule(
    env, tmp_path: Path
) -> None:
    cluster = MockCluster(tmp_path / "mock-cluster.json", initial=demo.workloads())
    current = oom_dry_run(env, cluster)
    assert current.state == "dry_run_passed", current.dry_run
    # The snapshot read the object as it runs now.
    limits = current.pre_state[DEPLOYMENT]["spec"]["template"]["spec"]["containers"][0]
    assert limits["resources"]["limits"]["memory"] == "512Mi"
    assert current.dry_run["changes"] == [f"`{DEPLOYMENT}`: `{MEMORY}`: `512Mi` → `2Gi`"]
    diff = [line.replace(" ", "") for line in current.dry_run["diff"].splitlines()]
    assert "-memory:512Mi" in diff and "+memory:2Gi" in diff  # against the object, not {}

    text = evidence.dry_run_markdown(current.dry_run, current.plan_digest, current.playbook_id)
    assert "## Dry-run passed" in text
    assert "`512Mi` → `2Gi`" in text
    assert current.plan_digest in text
    rows = {name: verdict for name, verdict, _ in evidence.policy_rows(current.dry_run)}
    assert list(rows) == ["signature", *policy.RULES, "server-side dry-run"]
    assert set(rows.values()) == {"pass"}
    for rule in policy.RULES:  # every rule is listed with its verdict and what it checks
        assert f"- **pass** `{rule}`: {policy.RULE_CHECKS[rule]}\n" in text
    assert f"Policy verdict: passed ({len(rows)} checks, 0 failed)" in text


def test_a_failed_check_is_named_and_an_unreached_one_is_not_passed() -> None:
    result = {
        "ok": False,
        "signature": "verified",
        "steps": [],
        "violations": [
            {"step": "s", "rule": "scale-to-zero", "message": "step s: scales Deployment a/b to 0"}
        ],
        "server_dry_run": [{"name": "s", "status": "Completed"}],
        "reason": "step s: scales Deployment a/b to 0",
    }
    rows = {name: (v, detail) for name, v, detail in evidence.policy_rows(result)}
    assert rows["scale-to-zero"] == ("FAIL", "step s: scales Deployment a/b to 0")
    assert rows["delete-namespace"][0] == "pass"
    text = evidence.dry_run_markdown(result, None, "p")
    assert "## Dry-run FAILED: step s: scales" in text
    assert f"({len(policy.RULES) + 2} checks, 1 failed)" in text
    # The signature refused: nothing after it was checked, and nothing says it passed.
    refused = {"ok": False, "reason": "signature: tampered", "signature": "tampered"}
    verdicts = {v for name, v, _ in evidence.policy_rows(refused) if name != "signature"}
    assert verdicts == {"not checked"}
    assert dict((n, v) for n, v, _ in evidence.policy_rows(refused))["signature"] == "FAIL"


def test_why_approval_is_needed_names_every_reason_and_gate(signed_catalogue, monkeypatch) -> None:
    manifest = next(m for m in signed_catalogue["manifests"] if m.id == "raise-memory-limit")
    monkeypatch.setenv("NEURALOPS_KILL_SWITCH", "true")
    get_settings.cache_clear()
    decision = safety.decide_mode(manifest, settings=get_settings())
    text = evidence.approval_reasons_markdown(
        decision.mode,
        decision.reasons,
        expires_at=datetime(2026, 11, 23, 13, 0, tzinfo=UTC),
        plan_lines=["plan digest: abc"],
    )
    assert "## Waiting for approval" in text
    assert "- playbook raise-memory-limit is manual" in text
    assert "- kill switch is on (NEURALOPS_KILL_SWITCH)" in text
    assert "- playbook safety mode: **playbook raise-memory-limit is manual**" in text
    assert "- kill switch (NEURALOPS_KILL_SWITCH): **kill switch is on" in text
    assert "- incident storm breaker: not tripped\n" in text
    assert "Decide before **2026-11-23 13:00 UTC**" in text and "plan digest: abc" in text
    auto = evidence.approval_reasons_markdown("auto", ["playbook x is auto"], expires_at=None)
    assert "## Approved by policy" in auto and "- kill switch (NEURALOPS_KILL_SWITCH): off" in auto


def replay(tmp_path: Path, now: datetime) -> Path:
    path = tmp_path / "metrics.parquet"
    series = demo.recorded_metrics(demo.incident_metrics(now))
    pl.concat(
        [
            pl.DataFrame(
                {"timestamp": s.timestamps, "value": s.values, "__name__": s.name}
            ).with_columns(**{k: pl.lit(v) for k, v in s.labels.items()})
            for s in series
        ],
        how="diagonal",
    ).write_parquet(path)
    return path


def demo_replay_rules() -> Path:
    return Path(demo.__file__).with_name("rules") / "demo-replay.yaml"


def test_the_signal_is_shown_with_its_metric_around_the_incident(
    tmp_path: Path, monkeypatch, database_url
) -> None:
    now = datetime.now(UTC)
    path = replay(tmp_path, now)
    monkeypatch.setenv("NEURALOPS_REPLAY_FILE", str(path))
    monkeypatch.setenv("NEURALOPS_RULES_FILE", str(demo_replay_rules()))
    get_settings.cache_clear()
    settings = get_settings()
    [rule] = [r for r in signals.load_rules(demo_replay_rules()) if r.name == "oom-kills"]
    source = ReplaySource(path)
    end = signals.range_end(source.now(), rule.step)
    batch = source.query_range(rule.query, end - rule.lookback, end, rule.step)
    [candidate] = signals.find_anomalies(rule, batch)
    [recorded] = signals.record_signals([candidate], {rule.name: rule.cooldown})
    signal = recorded.signal

    around = evidence.signal_series(signal, settings)
    assert around.missing is None
    # The series: the signal's labels without the rule's own (severity, symptom).
    assert around.labels == {"__name__": rule.query, **demo.OOM_POD}
    assert around.step == rule.step and len(around.values) >= evidence.BEFORE_POINTS
    anomalous = [v for t, v in zip(around.timestamps, around.values, strict=True)
                 if around.in_window(t)]  # fmt: skip
    assert anomalous and max(anomalous) == 3  # the three OOM kills within 10 minutes
    assert max(v for v in around.values[: evidence.BEFORE_POINTS - 5] if v is not None) == 0

    text = "\n".join(evidence.signal_markdown(signal, around))
    assert f"> {signal.hint}" in text and "OOM kills of namespace=payments" in signal.hint
    assert "`namespace=payments, pod=payments-api-7d9f8b6c4d-x2x7q`" in text
    assert f"{signal.window_start:%Y-%m-%d %H:%M} to {signal.window_end:%H:%M} UTC" in text
    assert evidence.sparkline(around.values) in text and "█" in text
    assert "| anomalous |" in text
    [chart] = [line for line in text.splitlines() if line.startswith("![")]
    svg = base64.b64decode(chart.split("base64,", 1)[1].rstrip(")")).decode()
    assert svg.startswith("<svg") and "<polyline" in svg and "<rect x=" in svg

    # No metric source, or one that does not answer: the reason, never a failure.
    monkeypatch.delenv("NEURALOPS_REPLAY_FILE")
    get_settings.cache_clear()
    gone = evidence.signal_series(signal, get_settings())
    assert gone.missing and "no metric source" in gone.missing
    assert "Series not available: no metric source" in "\n".join(
        evidence.signal_markdown(signal, gone)
    )

    class Down:
        def now(self) -> datetime:
            return now

        def query_range(self, *args):
            raise OSError("Prometheus at http://prom:9090 is unreachable")

        def close(self) -> None:
            pass

    down = evidence.signal_series(signal, settings, source=Down())
    assert down.missing == "Prometheus at http://prom:9090 is unreachable"


def test_sparkline_and_chart_handle_gaps_and_flat_series() -> None:
    assert evidence.sparkline([0, 1, 2, 3, 4, 5, 6, 7]) == evidence.SPARK
    assert evidence.sparkline([1.0, None, 1.0]) == "▁ ▁"
    assert evidence.sparkline([None, float("nan")]) == ""
    assert (
        evidence.svg_chart(evidence.SeriesAround(labels={}, timestamps=[1.0], values=[2.0])) == ""
    )


def test_the_analysis_shows_score_hint_and_the_latest_points(tmp_path: Path, database_url) -> None:
    from flows.detection import DEMO_QUERY

    source = ReplaySource(replay(tmp_path, datetime.now(UTC)))
    result = signals.analyze(signals.AnalyzeRequest(query=DEMO_QUERY, lookback="3h"), source)
    assert result.series == 1 and result.labels["pod"] == demo.OOM_POD["pod"]  # it matches
    assert len(result.points) == signals.RECENT_POINTS
    assert result.points[-1].value == pytest.approx(result.value, rel=0.05)
    text = evidence.analysis_markdown(result, lookback="3h")
    assert result.hint in text and f"{result.score:.5f}" in text
    assert "namespace=payments, pod=payments-api-7d9f8b6c4d-x2x7q" in text
    assert evidence.sparkline([p.value for p in result.points]) in text
    nothing = signals.analyze(signals.AnalyzeRequest(query="up"), source)
    assert "matched no series" in evidence.analysis_markdown(nothing, lookback="1h")
