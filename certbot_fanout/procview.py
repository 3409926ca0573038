"""A file as a running process sees it: through its own root and mount namespace.

A process given a single file through a bind mount (``docker run -v /etc/x.pem:/c/x.pem``,
systemd's ``BindReadOnlyPaths=`` of one file, a Kubernetes ``subPath``) keeps the inode it was
given: after an atomic rename on the host it still reads the old file, and its ``mountinfo``
shows the mount's root as ``.../x.pem//deleted``. So what counts is ``/proc/PID/root/PATH``,
read here with every symlink resolved inside that root (as the process would), bounded, and
when it differs, ``mountinfo`` says why.
"""

from __future__ import annotations

import errno
import os
import stat
from collections.abc import Iterable
from dataclasses import dataclass

from certbot_fanout import fswalk

MAX_VIEW = 1 << 20  # the most read of one file as a process sees it
MAX_LINKS = 40
MAX_MOUNTINFO = 4 << 20
MAX_PROCS = 65536  # the /proc entries a name lookup reads at most


@dataclass(frozen=True)
class Seen:
    """What a process found at a path: its bytes, or why there are none."""

    data: bytes | None
    problem: str | None = None


def _resolve(root: str, path: str) -> str:
    """``path`` with every symlink resolved inside ``root`` (a process's ``/proc/PID/root``),
    as a path under ``root``; raises OSError (ELOOP after MAX_LINKS links)."""
    parts = [p for p in path.split("/") if p not in ("", ".")]
    done: list[str] = []
    links = 0
    while parts:
        part = parts.pop(0)
        if part == "..":
            if done:
                done.pop()
            continue
        candidate = os.path.join(root, *done, part)
        st = os.lstat(candidate)
        if stat.S_ISLNK(st.st_mode):
            links += 1
            if links > MAX_LINKS:
                raise OSError(errno.ELOOP, os.strerror(errno.ELOOP))
            target = os.readlink(candidate)
            if target.startswith("/"):
                done = []
            parts = [p for p in target.split("/") if p not in ("", ".")] + parts
            continue
        done.append(part)
    return os.path.join(root, *done)


def seen_by(pid: int, path: str) -> Seen:
    """The regular file ``path`` as process ``pid`` sees it (at most MAX_VIEW bytes)."""
    root = f"/proc/{pid}/root"
    try:
        real = _resolve(root, path)
        fd = os.open(real, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK)
    except FileNotFoundError:
        if not os.path.exists(f"/proc/{pid}"):
            return Seen(None, f"PID {pid} is gone")
        return Seen(None, f"PID {pid} sees no {path}")
    except OSError as e:
        return Seen(None, f"PID {pid}: {path}: {e.strerror}")
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            return Seen(None, f"PID {pid} sees {path} as something other than a regular file")
        return Seen(os.read(fd, MAX_VIEW))
    except OSError as e:
        return Seen(None, f"PID {pid}: {path}: {e.strerror}")
    finally:
        os.close(fd)


@dataclass(frozen=True)
class MountEntry:
    """A line of ``/proc/PID/mountinfo``: the mount point (in the process's view) and the
    path inside its filesystem that is mounted there (``root``)."""

    point: str
    root: str
    fstype: str
    source: str
    device: str = ""  # "MAJOR:MINOR" of its filesystem

    @property
    def deleted(self) -> bool:
        return self.root.endswith("//deleted")


def _unescape(field: str) -> str:
    # mountinfo writes space, tab, newline and backslash as \040, \011, \012 and \134.
    for code, char in (("\\040", " "), ("\\011", "\t"), ("\\012", "\n"), ("\\134", "\\")):
        field = field.replace(code, char)
    return field


def mounts_of(pid: int) -> list[MountEntry]:
    """Process ``pid``'s mounts, in mount order; empty if they cannot be read."""
    try:
        with open(f"/proc/{pid}/mountinfo", "rb") as f:
            text = f.read(MAX_MOUNTINFO).decode("utf-8", "replace")
    except OSError:
        return []
    return parse_mountinfo(text)


def parse_mountinfo(text: str) -> list[MountEntry]:
    """The lines of a ``mountinfo`` (proc(5)) that parse, in order."""
    entries = []
    for line in text.splitlines():
        fields = line.split(" ")
        try:
            dash = fields.index("-")
            entries.append(
                MountEntry(
                    point=_unescape(fields[4]),
                    root=_unescape(fields[3]),
                    fstype=fields[dash + 1],
                    source=_unescape(fields[dash + 2]),
                    device=fields[2],
                )
            )
        except (ValueError, IndexError):
            continue
    return entries


def file_mount(pid: int, path: str) -> MountEntry | None:
    """The mount whose mount point is ``path`` itself (a single-file bind mount), the last
    one if several are stacked; None if ``path`` is not a mount point for ``pid``."""
    found = None
    for entry in mounts_of(pid):
        if entry.point == os.path.normpath(path):
            found = entry
    return found


def in_filesystem(path: str) -> tuple[str, str] | None:
    """Where ``path`` (as this process sees it) is in its filesystem: the device and the path
    from that filesystem's root, as another namespace's ``mountinfo`` names a bind of it."""
    best: MountEntry | None = None
    for entry in mounts_of(os.getpid()):
        point = entry.point.rstrip("/")
        if (path == entry.point or path.startswith(point + "/")) and (
            best is None or len(entry.point) >= len(best.point)
        ):
            best = entry
    if best is None:
        return None
    rest = path[len(best.point.rstrip("/")) :]
    return best.device, best.root.rstrip("/") + rest


