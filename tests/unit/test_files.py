"""Placement on real temp dirs, with real ownership (root), symlink traps and a live watcher."""

from __future__ import annotations

import contextlib
import json
import os
import pwd
import signal
import stat
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from certbot_fanout import files
from certbot_fanout.errors import PlacementError

needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="ownership tests need root")
KEY = b"-----BEGIN PRIVATE KEY-----\n" + b"k" * 200 + b"\n-----END PRIVATE KEY-----\n"


def nobody() -> tuple[int, int]:
    entry = pwd.getpwnam("nobody")
    return entry.pw_uid, entry.pw_gid


def desired(path: Path, data: bytes = KEY, mode: int = 0o600, owner: int = 0) -> files.Desired:
    return files.Desired(path=str(path), uid=owner, gid=owner, mode=mode, data=data)


def test_place_creates_file_with_content_owner_and_mode(tmp_path: Path) -> None:
    uid, gid = nobody() if os.geteuid() == 0 else (os.getuid(), os.getgid())
    target = tmp_path / "key.pem"
    files.place(files.Desired(path=str(target), uid=uid, gid=gid, mode=0o640, data=KEY))
    st = target.stat()
    assert target.read_bytes() == KEY
    assert (st.st_uid, st.st_gid, stat.S_IMODE(st.st_mode)) == (uid, gid, 0o640)
    assert [p.name for p in tmp_path.iterdir()] == ["key.pem"], "no temp file left behind"


def test_unchanged_file_has_no_differences_and_keeps_its_inode(tmp_path: Path) -> None:
    target = tmp_path / "cert.pem"
    want = desired(target, b"cert\n", 0o644, os.getuid())
    files.place(want)
    inode = target.stat().st_ino
    assert files.differences(want, files.snapshot(str(target))) == []
    assert target.stat().st_ino == inode


@needs_root
def test_differences_name_content_owner_group_and_mode(tmp_path: Path) -> None:
    target = tmp_path / "cert.pem"
    files.place(desired(target, b"old\n", 0o644))
    uid, gid = nobody()
    want = files.Desired(path=str(target), uid=uid, gid=gid, mode=0o600, data=b"new\n")
    reasons = files.differences(want, files.snapshot(str(target)))
    assert reasons == [
        "content differs",
        "owner root, expected nobody",
        f"group root, expected {os.popen(f'getent group {gid}').read().split(':')[0]}",
        "mode 0644, expected 0600",
    ]


def test_mode_change_alone_rewrites_atomically(tmp_path: Path) -> None:
    target = tmp_path / "cert.pem"
    files.place(desired(target, b"c\n", 0o644, os.getuid()))
    inode = target.stat().st_ino
    want = desired(target, b"c\n", 0o600, os.getuid())
    assert files.differences(want, files.snapshot(str(target))) == ["mode 0644, expected 0600"]
    files.place(want)
    assert stat.S_IMODE(target.stat().st_mode) == 0o600
    assert target.stat().st_ino != inode


def test_planted_symlink_is_replaced_never_written_through(tmp_path: Path) -> None:
    victim = tmp_path / "victim"
    victim.write_bytes(b"precious\n")
    victim.chmod(0o644)
    target = tmp_path / "key.pem"
    target.symlink_to(victim)
    snap = files.snapshot(str(target))
    assert snap.kind is files.Kind.SYMLINK
    want = desired(target, owner=os.getuid())
    assert files.differences(want, snap) == [f"a symlink (to {victim}) where a copy belongs"]
    files.place(want)
    assert not target.is_symlink()
    assert target.read_bytes() == KEY
    assert victim.read_bytes() == b"precious\n"
    assert stat.S_IMODE(victim.stat().st_mode) == 0o644


def test_missing_directory_is_an_error_not_created(tmp_path: Path) -> None:
    target = tmp_path / "absent" / "key.pem"
    with pytest.raises(PlacementError, match=r"directory .*absent does not exist"):
        files.place(desired(target, owner=os.getuid()))
    assert not target.parent.exists()


def test_directory_at_destination_is_refused(tmp_path: Path) -> None:
    (tmp_path / "key.pem").mkdir()
    with pytest.raises(PlacementError, match="not a regular file or symlink"):
        files.snapshot(str(tmp_path / "key.pem"))


def test_oversized_existing_file_is_refused(tmp_path: Path) -> None:
    big = tmp_path / "big.pem"
    big.write_bytes(b"x" * (files.MAX_EXISTING_BYTES + 1))
    with pytest.raises(PlacementError, match="too large to be a certificate"):
        files.snapshot(str(big))


