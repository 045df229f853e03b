"""Import a team's markdown runbooks as guidance playbooks (``kind: runbook``).

One markdown page per alert, as teams keep them (the kube-prometheus runbooks, GitLab's,
a wiki export): an optional front matter (``---`` YAML or ``+++`` TOML, Hugo's), a title
(H1), sections under H2 headings (Meaning, Impact, Diagnosis, Mitigation, or whatever the
team uses), code blocks, tables, links. Each page becomes a manifest with:

- ``aliases``: the alert name, verbatim (``KubePodCrashLooping``): the front matter's
  ``alert``/``alertname``, else the H1 when it reads as an identifier, else the file name
  when it does (a lower-case-dashed file name is a slug, not an alert name);
- ``id``: a slug of that name (``kube-pod-crash-looping``), or of the file name;
- ``title``, ``description`` (the first paragraph of Meaning/Description/Summary/Overview),
  ``symptoms`` (catalogue tags the alert name, title and description name), ``sections``
  (every section's markdown, verbatim), ``links`` (``--url-base`` + the page's path, as
  GitHub shows it or as Hugo publishes it: ``--url-style``, :func:`page_url`);
- ``version``: 1.0.0 when new; the stored version when the text is unchanged; the stored
  version's next patch when it changed (published versions are immutable).

Index pages (README.md, _index.md, index.md) are skipped with a note; a page that cannot be
read or makes no runbook is skipped with its file name and the reason, never its content.
Pure parsing here (:func:`load_runbooks`); :func:`import_runbooks` registers the result.
"""

from __future__ import annotations

import hashlib
import os
import re
import tomllib
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

import yaml
from markdown_it import MarkdownIt
from markdown_it.token import Token
from sqlalchemy import select
from sqlalchemy.engine import URL

from neuralops.db import session_scope
from neuralops.db.models import Playbook
from neuralops.errors import InvalidInput
from neuralops.incident_model import infer_symptoms
from neuralops.manifest import (
    MAX_SECTION_CHARS,
    MAX_SECTIONS,
    PLAYBOOK_ID_PATTERN,
    Link,
    Manifest,
    _NoAliasLoader,
)
from neuralops.registry import AddResult, _version_key, add_playbooks

MAX_RUNBOOK_BYTES = 512 * 1024
MARKDOWN_SUFFIXES = {".md", ".markdown"}
INDEX_PAGES = {"readme", "_index", "index"}
FIRST_VERSION = "1.0.0"
# Where the description comes from, in order; else the text before the first H2, else the
# first section.
DESCRIPTION_SECTIONS = ("meaning", "description", "summary", "symptoms", "problem", "overview")
OVERVIEW = "Overview"
_IDENTIFIER = re.compile(r"^[A-Za-z_][A-Za-z0-9_:.-]{1,199}$")
_ALERT_LINE = re.compile(
    r"^[\s*_>-]*alert(?:\s*name)?[*_\s]*[:=][*_\s]*`?([A-Za-z_][A-Za-z0-9_:]{1,199})`?", re.I | re.M
)
_SLUG_FILE = re.compile(r"^[a-z0-9]+(?:-[a-z0-9]+)*$")
_CAMEL = re.compile(r"(?<=[a-z0-9])(?=[A-Z])|(?<=[A-Z])(?=[A-Z][a-z])")
_FRONT_MATTER = re.compile(r"\A(---|\+\+\+)[ \t]*\r?\n(.*?)\r?\n\1[ \t]*(?:\r?\n|\Z)", re.S)


@dataclass(frozen=True)
class Skipped:
    """A file that did not become a runbook, and why (never its content)."""

    path: str
    reason: str
    note: bool = False  # an index page: expected, not a problem


@dataclass
class ImportReport:
    results: list[AddResult] = field(default_factory=list)
    sources: dict[str, str] = field(default_factory=dict)  # playbook id -> relative path
    skipped: list[Skipped] = field(default_factory=list)

    @property
    def problems(self) -> list[Skipped]:
        return [s for s in self.skipped if not s.note]


# --- parsing --------------------------------------------------------------------------------


def slug(name: str) -> str:
    """``KubePodCrashLooping`` → ``kube-pod-crash-looping``: a playbook id (at most 64)."""
    words = _CAMEL.sub("-", name).lower()
    text = re.sub(r"[^a-z0-9]+", "-", words).strip("-")
    if len(text) > 64:
        digest = hashlib.sha256(name.encode()).hexdigest()[:8]
        text = f"{text[:55].rstrip('-')}-{digest}"
    if not re.match(PLAYBOOK_ID_PATTERN, text):
        text = f"runbook-{hashlib.sha256(name.encode()).hexdigest()[:12]}"
    return text


