"""A service user who can write the destination directory attacks the root-owned placement.

The attacker is a real unprivileged account; every plant, swap and race is done by a process
running as that account. The victims are root's files outside the service's directory. Each
test proves the attack reached the placement (the destination was a planted link when the run
started, or the swap happened during the runs) and that nothing outside moved.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import pwd
import stat
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from certbot_fanout import files
from certbot_fanout.cli import main
from certbot_fanout.errors import PlacementError
from tests.support.lineages import LineageFactory
from tests.support.public import python_for_anyone
from tests.support.tally import record

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="needs root to create a service user")

AREA = "service-user attacks"
ATTACKER = "fanout-attacker"
NAME = "svc.test"
VICTIM_KEY = b"-----BEGIN PRIVATE KEY-----\nROOT'S OTHER KEY\n-----END PRIVATE KEY-----\n"


@pytest.fixture(scope="module")
def attacker() -> Iterator[pwd.struct_passwd]:
    created = False
    try:
        entry = pwd.getpwnam(ATTACKER)
    except KeyError:
        subprocess.run(["useradd", "--system", "--user-group", ATTACKER], check=True)
        created = True
        entry = pwd.getpwnam(ATTACKER)
    yield entry
    if created:
        subprocess.run(["userdel", ATTACKER], check=False)


def as_attacker(user: pwd.struct_passwd, code: str, *args: str) -> subprocess.Popen[bytes]:
    """Run ``code`` (Python) as the attacker, with no supplementary groups, on an interpreter
    the attacker can reach wherever the checkout lives."""
    return subprocess.Popen(
        [python_for_anyone(), "-I", "-c", code, *args],
        user=user.pw_uid,
        group=user.pw_gid,
        extra_groups=[],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )


def attacker_does(user: pwd.struct_passwd, code: str, *args: str) -> None:
    proc = as_attacker(user, code, *args)
    _, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err.decode()


@dataclass
class Victim:
    """Root's files outside the service's directory, and a fingerprint of all of them."""

    directory: Path

    def fingerprint(self) -> dict[str, tuple[str, int, int, int, int]]:
        found = {}
        for path in sorted(self.directory.rglob("*")):
            st = path.lstat()
            digest = hashlib.sha256(path.read_bytes()).hexdigest() if path.is_file() else ""
            mode = stat.S_IMODE(st.st_mode)
            found[str(path)] = (digest, st.st_uid, st.st_gid, mode, st.st_ino)
        return found


@dataclass
class Layout:
    base: Path
    service_dir: Path  # owned by the attacker: the service user can write it
    tls: Path  # the destination directory, inside it
    victim: Victim
    config: Path
    lineage: Path

    def attacked_deploy(self) -> tuple[int, str, bool]:
        """Deploy after an attack was planted: (exit code, output, whether the victim moved)."""
        before = self.victim.fingerprint()
        code, text = self.deploy()
        return code, text, before != self.victim.fingerprint()

    def deploy(self) -> tuple[int, str]:
        out, err = self.base / "out.json", self.base / "err.txt"
        argv = [
            "deploy",
            "--config",
            str(self.config),
            "--lineage",
            str(self.lineage),
            "--lock-file",
            str(self.base / "lock"),
            "--json",
        ]
        with (
            open(out, "w") as o,
            open(err, "w") as e,
            contextlib.redirect_stdout(o),
            contextlib.redirect_stderr(e),
        ):
            code = main(argv)
        return code, err.read_text() + out.read_text()


@pytest.fixture
def layout(public_tmp: Path, lineages: LineageFactory, attacker: pwd.struct_passwd) -> Layout:
    base = public_tmp
    victim = base / "victim"
    victim.mkdir(mode=0o755)
    (victim / "key.pem").write_bytes(VICTIM_KEY)
    (victim / "key.pem").chmod(0o600)
    (victim / "cert.pem").write_bytes(b"root's other certificate\n")
    service_dir = base / "srv"
    service_dir.mkdir(mode=0o755)
    os.chown(service_dir, attacker.pw_uid, attacker.pw_gid)
    tls = service_dir / "tls"
    tls.mkdir(mode=0o750)
    os.chown(tls, attacker.pw_uid, attacker.pw_gid)
    live, _ = lineages.issue(NAME)
    config = base / "consumers.yaml"
    config.write_text(
        "version: 1\nconsumers:\n  svc:\n"
        f"    certificate: {NAME}\n"
        "    files:\n"
        f"      - {{path: {tls}/cert.pem, content: fullchain}}\n"
        f"      - {{path: {tls}/key.pem, content: privkey, owner: {ATTACKER}, mode: '0600'}}\n"
    )
    return Layout(base, service_dir, tls, Victim(victim), config, live)


PLANT_LINKS = """
import os, sys
tls, victim = sys.argv[1], sys.argv[2]
for name in ("cert.pem", "key.pem"):
    os.symlink(os.path.join(victim, name), os.path.join(tls, name))
