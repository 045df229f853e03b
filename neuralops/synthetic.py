"""Realistic synthetic run history for the demo, tests and benchmarks (`neuralops seed runs`).

Runs of the shipped catalogue's playbooks for incidents that look like Alertmanager alerts:
the symptom a playbook treats, labels (namespace, service, pod, node, cluster), a one-line
incident summary, a success rate per playbook and per namespace, realistic durations, and
error texts from the failures Kubernetes operators actually see. About one run in eight
carries personal data or a credential in a field an operator might fill in (who asked,
a ticket note, a pasted log line, a DSN) — the redactor must remove every one of them before
anything leaves the database (``PLANTED`` lists the kinds).

Deterministic for a seed: run ids are ``syn-<seed>-<n>``, so seeding again keeps the stored
runs instead of duplicating them, and seeding more continues the same sequence. `neuralops
seed runs` records them as provenance ``seed``: synthetic, they teach the recommender only
where ``seed`` is a trusted writer (docs/run-history.md).
"""

from __future__ import annotations

import hashlib
import random
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

from neuralops.manifest import Manifest
from neuralops.registry import catalogue_dir, load_manifests
from neuralops.runs import RunIn

NAMESPACES = ["payments", "checkout", "search", "identity", "orders", "platform", "data"]
SERVICES = {
    "payments": ["payments-api", "ledger", "fraud-scorer"],
    "checkout": ["checkout-web", "cart", "pricing"],
    "search": ["search-api", "indexer"],
    "identity": ["auth", "sessions"],
    "orders": ["orders-api", "fulfilment-worker"],
    "platform": ["ingress-nginx", "cert-manager", "coredns"],
    "data": ["postgres-main", "postgres-analytics", "kafka"],
}
NODES = [f"ip-10-0-{i}-{j}.eu-west-1.compute.internal" for i in (1, 2, 3) for j in (17, 42, 93)]
CLUSTERS = ["prod-eu-1", "prod-us-1", "staging"]
ERRORS = {
    "rollout": [
        "rollout did not complete within 300s: 1 of 3 new replicas unavailable",
        'deployment "{service}" exceeded its progress deadline',
        "Back-off restarting failed container {service} in pod {pod}",
    ],
    "admission": [
        "admission webhook 'validation.gatekeeper.sh' denied the request: container has no "
        "resource limits",
        'pods "{pod}" is forbidden: exceeded quota: compute-resources, requested: '
        "limits.memory=2Gi, used: limits.memory=15Gi, limited: limits.memory=16Gi",
    ],
    "eviction": [
        "Cannot evict pod as it would violate the pod's disruption budget.",
        "error when evicting pods/{pod} -n {namespace}: Too many requests",
    ],
    "timeout": [
        "timed out waiting for the condition on pods/{pod}",
        "context deadline exceeded while waiting for job {service}-migrate to complete",
    ],
    "api": [
        'the server rejected the patch: Deployment.apps "{service}" is invalid: '
        "spec.selector: field is immutable",
        'Operation cannot be fulfilled on deployments.apps "{service}": the object has been '
        "modified; please apply your changes to the latest version and try again",
        "connection to the Kubernetes API refused: dial tcp 10.96.0.1:443: i/o timeout",
    ],
    "database": [
        "FATAL: remaining connection slots are reserved for non-replication superuser connections",
        "ERROR: canceling statement due to statement timeout",
        "could not promote replica {pod}: replication lag 412 MB above the 64 MB limit",
    ],
}
SUMMARIES = {
    "default": "{alertname} firing for {service} in {namespace} on {cluster}",
    "memory": "{service} pods OOMKilled {n} times in 15m in {namespace}",
    "cpu": "{service} CPU throttled above 80% for 10m in {namespace}",
    "latency": "p99 latency of {service} above 2s for 5m in {namespace}",
    "disk": "volume {pod}-data {n}% full in {namespace}",
    "node": "node {node} NotReady for 5m",
    "database": "{service} replication lag and connection errors in {namespace}",
}
# Kinds of personal data and credentials planted in some runs (the redactor's test list).
PLANTED = (
    "email",
    "phone",
    "ipv4",
    "ipv6",
    "card",
    "jwt",
    "bearer",
    "aws_access_key",
    "aws_secret_key",
    "private_key",
    "url_password",
    "key_value_secret",
)
PLANT_EVERY = 8  # about one run in eight carries something to redact