def _words(name: str) -> str:
    return " ".join(_CAMEL.sub(" ", name).replace("_", " ").split())


def _front_matter(text: str) -> tuple[dict[str, Any], str]:
    match = _FRONT_MATTER.match(text)
    if not match:
        return {}, text
    body = text[match.end() :]
    try:
        if match.group(1) == "+++":
            data = tomllib.loads(match.group(2))
        else:
            data = yaml.load(match.group(2), Loader=_NoAliasLoader)
    except (yaml.YAMLError, tomllib.TOMLDecodeError):
        raise ValueError("the front matter is not valid YAML/TOML") from None
    return (data if isinstance(data, dict) else {}), body


def _inline_text(token: Token | None) -> str:
    """The plain text of an inline token: links, emphasis and code spans as their words."""
    if token is None or not token.children:
        return token.content.strip() if token else ""
    parts = []
    for child in token.children:
        if child.type in ("text", "code_inline"):
            parts.append(child.content)
        elif child.type in ("softbreak", "hardbreak"):
            parts.append(" ")
    return " ".join("".join(parts).split())


@dataclass
class ParsedPage:
    h1: str | None
    sections: dict[str, str]
    first_paragraphs: dict[str, str]  # section → its first paragraph, plain text


def parse_markdown(body: str) -> ParsedPage:
    """The H1 and the text of each H2 section (verbatim markdown, H3 and below inside it)."""
    md = MarkdownIt("commonmark").enable("table")
    tokens = md.parse(body)
    lines = body.splitlines()
    h1: str | None = None
    heads: list[tuple[str, int, int]] = []  # (heading, first line, line after the heading)
    h1_end = 0
    for i, token in enumerate(tokens):
        if token.type != "heading_open" or token.map is None:
            continue
        title = _inline_text(tokens[i + 1]).rstrip(":").strip()
        if token.tag == "h1" and h1 is None and not heads:
            h1, h1_end = title, token.map[1]
        elif token.tag == "h2" or (token.tag == "h1" and h1 is not None):
            heads.append((title or f"Section {len(heads) + 1}", token.map[0], token.map[1]))
    sections: dict[str, str] = {}
    bounds = [(OVERVIEW, h1_end, h1_end), *heads]
    for n, (title, _, start) in enumerate(bounds):
        end = bounds[n + 1][1] if n + 1 < len(bounds) else len(lines)
        text = "\n".join(lines[start:end]).strip()
        if n == 0 and heads and not text:
            continue
        if n == 0 and not heads and h1 is None and not text:
            continue
        name = title
        while name in sections:  # the same heading twice: keep both
            name = f"{title} ({sum(k.startswith(title) for k in sections) + 1})"
        sections[name] = text[:MAX_SECTION_CHARS]
        if len(sections) >= MAX_SECTIONS:
            break
    firsts: dict[str, str] = {}
    for name, text in sections.items():
        parsed = md.parse(text)
        for i, token in enumerate(parsed[:-1]):
            words = _inline_text(parsed[i + 1]) if token.type == "paragraph_open" else ""
            if words and not _ALERT_LINE.match(words):  # not the "Alert: Name" line
                firsts[name] = words
                break
    return ParsedPage(h1=h1, sections=sections, first_paragraphs=firsts)


def _alert_name(front: dict[str, Any], page: ParsedPage, stem: str) -> str | None:
    for key in ("alert", "alertname", "alert_name"):
        value = front.get(key)
        if isinstance(value, str) and _IDENTIFIER.match(value.strip()):
            return value.strip()
    h1 = page.h1
    if h1 and _IDENTIFIER.match(h1):
        return h1
    lead = next(iter(page.sections.values()), "")
    if match := _ALERT_LINE.search(lead[:2000]):  # "**Alert:** `PostgresReplicationLagHigh`"
        return match.group(1)
    if _IDENTIFIER.match(stem) and not _SLUG_FILE.match(stem):
        return stem
    return None


