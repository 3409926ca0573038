"""Reading a host's files without being led astray by what its users made: a regular file read
only after it was checked to be one (never a FIFO or device opened), never a symlink followed
unless asked, a walk that enters no symlinked directory, and every read bounded.

``discover`` reads this host's files with it; the agent (:mod:`certbot_fanout.agent`) ships it
to another host and answers ``discover --host`` with :func:`scan_pems`. So it is standard
library only and runs on Python 3.9.
"""

from __future__ import annotations

import base64
import binascii
import grp
import os
import pwd
import re
import stat
import time
from collections.abc import Iterator
from typing import Any, NamedTuple

MAX_FILE_BYTES = 1 << 20  # the most of a file read
MAX_PEM_BLOCKS = 16  # certificates looked at in one file (a chain is a handful)
PEM_CERT = b"-----BEGIN CERTIFICATE-----"
PEM_END = b"-----END CERTIFICATE-----"
PEM_KEY = re.compile(rb"-----BEGIN (?:[A-Z]+ )?PRIVATE KEY-----")
NEVER_SCAN = ("/proc", "/sys", "/dev", "/run")
READ_FLAGS = os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC


class Read(NamedTuple):
    """A small regular file's bytes, and its status when it was read."""

    data: bytes
    status: os.stat_result


def _open_regular(path: str, follow: bool) -> int | None:
    """A descriptor to read ``path`` if it is a regular file, found without opening anything
    else: ``O_PATH`` opens neither a FIFO (whose open blocks) nor a device (whose open and read
    have effects of their own), and the file it names is reopened for reading through
    /proc/self/fd, so nothing can be swapped in between the check and the read."""
    try:
        handle = os.open(path, os.O_PATH | os.O_CLOEXEC | (0 if follow else os.O_NOFOLLOW))
    except OSError:
        return None
    try:
        if not stat.S_ISREG(os.fstat(handle).st_mode):  # a FIFO, a device, a symlink, ...
            return None
        try:
            return os.open(f"/proc/self/fd/{handle}", READ_FLAGS)
        except FileNotFoundError:  # no /proc: open the path itself, if it is still that file
            return _reopen(path, handle, follow)
    except OSError:
        return None
    finally:
        os.close(handle)


def _reopen(path: str, handle: int, follow: bool) -> int | None:
    fd = os.open(path, READ_FLAGS | (0 if follow else os.O_NOFOLLOW))
    checked, opened = os.fstat(handle), os.fstat(fd)
    if (checked.st_dev, checked.st_ino) != (opened.st_dev, opened.st_ino):
        os.close(fd)
        return None
    return fd


def read_regular(
    path: str,
    *,
    follow: bool = False,
    max_size: int | None = None,
    seen: set[tuple[int, int]] | None = None,
) -> Read | None:
    """At most MAX_FILE_BYTES of ``path`` and its status, if it is a regular file (never a
    symlink unless ``follow``); None if it is larger than ``max_size``, or is a hard link to a
    file already in ``seen`` (a file with several names is read once)."""
    fd = _open_regular(path, follow)
    if fd is None:
        return None
    try:
        st = os.fstat(fd)
        if max_size is not None and st.st_size > max_size:
            return None
        if seen is not None and st.st_nlink > 1:
            if (st.st_dev, st.st_ino) in seen:
                return None
            seen.add((st.st_dev, st.st_ino))
        chunks: list[bytes] = []
        left = MAX_FILE_BYTES
        while left > 0 and (chunk := os.read(fd, left)):
            chunks.append(chunk)
            left -= len(chunk)
        return Read(b"".join(chunks), st)
    except OSError:
        return None
    finally:
        os.close(fd)


