"""A file as a process sees it (issue 16): its mountinfo read (escapes, replaced files), paths
resolved inside its root, PIDs found from a pid file or a command name, and in-place
rewriting of a file's own inode. Real temp dirs and real processes."""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from certbot_fanout import containers, files, procview
from certbot_fanout.errors import PlacementError
from certbot_fanout.model import ProcessSpec

MOUNTINFO = (
    "22 1 254:0 / / rw,relatime shared:1 - ext4 /dev/vda rw\n"
    "66 22 254:0 /srv/tls/fullchain.pem//deleted /certs/fullchain.pem ro,relatime - ext4 "
    "/dev/vda rw\n"
    "67 22 254:0 /srv/my\\040dir/key.pem /certs/my\\040key.pem ro - ext4 /dev/vda rw\n"
    "68 22 0:44 / /run rw - tmpfs tmpfs rw\n"
    "garbage line\n"
)


def test_mountinfo_is_parsed_with_its_escapes_and_replaced_files_are_seen() -> None:
    entries = procview.parse_mountinfo(MOUNTINFO)
    assert [e.point for e in entries] == [
        "/",
        "/certs/fullchain.pem",
        "/certs/my key.pem",
        "/run",
    ]
    replaced = entries[1]
    assert replaced.deleted and replaced.device == "254:0" and replaced.source == "/dev/vda"
    assert entries[2].root == "/srv/my dir/key.pem" and not entries[2].deleted


def test_a_path_is_resolved_inside_the_root_even_through_an_absolute_link(
    tmp_path: Path,
) -> None:
    root = tmp_path / "root"
    (root / "etc/ssl").mkdir(parents=True)
    (root / "etc/ssl/real.pem").write_text("inside")
    (root / "certs").symlink_to("/etc/ssl")  # absolute: inside the root, not this host's
    (root / "etc/ssl/up.pem").symlink_to("../../etc/ssl/real.pem")
    assert procview._resolve(str(root), "/certs/real.pem") == str(root / "etc/ssl/real.pem")
    assert procview._resolve(str(root), "/certs/up.pem") == str(root / "etc/ssl/real.pem")
    assert procview._resolve(str(root), "/../../certs/real.pem") == str(root / "etc/ssl/real.pem")
    (root / "loop").symlink_to("/loop")
    with pytest.raises(OSError, match="Too many levels of symbolic links"):
        procview._resolve(str(root), "/loop")


def test_seen_by_reads_this_process_view_and_says_what_is_missing(tmp_path: Path) -> None:
    (tmp_path / "a.pem").write_bytes(b"bytes")
    (tmp_path / "dir").mkdir()
    me = os.getpid()
    assert procview.seen_by(me, str(tmp_path / "a.pem")).data == b"bytes"
    missing = procview.seen_by(me, str(tmp_path / "none.pem"))
    assert missing.data is None and missing.problem == f"PID {me} sees no {tmp_path}/none.pem"
    other = procview.seen_by(me, str(tmp_path / "dir"))
    assert other.problem is not None and "other than a regular file" in other.problem


def test_a_file_seen_differently_without_a_bind_mount_is_said_so(tmp_path: Path) -> None:
    why = procview.why_stale(os.getpid(), str(tmp_path / "x.pem"))
    me = os.getpid()
    assert (
        why == f"PID {me} sees other bytes at {tmp_path}/x.pem (through its root) than were placed"
    )


def test_a_pid_file_is_read_and_its_faults_named(tmp_path: Path) -> None:
    pid_file = tmp_path / "x.pid"
    with pytest.raises(ValueError, match="No such file"):
        procview.pid_from_file(str(pid_file))
    pid_file.write_text("not a pid\n")
    with pytest.raises(ValueError, match="holds no PID"):
        procview.pid_from_file(str(pid_file))
    pid_file.write_text("999999999\n")
    with pytest.raises(ValueError, match="which is not running"):
        procview.pid_from_file(str(pid_file))
    pid_file.write_text(f"{os.getpid()}\n")
    assert procview.pid_from_file(str(pid_file)) == os.getpid()


