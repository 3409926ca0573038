"""POSIX ACLs: a directory's owner can give others a key that root places there, without root.

A default ACL on a destination directory (which its owner may set) is inherited by every file
created in it, so a key placed ``root:root 0640`` would be readable by the user the ACL names.
The tests set real ACLs with the real ``setfacl``, read them back with ``getfacl``, and try to
read the key as that user, in a real process running as that user.
"""

from __future__ import annotations

import io
import json
import os
import pwd
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest

from certbot_fanout import files
from certbot_fanout.cli import main
from tests.support.lineages import LineageFactory
from tests.support.tally import record

pytestmark = [
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root to place files for other users"),
    pytest.mark.skipif(
        shutil.which("setfacl") is None, reason="needs setfacl and getfacl (Debian: acl)"
    ),
]

AREA = "acls"
NAME = "acl.test"
ACCESS_ACL_XATTR = "system.posix_acl_access"
OTHER = "nobody"  # the user the ACL names: neither the key's owner nor in its group


def setfacl(*args: str) -> None:
    subprocess.run(["setfacl", *args], check=True, capture_output=True)


def getfacl(path: Path) -> str:
    return subprocess.run(
        ["getfacl", "--omit-header", "--absolute-names", str(path)],
        check=True,
        capture_output=True,
        text=True,
    ).stdout


def readable_by_other(path: Path) -> bool:
    """Whether OTHER, in a process of its own with only its own groups, can read ``path``."""
    who = pwd.getpwnam(OTHER)
    done = subprocess.run(
        ["cat", str(path)],
        user=who.pw_uid,
        group=who.pw_gid,
        extra_groups=[],
        capture_output=True,
        timeout=30,
    )
    return done.returncode == 0 and done.stdout == path.read_bytes()


@dataclass
class Site:
    base: Path
    tls: Path  # the destination directory
    config: Path
    lineage: Path
    config_dir: Path

    @property
    def key(self) -> Path:
        return self.tls / "key.pem"

    def run(self, *argv: str) -> tuple[int, str]:
        out = io.StringIO()
        common = ["--config", str(self.config), "--lock-file", str(self.base / "lock")]
        common += ["--state-file", str(self.base / "state.json")]
        if argv[0] == "deploy":
            code = main([*argv, *common, "--lineage", str(self.lineage)], stdout=out)
        else:
            code = main([*argv, *common, "--config-dir", str(self.config_dir)], stdout=out)
        return code, out.getvalue()


@pytest.fixture
def site(public_tmp: Path, lineages: LineageFactory) -> Site:
    tls = public_tmp / "tls"
    tls.mkdir(mode=0o755)
    live, _ = lineages.issue(NAME)
    config = public_tmp / "consumers.yaml"
    config.write_text(
        "version: 1\nconsumers:\n  svc:\n"
        f"    certificate: {NAME}\n"
        "    files:\n"
        f"      - {{path: {tls}/cert.pem, content: fullchain}}\n"
        f"      - {{path: {tls}/key.pem, content: privkey, owner: root, group: root, "
        "mode: '0640'}\n"
    )
    return Site(public_tmp, tls, config, live, lineages.config_dir)


@pytest.mark.parametrize("entry", [f"u:{OTHER}:r", f"u:{OTHER}:rw", "g:nogroup:r"])
def test_a_default_acl_on_the_directory_never_reaches_the_key(site: Site, entry: str) -> None:
    setfacl("-d", "-m", entry, str(site.tls))
    assert "default:" in getfacl(site.tls), "the default ACL was not set"
    # The control: a file created there the ordinary way inherits it, and OTHER reads it.
    plain = site.tls / "plain.pem"
    plain.write_bytes(b"not a key\n")
    plain.chmod(0o640)
    assert readable_by_other(plain), "the ACL gives OTHER nothing here; the test proves nothing"

    code, out = site.run("deploy")

    readable = readable_by_other(site.key)
    acl = getfacl(site.key)
    record(AREA, cases=1, acl_readable_keys=int(readable))
    assert code == 0, out
    assert not readable
    assert site.key.read_bytes() == (site.lineage / "privkey.pem").read_bytes()
    assert f":{OTHER}:" not in acl and ":nogroup:" not in acl and "mask" not in acl, acl
    assert ACCESS_ACL_XATTR not in os.listxattr(site.key)
    assert oct(site.key.stat().st_mode & 0o777) == oct(0o640)


def test_an_acl_on_a_placed_key_is_critical_drift_that_deploy_repairs(site: Site) -> None:
    code, out = site.run("deploy")
    assert code == 0, out
    assert site.run("status", "--no-probe")[0] == 0
    setfacl("-m", f"u:{OTHER}:r", str(site.key))
    assert readable_by_other(site.key), "the ACL was not set"

    code, out = site.run("status", "--no-probe", "--json")
    doc = json.loads(out)
    assert code == 2, out  # CRITICAL
    [consumer] = doc["consumers"]
    reasons = [r for f in consumer["files"] for r in f["reasons"]]
    assert f"an access ACL also grants user:{OTHER}:r--" in reasons, reasons

    code, out = site.run("deploy")
    readable = readable_by_other(site.key)
    record(AREA, cases=1, acl_readable_keys=int(readable))
    assert code == 0, out
    assert not readable
    assert f"user:{OTHER}" not in getfacl(site.key)
    assert site.run("status", "--no-probe")[0] == 0


def test_check_reports_a_default_acl_on_a_keys_directory(site: Site) -> None:
    code, out = site.run("check", "--no-probe")
    assert "default ACL" not in out
    setfacl("-d", "-m", f"u:{OTHER}:r", str(site.tls))

    code, out = site.run("check", "--no-probe")

    assert code == 1, out
    assert f"{site.tls}, where {site.key} holds the private key, has a default ACL" in out
    assert f"(user:{OTHER}:r--)" in out
    assert f"setfacl -k {site.tls}" in out


def test_a_snapshot_names_the_entries_of_an_access_acl(tmp_path: Path) -> None:
    path = tmp_path / "k.pem"
    files.place(files.Desired(str(path), 0, 0, 0o600, b"key\n"))
    assert files.snapshot(str(path)).acl == ()
    setfacl("-m", f"u:{OTHER}:r,g:nogroup:rw", str(path))

    found = files.compare(
        files.Desired(str(path), 0, 0, 0o600, b"key\n"), files.snapshot(str(path))
    )

    assert [d.kind for d in found] == [files.DifferenceKind.MODE, files.DifferenceKind.ACL]
    assert found[1].message == f"an access ACL also grants user:{OTHER}:r--, group:nogroup:rw-"