def synthetic_runs(
    count: int,
    *,
    seed: int = 0,
    start: int = 0,
    now: datetime | None = None,
    manifests: list[Manifest] | None = None,
    days: int = 180,
) -> Iterator[RunIn]:
    """Runs ``start`` .. ``start + count - 1`` of seed ``seed``, spread over the last ``days``
    days (run n's time depends only on n and the seed, not on ``count``)."""
    manifests = manifests or load_manifests([catalogue_dir()])
    now = (now or datetime.now(UTC)).replace(microsecond=0)
    for n in range(start, start + count):
        rng = random.Random(f"{seed}:{n}")
        yield _run(rng, manifests, seed, n, now - timedelta(seconds=rng.uniform(0, days * 86400)))


def _fraction(text: str) -> float:
    return int(hashlib.sha256(text.encode()).hexdigest()[:8], 16) / 0xFFFFFFFF


def _run(
    rng: random.Random, manifests: list[Manifest], seed: int, n: int, started: datetime
) -> RunIn:
    manifest = rng.choice(manifests)
    namespace = rng.choice(NAMESPACES)
    service = rng.choice(SERVICES[namespace])
    suffix = "".join(rng.choice("bcdfghjklmnpqrstvwxz2456789") for _ in range(5))
    pod = f"{service}-{rng.randrange(16**10):010x}-{suffix}"  # a ReplicaSet pod's name
    node = rng.choice(NODES)
    cluster = rng.choice(CLUSTERS)
    symptom = rng.choice(manifest.symptoms)
    alertname = "".join(part.title() for part in symptom.split("-"))
    fields = {
        "alertname": alertname,
        "service": service,
        "namespace": namespace,
        "pod": pod,
        "node": node,
        "cluster": cluster,
        "n": rng.randrange(3, 40),
    }
    kind = next((k for k in SUMMARIES if k in symptom), "default")
    summary = SUMMARIES[kind].format(**fields)
    # Each playbook works better in some namespaces than others: the pattern a recommender
    # should learn from history.
    success_rate = 0.35 + 0.6 * _fraction(f"{manifest.id}/{namespace}")
    roll = rng.random()
    status = "succeeded" if roll < success_rate else "cancelled" if roll > 0.985 else "failed"
    step_ms = [int(rng.lognormvariate(9.3, 0.7)) for _ in manifest.steps]
    node_logs = [
        {"name": step.name, "status": "Completed", "duration_ms": ms}
        for step, ms in zip(manifest.steps, step_ms, strict=True)
    ]
    outputs: dict = {"message": f"{manifest.title}: {service} in {namespace} recovered"}
    if status == "failed":
        family = rng.choice(list(ERRORS))
        error = rng.choice(ERRORS[family]).format(**fields)
        failed_at = rng.randrange(len(node_logs))
        node_logs[failed_at].update(status="Failed", message=error)
        del node_logs[failed_at + 1 :]
        outputs = {"error": error, "failed_step": node_logs[failed_at]["name"]}
    elif status == "cancelled":
        outputs = {"message": "cancelled by the on-call engineer"}
    inputs: dict = {
        "parameters": {"namespace": namespace, "target": service},
        "alert": {
            "alertname": alertname,
            "severity": rng.choice(["warning", "critical", "critical"]),
            "namespace": namespace,
            "service": service,
            "pod": pod,
            "node": node,
            "symptom": symptom,
            "summary": summary,
        },
        "triggered_by": rng.choice(["detect", "alertmanager", "on-call"]),
    }
    values = planted(seed, n)
    if values:
        _plant(values, inputs, outputs, node_logs, service)
    return RunIn(
        wpk_id=manifest.id,
        run_id=f"syn-{seed}-{n:07d}",
        status=status,
        duration_ms=sum(step_ms),
        inputs=inputs,
        outputs=outputs,
        node_logs=node_logs,
        cluster=cluster,
        created_at=started,
    )


