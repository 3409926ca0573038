"""One certbot-fanout run at a time: an flock on a small file."""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import tempfile
import time
from collections.abc import Iterator

from certbot_fanout.errors import LockError

logger = logging.getLogger(__name__)

DEFAULT_LOCK_TIMEOUT = 600.0


def default_lock_path() -> str:
    """/run for root (only root can write there); a per-user file in the temp dir otherwise."""
    if os.geteuid() == 0 and os.path.isdir("/run"):
        return "/run/certbot-fanout.lock"
    return os.path.join(tempfile.gettempdir(), f"certbot-fanout-{os.geteuid()}.lock")


@contextlib.contextmanager
def run_lock(path: str, timeout: float = DEFAULT_LOCK_TIMEOUT) -> Iterator[None]:
    """Hold an exclusive flock on ``path``, waiting at most ``timeout`` seconds for it.

    Raises:
        LockError: the lock file cannot be opened, or another run held it too long.
    """
    flags = os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC
    try:
        fd = os.open(path, flags, 0o600)
    except OSError as e:
        raise LockError(f"cannot open lock file {path}: {e.strerror}") from None
    try:
        deadline = time.monotonic() + timeout
        announced = False
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    raise LockError(
                        f"another certbot-fanout run has held {path} for over {timeout:g} s"
                    ) from None
                if not announced:
                    logger.warning("waiting for another certbot-fanout run (lock %s)", path)
                    announced = True
                time.sleep(0.1)
        yield
    finally:
        os.close(fd)
