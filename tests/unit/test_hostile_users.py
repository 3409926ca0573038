"""A service user who can write the destination directory attacks the root-owned placement.

The attacker is a real unprivileged account; every plant, swap and race is done by a process
running as that account. The victims are root's files outside the service's directory. Each
test proves the attack reached the placement (the destination was a planted link when the run
started, or the swap happened during the runs) and that nothing outside moved.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
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
from tests.support.public import PublicInstall, python_for_anyone
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


@pytest.mark.integration  # seconds of racing threads: kept out of the fast unit suite
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


# -- a root-owned symlink moved into place (issue 13, item 6) --------------------------------

MOVE_INTO_PLACE = """
import os, sys
here, there = sys.argv[1], sys.argv[2]
if os.path.isdir(there) and not os.path.islink(there):
    os.rename(there, there + ".moved")
os.rename(here, there)
"""


@pytest.fixture
def root_only(layout: Layout) -> Path:
    """A directory only root can enter, with a file of root's in it."""
    secret = layout.base / "root-only"
    secret.mkdir(mode=0o700)
    (secret / "key.pem").write_bytes(VICTIM_KEY)
    (secret / "key.pem").chmod(0o600)
    return secret


def fingerprint(directory: Path) -> dict[str, tuple[str, int, int, int]]:
    """Every entry under ``directory``: its bytes' digest (or link target), owner and mode."""
    found = {}
    for path in sorted(directory.rglob("*")):
        st = path.lstat()
        if path.is_symlink():
            what = os.readlink(path)
        elif path.is_file():
            what = hashlib.sha256(path.read_bytes()).hexdigest()
        else:
            what = ""
        found[str(path)] = (what, st.st_uid, st.st_gid, stat.S_IMODE(st.st_mode))
    return found


def test_a_root_owned_symlink_moved_over_the_directory_is_not_followed(
    layout: Layout, attacker: pwd.struct_passwd, root_only: Path
) -> None:
    # Root made this link once (a link: true placement, an old layout); the service user can
    # rename it, since it sits in the service user's directory.
    old = layout.service_dir / "old-link"
    old.symlink_to(root_only)
    assert old.lstat().st_uid == 0
    before = fingerprint(root_only)
    attacker_does(attacker, MOVE_INTO_PLACE, str(old), str(layout.tls))
    assert (layout.service_dir / "tls").is_symlink(), "the move did not happen"
    assert (layout.service_dir / "tls").lstat().st_uid == 0

    code, text = layout.deploy()

    changed = before != fingerprint(root_only)
    record(AREA, cases=1, writes_through_links=int(changed), tracebacks=text.count("Traceback"))
    assert not changed
    assert code == 1, text
    assert (
        f"refusing to follow {layout.service_dir}/tls: a symlink owned by root in "
        f"{layout.service_dir}, a directory that {ATTACKER} owns"
    ) in text
    assert "Traceback" not in text


def test_a_root_owned_symlink_moved_onto_the_file_name_is_replaced(
    layout: Layout, attacker: pwd.struct_passwd, root_only: Path
) -> None:
    old = layout.tls / "old-link"
    old.symlink_to(root_only / "key.pem")
    before = fingerprint(root_only)
    attacker_does(attacker, MOVE_INTO_PLACE, str(old), str(layout.tls / "key.pem"))
    assert (layout.tls / "key.pem").is_symlink(), "the move did not happen"

    code, text = layout.deploy()

    changed = before != fingerprint(root_only)
    record(AREA, cases=1, writes_through_links=int(changed), tracebacks=text.count("Traceback"))
    assert not changed
    assert code == 0, text
    key = layout.tls / "key.pem"
    assert not key.is_symlink()
    assert key.read_bytes() == (layout.lineage / "privkey.pem").read_bytes()


def test_a_link_in_a_directory_only_root_can_write_is_still_followed(
    layout: Layout, root_only: Path
) -> None:
    # The control for the two above: the same root-owned link, in a root-owned 0755 directory.
    link = layout.base / "etc-link"
    link.symlink_to(layout.tls)
    layout.config.write_text(layout.config.read_text().replace(str(layout.tls), str(link)))
    code, text = layout.deploy()
    assert code == 0, text
    assert (layout.tls / "key.pem").read_bytes() == (layout.lineage / "privkey.pem").read_bytes()


# -- one hostile user cannot stop everyone's deploys (issue 13, item 5) ----------------------


