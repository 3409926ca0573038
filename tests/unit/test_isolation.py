"""No Python the project starts imports code from the directory it was started in.

An ordinary user owns a directory holding their own ``certbot_fanout`` package, ``yaml.py``,
``cryptography`` and ``runpy.py``, each of which appends its name to a marker file when
imported. Root then runs, from inside that directory, every wrapper the project ships (the snap's
command and deploy hook, on a stand-in for the certbot snap; the Debian deploy hook) and the
demo, whose services, test and reload commands are Python processes of their own. The marker
must stay empty. A static check then finds every shell wrapper and every Python the package
spawns, so that a new one without ``-I`` cannot slip in.
"""

from __future__ import annotations

import ast
import os
import re
import shlex
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

import certbot_fanout
from tests.support.proc import Account, ensure_account
from tests.support.public import DEBIAN_PYTHON
from tests.support.tally import record

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="needs root to create a user")

AREA = "isolation"
PLANTER = "fanout-cwd-planter"
PROJECT = Path(__file__).resolve().parents[2]
PACKAGE = Path(certbot_fanout.__file__).resolve().parent
CONTRIB = PROJECT / "contrib"
SNAP_LOCAL = CONTRIB / "snap" / "local"
TIMEOUT = 120
# What the planted modules are called: what every wrapper and the demo import first.
PLANTED = ("certbot_fanout/__init__.py", "yaml.py", "cryptography/__init__.py", "runpy.py")


