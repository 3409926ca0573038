"""Names for tests, from a hosts file of their own: a command run in a private mount namespace
(``unshare --mount --propagation private``) where that file is bind-mounted over /etc/hosts.
The machine's own /etc/hosts is never touched, and the mount dies with the namespace.

Stand-alone: no pytest and no project imports (like ``cli``, whose ``run`` it uses).
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path

from .cli import run

# Debian's standard entries, so that what a command needs besides the test's names still works.
STANDARD = {"localhost": ["127.0.0.1", "::1"]}


def hosts_text(names: Mapping[str, Sequence[str]]) -> str:
    """A hosts file giving each name its addresses, in order (one line per address)."""
    return "".join(f"{address} {name}\n" for name, found in names.items() for address in found)


def available() -> str | None:
    """Why a private mount namespace cannot be had here, or None when it can."""
    if shutil.which("unshare") is None:
        return "unshare (util-linux) is not installed"
    probe = run(["unshare", "--mount", "--propagation", "private", "true"])
    if probe.returncode != 0:
        return f"unshare --mount fails here: {probe.stderr.strip()}"
    return None


def with_hosts_file(hosts: Path, argv: Sequence[str | Path]) -> list[str]:
    """``argv`` wrapped to run in a private mount namespace where ``hosts`` is /etc/hosts."""
    script = 'mount --bind "$1" /etc/hosts && shift && exec "$@"'
    wrapped = ["unshare", "--mount", "--propagation", "private", "sh", "-c", script, "sh"]
    return [*wrapped, str(hosts), *(str(a) for a in argv)]


def run_with_hosts(
    directory: Path,
    names: Mapping[str, Sequence[str]],
    argv: Sequence[str | Path],
    *,
    timeout: float = 120.0,
    env: Mapping[str, str] | None = None,
) -> subprocess.CompletedProcess[str]:
    """Run ``argv`` where /etc/hosts is a file (written in ``directory``) with ``names`` and
    Debian's standard entries (a name given in ``names`` replaces its standard line)."""
    hosts = directory / "hosts"
    hosts.write_text(hosts_text({**STANDARD, **names}))
    hosts.chmod(0o644)
    return run(with_hosts_file(hosts, argv), timeout=timeout, env=env)


def python_with_hosts(
    directory: Path, names: Mapping[str, Sequence[str]], code: str
) -> subprocess.CompletedProcess[str]:
    """Run ``code`` in this interpreter (with the checkout importable) under that hosts file."""
    root = str(Path(__file__).resolve().parents[2])
    env = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "PYTHONPATH": root, "LANG": "C.UTF-8"}
    return run_with_hosts(directory, names, [sys.executable, "-c", code], env=env)
