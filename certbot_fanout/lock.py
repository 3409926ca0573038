"""One certbot-fanout run at a time: an flock on a small file, in a place only its user can write.

Root's lock is ``/run/certbot-fanout.lock``. Another user's is in a directory of their own that
nobody else can write, so that no other local user can create or hold it first: the directory
``$XDG_RUNTIME_DIR`` names (when it is a real directory, the user's own, mode 0700), else
``certbot-fanout-UID`` in the temporary directory, made 0700 (or, if another user took that
name, the first of ``certbot-fanout-UID.1`` ... ``.99`` that is the user's own or free).
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import logging
import os
import stat
import tempfile
import time
from collections.abc import Iterator, Mapping

from certbot_fanout import trust
from certbot_fanout.errors import LockError

logger = logging.getLogger(__name__)

DEFAULT_LOCK_TIMEOUT = 600.0
ROOT_LOCK = "/run/certbot-fanout.lock"
LOCK_NAME = "certbot-fanout.lock"
# How many names the temporary directory offers before giving up: another user can take any of
# them, but each of them only once, and the user's own is found again by every later run.
_USER_DIR_NAMES = 100


def default_lock_path(environ: Mapping[str, str] | None = None) -> str:
    """Root's lock in /run; another user's in a directory only that user can write (made when
    needed, 0700).

    Raises:
        LockError: there is no such directory: every name it could take in the temporary
            directory belongs to someone else, or the temporary directory itself is unsafe.
    """
    uid = os.geteuid()
    if uid == 0 and os.path.isdir("/run"):
        return ROOT_LOCK
    env = os.environ if environ is None else environ
    runtime = env.get("XDG_RUNTIME_DIR", "")
    if os.path.isabs(runtime) and private_dir_problem(runtime, uid) is None:
        return os.path.join(runtime, LOCK_NAME)
    return os.path.join(_user_dir(tempfile.gettempdir(), uid), LOCK_NAME)


def private_dir_problem(path: str, uid: int) -> str | None:
    """Why ``path`` is not a private directory of ``uid`` (a real directory, not a symlink,
    owned by ``uid``, mode 0700), or None when it is."""
    try:
        st = os.lstat(path)
    except OSError as e:
        return f"{path}: {e.strerror}"
    if stat.S_ISLNK(st.st_mode):
        return f"{path} is a symbolic link"
    if not stat.S_ISDIR(st.st_mode):
        return f"{path} is not a directory"
    if st.st_uid != uid:
        return f"{path} belongs to uid {st.st_uid}, not {uid}"
    if stat.S_IMODE(st.st_mode) != 0o700:
        return f"{path} has mode {stat.S_IMODE(st.st_mode):04o}, not 0700"
    return None


def _user_dir(tmp: str, uid: int) -> str:
    """The first of ``TMP/certbot-fanout-UID`` (then ``.1`` to ``.99``) that is ``uid``'s private
    directory; made where none is yet. A name another user holds is passed over, not used."""
    problem = _shared_dir_problem(tmp, uid)
    if problem:
        raise LockError(f"no private directory for the lock: {problem}; use --lock-file")
    names = [os.path.join(tmp, f"certbot-fanout-{uid}")]
    names += [f"{names[0]}.{n}" for n in range(1, _USER_DIR_NAMES)]
    for name in names:  # an existing one first: a later squat of an earlier name changes nothing
        if private_dir_problem(name, uid) is None:
            return name
    for name in names:
        try:
            os.mkdir(name, 0o700)
        except FileExistsError:  # another user's, or a run of ours made it just now
            pass
        except OSError as e:
            raise LockError(f"cannot make a directory for the lock: {name}: {e.strerror}") from None
        if private_dir_problem(name, uid) is None:
            return name
        logger.warning("not using %s for the lock: %s", name, private_dir_problem(name, uid))
    raise LockError(
        f"no private directory for the lock: {names[0]} and the next {_USER_DIR_NAMES - 1} "
        "names in the temporary directory belong to other users; use --lock-file"
    )


def _shared_dir_problem(tmp: str, uid: int) -> str | None:
    """Why another user could move a directory made in ``tmp``: the trust rule of the map
    (owned by root or ``uid``; writable by others only with the sticky bit)."""
    try:
        st = os.stat(tmp)
    except OSError as e:
        return f"{tmp}: {e.strerror}"
    problem = trust.stat_problem(tmp, st, uid)
    return None if problem is None else str(problem)


@contextlib.contextmanager
def run_lock(path: str, timeout: float = DEFAULT_LOCK_TIMEOUT) -> Iterator[None]:
    """Hold an exclusive flock on ``path``, waiting at most ``timeout`` seconds for it. A
    symbolic link at ``path`` is not followed.

    Raises:
        LockError: the lock file cannot be opened, or another run held it too long.
    """
    flags = os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
    try:
        fd = os.open(path, flags, 0o600)
    except OSError as e:
        reason = "it is a symbolic link" if e.errno == errno.ELOOP else e.strerror
        raise LockError(f"cannot open lock file {path}: {reason}") from None
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise LockError(f"cannot use lock file {path}: not a regular file")
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