"""


def test_symlinks_planted_at_the_destination_are_replaced_not_written_through(
    layout: Layout, attacker: pwd.struct_passwd
) -> None:
    attacker_does(attacker, PLANT_LINKS, str(layout.tls), str(layout.victim.directory))
    assert (layout.tls / "key.pem").is_symlink(), "the plant did not happen"

    code, text, changed = layout.attacked_deploy()

    record(AREA, cases=1, writes_through_links=int(changed), tracebacks=text.count("Traceback"))
    assert not changed
    assert code == 0, text
    key = layout.tls / "key.pem"
    assert (
        not key.is_symlink() and key.read_bytes() == (layout.lineage / "privkey.pem").read_bytes()
    )
    st = key.lstat()
    assert (st.st_uid, stat.S_IMODE(st.st_mode)) == (attacker.pw_uid, 0o600)


def test_a_planted_hard_link_keeps_its_target_unchanged(layout: Layout) -> None:
    # With fs.protected_hardlinks=0 (or for a file of its own) the service user can link a
    # file it does not own into its directory; root plants it here to stand for that.
    target = layout.victim.directory / "key.pem"
    os.link(target, layout.tls / "key.pem")
    assert target.stat().st_nlink == 2, "the plant did not happen"

    code, text, changed = layout.attacked_deploy()

    record(AREA, cases=1, hard_link_targets_changed=int(changed))
    assert not changed
    assert code == 0, text
    assert target.stat().st_nlink == 1, "the destination name still shares the victim's inode"
    assert (layout.tls / "key.pem").read_bytes() == (layout.lineage / "privkey.pem").read_bytes()


SWAP_DIRECTORY = """
import os, sys
service_dir, victim = sys.argv[1], sys.argv[2]
os.rename(os.path.join(service_dir, "tls"), os.path.join(service_dir, "tls.moved"))
os.symlink(victim, os.path.join(service_dir, "tls"))
"""


def test_a_directory_component_swapped_for_a_symlink_is_refused(
    layout: Layout, attacker: pwd.struct_passwd
) -> None:
    attacker_does(attacker, SWAP_DIRECTORY, str(layout.service_dir), str(layout.victim.directory))
    assert (layout.service_dir / "tls").is_symlink(), "the swap did not happen"

    code, text, changed = layout.attacked_deploy()

    record(AREA, cases=1, writes_outside=int(changed), tracebacks=text.count("Traceback"))
    assert not changed
    assert code == 1
    assert f"refusing to follow {layout.service_dir}/tls: a symlink owned by {ATTACKER}" in text
    assert "Traceback" not in text


def test_a_component_above_the_destination_swapped_for_a_symlink_is_refused(
    layout: Layout, attacker: pwd.struct_passwd
) -> None:
    # The kernel follows a symlink in the middle of a path even with O_NOFOLLOW.
    inner = layout.tls / "inner"
    inner.mkdir()
    os.chown(inner, attacker.pw_uid, attacker.pw_gid)
    (layout.victim.directory / "inner").mkdir()
    (layout.victim.directory / "inner" / "key.pem").write_bytes(VICTIM_KEY)
    layout.config.write_text(layout.config.read_text().replace(f"{layout.tls}/", f"{inner}/"))
    attacker_does(attacker, SWAP_DIRECTORY, str(layout.service_dir), str(layout.victim.directory))
    assert (layout.service_dir / "tls").is_symlink(), "the swap did not happen"

    code, text, changed = layout.attacked_deploy()

    record(AREA, cases=1, writes_outside=int(changed), tracebacks=text.count("Traceback"))
    assert not changed
    assert code == 1
    assert f"refusing to follow {layout.service_dir}/tls: a symlink owned by {ATTACKER}" in text


def test_roots_own_symlinks_along_the_path_are_still_followed(layout: Layout) -> None:
    # The administrator's layout (e.g. /etc/ssl -> /usr/share/...) keeps working.
    link = layout.base / "etc-tls"
    link.symlink_to(layout.tls)
    layout.config.write_text(layout.config.read_text().replace(str(layout.tls), str(link)))

    code, text = layout.deploy()

    assert code == 0, text
    assert (layout.tls / "key.pem").read_bytes() == (layout.lineage / "privkey.pem").read_bytes()


def test_an_attackers_symlink_in_a_root_only_directory_cannot_exist_but_roots_is_trusted(
    public_tmp: Path, attacker: pwd.struct_passwd
) -> None:
    # A link in a directory only root can write was made by root, whoever owns it now.
    real = public_tmp / "real"
    real.mkdir()
    link = public_tmp / "link"
    link.symlink_to(real)
    os.lchown(link, attacker.pw_uid, attacker.pw_gid)
    files.place(files.Desired(str(link / "a.pem"), 0, 0, 0o644, b"x\n"))
    assert (real / "a.pem").read_bytes() == b"x\n"
    public_tmp.chmod(0o777)  # now the attacker could have made it: refused
    with pytest.raises(PlacementError, match="refusing to follow"):
        files.place(files.Desired(str(link / "a.pem"), 0, 0, 0o644, b"y\n"))
    assert (real / "a.pem").read_bytes() == b"x\n"


def test_a_symlink_loop_in_the_directory_path_is_an_error(public_tmp: Path) -> None:
    (public_tmp / "a").symlink_to(public_tmp / "b")
    (public_tmp / "b").symlink_to(public_tmp / "a")
    with pytest.raises(PlacementError, match="too many symlinks"):
        files.place(files.Desired(str(public_tmp / "a" / "k.pem"), 0, 0, 0o600, b"k"))


RACE_DIRECTORY = """
import os, sys, time
service_dir, victim, seconds = sys.argv[1], sys.argv[2], float(sys.argv[3])
real, link = os.path.join(service_dir, "tls.real"), os.path.join(service_dir, "tls.link")
tls = os.path.join(service_dir, "tls")
os.symlink(victim, link)
swaps, end = 0, time.monotonic() + seconds
while time.monotonic() < end:
    # tls is the real directory, then a symlink to the victim, a moment each.
    time.sleep(0.001)
    os.rename(tls, real)
    os.rename(link, tls)
    time.sleep(0.001)
    os.rename(tls, link)
    os.rename(real, tls)
    swaps += 2
