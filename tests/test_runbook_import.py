"""Markdown runbooks become guidance playbooks (kind: runbook): parsed, registered, never run."""

from __future__ import annotations

import shutil
from pathlib import Path, PurePosixPath

import pytest
import yaml
from sqlalchemy.engine import URL
from typer.testing import CliRunner

from neuralops import policy, registry
from neuralops.cli import app
from neuralops.errors import Conflict, InvalidInput
from neuralops.manifest import Manifest, parse_manifest
from neuralops.runbooks import import_runbooks, load_runbooks, page_url, slug
from neuralops.settings import get_settings

RUNBOOKS = Path(__file__).parent / "data" / "runbooks"
URL_BASE = "https://runbooks.example.com/runbooks"
runner = CliRunner()


def _by_source(root: Path = RUNBOOKS) -> dict[str, Manifest]:
    found, _ = load_runbooks(root, URL_BASE)
    return dict(found)


def test_slugs_of_alert_names() -> None:
    assert slug("KubePodCrashLooping") == "kube-pod-crash-looping"
    assert slug("OOMKilled") == "oom-killed"
    assert slug("node_filesystem_full") == "node-filesystem-full"
    long = slug("EtcdHighNumberOfFailedGRPCRequests" * 3)
    assert len(long) <= 64 and long.startswith("etcd-high-number")
    assert slug("ЖЖЖ").startswith("runbook-")  # nothing ASCII left: a stable hash


def test_a_kube_prometheus_runbook_with_front_matter() -> None:
    manifest = _by_source()["kubernetes/KubePodCrashLooping.md"]
    assert manifest.kind == "runbook" and manifest.is_runbook
    assert manifest.id == "kube-pod-crash-looping"
    assert manifest.aliases == ["KubePodCrashLooping"]  # verbatim; Hugo's `aliases` ignored
    assert manifest.title == "Kube Pod Crash Looping"
    assert list(manifest.sections) == ["Meaning", "Impact", "Diagnosis", "Mitigation"]
    assert manifest.description.startswith("A pod's container keeps exiting")
    # Code blocks and tables are kept verbatim for retrieval and for the reader.
    assert "kubectl -n $NAMESPACE logs $POD --previous" in manifest.sections["Diagnosis"]
    assert "| 137 | OOMKilled" in manifest.sections["Diagnosis"]
    assert "crash-loop" in manifest.symptoms
    assert [link.url for link in manifest.links] == [
        f"{URL_BASE}/kubernetes/KubePodCrashLooping.md"
    ]
    assert (manifest.steps, manifest.scope, manifest.parameters) == ([], None, [])


def test_pages_without_front_matter_and_other_headings() -> None:
    found = _by_source()
    node = found["node/node-filesystem-almost-out-of-space.md"]
    # No front matter, an H1 that is the alert name, H3 sections kept inside the overview.
    assert node.aliases == ["NodeFilesystemAlmostOutOfSpace"]
    assert node.id == "node-filesystem-almost-out-of-space"
    assert list(node.sections) == ["Overview"] and "### Checks" in node.sections["Overview"]
    assert node.description == "Fires when a node filesystem has less than 5% space left."
    gitlab = found["gitlab/patroni-replication-lag.md"]
    # A prose title; the alert name from the "Alert:" line; the team's own headings.
    assert gitlab.title == "Postgres replication lag is high"
    assert gitlab.aliases == ["PostgresReplicationLagHigh"]
    assert gitlab.id == "postgres-replication-lag-high"
    assert {"Symptoms", "Troubleshooting", "Resolution"} <= set(gitlab.sections)
    assert gitlab.description.startswith("A replica applies the primary's WAL")
    assert "replication-lag" in gitlab.symptoms


def test_index_pages_and_bad_files_are_skipped_with_the_reason() -> None:
    found, skipped = load_runbooks(RUNBOOKS)
    reasons = {s.path: (s.reason, s.note) for s in skipped}
    assert reasons["README.md"][1] and reasons["kubernetes/_index.md"][1]
    assert reasons["node/broken.md"] == ("not UTF-8 text", False)
    assert reasons["node/EmptyAlert.md"][0].startswith("empty")
    assert len(found) == 4
    assert all(not m.links for _, m in found)  # no --url-base, no link


