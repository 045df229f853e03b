"""The playbook registry: manifest validation, versioning rules, all-or-nothing adds."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from sqlalchemy.engine import URL

from neuralops import registry, runs
from neuralops.errors import Conflict, InvalidInput, NotFound
from neuralops.manifest import Action, load_manifest_file

CATALOGUE = sorted(registry.catalogue_dir().glob("*.yaml"))


def _manifest(**overrides) -> dict:
    manifest = yaml.safe_load((registry.catalogue_dir() / "restart-deployment.yaml").read_text())
    manifest.update(overrides)
    return manifest


def _write(directory: Path, manifest: dict, name: str | None = None) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / (name or f"{manifest['id']}.yaml")
    path.write_text(yaml.safe_dump(manifest))
    return path


def test_catalogue_has_at_least_15_valid_playbooks() -> None:
    manifests = registry.load_manifests([registry.catalogue_dir()])
    assert len(manifests) >= 15
    for path, manifest in zip(CATALOGUE, manifests, strict=True):
        assert path.stem == manifest.id


@pytest.mark.parametrize("path", CATALOGUE, ids=lambda p: p.stem)
def test_catalogue_playbooks_stay_inside_the_safety_policy(path: Path) -> None:
    manifest = load_manifest_file(path)
    for step in manifest.steps:
        if step.action is Action.delete:
            assert step.target.kind not in {
                "Namespace",
                "PersistentVolume",
                "PersistentVolumeClaim",
            }
        if step.action is Action.scale:
            assert str(step.replicas) != "0"
        assert "hostPath" not in str(step.manifest or {})
        assert "privileged': True" not in str(step.manifest or {})
        if step.target:
            assert step.target.kind in manifest.scope.kinds
    if manifest.safety.mode == "auto":
        assert "org-admin" in manifest.safety.allowed_roles


def test_adding_the_catalogue_twice_changes_nothing(database_url: URL) -> None:
    manifests = registry.load_manifests([registry.catalogue_dir()])
    first = registry.add_playbooks(manifests)
    assert {r.change for r in first} == {registry.Change.added}
    second = registry.add_playbooks(manifests)
    assert {r.change for r in second} == {registry.Change.unchanged}
    assert len(registry.list_playbooks()) == len(manifests)


def test_a_higher_version_updates(database_url: URL, tmp_path: Path) -> None:
    registry.add_playbooks(registry.load_manifests([_write(tmp_path / "v1", _manifest())]))
    newer = _manifest(version="1.1.0", title="Restart a deployment (rolling)")
    [result] = registry.add_playbooks(registry.load_manifests([_write(tmp_path / "v2", newer)]))
    assert (result.change, result.previous_version) == (registry.Change.updated, "1.0.0")
    stored = registry.get_playbook("restart-deployment")
    assert (stored.version, stored.title) == ("1.1.0", "Restart a deployment (rolling)")


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"title": "Same version, new text"}, "bump 'version'"),
        ({"version": "0.9.0", "title": "Older"}, "versions only move forward"),
    ],
)
def test_published_versions_are_immutable(
    database_url: URL, tmp_path: Path, overrides: dict, message: str
) -> None:
    registry.add_playbooks(registry.load_manifests([_write(tmp_path / "a", _manifest())]))
    changed = registry.load_manifests([_write(tmp_path / "b", _manifest(**overrides))])
    with pytest.raises(Conflict, match=message):
        registry.add_playbooks(changed)


def test_a_refused_batch_writes_nothing(database_url: URL, tmp_path: Path) -> None:
    registry.add_playbooks(registry.load_manifests([_write(tmp_path / "a", _manifest())]))
    batch = tmp_path / "batch"
    _write(batch, _manifest(id="brand-new", title="A new playbook"), "brand-new.yaml")
    _write(batch, _manifest(title="conflicting edit"))
    with pytest.raises(Conflict):
        registry.add_playbooks(registry.load_manifests([batch]))
    assert [p.id for p in registry.list_playbooks()] == ["restart-deployment"]


@pytest.mark.parametrize(
    ("overrides", "field"),
    [
        ({"id": "../../etc/passwd"}, "id"),
        ({"version": "latest"}, "version"),
        ({"safety": {"mode": "yolo"}}, "safety.mode"),
        (
            {
                "steps": [
                    {
                        "name": "x",
                        "description": "d",
                        "action": "reboot-cluster",
                        "target": {"kind": "Node", "name": "n"},
                    }
                ]
            },
            "steps.0.action",
        ),
        (
            {
                "steps": [
                    {
                        "name": "x",
                        "description": "d",
                        "action": "scale",
                        "target": {"kind": "Deployment", "name": "n"},
                    }
                ]
            },
            "needs replicas",
        ),
        (
            {
                "steps": [
                    {
                        "name": "x",
                        "description": "d",
                        "action": "restart",
                        "target": {"kind": "Deployment", "name": "{{ app }}"},
                    }
                ]
            },
            "['app']",
        ),
        ({"runbook_url": "https://wiki"}, "runbook_url"),
    ],
)
def test_invalid_manifest_names_file_and_field(tmp_path: Path, overrides: dict, field: str) -> None:
    path = _write(tmp_path, _manifest(**overrides), "broken.yaml")
    with pytest.raises(InvalidInput) as caught:
        registry.load_manifests([path])
    assert str(path) in str(caught.value)
    assert field in str(caught.value)


def test_all_problems_are_reported_at_once(tmp_path: Path) -> None:
    _write(tmp_path, _manifest(version="x"), "one.yaml")
    _write(tmp_path, _manifest(id="BAD ID"), "two.yaml")
    (tmp_path / "three.yaml").write_text("id: [unclosed")
    with pytest.raises(InvalidInput) as caught:
        registry.load_manifests([tmp_path])
    message = str(caught.value)
    assert (
        "one.yaml" in message and "two.yaml" in message and "three.yaml: not valid YAML" in message
    )


def test_duplicate_ids_across_files_are_refused(tmp_path: Path) -> None:
    _write(tmp_path, _manifest(), "a.yaml")
    _write(tmp_path, _manifest(), "b.yaml")
    with pytest.raises(InvalidInput, match="appears in 2 files"):
        registry.load_manifests([tmp_path])


def test_missing_path_is_named(tmp_path: Path) -> None:
    with pytest.raises(InvalidInput, match="no such file"):
        registry.load_manifests([tmp_path / "nope.yaml"])


def test_registering_after_runs_picks_up_the_latest_run(database_url: URL, tmp_path: Path) -> None:
    runs.log_run(
        {"wpk_id": "restart-deployment", "run_id": "early", "status": "succeeded", "duration_ms": 5}
    )
    registry.add_playbooks(registry.load_manifests([_write(tmp_path, _manifest())]))
    assert registry.describe_workflow("restart-deployment").latest_run_id == "early"


def test_unknown_playbook_is_not_found(database_url: URL) -> None:
    with pytest.raises(NotFound, match="neuralops playbook list"):
        registry.get_playbook("nope")


def _job_manifest(**parameter: object) -> dict:
    """A playbook whose Job runs ``psql -c "{{ query }}"``, ``query`` as given."""
    return _manifest(
        id="run-a-query",
        title="Run a query",
        scope={"namespaces": ["{{ namespace }}"], "kinds": ["Job"]},
        parameters=[
            {"name": "namespace", "description": "Namespace.", "pattern": "^[a-z0-9-]+$"},
            {"name": "query", "description": "What to run.", **parameter},
        ],
        steps=[
            {
                "name": "run-query",
                "description": "Apply a Job running the query.",
                "action": "apply",
                "manifest": {
                    "apiVersion": "batch/v1",
                    "kind": "Job",
                    "metadata": {"name": "q", "namespace": "{{ namespace }}"},
                    "spec": {
                        "template": {
                            "spec": {
                                "containers": [
                                    {
                                        "name": "psql",
                                        "image": "postgres:16.4",
                                        "args": ["psql", "-c", "{{ query }}"],
                                    }
                                ]
                            }
                        }
                    },
                },
            }
        ],
    )


def test_an_unconstrained_parameter_in_args_is_refused_at_registration(
    database_url: URL, tmp_path: Path
) -> None:
    path = _write(tmp_path, _job_manifest())
    with pytest.raises(InvalidInput) as refused:
        registry.add_playbooks(registry.load_manifests([path]))
    message = str(refused.value)
    assert "playbook run-a-query" in message and "step run-query" in message
    assert "'query'" in message and "args" in message and "add a pattern" in message
    assert registry.list_playbooks() == []  # nothing written
    constrained = _write(tmp_path / "ok", _job_manifest(pattern="^SELECT [a-z_, ]+ FROM [a-z_]+$"))
    [added] = registry.add_playbooks(registry.load_manifests([constrained]))
    assert added.change is registry.Change.added


def test_the_shipped_catalogue_passes_the_registration_checks() -> None:
    from neuralops import policy

    for manifest in registry.load_manifests([registry.catalogue_dir()]):
        assert policy.manifest_problems(manifest) == [], manifest.id
        if policy.image_parameters(manifest):
            assert manifest.allowed_images, manifest.id


@pytest.mark.parametrize(
    ("body", "where"),
    [
        ("db_password: hunter2XYZ\nnext: [unclosed hunter2XYZ\n", "line 3, column 1"),
        ("root:x:0:0:hunter2XYZ\nfoo: bar: hunter2XYZ\n", "line 2, column 4"),
        ("a: &hunter2XYZ one\nb: *hunter2XYZ\n", "line 2, column 4"),  # an alias's name
        ("a: !hunter2XYZ x\n", "line 1, column 4"),  # a tag's name
        ('token: "hunter2XYZ\n', "line 2, column 1"),
        ("a:\n\thunter2XYZ: 1\n", "line 2, column 1"),
        ("a: hunter2XYZ\x00\n", "character 13"),
    ],
)
def test_broken_yaml_is_located_never_quoted(tmp_path: Path, body: str, where: str) -> None:
    path = tmp_path / "broken.yaml"
    path.write_text(body)
    with pytest.raises(InvalidInput) as caught:
        registry.load_manifests([path])
    message = str(caught.value)
    assert f"{path}: not valid YAML at {where}" in message
    assert "hunter2" not in message and "\n" not in message
    assert "a playbook manifest is a YAML mapping" in message


@pytest.mark.parametrize(
    "target_body", ["root:x:0:0:root:/root:/bin/bash\nhunter2XYZ\n", "- hunter2XYZ\n", "x"]
)
def test_a_symlink_to_another_file_names_the_file_not_its_content(
    tmp_path: Path, target_body: str
) -> None:
    target = tmp_path / "shadow"
    target.write_text(target_body)
    link = tmp_path / "innocent.yaml"
    link.symlink_to(target)
    with pytest.raises(InvalidInput, match="must be a YAML mapping") as caught:
        registry.load_manifests([link])
    assert "hunter2" not in str(caught.value) and "root:x" not in str(caught.value)
    assert str(link) in str(caught.value)