@dataclass(frozen=True)
class Trap:
    """A directory an ordinary user owns and fills, and the marker its modules write."""

    directory: Path
    marker: Path

    def imported(self) -> list[str]:
        return self.marker.read_text().split() if self.marker.exists() else []

    def run(self, argv: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
        """``argv`` as root, started in the trap, with ``env`` (and PATH)."""
        environ = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", **env}
        return subprocess.run(
            argv,
            cwd=self.directory,
            env=environ,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=TIMEOUT,
            check=False,
        )


@pytest.fixture(scope="module")
def planter() -> Iterator[Account]:
    with ensure_account(PLANTER) as account:
        yield account


@pytest.fixture
def trap(tmp_path: Path, planter: Account) -> Trap:
    marker = tmp_path / "imported-from-cwd"
    directory = tmp_path / "service-home"
    directory.mkdir()
    for name in PLANTED:
        module = directory / name
        module.parent.mkdir(exist_ok=True)
        module.write_text(f"open({str(marker)!r}, 'a').write({name.split('/')[0]!r} + '\\n')\n")
    for path in [directory, *directory.rglob("*")]:
        os.chown(path, planter.uid, planter.gid)
    directory.chmod(0o755)
    return Trap(directory, marker)


def fake_snaps(base: Path) -> dict[str, str]:
    """Stand-ins for /snap/certbot/current (Debian's python3, with PyYAML and cryptography)
    and /snap/certbot-fanout/current (the package under test in its site-packages), as the
    wrapper's overrides."""
    certbot = base / "certbot-snap"
    (certbot / "bin").mkdir(parents=True)
    (certbot / "bin" / "python3").symlink_to(DEBIAN_PYTHON)
    fanout = base / "fanout-snap"
    site = fanout / "lib" / f"python3.{sys.version_info.minor}" / "site-packages"
    site.mkdir(parents=True)
    (site / "certbot_fanout").symlink_to(PACKAGE)
    (fanout / "share" / "certbot-fanout").mkdir(parents=True)
    for script in ("certbot-fanout", "deploy-hook"):
        (fanout / "share" / "certbot-fanout" / script).symlink_to(SNAP_LOCAL / script)
    return {"CERTBOT_FANOUT_CERTBOT_SNAP": str(certbot), "CERTBOT_FANOUT_SNAP": str(fanout)}


def _no_imports(trap: Trap, what: str) -> None:
    found = trap.imported()
    record(AREA, cases=1, imports_from_cwd=len(found))
    assert found == [], f"{what} imported {found} from the directory it was started in"


def test_the_snap_command_and_hook_import_nothing_from_the_working_directory(
    trap: Trap, tmp_path: Path
) -> None:
    snaps = fake_snaps(tmp_path)
    proc = trap.run([str(SNAP_LOCAL / "certbot-fanout"), "--version"], snaps)
    hook_env = {
        **snaps,
        "RENEWED_LINEAGE": str(tmp_path / "letsencrypt" / "live" / "unused.test"),
        "CERTBOT_FANOUT_CONFIG": str(CONTRIB / "consumers.yaml"),
    }
    hook = trap.run([str(SNAP_LOCAL / "deploy-hook")], hook_env)
    found = trap.imported()
    record(AREA, cases=2, imports_from_cwd=len(found))
    assert found == [], f"the snap wrapper imported {found} from the working directory"
    assert proc.returncode == 0 and proc.stdout.startswith("certbot-fanout "), proc.stderr
    assert "Traceback" not in hook.stderr, hook.stderr


def test_the_debian_hook_imports_nothing_from_the_working_directory(
    trap: Trap, tmp_path: Path
) -> None:
    # The hook as shipped, but for its first guard: the package is not installed here, so
    # that the line that runs the command is reached (and finds no certbot_fanout at all).
    text = (CONTRIB / "debian" / "deploy-hook").read_text()
    guard = "[ -x /usr/bin/certbot-fanout ] || exit 0\n"
    assert guard in text
    hook = tmp_path / "deploy-hook"
    hook.write_text(text.replace(guard, ""))
    hook.chmod(0o755)
    proc = trap.run([str(hook)], {"RENEWED_LINEAGE": "/nonexistent/live/x"})
    _no_imports(trap, "the Debian deploy hook")
    assert "No module named certbot_fanout" in proc.stderr, proc.stderr


@pytest.mark.integration  # seconds of real processes: kept out of the fast unit suite
def test_the_demo_and_its_services_import_nothing_from_the_working_directory(
    trap: Trap,
) -> None:
    code = (
        f"import sys; sys.path.insert(0, {str(PACKAGE.parent)!r}); "
        "from certbot_fanout.cli import main; sys.exit(main())"
    )
    proc = trap.run([sys.executable, "-I", "-c", code, "demo"], {})
    _no_imports(trap, "the demo (its services, tests and reloads)")
    assert proc.returncode == 0 and "Demo passed" in proc.stdout, proc.stdout + proc.stderr


# -- static: every wrapper and every spawn of a Python ----------------------------------------

# A command word that is a Python interpreter: python, python3, python3.12, "$python", a path.
_PYTHON_WORD = re.compile(r'^"?(?:[^\s=]*/)?(?:python[0-9.]*|\$\{?python\}?)"?$')
# The one wrapper another wrapper may exec: the snap's command, from its deploy hook.
_WRAPPERS = {'"$wrapper"'}


def shell_wrappers() -> list[Path]:
    """Every shell script under contrib/ (the snap's and the Debian package's)."""
    return sorted(
        p for p in CONTRIB.rglob("*") if p.is_file() and p.read_bytes().startswith(b"#!/bin/sh")
    )


def shell_command_problems(script: Path) -> list[str]:
    """Each line of ``script`` that runs a Python without -I, or execs anything else than a
    Python with -I or a wrapper of this project."""
    problems = []
    for number, raw in enumerate(script.read_text().splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        words = line.split()
        if words[0] == "exec":
            words = words[1:]
            if not _PYTHON_WORD.match(words[0]) and words[0] not in _WRAPPERS:
                problems.append(f"{script.name}:{number}: execs {words[0]}, not a Python -I")
        if _PYTHON_WORD.match(words[0]) and words[1:2] != ["-I"]:
            problems.append(f"{script.name}:{number}: runs {words[0]} without -I")
    return problems


def test_every_shell_wrapper_runs_python_isolated() -> None:
    wrappers = shell_wrappers()
    names = {str(p.relative_to(CONTRIB)) for p in wrappers}
    assert {"snap/local/certbot-fanout", "snap/local/deploy-hook", "debian/deploy-hook"} <= names
    problems = [problem for script in wrappers for problem in shell_command_problems(script)]
    record(AREA, cases=len(wrappers), unisolated_wrappers=len(problems))
    assert problems == []


def test_the_wrapper_check_sees_a_python_without_isolation(tmp_path: Path) -> None:
    script = tmp_path / "hook"
    script.write_text('#!/bin/sh\nexec "$python" -s -c "x"\npython3 -m y\nexec /usr/bin/tool\n')
    assert shell_command_problems(script) == [
        'hook:2: runs "$python" without -I',
        "hook:3: runs python3 without -I",
        "hook:4: execs /usr/bin/tool, not a Python -I",
    ]


def python_spawn_problems(source: str, name: str) -> list[str]:
    """Each argv in ``source`` (shown as ``name``) that starts a Python (``sys.executable``)
    without -I next, and each ``-m`` in an argv (which puts the working directory first)."""
    problems = []
    for node in ast.walk(ast.parse(source)):
        if not isinstance(node, ast.List | ast.Tuple) or not node.elts:
            continue
        first = ast.unparse(node.elts[0])
        words = [e.value for e in node.elts if isinstance(e, ast.Constant)]
        if first == "sys.executable" and words[:1] != ["-I"]:
            problems.append(
                f"{name}:{node.lineno}: {shlex.join(map(str, words))} runs Python without -I"
            )
        if "-m" in words:
            problems.append(f"{name}:{node.lineno}: an argv with -m")
    return problems


def python_spawns(source: str) -> int:
    return sum(
        1
        for node in ast.walk(ast.parse(source))
        if isinstance(node, ast.List | ast.Tuple)
        and node.elts
        and ast.unparse(node.elts[0]) == "sys.executable"
    )


def test_every_python_the_package_spawns_is_isolated() -> None:
    sources = {str(p.relative_to(PROJECT)): p.read_text() for p in sorted(PACKAGE.rglob("*.py"))}
    spawns = sum(python_spawns(text) for text in sources.values())
    problems = [p for name, text in sources.items() for p in python_spawn_problems(text, name)]
    record(AREA, cases=spawns, unisolated_spawns=len(problems))
    assert spawns >= 2, "the demo's argvs were not found: is the check still looking?"
    assert problems == []


def test_the_spawn_check_sees_a_python_without_isolation() -> None:
    source = 'import sys\nA = [sys.executable, "-m", "x"]\nB = [sys.executable, "-I", "-c", "y"]\n'
    assert python_spawn_problems(source, "x.py") == [
        "x.py:2: -m x runs Python without -I",
        "x.py:2: an argv with -m",
    ]