def planted(seed: int, n: int) -> dict[str, str] | None:
    """The personal data and credentials planted in run n of ``seed`` (one of each kind of
    ``PLANTED``), or None for a run without any: tests search every output for these."""
    if n % PLANT_EVERY:
        return None
    rng = random.Random(f"{seed}:{n}:planted")
    digits = "".join(str(rng.randrange(10)) for _ in range(15))
    card = digits + str(_luhn_check_digit(digits))
    alnum = "ABCDEFGHIJKLMNOPQRSTUVWXYZ234567"
    b64 = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789"
    token = "".join(rng.choice(b64) for _ in range(32))
    first = rng.choice(["ana", "bo", "chen", "dmitri", "eva", "farah"])
    return {
        "email": f"{first}.{rng.randrange(100, 999)}@example-corp.com",
        "phone": f"+44 20 7{rng.randrange(100, 999)} {rng.randrange(1000, 9999)}",
        "ipv4": f"203.0.{rng.randrange(0, 255)}.{rng.randrange(1, 255)}",
        "ipv6": f"2001:db8:{rng.randrange(16**4):x}::{rng.randrange(1, 16**4):x}",
        "card": " ".join(card[i : i + 4] for i in range(0, 16, 4)),
        "jwt": "eyJhbGciOiJIUzI1NiJ9."
        + "".join(rng.choice(b64) for _ in range(40))
        + "."
        + "".join(rng.choice(b64) for _ in range(43)),
        "bearer": token,
        "aws_access_key": "AKIA" + "".join(rng.choice(alnum) for _ in range(16)),
        "aws_secret_key": "".join(rng.choice(b64 + "/+") for _ in range(40)),
        "private_key": "-----BEGIN RSA PRIVATE KEY-----\n"
        + "\n".join("".join(rng.choice(b64) for _ in range(64)) for _ in range(3))
        + "\n-----END RSA PRIVATE KEY-----",
        "url_password": "".join(rng.choice(b64) for _ in range(14)),
        "key_value_secret": "".join(rng.choice(b64) for _ in range(24)),
    }


def _plant(
    v: dict[str, str], inputs: dict, outputs: dict, node_logs: list[dict], service: str
) -> None:
    inputs["requested_by"] = v["email"]
    inputs["user_email"] = v["email"]
    inputs["note"] = (
        f"paged by {v['email']}, call back on {v['phone']}; client {v['ipv4']} / {v['ipv6']}; "
        f"refund card {v['card']} flagged"
    )
    inputs["parameters"]["database_url"] = (
        f"postgresql://app:{v['url_password']}@db.{service}.svc:5432/app"
    )
    node_logs[0]["message"] = (
        f"curl -H 'Authorization: Bearer {v['bearer']}' https://api.internal/{service}; "
        f"session={v['jwt']}"
    )
    outputs["debug"] = (
        f"aws_access_key_id={v['aws_access_key']} aws_secret_access_key={v['aws_secret_key']} "
        f"client_secret={v['key_value_secret']}\n{v['private_key']}"
    )


def _luhn_check_digit(digits: str) -> int:
    total = 0
    for i, ch in enumerate(reversed(digits)):
        d = int(ch)
        if i % 2 == 0:  # doubled: these sit at odd positions once the check digit is added
            d = d * 2 - 9 if d > 4 else d * 2
        total += d
    return (10 - total % 10) % 10