def _description(page: ParsedPage, title: str, alert: str | None) -> str:
    by_name = {name.casefold(): name for name in page.first_paragraphs}
    picked = next(
        (page.first_paragraphs[by_name[k]] for k in DESCRIPTION_SECTIONS if k in by_name),
        next(iter(page.first_paragraphs.values()), ""),
    )
    if len(picked) > 1000:
        picked = picked[:999].rstrip() + "…"
    if len(picked) < 20:
        lead = f"Runbook for {alert or title}"
        picked = f"{lead}: {picked}" if picked else f"{lead} (guidance, never executed)."
    return picked


URL_STYLES = ("github", "hugo")


def page_url(
    url_base: str, relative: PurePosixPath, style: str = "github", front: dict | None = None
) -> str:
    """Where a page is published. ``github``: the base plus the file's relative path, ``.md``
    included (a repository's blob view). ``hugo``: as Hugo publishes it by default (the
    kube-prometheus runbooks at runbooks.prometheus-operator.dev): lower-case, no ``.md``,
    spaces as dashes, a trailing slash; a front matter ``slug`` names the last part, as in
    Hugo. (A front matter ``url`` is relative to the site's root, which --url-base need not
    be: not used.)"""
    base = url_base.rstrip("/")
    if style == "github":
        return f"{base}/{relative}"
    parts = [*relative.parent.parts, relative.stem]
    slug_ = (front or {}).get("slug")
    if isinstance(slug_, str) and slug_.strip("/ "):
        parts[-1] = slug_.strip("/ ")
    return f"{base}/" + "/".join(p.strip().lower().replace(" ", "-") for p in parts) + "/"


def runbook_manifest(
    path: Path,
    root: Path,
    url_base: str | None = None,
    version: str = FIRST_VERSION,
    url_style: str = "github",
) -> Manifest:
    """One markdown page as a ``kind: runbook`` manifest; ValueError says why it is not one."""
    relative = PurePosixPath(path.relative_to(root).as_posix())
    try:
        size = path.stat().st_size
    except OSError as exc:
        raise ValueError(f"cannot read it ({exc.strerror or 'unreadable'})") from None
    if size > MAX_RUNBOOK_BYTES:
        raise ValueError(f"{size} bytes; a runbook page is at most {MAX_RUNBOOK_BYTES} bytes")
    try:
        text = path.read_bytes().decode("utf-8-sig")
    except UnicodeDecodeError:
        raise ValueError("not UTF-8 text") from None
    except OSError as exc:
        raise ValueError(f"cannot read it ({exc.strerror or 'unreadable'})") from None
    if "\x00" in text:
        raise ValueError("binary content (NUL bytes), not markdown")
    front, body = _front_matter(text)
    if not body.strip():
        raise ValueError("empty: no text after the front matter")
    page = parse_markdown(body)
    stem = path.stem
    alert = _alert_name(front, page, stem)
    fm_title = front.get("title") if isinstance(front.get("title"), str) else None
    title = (fm_title or page.h1 or (_words(alert) if alert else _words(stem))).strip()
    if page.h1 and alert and page.h1 == alert and not fm_title:
        title = _words(alert)  # "Kube Pod Crash Looping" reads better than the identifier
    if len(title) < 3:
        title = f"Runbook {title or stem}"
    title = title[:200]
    if not page.sections:
        raise ValueError("no text: no headings and no paragraphs")
    description = _description(page, title, alert)
    tagged = " ".join(filter(None, [alert and _words(alert), title, description]))
    links = []
    if url_base:
        links.append(Link(url=page_url(url_base, relative, url_style, front), title=title))
    data = {
        "id": slug(alert or stem),
        "version": version,
        "kind": "runbook",
        "title": title,
        "description": description,
        "aliases": [alert] if alert else [],
        "links": [link.model_dump() for link in links],
        "sections": page.sections,
        "symptoms": infer_symptoms(tagged),
    }
    try:
        return Manifest.model_validate(data)
    except Exception as exc:  # pydantic's message names the field, never the page
        raise ValueError(f"does not make a valid manifest: {_first_error(exc)}") from None


def _first_error(exc: Exception) -> str:
    errors = getattr(exc, "errors", None)
    if callable(errors):
        first = errors(include_url=False, include_input=False)[0]
        return f"{'.'.join(str(p) for p in first['loc']) or 'manifest'}: {first['msg']}"
    return type(exc).__name__