@pytest.fixture
def named_process(tmp_path: Path) -> Iterator[subprocess.Popen[bytes]]:
    """``sleep`` run under a name no other process has."""
    program = tmp_path / "fanoutview"
    shutil.copy2(shutil.which("sleep") or "/bin/sleep", program)
    process = subprocess.Popen([str(program), "30"])
    deadline = time.monotonic() + 5
    while Path(f"/proc/{process.pid}/comm").read_text().strip() != "fanoutview":
        assert time.monotonic() < deadline
        time.sleep(0.01)
    yield process
    process.kill()
    process.wait()


def test_a_process_is_found_by_its_command_name(
    named_process: subprocess.Popen[bytes],
) -> None:
    assert procview.pid_by_name("fanoutview") == named_process.pid
    with pytest.raises(ValueError, match="no running process is named fanoutnone"):
        procview.pid_by_name("fanoutnone")


def test_in_filesystem_names_the_device_and_the_path_from_its_root(tmp_path: Path) -> None:
    found = procview.in_filesystem(str(tmp_path / "x.pem"))
    assert found is not None
    device, inside = found
    assert ":" in device and inside.endswith(f"{tmp_path.name}/x.pem")


def _desired(path: Path, data: bytes, mode: int = 0o640) -> files.Desired:
    return files.Desired(str(path), os.getuid(), os.getgid(), mode, data=data, inplace=True)


def test_inplace_rewrites_the_same_inode_with_its_mode_set(tmp_path: Path) -> None:
    path = tmp_path / "key.pem"
    path.write_bytes(b"old key, longer than the new one")
    path.chmod(0o644)
    inode = path.stat().st_ino
    files.place(_desired(path, b"new key"))
    assert path.stat().st_ino == inode
    assert path.read_bytes() == b"new key"
    assert stat.S_IMODE(path.stat().st_mode) == 0o640


def test_inplace_restores_into_the_same_inode_and_places_a_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "cert.pem"
    path.write_bytes(b"before")
    before = files.snapshot(str(path))
    inode = path.stat().st_ino
    files.place(_desired(path, b"after"))
    files.restore(files.Snapshot(**{**before.__dict__, "inplace": True}))
    assert path.read_bytes() == b"before" and path.stat().st_ino == inode
    fresh = tmp_path / "fresh.pem"
    files.place(_desired(fresh, b"new"))
    assert fresh.read_bytes() == b"new"


def test_inplace_refuses_a_symlink_and_what_is_not_a_file(tmp_path: Path) -> None:
    (tmp_path / "dir").mkdir()
    with pytest.raises(PlacementError, match="cannot open it to rewrite: Is a directory"):
        files.place(_desired(tmp_path / "dir", b"x"))
    (tmp_path / "link").symlink_to(tmp_path / "elsewhere")
    with pytest.raises(PlacementError, match="cannot open it to rewrite"):
        files.place(_desired(tmp_path / "link", b"x"))
    assert not (tmp_path / "elsewhere").exists()


def test_a_mount_of_another_namespace_is_named_as_this_process_names_the_file(
    tmp_path: Path,
) -> None:
    where = procview.in_filesystem(str(tmp_path / "x.pem"))
    assert where is not None
    device, inside = where
    entry = procview.MountEntry("/certs/x.pem", inside + "//deleted", "ext4", "/dev/x", device)
    assert procview.host_path(entry) == str(tmp_path / "x.pem")
    elsewhere = procview.MountEntry("/certs/x.pem", "/x.pem", "ext4", "/dev/x", "999:999")
    assert procview.host_path(elsewhere) == "/x.pem"  # no mount here shows that filesystem


def test_a_unit_without_a_main_process_is_said_so() -> None:
    # No systemd runs here (nor in CI's root): systemctl fails, or says MainPID=0.
    with pytest.raises(ValueError, match=r"^unit fanout-none\.service"):
        containers.process_pid(ProcessSpec(unit="fanout-none.service"))
