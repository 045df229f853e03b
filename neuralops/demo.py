"""Deterministic demo run history for the shipped catalogue.

Each playbook gets past runs with inputs that satisfy its declared parameters, alert labels
naming the symptom it was run for, a success rate of its own and realistic durations. Run
ids are fixed (``demo-<playbook>-<n>``), so seeding twice keeps what the first seeding
stored instead of duplicating it (provenance ``seed``: it teaches the recommender where
``seed`` is a trusted writer, as `neuralops run` makes it).
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
    return runs + _precedents({m.id: m for m in manifests}, now)


# Earlier OOM kills of the demo incident's workload (see incident_metrics): what the
# recommendation cites, and where the parameters the labels lack come from.
PRECEDENTS = (  # playbook, days ago, status, symptom as the on-call saw it, memory limit
    ("raise-memory-limit", 41, "succeeded", "oom-killed", "1536Mi"),
    ("restart-deployment", 23, "failed", "memory-leak", None),
    ("raise-memory-limit", 23, "succeeded", "oom-killed", "2Gi"),
)


def _precedents(manifests: dict[str, Manifest], now: datetime) -> list[RunIn]:
    container = OOM_POD["pod"].rsplit("-", 2)[0]
    runs = []
    for n, (playbook, days, status, symptom, limit) in enumerate(PRECEDENTS):
        manifest = manifests.get(playbook)
        if manifest is None:
            continue
        given = {"namespace": OOM_POD["namespace"], "deployment": container}
        given |= {"container": container, "memory_limit": limit} if limit else {}
        declared = {p.name for p in manifest.parameters}
        ms = 41_000 + 3_000 * n
        step_ms = ms // len(manifest.steps)
        runs.append(
            RunIn(
                wpk_id=playbook,
                run_id=f"demo-precedent-{n:02d}",
                status=status,
                duration_ms=ms,
                inputs={
                    "parameters": {k: v for k, v in given.items() if k in declared},
                    "alert": {
                        "alertname": "OomKilled",
                        "severity": "page",
                        **OOM_POD,
                        "symptom": symptom,
                    },
                },
                outputs={"error": "OOMKilled again 6 minutes after the restart"}
                if status == "failed"
                else {"message": f"{manifest.title}: done"},
                node_logs=[
                    {
                        "name": s.name,
                        "status": "Completed",
                        "duration_ms": step_ms,
                    }
                    for s in manifest.steps
                ],
                cluster="prod-eu-1",
                created_at=now - timedelta(days=days, minutes=17 * n),
            )
        )
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


# --- the demo incident in metrics: what `neuralops run` replays or loads into Prometheus ----

OOM_POD = {"namespace": "payments", "pod": "payments-api-7d9f8b6c4d-x2x7q"}
QUIET_PODS = (
    {"namespace": "checkout", "pod": "checkout-web-5c7b9d8f6-k4m2p"},
    {"namespace": "search", "pod": "search-api-6f8d7c9b5-r7t2w"},
    {"namespace": "orders", "pod": "orders-worker-84d6f7b9c-q9z3x"},
)
# payments-api's memory limit as the cluster runs it now: its working set climbs to it and it
# is OOM-killed. The raises of the precedents above never reached its manifests in Git (the
# next rollout put 512Mi back), which is why it is OOM-killed again.
MEMORY_LIMIT = "512Mi"
MEMORY_LIMIT_MIB = 512
QUIET_MEMORY_LIMIT = "1Gi"


def workloads() -> dict[str, dict]:
    """The demo's Deployments as the cluster runs them now, keyed ``Deployment/<ns>/<name>``:
    what the local runtime's mock cluster starts with, so that a dry-run diffs against the
    real spec (``payments-api``'s memory limit ``512Mi`` → the plan's ``2Gi``)."""
    from neuralops.policy import object_key

    found = {}
    for pod in (OOM_POD, *QUIET_PODS):
        name = pod["pod"].rsplit("-", 2)[0]
        limit = MEMORY_LIMIT if pod is OOM_POD else QUIET_MEMORY_LIMIT
        labels = {"app": name}
        found[object_key("Deployment", pod["namespace"], name)] = {
            "apiVersion": "apps/v1",
            "kind": "Deployment",
            "metadata": {"name": name, "namespace": pod["namespace"], "labels": labels},
            "spec": {
                "replicas": 3,
                "selector": {"matchLabels": labels},
                "template": {
                    "metadata": {"labels": labels},
                    "spec": {
                        "containers": [
                            {
                                "name": name,
                                "image": f"registry.example.com/{pod['namespace']}/{name}:1.42.0",
                                "resources": {
                                    "requests": {"cpu": "250m", "memory": "384Mi"},
                                    "limits": {"cpu": "1", "memory": limit},
                                },
                            }
                        ]
                    },
                },
            },
        }
    return found


MEMORY = "container_memory_working_set_bytes"
OOM_EVENTS = "container_oom_events_total"
RESTARTS = "kube_pod_container_status_restarts_total"
# What the shipped rules compute from the raw series, as recording rules would store it: a
# replay file answers selectors only, so the demo replays these (rules/demo-replay.yaml).
RECORDED = {
    MEMORY: "namespace_pod:container_memory_working_set_bytes:sum",
    OOM_EVENTS: "namespace_pod:container_oom_events:increase10m",
    RESTARTS: "namespace_pod:kube_pod_container_restarts:increase10m",
}
MIB = 2**20
# payments-api before the incident: its liveness probe times out now and then and the kubelet
# restarts its container (minutes before the end). Each restart comes back with a cold heap:
# the working set WARMUP_DROP below its usual level, refilled with a time constant of
# WARMUP_MINUTES. Restarts, and a working set that grows by half in minutes, are usual for
# this pod; OOM kills are not. So the restarts and the memory move with the OOM kills, but
# only the OOM kills reach the remediation threshold under the default detector (its
# level-shift part weighs the last 12 minutes' restarts against these, not against a flat
# zero): one incident.
EARLIER_RESTARTS: tuple[float, ...] = (165, 120, 75, 40)
WARMUP_DROP = 0.35
WARMUP_MINUTES = 6.0


def incident_metrics(
    now: datetime, *, hours: float = 3, step_s: int = 60, end_offset_s: int = 60, seed: int = 11
) -> list:
    """Three hours of memory, OOM-kill and restart series for four pods, ending just before
    ``now``: three are quiet; ``payments-api``, whose container restarted a few times before
    (``EARLIER_RESTARTS``), climbs to its 512 MiB limit over the last 20 minutes and is
    OOM-killed three times (each kill a restart) in the last 12.

    Returns :class:`~neuralops.local_prometheus.Series` with the raw metric names (what
    cAdvisor and kube-state-metrics export, for Prometheus). Deterministic for ``now``."""
    import numpy as np

    from neuralops.local_prometheus import Series

    rng = np.random.default_rng(seed)
    end = (int(now.timestamp()) // step_s) * step_s - end_offset_s
    n = int(hours * 3600 // step_s) + 1
    stamps = end - step_s * np.arange(n - 1, -1, -1, dtype=np.float64)
    minutes_before_end = (end - stamps) / 60
    series = []
    for i, pod in enumerate((OOM_POD, *QUIET_PODS)):
        labels = {**pod, "container": pod["pod"].rsplit("-", 2)[0]}
        level = (420 + 90 * i) * MIB
        memory = level * (1 + 0.03 * np.sin(stamps / 1800 + i)) + rng.normal(0, 4 * MIB, n)
        kills, restarts = np.zeros(n), np.full(n, float(i % 2))
        if pod is OOM_POD:
            for minutes in EARLIER_RESTARTS:
                restarted = minutes_before_end <= minutes
                restarts += restarted
                since = np.where(restarted, minutes - minutes_before_end, np.inf)
                memory = memory * (1 - WARMUP_DROP * np.exp(-since / WARMUP_MINUTES))
            climb = np.clip((20 - minutes_before_end) / 20, 0, 1)
            memory = memory + climb * (MEMORY_LIMIT_MIB * MIB - memory)
            for minutes in (12, 8, 4):  # each kill restarts the container
                kills += minutes_before_end <= minutes
        series += [
            Series(MEMORY, labels, stamps, np.round(memory)),
            Series(OOM_EVENTS, labels, stamps, kills),
            Series(RESTARTS, labels, stamps, restarts + kills),
        ]
    return sorted(series, key=lambda s: s.name)  # OpenMetrics wants each family together


def recorded_metrics(series: list, *, window_s: int = 600) -> list:
    """The series the shipped rules would compute (sum by namespace, pod; increase over 10
    minutes), under their recording-rule names: what a replay file can answer."""
    import numpy as np

    from neuralops.local_prometheus import Series

    recorded = []
    for name, labels, stamps, values in series:
        pod = {k: labels[k] for k in ("namespace", "pod")}
        if name == MEMORY:
            recorded.append(Series(RECORDED[name], pod, stamps, values))
            continue
        lag = int(window_s // (stamps[1] - stamps[0]))
        increase = values - np.concatenate([np.full(lag, values[0]), values[:-lag]])
        recorded.append(Series(RECORDED[name], pod, stamps, increase))
    return recorded


def sign_unsigned(settings, *, actor: str = "neuralops:run") -> list[str]:
    """Sign every registered playbook whose stored signature does not verify with the trusted
    key (new, changed, or signed by another key); the rest keep theirs, so a second
    `neuralops run` signs nothing. Returns the ids signed."""
    from neuralops import signing
    from neuralops.cosign_enforcer import SignatureRejected, enforce_registered

    trusted = signing.trusted_public_key(settings)
    signer = None
    signed = []
    for playbook_id in signing.registered_ids():
        try:
            enforce_registered(playbook_id, trusted)
        except SignatureRejected:
            signer = signer or signing.signer_from_settings(settings)
            signing.sign_playbook(playbook_id, signer, actor=actor)
            signed.append(playbook_id)
    return signed