def runbook_files(root: Path) -> tuple[list[Path], list[Skipped]]:
    """Markdown files under ``root`` (nested folders too, hidden ones and links skipped),
    sorted; index pages are skipped with a note."""
    if not root.is_dir():
        raise InvalidInput(f"{root}: not a directory; give the folder that holds the runbooks")
    files: list[Path] = []
    skipped: list[Skipped] = []
    for folder, dirs, names in os.walk(root, followlinks=False):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        for name in sorted(names):
            path = Path(folder) / name
            if path.suffix.lower() not in MARKDOWN_SUFFIXES or name.startswith("."):
                continue
            rel = path.relative_to(root).as_posix()
            if path.is_symlink():
                skipped.append(Skipped(rel, "a symbolic link: not followed"))
            elif path.stem.lower() in INDEX_PAGES:
                skipped.append(Skipped(rel, "an index page, not a runbook", note=True))
            else:
                files.append(path)
    return sorted(files), skipped


def load_runbooks(
    root: Path, url_base: str | None = None, url_style: str = "github"
) -> tuple[list[tuple[str, Manifest]], list[Skipped]]:
    """Every runbook under ``root`` as (relative path, manifest at 1.0.0), and what was
    skipped and why. Two pages that make the same id or alias: the first (by path) wins.
    ``url_style``: how a page's link is made from ``url_base`` (:func:`page_url`)."""
    if url_style not in URL_STYLES:
        raise InvalidInput(
            f"--url-style {url_style!r}: one of {', '.join(URL_STYLES)} (github: the path with "
            ".md, as a repository shows it; hugo: lower-case, no .md, a trailing slash)"
        )
    if url_base is not None and not re.match(r"^https?://[^\s]+$", url_base):
        raise InvalidInput(
            f"--url-base {url_base!r}: give an http(s) URL such as "
            "https://runbooks.example.com/runbooks (the page's relative path is appended)"
        )
    files, skipped = runbook_files(root)
    found: list[tuple[str, Manifest]] = []
    ids: dict[str, str] = {}
    aliases: dict[str, str] = {}
    for path in files:
        rel = path.relative_to(root).as_posix()
        try:
            manifest = runbook_manifest(path, root, url_base, url_style=url_style)
        except ValueError as exc:
            skipped.append(Skipped(rel, str(exc)))
            continue
        if manifest.id in ids:
            skipped.append(
                Skipped(rel, f"makes the id {manifest.id!r}, as {ids[manifest.id]} does")
            )
            continue
        taken = [a for a in manifest.alias_keys() if a in aliases]
        if taken:
            skipped.append(Skipped(rel, f"names the same alert as {aliases[taken[0]]}"))
            continue
        ids[manifest.id] = rel
        aliases.update(dict.fromkeys(manifest.alias_keys(), rel))
        found.append((rel, manifest))
    return found, skipped


def _next_patch(version: str) -> str:
    major, minor, patch, *_ = _version_key(version)
    return f"{major}.{minor}.{patch + 1}"


def import_runbooks(
    root: Path, url_base: str | None = None, *, url: URL | None = None, url_style: str = "github"
) -> ImportReport:
    """Register every runbook under ``root`` (all in one transaction). Re-importing the same
    folder changes nothing; a page whose text changed gets the next patch version. A page whose
    id is a remediation playbook's is skipped (a runbook never replaces one)."""
    found, skipped = load_runbooks(root, url_base, url_style)
    report = ImportReport(skipped=skipped)
    if not found:
        return report
    with session_scope(url) as session:
        stored = {
            row.id: row
            for row in session.scalars(
                select(Playbook).where(Playbook.id.in_([m.id for _, m in found]))
            )
        }
        stored_info = {
            pid: (row.version, row.manifest_sha256, (row.manifest or {}).get("kind"))
            for pid, row in stored.items()
        }
    manifests: list[Manifest] = []
    for rel, manifest in found:
        current = stored_info.get(manifest.id)
        if current is not None:
            version, sha, kind = current
            if kind != "runbook":
                report.skipped.append(
                    Skipped(
                        rel,
                        f"its id {manifest.id!r} is a registered remediation playbook; a "
                        "runbook never replaces one (rename the file or its title)",
                    )
                )
                continue
            same = manifest.model_copy(update={"version": version})
            next_version = version if same.sha256() == sha else _next_patch(version)
            manifest = manifest.model_copy(update={"version": next_version})
        manifests.append(manifest)
        report.sources[manifest.id] = rel
    if manifests:
        report.results = add_playbooks(manifests, url=url)
    return report