def test_errors_never_echo_the_page(tmp_path: Path) -> None:
    secret = "hunter2-password-in-the-page"
    (tmp_path / "Bad.md").write_text(f"---\ntitle: [unclosed {secret}\n---\n# Bad\ntext\n")
    (tmp_path / "link.md").symlink_to(RUNBOOKS / "kubernetes" / "KubePodCrashLooping.md")
    found, skipped = load_runbooks(tmp_path)
    assert found == []
    assert {s.path for s in skipped} == {"Bad.md", "link.md"}
    assert all(secret not in s.reason for s in skipped)
    with pytest.raises(InvalidInput, match="--url-base"):
        load_runbooks(RUNBOOKS, "ftp://nope")


def test_hugo_url_style_links_pages_as_a_hugo_site_publishes_them() -> None:
    """runbooks.prometheus-operator.dev publishes kubernetes/KubePodCrashLooping.md at
    .../kubernetes/kubepodcrashlooping/: lower-case, no .md, a trailing slash."""
    found, _ = load_runbooks(RUNBOOKS, URL_BASE + "/", "hugo")
    links = {rel: [link.url for link in m.links] for rel, m in found}
    assert links["kubernetes/KubePodCrashLooping.md"] == [
        f"{URL_BASE}/kubernetes/kubepodcrashlooping/"
    ]
    assert links["node/node-filesystem-almost-out-of-space.md"] == [
        f"{URL_BASE}/node/node-filesystem-almost-out-of-space/"
    ]
    page = PurePosixPath("Team Docs/KubePodCrashLooping.md")
    assert page_url(URL_BASE, page, "hugo") == f"{URL_BASE}/team-docs/kubepodcrashlooping/"
    assert page_url(URL_BASE, page, "hugo", {"slug": "Crash-Loop"}) == (
        f"{URL_BASE}/team-docs/crash-loop/"  # Hugo's front matter slug names the last part
    )
    assert page_url(URL_BASE, page, "github") == f"{URL_BASE}/Team Docs/KubePodCrashLooping.md"
    with pytest.raises(InvalidInput, match="--url-style 'jekyll': one of github, hugo"):
        load_runbooks(RUNBOOKS, URL_BASE, "jekyll")


def test_cli_import_runbooks_url_style(sqlite_url: URL) -> None:
    args = ["playbook", "import-runbooks", str(RUNBOOKS), "--url-base", URL_BASE]
    result = runner.invoke(app, [*args, "--url-style", "hugo"])
    assert result.exit_code == 0, result.output
    shown = runner.invoke(app, ["playbook", "show", "kube-pod-crash-looping"])
    manifest = yaml.safe_load(shown.output[shown.output.index("\nid: ") :])
    assert [link["url"] for link in manifest["links"]] == [
        f"{URL_BASE}/kubernetes/kubepodcrashlooping/"
    ]
    refused = runner.invoke(app, [*args, "--url-style", "jekyll"])
    assert refused.exit_code != 0 and isinstance(refused.exception, InvalidInput)


def test_manifest_format_rules_for_runbooks_and_remediations() -> None:
    runbook = {
        "id": "kube-pod-crash-looping",
        "version": "1.0.0",
        "kind": "runbook",
        "title": "Kube Pod Crash Looping",
        "description": "A pod restarts over and over again.",
        "aliases": ["KubePodCrashLooping"],
    }
    assert parse_manifest(runbook).symptoms == []  # a runbook needs no symptoms
    with pytest.raises(InvalidInput, match="never executed: remove steps"):
        parse_manifest(
            {
                **runbook,
                "steps": [
                    {
                        "name": "x",
                        "description": "y",
                        "action": "cordon",
                        "target": {"kind": "Node", "name": "n"},
                    }
                ],
            }
        )
    with pytest.raises(InvalidInput, match="repeat"):
        parse_manifest({**runbook, "aliases": ["KubePodCrashLooping", "kubepodcrashlooping"]})
    with pytest.raises(InvalidInput, match="a remediation playbook needs scope, steps"):
        parse_manifest({k: v for k, v in runbook.items() if k != "kind"} | {"symptoms": ["x"]})


