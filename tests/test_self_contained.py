"""The repository stands on its own: no file links or refers to anything outside it.

Every text file git knows (tracked, or new and not ignored) is scanned for
- markdown links/images whose target is an absolute path, escapes the repository, or
  names a file that does not exist in it;
- `../` paths that, resolved from the file's folder, leave the repository;
- names of documents that live outside it (the background notes a session may have
  had, machine paths);
- symlinks that point outside it.
A failure names the file and line.
"""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent

# Built from pieces so this file does not match itself.
_OUTSIDE_NAMES = ["PAPER" + ".md", "DESIGN" + ".md", "/" + "work/", ".." + "/shared"]
_MD_LINK = re.compile(r"!?\[[^\]\n]*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
_UP_PATH = re.compile(r"(?<![\w./])((?:\.\./)+[\w.\-/]*)")
_EXTERNAL = re.compile(r"^(?:[a-z][a-z0-9+.-]*:|#)", re.I)  # https:, mailto:, #anchor


def _files() -> list[str]:
    try:
        out = subprocess.run(
            ["git", "ls-files", "--cached", "--others", "--exclude-standard", "-z"],
            cwd=REPO, capture_output=True, check=True,
        ).stdout
    except (OSError, subprocess.CalledProcessError):
        pytest.skip("not a git checkout: nothing to list")
    return sorted({f for f in out.decode().split("\0") if f})


def _text(path: Path) -> str | None:
    try:
        data = path.read_bytes()
    except OSError:
        return None
    if b"\0" in data[:8192]:
        return None
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        return None


def _inside(p: Path) -> bool:
    try:
        p.resolve().relative_to(REPO)
        return True
    except ValueError:
        return False


def problems(rel: str, text: str) -> list[str]:
    """What in file `rel` (repo-relative) points outside the repository."""
    here = (REPO / rel).parent
    found = []
    for n, line in enumerate(text.splitlines(), 1):
        where = f"{rel}:{n}"
        for name in _OUTSIDE_NAMES:
            if name in line:
                found.append(f"{where}: refers to {name!r}, which is outside the repository")
        if rel.endswith(".md"):
            for m in _MD_LINK.finditer(line):
                target = m.group(1)
                if _EXTERNAL.match(target):
                    continue
                path = target.split("#", 1)[0]
                if path.startswith(("/", "~")) or re.match(r"^[A-Za-z]:[\\/]", path):
                    found.append(f"{where}: link to an absolute path {target!r}")
                elif not _inside(here / path):
                    found.append(f"{where}: link {target!r} leaves the repository")
                elif path and not (here / path).exists():
                    found.append(f"{where}: link {target!r} names a file that does not exist")
        for m in _UP_PATH.finditer(line):
            if not _inside(here / m.group(1)):
                found.append(f"{where}: path {m.group(1)!r} leaves the repository")
    return found


def test_no_file_refers_outside_the_repository():
    found = []
    for rel in _files():
        p = REPO / rel
        if p.is_symlink():
            if not _inside(p):
                found.append(f"{rel}: symlink to {os.readlink(p)!r}, outside the repository")
            continue
        if not p.is_file():
            continue
        text = _text(p)
        if text is not None:
            found += problems(rel, text)
    assert not found, "files refer outside the repository:\n" + "\n".join(found)


def test_the_check_catches_what_it_should():
    up = ".." + "/"  # in pieces: this file is scanned too
    bad = "\n".join([
        f"see [the paper]({up}shared/x.md) and [abs](/etc/passwd)",
        "and " + "PAPER" + ".md or " + "/" + "work/main",
        f"a relative {up * 4}elsewhere path",
        "[gone](docs/nothing-here.md)",
    ])
    found = problems("README.md", bad)
    assert any(f"README.md:1: link '{up}shared/x.md' leaves" in f for f in found)
    assert any("README.md:1: link to an absolute path '/etc/passwd'" in f for f in found)
    assert sum(f.startswith("README.md:2:") for f in found) == 2
    assert any(f.startswith("README.md:3: path") for f in found)
    assert any("README.md:4: link 'docs/nothing-here.md' names a file" in f for f in found)
    ok = "[study](docs/study.md), [web](https://example.org/a/../b), [top](#tests)"
    assert problems("README.md", ok) == []
    assert problems("tests/test_x.py", f'source = "{up}ckpts/tiny"') == []  # stays inside
