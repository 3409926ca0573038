"""Watch a directory with inotify and lstat every entry the moment an event names it.

Run as a separate process (so the GIL of the process under test cannot delay it):
``python tests/support/watch.py DIR OUT [--live]`` (by path: it imports nothing of the
project). It creates ``OUT.ready`` once watching, and on SIGTERM reads every event still
queued, then writes one JSON line per observation to OUT: ``[name, mode, uid, gid, size]``.
With ``--live`` it also prints each observation to stdout the moment it is made, so a placer
under test can wait until a state of its file has been seen.
"""

from __future__ import annotations

import ctypes
import json
import os
import select
import signal
import struct
import sys

IN_MODIFY = 0x002
IN_ATTRIB = 0x004
IN_CLOSE_WRITE = 0x008
IN_MOVED_TO = 0x080
IN_CREATE = 0x100
_HEADER = struct.Struct("iIII")


def main() -> int:
    directory, out = sys.argv[1], sys.argv[2]
    live = sys.argv[3:] == ["--live"]
    libc = ctypes.CDLL("libc.so.6", use_errno=True)
    fd = libc.inotify_init1(os.O_NONBLOCK | os.O_CLOEXEC)
    if fd < 0:
        raise OSError(ctypes.get_errno(), "inotify_init1")
    mask = IN_CREATE | IN_ATTRIB | IN_MODIFY | IN_CLOSE_WRITE | IN_MOVED_TO
    if libc.inotify_add_watch(fd, directory.encode(), mask) < 0:
        raise OSError(ctypes.get_errno(), "inotify_add_watch")
    seen: list[tuple[str, int, int, int, int]] = []
    stop = False

    def on_term(signum: int, frame: object) -> None:
        nonlocal stop
        stop = True

    signal.signal(signal.SIGTERM, on_term)
    with open(out + ".ready", "w"):
        pass
    poller = select.poll()
    poller.register(fd, select.POLLIN)
    while True:
        # After SIGTERM, drain: the events of every step that came before it are queued already.
        if not poller.poll(0 if stop else 50):
            if stop:
                break
            continue
        try:
            data = os.read(fd, 65536)
        except BlockingIOError:
            continue
        offset = 0
        while offset < len(data):
            _, _, _, length = _HEADER.unpack_from(data, offset)
            name = data[offset + _HEADER.size : offset + _HEADER.size + length].rstrip(b"\0")
            offset += _HEADER.size + length
            try:
                st = os.lstat(os.path.join(directory, name.decode()))
            except FileNotFoundError:
                continue
            row = (name.decode(), st.st_mode & 0o7777, st.st_uid, st.st_gid, st.st_size)
            seen.append(row)
            if live:
                print(json.dumps(row), flush=True)
    with open(out, "w") as f:
        for row in seen:
            f.write(json.dumps(row) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