print(swaps)
"""

RACE_FILE = """
import os, sys, time
tls, victim, seconds = sys.argv[1], sys.argv[2], float(sys.argv[3])
swaps, end = 0, time.monotonic() + seconds
while time.monotonic() < end:
    for name in ("key.pem", ".key.pem.fanout-000000000000"):
        try:
            os.symlink(os.path.join(victim, "key.pem"), os.path.join(tls, name + ".x"))
            os.rename(os.path.join(tls, name + ".x"), os.path.join(tls, name))
            swaps += 1
        except OSError:
            pass
print(swaps)
"""


@pytest.mark.parametrize("attack", ["directory", "middle", "file"])
def test_racing_swaps_never_lead_a_write_outside(
    layout: Layout, attacker: pwd.struct_passwd, attack: str
) -> None:
    """The attacker swaps links as fast as it can while root places the key again and again:
    the destination directory itself, a directory above it, or links at the file names."""
    destination = layout.tls
    if attack == "middle":
        destination = layout.tls / "inner"
        destination.mkdir()
        os.chown(destination, attacker.pw_uid, attacker.pw_gid)
        (layout.victim.directory / "inner").mkdir()
        (layout.victim.directory / "inner" / "key.pem").write_bytes(VICTIM_KEY)
    before = layout.victim.fingerprint()
    seconds = 1.5
    if attack in ("directory", "middle"):
        racer = as_attacker(
            attacker,
            RACE_DIRECTORY,
            str(layout.service_dir),
            str(layout.victim.directory),
            str(seconds),
        )
    else:
        racer = as_attacker(
            attacker, RACE_FILE, str(layout.tls), str(layout.victim.directory), str(seconds)
        )
    placements = 0
    refusals: list[str] = []
    uid = attacker.pw_uid
    deadline = time.monotonic() + seconds - 0.5
    time.sleep(0.2)
    while time.monotonic() < deadline:
        try:
            files.place(files.Desired(str(destination / "key.pem"), uid, uid, 0o600, b"new key"))
            placements += 1
        except PlacementError as e:
            refusals.append(str(e))
    out, err = racer.communicate(timeout=30)
    assert racer.returncode == 0, err.decode()
    swaps = int(out)
    changed = before != layout.victim.fingerprint()
    record(
        AREA,
        cases=placements + len(refusals),
        racing_swaps=swaps,
        refused=len(refusals),
        writes_outside=int(changed),
    )
    assert not changed
    unclear = [r for r in refusals if not any(w in r for w in ("refusing", "does not", "cannot"))]
    assert unclear == []
    assert swaps > 500, "the attacker barely ran; the race proves nothing"
    assert placements > 20, (placements, refusals[:3])
    if attack != "file":
        met = sum("refusing to follow" in r for r in refusals)
        assert met > 20, "the swapped symlink was seldom met; the race proves little"