@needs_root
def test_failed_chown_is_an_error_and_leaves_nothing(public_tmp: Path) -> None:
    # An unprivileged process cannot give a file to root: place() must fail, not shrug.
    tmp_path = public_tmp
    uid, gid = nobody()
    os.chown(tmp_path, uid, gid)
    target = tmp_path / "key.pem"
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - child
        os.close(read_end)
        try:
            os.setgid(gid)
            os.setuid(uid)
            files.place(desired(target, owner=0))
            message = "placed"
        except PlacementError as e:
            message = str(e)
        os.write(write_end, message.encode())
        os._exit(0)
    os.close(write_end)
    with os.fdopen(read_end, "rb") as r:
        message = r.read().decode()
    os.waitpid(pid, 0)
    assert "cannot set owner root:root" in message
    assert "Operation not permitted" in message
    assert list(tmp_path.iterdir()) == []


@needs_root
def test_restore_puts_back_bytes_owner_mode_and_times(tmp_path: Path) -> None:
    target = tmp_path / "key.pem"
    uid, gid = nobody()
    files.place(files.Desired(path=str(target), uid=uid, gid=gid, mode=0o640, data=b"before\n"))
    os.utime(target, ns=(1_000_000_000, 2_000_000_000))
    before = files.snapshot(str(target))
    files.place(desired(target, b"after\n"))
    files.restore(before)
    st = target.stat()
    assert target.read_bytes() == b"before\n"
    assert (st.st_uid, st.st_gid, stat.S_IMODE(st.st_mode)) == (uid, gid, 0o640)
    assert st.st_mtime_ns == 2_000_000_000


def test_restore_of_missing_removes_and_of_symlink_relinks(tmp_path: Path) -> None:
    new = tmp_path / "new.pem"
    gone = files.snapshot(str(new))
    files.place(desired(new, owner=os.getuid()))
    files.restore(gone)
    assert not new.exists()

    link = tmp_path / "link.pem"
    link.symlink_to("/somewhere/else.pem")
    was = files.snapshot(str(link))
    files.place(desired(link, owner=os.getuid()))
    files.restore(was)
    assert os.readlink(link) == "/somewhere/else.pem"


def test_link_placement_and_differences(tmp_path: Path) -> None:
    link = tmp_path / "fullchain.pem"
    want = files.Desired(path=str(link), uid=os.getuid(), gid=os.getgid(), target="/etc/x.pem")
    assert files.differences(want, files.snapshot(str(link))) == ["missing"]
    files.place(want)
    assert os.readlink(link) == "/etc/x.pem"
    assert files.differences(want, files.snapshot(str(link))) == []
    other = files.Desired(path=str(link), uid=os.getuid(), gid=os.getgid(), target="/etc/y.pem")
    assert files.differences(other, files.snapshot(str(link))) == ["symlink points to /etc/x.pem"]
    link.unlink()
    link.write_bytes(b"copy")
    assert files.differences(want, files.snapshot(str(link))) == [
        "a regular file where a symlink belongs"
    ]


@needs_root
def test_reader_problem_follows_the_whole_path(public_tmp: Path) -> None:
    tmp_path = public_tmp
    uid, gid = nobody()
    live = tmp_path / "live"
    archive = tmp_path / "archive"
    live.mkdir(mode=0o755)
    archive.mkdir(mode=0o700)
    (archive / "cert1.pem").write_bytes(b"c")
    (archive / "cert1.pem").chmod(0o644)
    (live / "cert.pem").symlink_to("../archive/cert1.pem")
    problem = files.reader_problem(str(live / "cert.pem"), uid, gid)
    assert problem == f"nobody cannot enter {archive} (mode 0700, owner root)"
    assert files.reader_problem(str(live / "cert.pem"), 0, 0) is None
    archive.chmod(0o750)
    os.chown(archive, 0, gid)
    assert files.reader_problem(str(live / "cert.pem"), uid, gid) is None
    (archive / "cert1.pem").chmod(0o600)
    assert "cannot read" in (files.reader_problem(str(live / "cert.pem"), uid, gid) or "")


# -- the key is never readable by others, at any instant, even under umask 000 ------------------


Row = list[int | str]


class Watcher:
    """The inotify watcher process (``watch.py --live``): what it has seen so far, and a way to
    wait until it has seen a given state."""

    def __init__(self, proc: subprocess.Popen[str], out: Path) -> None:
        self.proc, self.out = proc, out

    def wait_until_seen(self, wanted: Callable[[Row], bool], timeout: float = 10.0) -> Row:
        """Block until the watcher reports an observation for which ``wanted`` is true. A placer
        that calls this between its steps holds each state until it has been seen: the control
        cannot be missed however busy the machine is."""
        assert self.proc.stdout is not None
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            line = self.proc.stdout.readline()
            assert line, "the watcher stopped"
            row: Row = json.loads(line)
            if wanted(row):
                return row
        raise AssertionError(f"the watcher did not see the state within {timeout} s")

    def rows(self) -> list[Row]:
        """Stop the watcher (it reads every event already queued first) and return all rows."""
        self.proc.send_signal(signal.SIGTERM)
        self.proc.communicate(timeout=10)
        return [json.loads(line) for line in self.out.read_text().splitlines()]


