"""Every requirement of pyproject.toml (dependencies and each extra) is pinned in
constraints.txt at the same version: the Makefile installs constraints.txt with --no-deps
(no resolution), so a package missing there would be missing from .venv. Runs on the
system's Python 3.11 before .venv exists; exits 1 naming each mismatch and the fix."""

from __future__ import annotations

import re
import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PIN = re.compile(r"^\s*([A-Za-z0-9][A-Za-z0-9._-]*)(?:\[[^\]]*\])?\s*==\s*([^\s;#]+)")


def _name(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def main() -> int:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    wanted = list(project["dependencies"])
    for extra in project.get("optional-dependencies", {}).values():
        wanted += extra
    pinned: dict[str, str] = {}
    for line in (ROOT / "constraints.txt").read_text().splitlines():
        if found := PIN.match(line):
            pinned[_name(found[1])] = found[2]
    problems = []
    for requirement in wanted:
        found = PIN.match(requirement)
        if found is None:
            problems.append(f"{requirement!r} in pyproject.toml is not pinned with ==")
            continue
        name, version = _name(found[1]), found[2]
        have = pinned.get(name)
        # constraints.txt holds what pip installed: torch==2.13.0+cpu for torch==2.13.0
        if have is None or (have != version and have.split("+")[0] != version):
            problems.append(f"{found[1]}=={version} (constraints.txt: {have or 'missing'})")
    if problems:
        print("pyproject.toml and constraints.txt disagree:", file=sys.stderr)
        print(*problems, sep="\n", file=sys.stderr)
        print("re-pin with: make lock", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
