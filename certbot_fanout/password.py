"""A keystore's password file: read only if it is root's alone, and never shown.

The password is returned as bytes to the one caller that encrypts with it; no message here
holds it, and nothing puts it in argv, the environment or a log.
"""

from __future__ import annotations

import os
import stat

from certbot_fanout.errors import PlacementError
from certbot_fanout.trust import path_problem, stat_problem

# A password file is a line; more than this is not one.
MAX_PASSWORD_BYTES = 4096


def read_password(path: str) -> bytes:
    """The password in ``path``, without one trailing newline.

    The file must be one only root (or the user running) could have written, as the map
    (:func:`certbot_fanout.trust.path_problem`), a regular file owned by root (or that user)
    that its group and others cannot read, at most :data:`MAX_PASSWORD_BYTES`, and hold
    printable ASCII, which every PKCS#12 reader encodes alike.

    Raises:
        PlacementError: it is not such a file; the message never holds the password.
    """
    problem = path_problem(path)
    if problem is not None:
        raise PlacementError(f"password file {path}: {problem}; it must be root's alone")
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError as e:
        raise PlacementError(f"password file {path}: cannot read: {e.strerror}") from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise PlacementError(f"password file {path}: not a regular file")
        trust = stat_problem(path, st)
        if trust is not None:
            raise PlacementError(f"password file {path}: {trust}; it must be root's alone")
        if stat.S_IMODE(st.st_mode) & 0o077:
            raise PlacementError(
                f"password file {path}: mode {stat.S_IMODE(st.st_mode):04o} lets its group or "
                "others read it; chmod 0600 (only root may read a keystore's password)"
            )
        data = os.read(fd, MAX_PASSWORD_BYTES + 1)
    except OSError as e:
        raise PlacementError(f"password file {path}: cannot read: {e.strerror}") from None
    finally:
        os.close(fd)
    if len(data) > MAX_PASSWORD_BYTES:
        raise PlacementError(
            f"password file {path}: more than {MAX_PASSWORD_BYTES} bytes; expected one line"
        )
    password = data[:-1] if data.endswith(b"\n") else data
    if password.endswith(b"\r"):
        password = password[:-1]
    if not password:
        raise PlacementError(f"password file {path}: empty; write the keystore's password in it")
    if not all(0x20 <= b < 0x7F for b in password):
        raise PlacementError(
            f"password file {path}: the password must be one line of printable ASCII "
            "(Java, OpenSSL and Windows encode other characters differently)"
        )
    return password


def password_problem(path: str) -> str | None:
    """Why ``path`` cannot be a keystore's password file (see :func:`read_password`)."""
    try:
        read_password(path)
    except PlacementError as e:
        return str(e)
    return None
