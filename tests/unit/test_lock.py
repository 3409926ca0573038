"""The lock of a non-root run: another local user can neither hold it first nor redirect it.

Two real unprivileged accounts: the owner of the run (A) and an attacker (B). B plants, as
itself, what it can in a sticky world-writable directory standing in for /tmp (A's
``$TMPDIR``) and holds an flock on every file it planted; then A takes its default lock in a
real process, with a short timeout. A run is blocked when it cannot take its lock; a link is
followed when A's lock ends up behind a link, or A creates anything in what B planted.
"""

from __future__ import annotations

import json
import os
import shutil
import stat
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from certbot_fanout.errors import LockError
from certbot_fanout.lock import default_lock_path, private_dir_problem, run_lock
from tests.support.proc import Account, ensure_account
from tests.support.public import PublicInstall, install_public, public_dir
from tests.support.tally import record

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="needs root to create two users")

AREA = "user locks"
OWNER, ATTACKER = "fanout-lock-owner", "fanout-lock-intruder"
LOCK_TIMEOUT = 1.5

# Run as B: plant what the JSON list says, hold an flock on every planted file, say "ready",
# and keep holding until stdin closes.
PLANT = """
import fcntl, json, os, sys
held = []
for op, path, arg in json.loads(sys.argv[1]):
    if op == "dir":
        os.mkdir(path); os.chmod(path, int(arg, 8))
    elif op == "file":
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666); os.fchmod(fd, int(arg, 8))
        fcntl.flock(fd, fcntl.LOCK_EX); held.append(fd)
    elif op == "link":
        os.symlink(arg, path)
print("ready", flush=True)
sys.stdin.read()
"""

# Run as A: take the default lock (with LOCK_TIMEOUT) and say where, or why not.
TAKE = """
import json, sys, time
sys.path.insert(0, sys.argv[1])
from certbot_fanout.errors import LockError
from certbot_fanout.lock import default_lock_path, run_lock
try:
    path = default_lock_path()
    with run_lock(path, timeout=float(sys.argv[2])):
        if len(sys.argv) > 3:
            print(json.dumps({"path": path, "error": None}), flush=True)
            sys.stdin.read()
    print(json.dumps({"path": path, "error": None}))
except LockError as e:
    print(json.dumps({"path": None, "error": str(e)}))
"""


@dataclass(frozen=True)
class Taken:
    """Where A's run took its lock, or why it could not."""

    path: str | None
    error: str | None

    @classmethod
    def parse(cls, line: str) -> Taken:
        found = json.loads(line)
        return cls(found["path"], found["error"])


@dataclass
class Users:
    owner: Account
    attacker: Account
    install: PublicInstall
    base: Path


@pytest.fixture(scope="module")
def users() -> Iterator[Users]:
    base = public_dir("certbot-fanout-lock-")
    try:
        with ensure_account(OWNER) as owner, ensure_account(ATTACKER) as attacker:
            (base / "pkg").mkdir()
            yield Users(owner, attacker, install_public(base / "pkg"), base)
    finally:
        shutil.rmtree(base, ignore_errors=True)


@dataclass
class Host:
    """A fresh stand-in for /tmp (root's, 1777) and the two users."""

    users: Users
    tmp: Path
    held: list[subprocess.Popen[str]] = field(default_factory=list)

    def name(self, suffix: str = "") -> str:
        return str(self.tmp / f"certbot-fanout-{self.users.owner.uid}{suffix}")

    def plant(self, ops: list[tuple[str, str, str]]) -> None:
        """Do ``ops`` as B and keep B's flocks held until the test ends."""
        proc = self._run(self.users.attacker, ["-c", PLANT, json.dumps(ops)])
        assert proc.stdout is not None
        line = proc.stdout.readline()
        assert line == "ready\n", proc.communicate(timeout=10)
        self.held.append(proc)

    def take(self, env: dict[str, str] | None = None, *, hold: bool = False) -> Taken:
        """A's run takes its default lock (and, with ``hold``, keeps it until the test ends)."""
        argv = ["-c", TAKE, str(self.users.install.directory), str(LOCK_TIMEOUT)]
        proc = self._run(self.users.owner, argv + (["hold"] if hold else []), env)
        assert proc.stdout is not None
        if hold:
            self.held.append(proc)
            return Taken.parse(proc.stdout.readline())
        out, err = proc.communicate(timeout=30)
        assert proc.returncode == 0, err
        return Taken.parse(out)

    def _run(
        self, user: Account, argv: list[str], env: dict[str, str] | None = None
    ) -> subprocess.Popen[str]:
        environ = {"PATH": "/usr/bin:/bin", "TMPDIR": str(self.tmp), **(env or {})}
        return subprocess.Popen(
            [self.users.install.python, "-I", *argv],
            user=user.uid,
            group=user.gid,
            extra_groups=[],
            env=environ,
            cwd="/",
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )

    def owned_by_owner_under(self, path: str) -> list[str]:
        """What A created in (or behind) something B planted."""
        found = []
        for root, dirs, files in os.walk(path):
            for entry in dirs + files:
                full = os.path.join(root, entry)
                if os.lstat(full).st_uid == self.users.owner.uid:
                    found.append(full)
        return found


@pytest.fixture
def host(users: Users) -> Iterator[Host]:
    tmp = Path(users.base) / f"tmp-{os.urandom(4).hex()}"
    tmp.mkdir()
    tmp.chmod(0o1777)
    made = Host(users, tmp)
    yield made
    for proc in made.held:
        proc.communicate(timeout=10)
    shutil.rmtree(tmp, ignore_errors=True)