def two_consumers(layout: Layout, svc_dir: Path) -> Path:
    """The map with a second consumer, in a directory of root's, beside the service's."""
    other = layout.base / "other"
    other.mkdir(mode=0o755, exist_ok=True)
    layout.config.write_text(
        "version: 1\nconsumers:\n"
        f"  other:\n    certificate: {NAME}\n    files:\n"
        f"      - {{path: {other}/cert.pem, content: fullchain}}\n"
        f"      - {{path: {other}/key.pem, content: privkey}}\n"
        f"  svc:\n    certificate: {NAME}\n    files:\n"
        f"      - {{path: {svc_dir}/cert.pem, content: fullchain}}\n"
        f"      - {{path: {svc_dir}/key.pem, content: privkey, owner: {ATTACKER}, mode: '0600'}}\n"
    )
    return other


def consumers_of(text: str) -> dict[str, dict[str, object]]:
    doc = json.loads(text[text.index("{") :])
    return {c["name"]: c for c in doc["consumers"]}


def check_only_svc_failed(
    layout: Layout, code: int, text: str, other: Path, changed: bool
) -> dict[str, object]:
    """Record and assert: nothing in certbot's directories changed (``changed``), the other
    consumer deployed, and the service's consumer failed at placing; its result."""
    ok = code != 2 and consumers_of(text).get("other", {}).get("outcome") == "ok"
    record(AREA, cases=1, writes_through_links=int(changed), others_affected=int(not ok))
    assert not changed
    assert code == 1, text
    assert ok, text
    assert (other / "key.pem").read_bytes() == (layout.lineage / "privkey.pem").read_bytes()
    svc = consumers_of(text)["svc"]
    assert svc["outcome"] == "failed"
    assert svc["failed_stage"] == "place"
    return svc


def test_a_service_users_link_into_live_fails_its_consumer_only(
    layout: Layout, attacker: pwd.struct_passwd, lineages: LineageFactory
) -> None:
    other = two_consumers(layout, layout.tls)
    certbot = fingerprint(lineages.config_dir)
    attacker_does(attacker, SWAP_DIRECTORY, str(layout.service_dir), str(layout.lineage))
    assert os.path.realpath(layout.tls) == str(layout.lineage), "the swap did not happen"

    code, text = layout.deploy()

    svc = check_only_svc_failed(
        layout, code, text, other, certbot != fingerprint(lineages.config_dir)
    )
    assert f"refusing to follow {layout.tls}" in str(svc["error"])


def test_a_trusted_link_that_leads_into_live_fails_its_consumer_only(
    layout: Layout, lineages: LineageFactory
) -> None:
    # A link root made in a directory only root can write is followed; the placement still
    # sees that it ends in certbot's live/ and refuses that one consumer.
    shortcut = layout.base / "shortcut"
    shortcut.symlink_to(layout.lineage)
    other = two_consumers(layout, shortcut)
    certbot = fingerprint(lineages.config_dir)

    code, text = layout.deploy()

    svc = check_only_svc_failed(
        layout, code, text, other, certbot != fingerprint(lineages.config_dir)
    )
    assert f"is inside {lineages.config_dir}/live: certbot owns" in str(svc["error"])


PLACE_THROUGH = """
import sys
sys.path.insert(0, sys.argv[1])
from certbot_fanout import files
from certbot_fanout.errors import PlacementError
try:
    files.place(files.Desired(sys.argv[2], -1, -1, 0o600, b"mine"))
except PlacementError as e:
    print(e)
    sys.exit(1)
"""


def test_a_non_root_run_trusts_links_in_its_own_directories(
    layout: Layout, attacker: pwd.struct_passwd, public_install: PublicInstall
) -> None:
    # Running as a service user, that user takes root's place: its own links are its own.
    mine = layout.service_dir / "mine"
    attacker_does(attacker, f"import os; os.symlink({str(layout.tls)!r}, {str(mine)!r})")
    ok = as_attacker(attacker, PLACE_THROUGH, str(public_install.directory), f"{mine}/a.pem")
    out, err = ok.communicate(timeout=60)
    assert ok.returncode == 0, out.decode() + err.decode()
    assert (layout.tls / "a.pem").read_bytes() == b"mine"
    # A link of root's in a directory others can write is still refused.
    shared = layout.base / "shared"
    shared.mkdir(mode=0o777)
    shared.chmod(0o777)
    (shared / "link").symlink_to(layout.tls)
    refused = as_attacker(
        attacker, PLACE_THROUGH, str(public_install.directory), f"{shared}/link/b.pem"
    )
    out, err = refused.communicate(timeout=60)
    assert refused.returncode == 1, out.decode() + err.decode()
    assert "refusing to follow" in out.decode()
    assert not (layout.tls / "b.pem").exists()
