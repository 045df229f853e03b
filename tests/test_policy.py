"""Parameters, rendering and the policy checks of a playbook's dry-run (no database)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from neuralops import policy, registry
from neuralops.errors import InvalidInput
from neuralops.manifest import PLACEHOLDER, Manifest, load_manifest_file, parse_manifest

CATALOGUE = sorted(registry.catalogue_dir().glob("*.yaml"))
LABELS = {"namespace": "payments", "service": "payments-api"}
# What an operator would give for the required parameters that neither the labels, a default
# nor an example fill.
OPERATOR_GIVES: dict[str, Any] = {
    "hpa": "payments-api",
    "max_replicas": 12,
    "pvc": "data-payments-0",
    "node": "worker-1",
    "target_dir": "logs/archive",
    "run_id": "inc-42",
    "cluster": "orders-db",
    "database": "orders",
    "credentials_secret": "orders-db-app",
    "container": "api",
    "quota": "compute",
    "job_name": "settlement",
    "replicas": 6,
    "ordinal": 0,
    "certificate": "api-tls",
    "secret_name": "api-tls",
    "table": "events",
}


def _needs(manifest: Manifest) -> dict[str, Any]:
    return {
        p.name: OPERATOR_GIVES[p.name]
        for p in manifest.parameters
        if p.name in OPERATOR_GIVES and p.default is None and p.example is None
    }


@pytest.mark.parametrize("path", CATALOGUE, ids=lambda p: p.stem)
def test_every_catalogue_playbook_renders_and_passes_the_checks(path: Path) -> None:
    manifest = load_manifest_file(path)
    parameters = policy.resolve_parameters(manifest, _needs(manifest), LABELS)
    rendered = policy.render(manifest, parameters)
    assert policy.check(manifest, rendered) == []
    text = json.dumps(rendered.model_dump(mode="json"))
    assert not PLACEHOLDER.search(text)
    if "{{ namespace }}" in manifest.scope.namespaces:
        assert rendered.scope.namespaces == ["payments"]
    assert policy.diff(rendered)  # the dry-run artifact renders too


def _catalogue(playbook_id: str) -> Manifest:
    return load_manifest_file(registry.catalogue_dir() / f"{playbook_id}.yaml")


# --- resolve_parameters --------------------------------------------------------------------


def test_labels_fill_namespace_and_workload() -> None:
    manifest = _catalogue("restart-deployment")
    assert policy.resolve_parameters(manifest, {}, LABELS) == {
        "namespace": "payments",
        "deployment": "payments-api",
    }


def test_pod_label_loses_its_replicaset_hash() -> None:
    manifest = _catalogue("restart-deployment")
    labels = {"namespace": "shop", "pod": "checkout-7d9f8b6c5-x2x9z"}
    assert policy.resolve_parameters(manifest, {}, labels)["deployment"] == "checkout"


def test_given_values_win_over_labels_defaults_and_examples() -> None:
    manifest = _catalogue("raise-memory-limit")
    given = {"namespace": "billing", "deployment": "invoicer", "memory_limit": "3Gi"}
    resolved = policy.resolve_parameter_sources(manifest, {**given, "container": "app"}, LABELS)
    assert {k: v.value for k, v in resolved.items()} == {**given, "container": "app"}
    assert {v.source for v in resolved.values()} == {"given"}


def test_defaults_then_examples_fill_the_rest() -> None:
    manifest = _catalogue("verify-postgres-backup")
    resolved = policy.resolve_parameter_sources(
        manifest, {"cluster": "orders-db", "credentials_secret": "s3-creds", "run_id": "r1"}, LABELS
    )
    assert resolved["max_age_hours"].value == 26
    assert resolved["max_age_hours"].source == "default"
    assert resolved["destination_path"].value == "s3://acme-pg-backups/orders-db"
    assert resolved["destination_path"].source == "example"
    assert resolved["namespace"].source == "label namespace"


def test_examples_can_be_refused() -> None:
    manifest = _catalogue("raise-memory-limit")
    with pytest.raises(InvalidInput, match="memory_limit"):
        policy.resolve_parameters(manifest, {"container": "api"}, LABELS, use_examples=False)


def test_text_values_are_read_as_the_parameter_type() -> None:
    manifest = _catalogue("scale-up-deployment")
    resolved = policy.resolve_parameters(manifest, {"replicas": "6"}, LABELS)
    assert resolved["replicas"] == 6


def test_a_missing_parameter_is_named_with_how_to_give_it() -> None:
    manifest = _catalogue("adjust-hpa-limits")
    with pytest.raises(InvalidInput) as caught:
        policy.resolve_parameters(manifest, {"max_replicas": 12}, LABELS)
    message = str(caught.value)
    assert "parameters.hpa" in message
    assert "Name of the HorizontalPodAutoscaler" in message
    assert "hpa=<string>" in message
    assert [p.field for p in caught.value.problems] == ["parameters.hpa"]


def test_an_invalid_value_is_named_with_the_problem() -> None:
    manifest = _catalogue("scale-up-deployment")
    with pytest.raises(InvalidInput) as caught:
        policy.resolve_parameters(manifest, {"replicas": 0}, LABELS)
    assert "parameters.replicas" in str(caught.value)
    assert "below the minimum 2" in str(caught.value)


def test_an_unknown_parameter_is_refused() -> None:
    manifest = _catalogue("restart-deployment")
    with pytest.raises(InvalidInput, match=r"parameters\.replica: unknown parameter"):
        policy.resolve_parameters(manifest, {"replica": 3}, LABELS)


def test_a_label_that_does_not_fit_is_skipped() -> None:
    manifest = _catalogue("raise-memory-limit")
    labels = {**LABELS, "container": "POD"}  # cAdvisor's pause-container series
    with pytest.raises(InvalidInput, match="label container='POD' does not match"):
        policy.resolve_parameters(manifest, {}, labels)


# --- render --------------------------------------------------------------------------------


def test_a_lone_placeholder_keeps_its_type_and_text_interpolates() -> None:
    manifest = _catalogue("adjust-hpa-limits")
    rendered = policy.render(manifest, {"namespace": "payments", "hpa": "api", "max_replicas": 12})
    [step] = rendered.steps
    assert step.patch == {"spec": {"maxReplicas": 12}}
    assert (step.target.namespace, step.target.name) == ("payments", "api")

    manifest = _catalogue("restart-statefulset-pod")
    rendered = policy.render(manifest, {"namespace": "db", "statefulset": "web", "ordinal": 3})
    assert rendered.steps[0].target.name == "web-3"

    manifest = _catalogue("scale-up-deployment")
    params = policy.resolve_parameters(manifest, {"replicas": 6}, LABELS)
    assert policy.render(manifest, params).steps[0].replicas == 6


def test_kubernetes_string_fields_stay_strings() -> None:
    manifest = _catalogue("kill-long-running-queries")
    params = policy.resolve_parameters(manifest, _needs(manifest), LABELS)
    job = policy.render(manifest, params).steps[0].manifest
    env = {
        e["name"]: e.get("value") for e in job["spec"]["template"]["spec"]["containers"][0]["env"]
    }
    assert env["MAX_SECONDS"] == "300"
    assert env["INCLUDE_IDLE_TX"] == "true"  # not Python's "True"
    assert job["metadata"]["labels"]["cnpg.io/cluster"] == "orders-db"

    manifest = _catalogue("clear-full-volume")
    params = policy.resolve_parameters(manifest, _needs(manifest), LABELS)
    pod = policy.render(manifest, params).steps[0].manifest["spec"]["template"]["spec"]
    assert pod["securityContext"]["runAsUser"] == 1000  # an integer field stays an integer


def test_a_placeholder_without_a_value_is_refused() -> None:
    manifest = _catalogue("restart-deployment")
    with pytest.raises(InvalidInput, match="no value for parameters deployment"):
        policy.render(manifest, {"namespace": "payments"})


def test_render_refuses_undeclared_and_invalid_values() -> None:
    manifest = _catalogue("scale-up-deployment")
    base = {"namespace": "payments", "deployment": "api"}
    with pytest.raises(InvalidInput, match=r"parameters\.extra: is not declared"):
        policy.render(manifest, {**base, "replicas": 3, "extra": 1})
    with pytest.raises(InvalidInput, match=r"parameters\.replicas: 500 is above the maximum"):
        policy.render(manifest, {**base, "replicas": 500})


def test_a_value_that_looks_like_a_placeholder_is_refused() -> None:
    manifest = _manifest(
        [{"name": "s", "description": "d", "action": "restart", "target": _target("{{ app }}")}],
        parameters=[{"name": "app", "description": "x"}],
    )
    with pytest.raises(InvalidInput, match=r"parameters\.app: contains a \{\{ placeholder"):
        policy.render(manifest, {"namespace": "payments", "app": "{{ namespace }}"})


# --- policy violations ---------------------------------------------------------------------

PARAMS = [
    {"name": "namespace", "description": "Namespace.", "example": "payments"},
    {"name": "replicas", "type": "integer", "description": "Replicas.", "example": 0},
]


def _manifest(
    steps: list[dict[str, Any]],
    *,
    kinds: list[str] | None = None,
    namespaces: list[str] | None = None,
    parameters: list[dict[str, Any]] | None = None,
    allowed_images: list[str] | None = None,
) -> Manifest:
    return parse_manifest(
        {
            "id": "crafted",
            "version": "1.0.0",
            "title": "Crafted for a test",
            "description": "A manifest written to exercise one policy rule.",
            "symptoms": ["test"],
            "scope": {
                "namespaces": ["{{ namespace }}"] if namespaces is None else namespaces,
                "kinds": kinds or ["Deployment"],
            },
            "parameters": [PARAMS[0], *(parameters or PARAMS[1:])],
            **({"allowed_images": allowed_images} if allowed_images is not None else {}),
            "steps": steps,
        }
    )


def _target(name: str = "api", kind: str = "Deployment", namespace: str | None = "{{ namespace }}"):
    target = {"kind": kind, "name": name}
    if namespace is not None:
        target["namespace"] = namespace
    return target


def _pod_job(pod_spec: dict[str, Any], kind: str = "Job") -> dict[str, Any]:
    meta = {"name": "tool", "namespace": "{{ namespace }}"}
    if kind == "Pod":
        return {"apiVersion": "v1", "kind": "Pod", "metadata": meta, "spec": pod_spec}
    if kind == "CronJob":
        spec = {"jobTemplate": {"spec": {"template": {"spec": pod_spec}}}}
        return {"apiVersion": "batch/v1", "kind": kind, "metadata": meta, "spec": spec}
    return {"kind": kind, "metadata": meta, "spec": {"template": {"spec": pod_spec}}}


def _violations(manifest: Manifest, **given: Any) -> list[policy.Violation]:
    params = policy.resolve_parameters(manifest, given)
    return policy.check(manifest, policy.render(manifest, params))


def _rules(violations: list[policy.Violation]) -> list[str]:
    return [v.rule for v in violations]


def test_scaling_to_zero_reads_like_an_approver_would_say_it() -> None:
    manifest = _manifest(
        [
            {
                "name": "patch-max-replicas",
                "description": "Scale in.",
                "action": "scale",
                "target": _target(),
                "replicas": "{{ replicas }}",
            }
        ]
    )
    [violation] = _violations(manifest)
    assert violation.rule == "scale-to-zero"
    assert violation.step == "patch-max-replicas"
    assert (
        violation.message == "step patch-max-replicas: scales Deployment payments/api to 0 replicas"
    )
    assert _violations(manifest, replicas=2) == []


@pytest.mark.parametrize("kind", ["StatefulSet", "ReplicaSet", "Deployment"])
def test_patching_or_applying_zero_replicas_is_scale_to_zero(kind: str) -> None:
    patch = {
        "name": "p",
        "description": "d",
        "action": "patch",
        "target": _target(kind=kind),
        "patch": {"spec": {"replicas": "{{ replicas }}"}},
    }
    apply = {
        "name": "a",
        "description": "d",
        "action": "apply",
        "manifest": {
            "kind": kind,
            "metadata": {"name": "x", "namespace": "payments"},
            "spec": {"replicas": 0},
        },
    }
    violations = _violations(_manifest([patch, apply], kinds=[kind]))
    assert _rules(violations) == ["scale-to-zero", "scale-to-zero"]
    assert f"scales {kind} payments/x to 0 replicas" in violations[1].message


@pytest.mark.parametrize(
    ("kind", "rule"),
    [
        ("Namespace", "delete-namespace"),
        ("PersistentVolume", "delete-volume"),
        ("PersistentVolumeClaim", "delete-volume"),
        ("StorageClass", "delete-volume"),
    ],
)
def test_deleting_namespaces_and_volumes(kind: str, rule: str) -> None:
    namespaced = kind == "PersistentVolumeClaim"
    step = {
        "name": "remove",
        "description": "d",
        "action": "delete",
        "target": _target(
            "payments" if kind == "Namespace" else "data",
            kind,
            "{{ namespace }}" if namespaced else None,
        ),
    }
    violations = _violations(_manifest([step], kinds=[kind]))
    assert _rules(violations) == [rule]
    assert violations[0].message.startswith(f"step remove: deletes {kind} ")


def test_deleting_a_pod_is_allowed() -> None:
    step = {"name": "d", "description": "d", "action": "delete", "target": _target("p-0", "Pod")}
    assert _violations(_manifest([step], kinds=["Pod"])) == []


@pytest.mark.parametrize(
    ("pod_spec", "kind", "words"),
    [
        (
            {"containers": [{"name": "c", "securityContext": {"privileged": True}}]},
            "Pod",
            "container 'c' runs privileged",
        ),
        (
            {
                "initContainers": [
                    {"name": "i", "securityContext": {"allowPrivilegeEscalation": True}}
                ]
            },
            "Job",
            "container 'i' allows privilege escalation",
        ),
        (
            {
                "containers": [
                    {"name": "c", "securityContext": {"capabilities": {"add": ["SYS_ADMIN"]}}}
                ]
            },
            "CronJob",
            "adds capabilities SYS_ADMIN",
        ),
        (
            {"containers": [{"name": "c", "securityContext": {"capabilities": {"add": ["all"]}}}]},
            "Job",
            "adds capabilities ALL",
        ),
        ({"hostNetwork": True, "containers": [{"name": "c"}]}, "Job", "sets hostNetwork: true"),
        ({"hostPID": True, "containers": [{"name": "c"}]}, "Job", "sets hostPID: true"),
        ({"hostIPC": True, "containers": [{"name": "c"}]}, "Job", "sets hostIPC: true"),
    ],
)
def test_privileged_pods_in_applied_manifests(pod_spec: dict, kind: str, words: str) -> None:
    step = {
        "name": "tool",
        "description": "d",
        "action": "apply",
        "manifest": _pod_job(pod_spec, kind),
    }
    [violation] = _violations(_manifest([step], kinds=[kind]))
    assert violation.rule == "privileged"
    assert words in violation.message
    assert f"{kind} payments/tool" in violation.message


def test_privileged_pod_template_in_a_patch() -> None:
    step = {
        "name": "debug",
        "description": "d",
        "action": "patch",
        "target": _target(),
        "patch": {
            "spec": {
                "template": {
                    "spec": {
                        "containers": [{"name": "api", "securityContext": {"privileged": True}}]
                    }
                }
            }
        },
    }
    [violation] = _violations(_manifest([step]))
    assert violation.rule == "privileged"
    assert violation.message == (
        "step debug: container 'api' runs privileged in Deployment payments/api"
    )


def test_host_paths() -> None:
    volume = {"name": "root", "hostPath": {"path": "/"}}
    job = {
        "name": "j",
        "description": "d",
        "action": "apply",
        "manifest": _pod_job({"containers": [{"name": "c"}], "volumes": [volume]}),
    }
    pv = {
        "name": "pv",
        "description": "d",
        "action": "apply",
        "manifest": {
            "kind": "PersistentVolume",
            "metadata": {"name": "node-disk"},
            "spec": {"hostPath": {"path": "/var/lib"}},
        },
    }
    violations = _violations(_manifest([job, pv], kinds=["Job", "PersistentVolume"]))
    assert _rules(violations) == ["host-path", "host-path"]
    assert "mounts host path / (volume 'root')" in violations[0].message
    assert "exposes host path /var/lib" in violations[1].message


@pytest.mark.parametrize(
    ("body", "words"),
    [
        (
            {"kind": "Role", "rules": [{"apiGroups": [""], "resources": ["pods"], "verbs": ["*"]}]},
            "grants '*' in verbs",
        ),
        (
            {
                "kind": "ClusterRole",
                "rules": [{"apiGroups": ["*"], "resources": ["*"], "verbs": ["get"]}],
            },
            "grants '*' in resources",
        ),
        (
            {
                "kind": "ClusterRoleBinding",
                "roleRef": {"kind": "ClusterRole", "name": "cluster-admin"},
            },
            "binds the cluster-admin role",
        ),
        (
            {"kind": "RoleBinding", "roleRef": {"kind": "ClusterRole", "name": "cluster-admin"}},
            "binds the cluster-admin role",
        ),
    ],
)
def test_wildcard_rbac(body: dict, words: str) -> None:
    cluster_scoped = body["kind"].startswith("Cluster")
    meta = (
        {"name": "neuralops"} if cluster_scoped else {"name": "neuralops", "namespace": "payments"}
    )
    step = {
        "name": "grant",
        "description": "d",
        "action": "apply",
        "manifest": {**body, "metadata": meta},
    }
    violations = _violations(_manifest([step], kinds=[body["kind"]]))
    assert "wildcard-rbac" in _rules(violations)
    assert any(words in v.message for v in violations)
    if not cluster_scoped:
        assert _rules(violations) == ["wildcard-rbac"]


def test_kinds_outside_the_scope() -> None:
    steps = [
        {
            "name": "secret",
            "description": "d",
            "action": "delete",
            "target": _target("s", "Secret"),
        },
        {
            "name": "cm",
            "description": "d",
            "action": "apply",
            "manifest": {"kind": "ConfigMap", "metadata": {"name": "c", "namespace": "payments"}},
        },
        {
            "name": "no-kind",
            "description": "d",
            "action": "apply",
            "manifest": {"metadata": {"name": "c", "namespace": "payments"}},
        },
    ]
    violations = _violations(_manifest(steps))
    assert _rules(violations) == ["out-of-scope-kind"] * 3
    assert violations[0].message == (
        "step secret: acts on Secret payments/s, a kind outside the scope (Deployment)"
    )
    assert "without a kind" in violations[2].message


def test_namespaces_outside_the_scope() -> None:
    steps = [
        {
            "name": "other",
            "description": "d",
            "action": "restart",
            "target": _target("coredns", namespace="kube-system"),
        },
        {
            "name": "unnamed",
            "description": "d",
            "action": "restart",
            "target": _target("api", namespace=None),
        },
    ]
    violations = _violations(_manifest(steps))
    assert _rules(violations) == ["out-of-scope-namespace"] * 2
    assert violations[0].message == (
        "step other: acts on Deployment kube-system/coredns, outside the playbook's namespaces "
        "(payments)"
    )
    assert "without naming its namespace" in violations[1].message

    cluster_only = _manifest(
        [{"name": "x", "description": "d", "action": "restart", "target": _target()}],
        namespaces=[],
    )
    [violation] = _violations(cluster_only)
    assert violation.rule == "out-of-scope-namespace"
    assert "declares no namespaces" in violation.message


def _step(action: str, **fields: Any) -> dict[str, Any]:
    return {"name": "s", "description": "d", "action": action, **fields}


# The smallest unsafe playbook for each rule: a rule added to policy.RULES without one here
# fails the test below, so no rule goes untested.
ONE_CASE_PER_RULE: dict[str, Any] = {
    "delete-namespace": lambda: _manifest(
        [_step("delete", target=_target("payments", "Namespace", None))], kinds=["Namespace"]
    ),
    "delete-volume": lambda: _manifest(
        [_step("delete", target=_target("data", "PersistentVolume", None))],
        kinds=["PersistentVolume"],
    ),
    "scale-to-zero": lambda: _manifest(
        [_step("scale", target=_target(), replicas="{{ replicas }}")]
    ),
    "privileged": lambda: _manifest(
        [
            _step(
                "apply",
                manifest=_pod_job(
                    {"containers": [{"name": "c", "securityContext": {"privileged": True}}]}
                ),
            )
        ],
        kinds=["Job"],
    ),
    "host-path": lambda: _manifest(
        [
            _step(
                "apply",
                manifest=_pod_job(
                    {
                        "containers": [{"name": "c"}],
                        "volumes": [{"name": "r", "hostPath": {"path": "/"}}],
                    }
                ),
            )
        ],
        kinds=["Job"],
    ),
    "wildcard-rbac": lambda: _manifest(
        [
            _step(
                "apply",
                manifest={
                    "kind": "ClusterRole",
                    "metadata": {"name": "all"},
                    "rules": [{"apiGroups": ["*"], "resources": ["*"], "verbs": ["*"]}],
                },
            )
        ],
        kinds=["ClusterRole"],
    ),
    "out-of-scope-kind": lambda: _manifest([_step("delete", target=_target("s", "Secret"))]),
    "out-of-scope-namespace": lambda: _manifest(
        [_step("restart", target=_target(namespace="kube-system"))]
    ),
    "unconstrained-parameter": lambda: _manifest(
        [_step("apply", manifest=_pod_job({"containers": [_container(args=["echo {{ note }}"])]}))],
        kinds=["Job"],
        parameters=[PARAMS[1], {"name": "note", "description": "Free text.", "example": "hi"}],
    ),
    "image-not-allowed": lambda: _manifest(
        [_step("apply", manifest=_pod_job({"containers": [_container("evil.example/psql:16")]}))],
        kinds=["Job"],
        allowed_images=["postgres"],
    ),
}


def _container(image: str = "postgres:16.4", **fields: Any) -> dict[str, Any]:
    return {"name": "c", "image": image, **fields}


@pytest.mark.parametrize("rule", policy.RULES)
def test_every_rule_has_a_case_that_fires_it(rule: str) -> None:
    assert rule in ONE_CASE_PER_RULE, f"add an unsafe case for {rule}"
    assert rule in _rules(_violations(ONE_CASE_PER_RULE[rule](), replicas=0))


# --- diff ----------------------------------------------------------------------------------


def test_diff_shows_what_a_patch_changes() -> None:
    manifest = _catalogue("raise-memory-limit")
    params = policy.resolve_parameters(manifest, {"container": "api"}, LABELS)
    rendered = policy.render(manifest, params)
    key = policy.object_key("Deployment", "payments", "payments-api")
    current = {
        "spec": {
            "replicas": 3,
            "template": {
                "spec": {
                    "containers": [
                        {
                            "name": "api",
                            "image": "api:1",
                            "resources": {"limits": {"memory": "1Gi"}},
                        },
                        {"name": "sidecar", "image": "envoy:1"},
                    ]
                }
            },
        }
    }
    text = policy.diff(rendered, {key: current})
    assert "-            memory: 1Gi" in text
    assert "+            memory: 2Gi" in text
    assert "sidecar" in text and "-        image: envoy" not in text  # merged by name
    assert "waits up to 600s for rollout-complete" in text


def test_diff_without_pre_state_shows_the_rendered_steps() -> None:
    manifest = _catalogue("scale-up-deployment")
    rendered = policy.render(manifest, policy.resolve_parameters(manifest, {"replicas": 6}, LABELS))
    text = policy.diff(rendered)
    assert "# step 1: scale-out (scale)" in text
    assert "replicas: 6" in text and "namespace: payments" in text
    key = policy.object_key("Deployment", "payments", "payments-api")
    assert "spec.replicas 3 -> 6" in policy.diff(rendered, {key: {"spec": {"replicas": 3}}})


# --- what reaches a shell or an image (issue 15) -----------------------------------------

PSQL = {"name": "psql_image", "description": "Image with psql.", "pattern": "^[a-z0-9./:@-]+$"}


def _job(container: dict[str, Any], parameters: list[dict[str, Any]], **kwargs: Any) -> Manifest:
    return _manifest(
        [_step("apply", manifest=_pod_job({"containers": [container]}))],
        kinds=["Job"],
        parameters=[PARAMS[1], *parameters],
        **kwargs,
    )


@pytest.mark.parametrize(
    ("container", "where"),
    [
        (_container(command=["/bin/sh", "-c", "echo {{ note }}"]), "command"),
        (_container(args=["--table={{ note }}"]), "args"),
        (_container(image="{{ note }}"), "image"),
        (_container(image="registry.internal/{{ note }}:1"), "image"),
    ],
)
def test_an_unconstrained_string_reaching_a_shell_or_an_image_is_a_problem(
    container: dict[str, Any], where: str
) -> None:
    manifest = _job(container, [{"name": "note", "description": "Free text.", "example": "x"}])
    problems = policy.manifest_problems(manifest)
    unconstrained = [p for p in problems if p.rule == "unconstrained-parameter"]
    assert len(unconstrained) == 1
    message = unconstrained[0].message
    assert "step s" in message and "'note'" in message and f"container's {where}" in message
    assert "add a pattern" in message
    with pytest.raises(InvalidInput, match=r"playbook crafted: step s: string parameter 'note'"):
        policy.check_registrable([manifest])


@pytest.mark.parametrize(
    "param",
    [
        {"name": "note", "description": "Table.", "pattern": "^[a-z_]+$", "example": "events"},
        {"name": "note", "description": "Mode.", "values": ["cancel", "terminate"]},
        {"name": "note", "type": "integer", "description": "Seconds.", "example": 5},
    ],
    ids=["pattern", "values", "integer"],
)
def test_a_constrained_parameter_may_reach_args(param: dict[str, Any]) -> None:
    manifest = _job(_container(args=["--x={{ note }}"]), [param])
    assert policy.manifest_problems(manifest) == []
    policy.check_registrable([manifest])


def test_env_values_are_not_a_shell() -> None:
    """The catalogue passes values to scripts through env (quoted "$VAR"), not args."""
    container = _container(env=[{"name": "NOTE", "value": "{{ note }}"}])
    manifest = _job(container, [{"name": "note", "description": "Free text.", "example": "x"}])
    assert policy.manifest_problems(manifest) == []


def test_a_values_list_is_enforced() -> None:
    param = {"name": "mode", "description": "Mode.", "values": ["cancel", "terminate"]}
    manifest = _job(_container(args=["--mode={{ mode }}"]), [param])
    with pytest.raises(InvalidInput, match=r"parameters\.mode: 'drop' is not one of"):
        policy.resolve_parameters(manifest, {"mode": "drop", "replicas": 1})
    with pytest.raises(InvalidInput, match="not one of"):
        policy.render(manifest, {"namespace": "payments", "replicas": 1, "mode": "drop"})
    resolved = policy.resolve_parameters(manifest, {"mode": "cancel", "replicas": 1})
    assert resolved["mode"] == "cancel"
    with pytest.raises(InvalidInput, match="values"):
        _job(_container(), [{"name": "m", "description": "x", "values": ["a"], "pattern": "^b$"}])


def test_a_pattern_violating_value_never_renders() -> None:
    manifest = _catalogue("vacuum-bloated-table")
    with pytest.raises(InvalidInput, match=r"parameters\.table: 'x; rm -rf /' does not match"):
        policy.resolve_parameters(manifest, {**_needs(manifest), "table": "x; rm -rf /"}, LABELS)
    good = policy.resolve_parameters(manifest, _needs(manifest), LABELS)
    with pytest.raises(InvalidInput, match="does not match"):
        policy.render(manifest, {**good, "table": "x; rm -rf /"})


def test_a_parameterised_image_needs_allowed_images() -> None:
    manifest = _job(_container(image="{{ psql_image }}"), [PSQL])
    [problem] = policy.manifest_problems(manifest)
    assert problem.rule == "image-not-allowed"
    assert "'psql_image'" in problem.message and "add allowed_images" in problem.message
    with pytest.raises(InvalidInput, match="declares no allowed_images"):
        policy.check_registrable([manifest])


@pytest.mark.parametrize("source", ["given", "label", "render"])
def test_an_image_outside_allowed_images_is_refused_whatever_its_source(source: str) -> None:
    manifest = _catalogue("kill-long-running-queries")
    evil = "evil.example/psql:16"
    needs = _needs(manifest)
    if source == "given":
        with pytest.raises(InvalidInput, match=r"parameters\.psql_image: .*evil\.example/psql:16"):
            policy.resolve_parameters(manifest, {**needs, "psql_image": evil}, LABELS)
    elif source == "label":  # a parameter no label gives: the value falls back to its default
        resolved = policy.resolve_parameters(manifest, needs, {**LABELS, "psql_image": evil})
        assert resolved["psql_image"] == "postgres:16.4-alpine"
    else:
        good = policy.resolve_parameters(manifest, needs, LABELS)
        with pytest.raises(InvalidInput, match="not in the playbook's allowed_images"):
            policy.render(manifest, {**good, "psql_image": evil})
        # The pattern already refuses :latest; the allow-list refuses the rest.
        with pytest.raises(InvalidInput, match="does not match pattern"):
            policy.render(manifest, {**good, "psql_image": "evil.example/psql:latest"})
    good = policy.resolve_parameters(
        manifest, {**needs, "psql_image": "postgres:17.2-alpine"}, LABELS
    )
    assert policy.check(manifest, policy.render(manifest, good)) == []


def test_an_image_that_contains_a_placeholder_is_checked_once_rendered() -> None:
    tag = {"name": "tag", "description": "Tag.", "pattern": "^[a-z0-9.-]+$", "example": "16.4"}
    manifest = _job(_container(image="postgres:{{ tag }}"), [tag], allowed_images=["postgres:16.4"])
    assert _violations(manifest, replicas=1) == []
    [violation] = _violations(manifest, replicas=1, tag="17")
    assert violation.rule == "image-not-allowed" and "'postgres:17'" in violation.message


def test_defaults_and_literal_images_must_be_allowed_too() -> None:
    param = {**PSQL, "default": "evil.example/psql:16"}
    manifest = _job(_container(image="{{ psql_image }}"), [param], allowed_images=["postgres"])
    [problem] = policy.manifest_problems(manifest)
    assert "evil.example/psql:16" in problem.message and "default" in problem.message
    literal = _job(_container("busybox:1.36.1"), [], allowed_images=["postgres"])
    assert _rules(policy.manifest_problems(literal)) == ["image-not-allowed"]
    assert _job(_container("busybox:1.36.1"), []).allowed_images == []  # none: literal is fine
    assert policy.manifest_problems(_job(_container("busybox:1.36.1"), [])) == []


@pytest.mark.parametrize(
    ("image", "allowed", "matches"),
    [
        ("postgres:16.4-alpine", ["postgres"], True),  # a bare repository: any tag
        ("docker.io/library/postgres:16", ["postgres"], True),  # normalised like a runtime
        ("postgres@sha256:" + "a" * 64, ["postgres"], True),
        ("evil.example/postgres:16", ["postgres"], False),
        ("evil.example/psql:latest", ["postgres", "ghcr.io/cloudnative-pg/postgresql"], False),
        ("postgres:16.4", ["postgres:16.4"], True),  # a tag: exactly that tag
        ("postgres:16", ["postgres:16.4"], False),
        ("postgres:16.4@sha256:" + "b" * 64, ["postgres:16.4"], False),
        ("postgres", ["postgres:latest"], True),
        ("postgres@sha256:" + "a" * 64, ["postgres@sha256:" + "a" * 64], True),  # a digest
        ("postgres:16@sha256:" + "a" * 64, ["postgres@sha256:" + "a" * 64], True),
        ("postgres@sha256:" + "b" * 64, ["postgres@sha256:" + "a" * 64], False),
        ("postgres:16.4", ["postgres@sha256:" + "a" * 64], False),
        ("registry.internal/payments/batch:2", ["registry.internal/*"], True),  # a prefix
        ("registry.internal.evil/payments/batch:2", ["registry.internal/*"], False),
        ("ghcr.io/cloudnative-pg/postgresql-evil:16", ["ghcr.io/cloudnative-pg/postgresql"], False),
        ("x; rm -rf /", ["postgres"], False),
    ],
)
def test_allowed_images_matching(image: str, allowed: list[str], matches: bool) -> None:
    from neuralops.manifest import image_allowed

    assert image_allowed(image, allowed) is matches


@pytest.mark.parametrize("entry", ["*", "a/*/b", "evil.example/*x", "Postgres", "postgres@md5:1"])
def test_malformed_allowed_images_are_refused(entry: str) -> None:
    with pytest.raises(InvalidInput, match="allowed_images"):
        _job(_container(), [], allowed_images=[entry])


def test_manifests_without_the_new_fields_keep_their_hash() -> None:
    """allowed_images and values enter the signed bytes only when set: manifests signed before
    they existed still verify."""
    manifest = _catalogue("restart-deployment")
    assert b"allowed_images" not in manifest.canonical_json()
    assert b'"values"' not in manifest.canonical_json()
    assert b"allowed_images" in _catalogue("vacuum-bloated-table").canonical_json()


# --- the plan an approval binds to ---------------------------------------------------------


def _plan(manifest: Manifest, cluster: str | None = None, **given: Any) -> str:
    params = policy.resolve_parameters(manifest, {"container": "api", **given}, LABELS)
    return policy.plan_digest(manifest, policy.render(manifest, params), cluster)


def test_the_plan_digest_is_stable_and_covers_what_runs() -> None:
    manifest = _catalogue("raise-memory-limit")
    digest = _plan(manifest)
    assert len(digest) == 64 and digest == _plan(_catalogue("raise-memory-limit"))
    data = manifest.model_dump(mode="json")
    new_version = Manifest.model_validate({**data, "version": "1.0.1"})
    steps = [{**data["steps"][0], "description": "also something else"}, *data["steps"][1:]]
    new_steps = Manifest.model_validate({**data, "version": "1.0.1", "steps": steps})
    others = {
        "version": _plan(new_version),
        "steps": _plan(new_steps),
        "parameters": _plan(manifest, memory_limit="4Gi"),
        "cluster": _plan(manifest, cluster="edge-1"),
    }
    assert digest not in others.values() and len(set(others.values())) == len(others)

    params = policy.resolve_parameters(manifest, {"container": "api"}, LABELS)
    before = policy.plan_of(manifest, policy.render(manifest, params), None)
    after = policy.plan_of(new_steps, policy.render(new_steps, params), None)
    assert policy.plan_differences(before, after) == ["manifest", "version", "steps"]
    assert policy.digest_of_plan(before) == digest
