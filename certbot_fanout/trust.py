"""Who could have written a file: the ownership-chain rule for the map and for the programs
certbot-fanout runs.

A file is trusted when only root (or, in a run by another user, that user) could have changed
it: the file and every directory on the way to it are owned by root or that user, and none is
writable by its group or by every user. A directory with the sticky bit (``/tmp``) may be
writable by every user, since others cannot rename or remove what they do not own; the file
itself never. This is what OpenSSH asks of ``authorized_keys`` and sudo of ``sudoers``.

:func:`path_problem` walks a path from ``/`` with ``lstat``, one component at a time,
resolving each symbolic link itself (the link's own owner counts, and its target is walked
the same way), so nothing is followed before the directory that holds it was checked.
:func:`stat_problem` judges one ``stat`` result: the map's is the ``fstat`` of the file
descriptor it is read from. Each returns a :class:`TrustProblem`, or None when trusted.
"""

from __future__ import annotations

import enum
import grp
import os
import pwd
import stat
from dataclasses import dataclass

# As the kernel (ELOOP): more links than this on one path is a loop, or an attack.
MAX_LINKS = 40


class Fault(enum.Enum):
    """What makes a path untrusted."""

    OWNER = "owner"  # owned by someone other than root (or the user running)
    GROUP_WRITABLE = "group-writable"
    OTHER_WRITABLE = "other-writable"
    MISSING = "missing"  # nothing there now, so nothing that could be vouched for
    UNREADABLE = "unreadable"  # cannot be looked at (a directory the user cannot search)
    LOOP = "loop"  # more than MAX_LINKS symbolic links


@dataclass(frozen=True)
class TrustProblem:
    """The first component of a path that someone else could change, and why."""

    path: str
    fault: Fault
    uid: int = -1
    gid: int = -1
    mode: int = 0  # permission bits (with the sticky bit), for the writable faults
    directory: bool = False
    detail: str = ""  # the error, for UNREADABLE
    trusted_uid: int = 0  # the user trusted besides root (0: root alone)
    via: str = ""  # how the path was reached, when not directly: "the interpreter X"

    def __str__(self) -> str:
        return f"{self.via}: {self._text()}" if self.via else self._text()

    def _text(self) -> str:
        what = f"the directory {self.path}" if self.directory else self.path
        mode = f"mode {self.mode:04o}"
        if self.fault is Fault.OWNER:
            return (
                f"{what} is owned by {user_name(self.uid)} (uid {self.uid}), not by {self.trusted}"
            )
        if self.fault is Fault.GROUP_WRITABLE:
            return f"{what} is writable by its group {group_name(self.gid)} ({mode})"
        if self.fault is Fault.OTHER_WRITABLE:
            sticky = " and not sticky" if self.directory else ""
            return f"{what} is writable by every user ({mode}{sticky})"
        if self.fault is Fault.MISSING:
            return f"{self.path} does not exist"
        if self.fault is Fault.LOOP:
            return f"{self.path}: more than {MAX_LINKS} symbolic links on the way"
        return f"cannot look at {self.path}: {self.detail}"

    @property
    def trusted(self) -> str:
        """Who may own what is trusted: "root", or "root or USER"."""
        return "root" if self.trusted_uid == 0 else f"root or {user_name(self.trusted_uid)}"


def user_name(uid: int) -> str:
    try:
        return pwd.getpwuid(uid).pw_name
    except (KeyError, OverflowError):
        return str(uid)


def group_name(gid: int) -> str:
    try:
        return grp.getgrgid(gid).gr_name
    except (KeyError, OverflowError):
        return str(gid)


def stat_problem(path: str, st: os.stat_result, uid: int | None = None) -> TrustProblem | None:
    """Whether the file or directory ``st`` (of ``path``) is one only trusted users can change.

    A symbolic link is judged by its owner only: nobody can change a link's target in place.
    """
    me = os.geteuid() if uid is None else uid
    mode = stat.S_IMODE(st.st_mode)
    directory = stat.S_ISDIR(st.st_mode)
    fault = None
    if st.st_uid not in (0, me):
        fault = Fault.OWNER
    elif stat.S_ISLNK(st.st_mode):
        return None
    elif mode & stat.S_IWOTH and not (directory and mode & stat.S_ISVTX):
        fault = Fault.OTHER_WRITABLE
    elif mode & stat.S_IWGRP and not (directory and mode & stat.S_ISVTX):
        fault = Fault.GROUP_WRITABLE
    if fault is None:
        return None
    return TrustProblem(path, fault, st.st_uid, st.st_gid, mode, directory, trusted_uid=me)


def path_problem(path: str, uid: int | None = None) -> TrustProblem | None:
    """The first component of ``path`` (made absolute against the working directory) that a
    user other than root or ``uid`` (default: this process's effective uid) could change, or
    None when there is none: ``/``, every directory on the way, every link and what it points
    to, and the file itself. A path that does not exist is a problem (MISSING): whoever can
    create it later is not known now."""
    current = "/"
    links = 0
    try:
        pending = _components(path if os.path.isabs(path) else os.path.join(os.getcwd(), path))
        problem = stat_problem(current, os.lstat(current), uid)
    except OSError as e:
        return TrustProblem(path, Fault.UNREADABLE, detail=e.strerror or str(e))
    while problem is None and pending:
        name = pending.pop()
        if name == "..":
            current = os.path.dirname(current)  # a directory already walked and checked
            continue
        candidate = os.path.join(current, name)
        try:
            st = os.lstat(candidate)
        except (FileNotFoundError, NotADirectoryError):
            return TrustProblem(candidate, Fault.MISSING)
        except (OSError, ValueError) as e:  # ValueError: a NUL in the name
            return TrustProblem(candidate, Fault.UNREADABLE, detail=_reason(e))
        problem = stat_problem(candidate, st, uid)
        if problem is None and stat.S_ISLNK(st.st_mode):
            links += 1
            if links > MAX_LINKS:
                return TrustProblem(path, Fault.LOOP)
            try:
                target = os.readlink(candidate)
            except OSError:  # gone since lstat
                return TrustProblem(candidate, Fault.MISSING)
            if os.path.isabs(target):
                current = "/"
            pending.extend(_components(target))
        elif problem is None:
            current = candidate
    return problem


def _reason(error: Exception) -> str:
    return (error.strerror if isinstance(error, OSError) else None) or str(error)


def _components(path: str) -> list[str]:
    """The names of ``path`` as a stack: the first to walk last."""
    return [n for n in reversed(path.split("/")) if n and n != "."]