def test_import_registers_idempotently_and_bumps_changed_pages(
    database_url: URL, tmp_path: Path
) -> None:
    folder = tmp_path / "runbooks"
    shutil.copytree(RUNBOOKS, folder)
    first = import_runbooks(folder, URL_BASE)
    assert {r.change for r in first.results} == {registry.Change.added}
    assert len(first.results) == 4
    again = import_runbooks(folder, URL_BASE)
    assert {r.change for r in again.results} == {registry.Change.unchanged}
    page = folder / "kubernetes" / "KubePodCrashLooping.md"
    page.write_text(page.read_text() + "\nEscalate to the owning team after 30 minutes.\n")
    changed = {r.id: r for r in import_runbooks(folder, URL_BASE).results}
    crash = changed["kube-pod-crash-looping"]
    assert (crash.change, crash.version, crash.previous_version) == (
        registry.Change.updated,
        "1.0.1",
        "1.0.0",
    )
    assert changed["node-filesystem-almost-out-of-space"].change is registry.Change.unchanged
    info = registry.describe_workflow("kube-pod-crash-looping")
    assert (info.playbook_kind, info.aliases) == ("runbook", ["KubePodCrashLooping"])
    stored = Manifest.model_validate(registry.get_playbook("kube-pod-crash-looping").manifest)
    assert "Escalate to the owning team" in stored.sections["Mitigation"]


def test_a_runbook_never_replaces_a_remediation_or_steals_an_alias(
    database_url: URL, tmp_path: Path
) -> None:
    registry.add_playbooks(registry.load_manifests([registry.catalogue_dir()]))
    (tmp_path / "RestartDeployment.md").write_text("# RestartDeployment\n\nRestart it by hand.\n")
    report = import_runbooks(tmp_path)
    assert report.results == []
    assert "remediation playbook" in report.skipped[0].reason
    assert registry.describe_workflow("restart-deployment").playbook_kind == "remediation"
    # An alert name leads to one playbook.
    (tmp_path / "RestartDeployment.md").unlink()
    (tmp_path / "a.md").write_text("# KubePodCrashLooping\n\nThe pod restarts.\n")
    import_runbooks(tmp_path)
    other = parse_manifest(
        {
            "id": "crash-loop-notes",
            "version": "1.0.0",
            "kind": "runbook",
            "title": "Crash loop notes",
            "description": "Notes on pods that restart in a loop.",
            "aliases": ["kubepodcrashlooping"],
        }
    )
    with pytest.raises(Conflict, match="already belongs to playbook 'kube-pod-crash-looping'"):
        registry.add_playbooks([other])


def test_runbooks_are_refused_by_policy() -> None:
    manifest = _by_source()["kubernetes/KubePodCrashLooping.md"]
    with pytest.raises(policy.GuidanceOnly, match=r"is a runbook.*never executed") as refused:
        policy.render(manifest, {})
    assert URL_BASE in str(refused.value)  # says where to read it instead
    with pytest.raises(policy.GuidanceOnly):
        policy.check(manifest, None)  # type: ignore[arg-type]


def test_cli_import_runbooks(database_url: URL, tmp_path: Path) -> None:
    result = runner.invoke(app, ["playbook", "import-runbooks", str(RUNBOOKS), "--json"])
    assert result.exit_code == 0, result.output
    assert "kube-pod-crash-looping" in result.output
    listing = runner.invoke(app, ["playbook", "show", "kube-pod-crash-looping"])
    manifest = yaml.safe_load(listing.output[listing.output.index("\nid: ") :])
    assert manifest["kind"] == "runbook" and manifest["aliases"] == ["KubePodCrashLooping"]
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "README.md").write_text("# index\n")
    nothing = runner.invoke(app, ["playbook", "import-runbooks", str(empty)])
    assert nothing.exit_code == 1
    assert "no runbook imported" in nothing.output


def test_playbook_show_prints_patterns_verbatim(database_url: URL) -> None:
    registry.add_playbooks(registry.load_manifests([registry.catalogue_dir()]))
    shown = runner.invoke(app, ["playbook", "show", "restart-deployment"])
    assert shown.exit_code == 0, shown.output
    assert "^[a-z0-9]([-a-z0-9]*[a-z0-9])?$" in shown.output


def test_cli_recommend_marks_runbooks_as_guidance(
    sqlite_url: URL, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("NEURALOPS_EMBEDDER", "hashing")  # not the subject; MiniLM loads slowly
    get_settings.cache_clear()  # sqlite_url read the settings before: read them again
    import_runbooks(RUNBOOKS, URL_BASE)
    text = "KubePodCrashLooping: pod payments-api in CrashLoopBackOff, restarting"
    result = runner.invoke(app, ["recommend", "--text", text, "--top", "4"])
    assert result.exit_code == 0, result.output
    assert (
        "guidance: kube-pod-crash-looping is a runbook (never executed): "
        f"{URL_BASE}/kubernetes/KubePodCrashLooping.md" in result.output
    )