def host_path(entry: MountEntry) -> str:
    """The file a mount of another namespace shows, as this process names it (its filesystem's
    path made one of this process's paths, through a mount of the same filesystem here); the
    filesystem's own path when no mount here shows it. A replaced file keeps its old name."""
    inside = entry.root[: -len("//deleted")] if entry.deleted else entry.root
    best: MountEntry | None = None
    for mine in mounts_of(os.getpid()):
        root = mine.root.rstrip("/")
        shows = inside == mine.root or inside.startswith(root + "/")
        if mine.device == entry.device and shows and (best is None or len(root) > len(best.root)):
            best = mine
    if best is None:
        return inside
    rest = inside[len(best.root.rstrip("/")) :]
    return best.point.rstrip("/") + rest if rest else best.point


def binds_of(pid: int, path: str) -> list[MountEntry]:
    """The mounts through which process ``pid`` is given the single file ``path`` (as this
    process sees it) at some path of its own, including those of ``path``'s replaced inode
    (their root ends in ``//deleted``)."""
    where = in_filesystem(path)
    if where is None:
        return []
    device, root = where
    return [
        entry
        for entry in mounts_of(pid)
        if entry.device == device and entry.root in (root, root + "//deleted")
    ]


def mount_namespace(pid: int | str = "self") -> str | None:
    """The mount namespace of ``pid`` (``mnt:[INODE]``; None: gone, or not readable)."""
    try:
        return os.readlink(f"/proc/{pid}/ns/mnt")
    except OSError:
        return None


def own_namespace(pid: int) -> bool:
    """Whether ``pid`` has a mount namespace other than this process's."""
    theirs = mount_namespace(pid)
    return theirs is not None and theirs != mount_namespace()


def why_stale(pid: int, path: str, restart: str = "restart it") -> str:
    """Why process ``pid`` sees other bytes at ``path`` than it should, as precisely as its
    mounts say; ``restart`` names what makes it open the file again."""
    mount = file_mount(pid, path)
    if mount is not None and mount.deleted:
        return (
            f"PID {pid} reads {path} through a single-file bind mount of a replaced file "
            f"({host_path(mount)}, since renamed over): it keeps the old file until it is "
            f"mounted again; {restart}, or mount the directory instead of the file"
        )
    if mount is not None:
        return (
            f"PID {pid} reads {path} through a single-file bind mount of {host_path(mount)}, "
            "which holds other bytes"
        )
    where = "its own mount namespace" if own_namespace(pid) else "its root"
    return f"PID {pid} sees other bytes at {path} (through {where}) than were placed"


def pid_from_file(path: str) -> int:
    """The PID a pid file names; raises ValueError with the reason."""
    try:
        with open(path, "rb") as f:
            text = f.read(64).decode("ascii", "replace").strip()
    except OSError as e:
        raise ValueError(f"pid file {path}: {e.strerror}") from None
    if not text.isdigit() or int(text) <= 0:
        raise ValueError(f"pid file {path} holds no PID")
    pid = int(text)
    if not os.path.isdir(f"/proc/{pid}"):
        raise ValueError(f"pid file {path} names PID {pid}, which is not running")
    return pid


def pid_by_name(name: str) -> int:
    """The oldest process whose command name is ``name`` and whose parent's is not (a
    daemon's main process, not its workers); raises ValueError if there is none."""
    found: list[tuple[int, int]] = []
    try:
        entries = os.listdir("/proc")[:MAX_PROCS]
    except OSError as e:
        raise ValueError(f"cannot list /proc: {e.strerror}") from None
    comms: dict[int, str] = {}
    for entry in entries:
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat", "rb") as f:
                    fields = f.read(4096).decode("utf-8", "replace")
            except OSError:
                continue
            comm = fields[fields.find("(") + 1 : fields.rfind(")")]
            rest = fields[fields.rfind(")") + 2 :].split()
            comms[int(entry)] = comm
            if comm == name and len(rest) > 19:
                found.append((int(rest[19]), int(entry)))  # start time, pid
    for _, pid in sorted(found):
        parent = _parent(pid)
        if comms.get(parent) != name:
            return pid
    raise ValueError(f"no running process is named {name}")


def _parent(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            fields = f.read(4096).decode("utf-8", "replace")
        return int(fields[fields.rfind(")") + 2 :].split()[1])
    except (OSError, ValueError, IndexError):
        return 0


def stale_views(
    pid: int, files: Iterable[tuple[str, str, bool]], restart: str, binds: bool = False
) -> list[str]:
    """What process ``pid`` sees wrong of each file (host path, the path it reads, whether the
    host path is a link to follow): other bytes than the host's, or none; with ``binds``, also
    each single-file bind mount of a host path replaced since (at a path of its own). Each in a
    sentence that says why; ``restart`` names what makes it open the file again."""
    problems = []
    for host, inside, follow in files:
        read = fswalk.read_regular(host, follow=follow)
        seen = seen_by(pid, inside)
        if seen.data is None:
            problems.append(seen.problem or f"PID {pid} cannot read {inside}")
        elif read is not None and seen.data != read.data:
            problems.append(why_stale(pid, inside, restart))
        if binds:
            problems.extend(
                f"PID {pid} reads {bind.point} through a single-file bind mount of a replaced "
                f"file ({host}, since renamed over): it keeps the old file until it is mounted "
                f"again; {restart}, or mount the directory instead of the file"
                for bind in binds_of(pid, host)
                if bind.deleted
            )
    return problems
