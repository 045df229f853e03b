"""Deterministic demo run history for the shipped catalogue.

Each playbook gets past runs with inputs that satisfy its declared parameters, alert labels
naming the symptom it was run for, a success rate of its own and realistic durations. Run
ids are fixed (``demo-<playbook>-<n>``), so seeding twice updates instead of duplicating.
"""

from __future__ import annotations

import hashlib
import random
from datetime import UTC, datetime, timedelta

from neuralops.errors import InvalidInput
from neuralops.manifest import Manifest, Parameter, ParamType
from neuralops.runs import RunIn

SERVICES = ["payments", "checkout", "search", "auth", "orders", "ledger", "notifications"]
NAMESPACES = ["payments", "checkout", "search", "identity", "orders", "platform"]
FAILURES = [
    "rollout did not complete within 300s: 1 of 3 new replicas unavailable",
    "admission webhook 'policy.gatekeeper.sh' denied the request",
    "cannot evict pod: it would violate the PodDisruptionBudget",
    "timed out waiting for condition job-complete",
    "the server rejected the patch: field is immutable",
]


def _stable_fraction(text: str) -> float:
    return int(hashlib.sha256(text.encode()).hexdigest()[:8], 16) / 0xFFFFFFFF


def demo_history(
    manifests: list[Manifest], *, runs_per_playbook: int = 24, now: datetime | None = None
) -> list[RunIn]:
    """Past runs of each playbook over the last 90 days, oldest first within a playbook."""
    now = now or datetime.now(UTC).replace(microsecond=0)
    runs: list[RunIn] = []
    for manifest in manifests:
        rng = random.Random(manifest.id)  # the same history for the same catalogue
        success_rate = 0.55 + 0.4 * _stable_fraction(manifest.id)
        count = runs_per_playbook * (1 + int(_stable_fraction(manifest.id + "#n") * 3))
        offsets = sorted((rng.uniform(0, 90 * 86400) for _ in range(count)), reverse=True)
        for n, offset in enumerate(offsets):
            runs.append(_run(manifest, n, now - timedelta(seconds=offset), rng, success_rate))
    return runs


def _run(
    manifest: Manifest, n: int, started: datetime, rng: random.Random, success_rate: float
) -> RunIn:
    service = rng.choice(SERVICES)
    namespace = rng.choice(NAMESPACES)
    symptom = rng.choice(manifest.symptoms)
    roll = rng.random()
    status = "succeeded" if roll < success_rate else "cancelled" if roll > 0.98 else "failed"
    step_ms = [int(rng.lognormvariate(9.5, 0.6)) for _ in manifest.steps]
    node_logs = [
        {"name": step.name, "status": "Completed", "duration_ms": ms}
        for step, ms in zip(manifest.steps, step_ms, strict=True)
    ]
    outputs: dict = {"message": f"{manifest.title}: done"}
    if status == "failed":
        error = rng.choice(FAILURES)
        node_logs[-1].update(status="Failed", message=error)
        outputs = {"error": error}
    elif status == "cancelled":
        outputs = {"message": "cancelled by operator"}
    return RunIn(
        wpk_id=manifest.id,
        run_id=f"demo-{manifest.id}-{n:04d}",
        status=status,
        duration_ms=sum(step_ms),
        inputs={
            "parameters": {
                p.name: _value(p, service=service, namespace=namespace) for p in manifest.parameters
            },
            "alert": {
                "alertname": "".join(part.title() for part in symptom.split("-")),
                "severity": rng.choice(["warning", "critical"]),
                "namespace": namespace,
                "service": service,
                "symptom": symptom,
            },
        },
        outputs=outputs,
        node_logs=node_logs,
        cluster=rng.choice(["prod-eu-1", "prod-us-1", "staging"]),
        created_at=started,
    )


def _value(param: Parameter, *, service: str, namespace: str) -> str | int | float | bool:
    """The parameter's default or example; a namespace or service name for the rest."""
    for value in (param.default, param.example):
        if value is not None:
            return value
    if param.type is ParamType.boolean:
        return True
    if param.type in (ParamType.integer, ParamType.number):
        value = param.minimum if param.minimum is not None else 1
        return int(value) if param.type is ParamType.integer else value
    value = namespace if "namespace" in param.name.lower() else service
    if problem := param.check(value):
        raise InvalidInput(f"parameter {param.name!r}: give it an example; {value!r} {problem}")
    return value


def demo_signals(now: datetime) -> tuple[list, dict]:
    """(signal candidates, cooldown per rule): what detection with the shipped rules would
    record for three incidents in progress at ``now``. Times sit on each rule's step grid, so
    a second seeding in the same step changes nothing at all."""
    from neuralops import signals

    rules = {r.name: r for r in signals.load_rules(signals.default_rules_path())}
    payments = {"namespace": "payments", "pod": "payments-api-7d9f8b6c4d-x2x7q"}
    checkout = {"namespace": "checkout", "service": "checkout-web"}
    volume = {
        "namespace": "data",
        "persistentvolumeclaim": "pgdata-postgres-main-0",
        "pod": "postgres-main-0",
    }
    # rule, series labels, value, z, score, minutes since the episode started, correlated
    demo = [
        (
            "oom-kills",
            payments,
            4.0,
            9.1,
            0.99999,  # reaches the remediation threshold: the trigger starts remediate
            12,
            [("container-memory", payments, 0.93), ("pod-restarts", payments, 0.88)],
        ),
        ("http-latency-p99", checkout, 2.41, 6.4, 0.991, 9, [("http-error-ratio", checkout, 0.71)]),
        ("pvc-usage", volume, 0.934, 5.3, 0.97, 40, []),
    ]
    candidates = []
    for name, labels, value, z, score, minutes, related in demo:
        rule = rules[name]
        end = signals.range_end(now, rule.step)
        start = end - max(timedelta(minutes=minutes) // rule.step, 1) * rule.step
        candidates.append(
            signals.SignalIn(
                rule=rule.name,
                query=rule.query,
                labels={**labels, **rule.labels},
                value=value,
                score=score,
                z=z,
                method=rule.method,
                hint=signals.hint(rule, labels, z, value, start.timestamp()),
                correlated=[
                    {"rule": other, "labels": series, "correlation": r}
                    for other, series, r in related
                ],
                window_start=start,
                window_end=end,
                fingerprint=signals.fingerprint(rule.name, labels),
            )
        )
    return candidates, {r.name: r.cooldown for r in rules.values()}