@contextlib.contextmanager
def watching(directory: Path, out: Path) -> Iterator[Watcher]:
    proc = subprocess.Popen(
        [
            sys.executable,
            str(Path(__file__).parents[1] / "support" / "watch.py"),
            str(directory),
            str(out),
            "--live",
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    ready = Path(str(out) + ".ready")
    deadline = time.monotonic() + 10
    while not ready.exists():
        assert proc.poll() is None and time.monotonic() < deadline, "watcher did not start"
        time.sleep(0.01)
    ready.unlink()
    try:
        yield Watcher(proc, out)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()


def _safe_place(d: files.Desired, watcher: Watcher) -> None:
    files.place(d)


def _naive_place(d: files.Desired, watcher: Watcher) -> None:
    # What a hand-written hook does: create, write, then fix owner and mode. It waits until the
    # watcher has seen the written file before fixing it, so the exposure is seen every time.
    with open(d.path, "wb") as f:
        f.write(d.data or b"")
        f.flush()
        os.fsync(f.fileno())
    # Each placement's data has its own length, so an observation left over from an earlier
    # placement cannot stand in for this one.
    size, name = len(d.data or b""), os.path.basename(d.path)
    watcher.wait_until_seen(lambda row: row[0] == name and row[4] == size and row[2] != d.uid)
    os.chown(d.path, d.uid, d.gid)
    os.chmod(d.path, d.mode)


def _exposures(rows: list[Row], uid: int) -> list[Row]:
    """Observed states in which key bytes existed while others (or a wrong owner) could read."""
    return [row for row in rows if int(row[4]) > 0 and (int(row[1]) & 0o077 or int(row[2]) != uid)]


@needs_root
@pytest.mark.parametrize(("placer", "safe"), [(_safe_place, True), (_naive_place, False)])
def test_key_never_readable_by_others_under_umask_000(
    tmp_path: Path, placer: Callable[[files.Desired, Watcher], None], safe: bool
) -> None:
    """The watcher lstats each entry on every inotify event; the naive placer, which holds each
    written file until the watcher has seen it, proves that it sees."""
    uid, gid = nobody()
    directory = tmp_path / "tls"
    directory.mkdir(mode=0o755)
    old_umask = os.umask(0)
    try:
        with watching(directory, tmp_path / "seen.jsonl") as watcher:
            for i in range(60):
                placer(
                    files.Desired(
                        path=str(directory / "key.pem"),
                        uid=uid,
                        gid=gid,
                        mode=0o600,
                        data=KEY + b"#" * i,
                    ),
                    watcher,
                )
                if not safe:
                    (directory / "key.pem").unlink()
            seen = watcher.rows()
    finally:
        os.umask(old_umask)
    assert len(seen) >= 60, "the watcher saw too little to prove anything"
    exposed = _exposures(seen, uid)
    if safe:
        assert exposed == []
    else:
        # Each of the 60 placements was held until seen: at least one exposure each.
        assert len(exposed) >= 60, f"the watcher saw {len(exposed)} exposures in 60 placements"


@pytest.mark.parametrize("where", ["live", "live/example.org", "live/example.org/deep"])
def test_a_directory_inside_keep_out_is_refused_however_it_is_reached(
    tmp_path: Path, where: str
) -> None:
    live = tmp_path / "le" / "live"
    (tmp_path / "le" / where).mkdir(parents=True)
    (tmp_path / "way-in").symlink_to(tmp_path / "le" / where)  # root's own link: followed
    keep_out = (str(live),)
    for path in (tmp_path / "le" / where / "x.pem", tmp_path / "way-in" / "x.pem"):
        with pytest.raises(PlacementError, match=rf"is inside {live}: certbot owns {live}"):
            files.place(files.Desired(str(path), 0, 0, 0o600, KEY, keep_out=keep_out))
        assert not path.exists()
    # A neighbour of the fenced directory is fine, and so is a fence that does not exist.
    (tmp_path / "le" / "live2").mkdir()
    files.place(files.Desired(str(tmp_path / "le" / "live2" / "x.pem"), 0, 0, keep_out=keep_out))
    gone = (str(tmp_path / "nonexistent"),)
    files.place(files.Desired(str(tmp_path / "way-in" / "y.pem"), 0, 0, data=KEY, keep_out=gone))