# Each attack: what B plants (the NAME placeholders are A's predictable names), an optional
# $XDG_RUNTIME_DIR for A, and root's set-up for it.
ATTACKS: dict[str, tuple[list[tuple[str, str, str]], str | None]] = {
    # the name every earlier version used, a file B holds
    "old-name-held": ([("file", "NAME.lock", "666")], None),
    "old-name-link": ([("file", "TMP/b.lock", "666"), ("link", "NAME.lock", "TMP/b.lock")], None),
    # the per-user directory's name, taken by B in every shape
    "dir-open": ([("dir", "NAME", "777"), ("file", "NAME/certbot-fanout.lock", "666")], None),
    "dir-private": ([("dir", "NAME", "700")], None),
    "dir-file": ([("file", "NAME", "666")], None),
    "dir-link": (
        [
            ("dir", "TMP/b", "777"),
            ("file", "TMP/b/certbot-fanout.lock", "666"),
            ("link", "NAME", "TMP/b"),
        ],
        None,
    ),
    "dir-and-next": ([("dir", "NAME", "777"), ("dir", "NAME.1", "777")], None),
    # $XDG_RUNTIME_DIR that is not A's private directory
    "xdg-others": (
        [("dir", "TMP/run", "777"), ("file", "TMP/run/certbot-fanout.lock", "666")],
        "TMP/run",
    ),
    "xdg-link": (
        [
            ("dir", "TMP/run", "777"),
            ("file", "TMP/run/certbot-fanout.lock", "666"),
            ("link", "TMP/run-link", "TMP/run"),
        ],
        "TMP/run-link",
    ),
}


def _fill(host: Host, text: str) -> str:
    return text.replace("NAME", host.name()).replace("TMP", str(host.tmp))


@pytest.mark.parametrize("attack", ATTACKS)
def test_another_user_cannot_hold_or_redirect_the_lock(host: Host, attack: str) -> None:
    ops, xdg = ATTACKS[attack]
    planted = [(op, _fill(host, path), _fill(host, arg)) for op, path, arg in ops]
    host.plant(planted)
    env = {"XDG_RUNTIME_DIR": _fill(host, xdg)} if xdg else {}
    taken = host.take(env)
    path = taken.path
    blocked = path is None
    through_link = path is not None and os.path.realpath(path) != path
    created = [f for op, p, _ in planted if op == "dir" for f in host.owned_by_owner_under(p)]
    record(
        AREA,
        cases=1,
        runs_blocked_by_others=int(blocked),
        links_followed=int(through_link or bool(created)),
    )
    assert path is not None, taken.error
    assert not through_link and not created, (path, created)
    directory = os.path.dirname(path)
    assert private_dir_problem(directory, host.users.owner.uid) is None
    assert directory not in {p for _, p, _ in planted}, path


@pytest.mark.integration  # seconds of real processes: kept out of the fast unit suite
def test_the_owners_own_runs_still_exclude_each_other_when_the_name_was_taken(
    host: Host,
) -> None:
    host.plant([("dir", host.name(), "777")])
    first = host.take(hold=True)
    second = host.take()
    record(AREA, cases=1, runs_blocked_by_others=0)
    assert first.path == host.name(".1/certbot-fanout.lock")
    assert second.path is None and "has held" in (second.error or ""), second


def test_a_private_runtime_dir_is_used_and_a_loose_one_of_the_owners_is_not(
    host: Host,
) -> None:
    owner = host.users.owner
    runtime = host.tmp / "runtime"
    runtime.mkdir(mode=0o700)
    os.chown(runtime, owner.uid, owner.gid)
    runtime.chmod(0o700)
    assert host.take({"XDG_RUNTIME_DIR": str(runtime)}).path == str(runtime / "certbot-fanout.lock")
    runtime.chmod(0o777)  # A's, but B could plant in it: not used
    host.plant([("file", str(runtime / "b.lock"), "666")])
    taken = host.take({"XDG_RUNTIME_DIR": str(runtime)})
    record(AREA, cases=2, runs_blocked_by_others=int(taken.path is None))
    assert taken.path == host.name("/certbot-fanout.lock")
    made = os.lstat(host.name())
    assert (made.st_uid, stat.S_IMODE(made.st_mode)) == (owner.uid, 0o700)


def test_a_loose_directory_of_the_owners_own_is_passed_over(host: Host) -> None:
    owner = host.users.owner
    os.mkdir(host.name())
    os.chown(host.name(), owner.uid, owner.gid)
    os.chmod(host.name(), 0o777)
    host.plant([("file", host.name("/certbot-fanout.lock"), "666")])
    taken = host.take()
    record(AREA, cases=1, runs_blocked_by_others=int(taken.path is None))
    assert taken.path == host.name(".1/certbot-fanout.lock")


def test_every_name_taken_is_a_clear_lock_error(host: Host) -> None:
    host.plant(
        [("dir", host.name(), "777")] + [("dir", host.name(f".{n}"), "777") for n in range(1, 100)]
    )
    taken = host.take()
    assert taken.path is None
    assert "belong to other users; use --lock-file" in (taken.error or "")


def test_root_keeps_run_and_a_lock_link_is_not_followed(tmp_path: Path) -> None:
    assert default_lock_path({"XDG_RUNTIME_DIR": str(tmp_path)}) == "/run/certbot-fanout.lock"
    target = tmp_path / "target"
    target.write_text("")
    (tmp_path / "link").symlink_to(target)
    with pytest.raises(LockError, match="it is a symbolic link"), run_lock(str(tmp_path / "link")):
        pass
    os.mkfifo(tmp_path / "fifo")
    with pytest.raises(LockError, match="not a regular file"), run_lock(str(tmp_path / "fifo")):
        pass
