"""Reports that several bench scripts write: each owns named sections of one markdown file.

A section is the text between ``<!-- BEGIN name -->`` and ``<!-- END name -->``. Writing it
replaces that block where it exists and appends it otherwise, leaving the rest of the file
(other scripts' sections, hand-written prose) as it was.
"""

from __future__ import annotations

import os
import re
import tempfile
from pathlib import Path


def _markers(name: str) -> tuple[str, str]:
    if not re.fullmatch(r"[A-Za-z0-9_.-]+", name):
        raise ValueError(f"section name {name!r}: use letters, digits, '_', '.', '-'")
    return f"<!-- BEGIN {name} -->", f"<!-- END {name} -->"


def write_section(path: str | Path, name: str, markdown: str, title: str | None = None) -> None:
    """Replace (or append) section ``name`` of the markdown file at ``path``.

    ``title`` heads a file that does not exist yet. The file is replaced atomically, so a
    reader never sees half a report.
    """
    begin, end = _markers(name)
    path = Path(path)
    text = path.read_text() if path.exists() else (f"# {title}\n" if title else "")
    block = f"{begin}\n{markdown.strip()}\n{end}"
    pattern = re.compile(re.escape(begin) + r".*?" + re.escape(end), re.DOTALL)
    if pattern.search(text):
        text = pattern.sub(lambda _: block, text, count=1)
    else:
        text = f"{text.rstrip()}\n\n{block}\n" if text.strip() else f"{block}\n"
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(handle, "w") as out:
            out.write(text)
        os.chmod(temp, 0o644)  # mkstemp makes it private; a report is for everyone
        os.replace(temp, path)
    except BaseException:
        os.unlink(temp)
        raise


def read_section(path: str | Path, name: str) -> str | None:
    """The markdown of section ``name``, or None where the file or the section is absent."""
    begin, end = _markers(name)
    path = Path(path)
    if not path.exists():
        return None
    match = re.search(re.escape(begin) + r"\n?(.*?)\n?" + re.escape(end), path.read_text(), re.S)
    return match.group(1) if match else None