def walk(root: str, never: set[str]) -> Iterator[tuple[str, str | None]]:
    """Every entry under ``root``, depth first, never following a symlink nor entering a
    directory in ``never``, with the directory it is in: a regular file as its path, anything
    else as None (each entry counts against the scan's budget)."""
    stack = [root]
    while stack:
        directory = stack.pop()
        if directory in never:
            continue
        try:
            with os.scandir(directory) as entries:
                for entry in entries:
                    yield directory, _file_or_descend(entry, stack)
        except OSError:
            continue


def _file_or_descend(entry: os.DirEntry[str], stack: list[str]) -> str | None:
    """A regular file's path; a directory (not a symlink) is put on the stack instead."""
    try:
        if entry.is_dir(follow_symlinks=False):
            stack.append(entry.path)
        elif entry.is_file(follow_symlinks=False):
            return entry.path
    except OSError:
        pass
    return None


def scan_pems(
    roots: list[str], never: list[str], max_entries: int, seconds: float, max_found: int
) -> dict[str, Any]:
    """Every small regular file under ``roots`` with a PEM certificate in it (the walk of
    :func:`walk`, every entry counted against ``max_entries``, and ``seconds`` in all): its
    path, owner and group (numbers and names as this host has them), mode, how many
    certificates it holds, whether it holds a private key, and its first certificate's DER
    (base64). At most ``max_found`` files; ``stopped`` says where a bound ended the scan."""
    deadline = time.monotonic() + seconds
    skip = {os.path.realpath(p) for p in never}
    found: list[dict[str, Any]] = []
    read = entries = 0
    seen: set[tuple[int, int]] = set()
    todo = [r for r in dict.fromkeys(os.path.abspath(r) for r in roots) if os.path.isdir(r)]
    for i, root in enumerate(todo):
        for directory, path in walk(root, skip):
            entries += 1
            why = _bound(entries, max_entries, deadline, len(found), max_found)
            if why:
                stopped = {"in": directory, "why": why, "left": todo[i + 1 :]}
                return {"found": found, "read": read, "stopped": stopped}
            if path is None:
                continue
            read += 1
            item = pem_file(path, seen)
            if item is not None:
                found.append(item)
    return {"found": found, "read": read, "stopped": None}


def _bound(entries: int, max_entries: int, deadline: float, found: int, max_found: int) -> str:
    if entries >= max_entries:
        return "entry"
    if time.monotonic() > deadline:
        return "time"
    return "found" if found >= max_found else ""


def pem_file(path: str, seen: set[tuple[int, int]] | None = None) -> dict[str, Any] | None:
    """What :func:`scan_pems` lists of one file (None: not a small regular PEM file)."""
    pem = read_regular(path, max_size=MAX_FILE_BYTES, seen=seen)
    if pem is None or PEM_CERT not in pem.data:
        return None
    ders = [d for d in (_der(b) for b in pem.data.split(PEM_CERT, MAX_PEM_BLOCKS)[1:]) if d]
    if not ders:
        return None
    st = pem.status
    return {
        "path": path,
        "uid": st.st_uid,
        "gid": st.st_gid,
        "owner": _name(pwd.getpwuid, st.st_uid),
        "group": _name(grp.getgrgid, st.st_gid),
        "mode": stat.S_IMODE(st.st_mode),
        "certificates": len(ders),
        "holds_key": bool(PEM_KEY.search(pem.data)),
        "der": base64.b64encode(ders[0]).decode("ascii"),
    }


def _der(block: bytes) -> bytes | None:
    """The DER of one PEM certificate block (what follows its BEGIN line), or None."""
    end = block.find(PEM_END)
    if end < 0:
        return None
    try:
        return base64.b64decode(b"".join(block[:end].split()), validate=True) or None
    except (binascii.Error, ValueError):
        return None


def first_certificate(data: bytes) -> bytes | None:
    """The DER of the first PEM certificate in ``data``, or None."""
    parts = data.split(PEM_CERT, 1)
    return _der(parts[1]) if len(parts) == 2 else None


def _name(lookup: Any, number: int) -> str | None:
    try:
        return str(lookup(number)[0])
    except KeyError:
        return None
