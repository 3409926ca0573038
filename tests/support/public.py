"""What a test runs as another user, made runnable by that user wherever the checkout lives.

The checkout (and its .venv) may sit in a directory only root can enter, such as /root. A test
that runs Python as a service user or as nobody uses an interpreter every user can reach, and
runs certbot-fanout from a copy of the package in a directory every user can read.
"""

from __future__ import annotations

import os
import shutil
import stat
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

import certbot_fanout

from .proc import public_dir

__all__ = [
    "PublicInstall",
    "install_public",
    "public_dir",
    "python_for_anyone",
    "reachable_by_others",
]

DEBIAN_PYTHON = "/usr/bin/python3"


def reachable_by_others(path: str) -> bool:
    """Whether a user with no special rights can execute ``path`` (every directory on the way
    searchable by others, the file executable by others)."""
    real = Path(os.path.realpath(path))
    for directory in real.parents:
        if not os.stat(directory).st_mode & stat.S_IXOTH:
            return False
    return bool(real.stat().st_mode & stat.S_IXOTH)


def python_for_anyone() -> str:
    """An interpreter every user can run: the one under test if it is reachable (its real path,
    so a venv in a private directory is not needed), else Debian's; skip if there is none."""
    for candidate in (os.path.realpath(sys.executable), DEBIAN_PYTHON):
        if os.path.exists(candidate) and reachable_by_others(candidate):
            return candidate
    pytest.skip(f"no Python that other users can run ({sys.executable}, {DEBIAN_PYTHON})")


@dataclass(frozen=True)
class PublicInstall:
    """A copy of the certbot_fanout package in a directory every user can read."""

    directory: Path
    python: str

    def argv(self, *args: str) -> list[str]:
        """The certbot-fanout command line, isolated from the caller's directory and site."""
        code = (
            f"import sys; sys.path.insert(0, {str(self.directory)!r}); "
            "from certbot_fanout.cli import main; sys.exit(main())"
        )
        return [self.python, "-I", "-c", code, *args]


def install_public(directory: Path) -> PublicInstall:
    """Copy the package under test into ``directory`` (made 0755), every file world-readable.

    Its dependencies come from the interpreter's own site (Debian's python3-cryptography and
    python3-yaml, which ./dev installs)."""
    directory.chmod(0o755)
    package = Path(certbot_fanout.__file__).parent
    shutil.copytree(
        package, directory / "certbot_fanout", ignore=shutil.ignore_patterns("__pycache__")
    )
    for path in directory.rglob("*"):
        path.chmod(0o755 if path.is_dir() else 0o644)
    return PublicInstall(directory, python_for_anyone())
