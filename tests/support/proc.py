"""Process plumbing shared by the integration daemons: binaries, free ports, waiting for ports,
stopping a PID with its family, service accounts and the files they own.

Stand-alone: no project imports. Linux only (reads /proc).
"""

from __future__ import annotations

import contextlib
import grp
import os
import pwd
import shutil
import signal
import socket
import stat
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import ClassVar, NamedTuple, Self

START_TIMEOUT = 15.0
STOP_TIMEOUT = 10.0
PORT_RETRIES = 3


# --------------------------------------------------------------------------- binaries, ports


def find_binary(name: str, *fallbacks: str) -> str:
    """``name`` on PATH, else the first executable fallback, else the first fallback."""
    found = shutil.which(name)
    if found:
        return found
    for candidate in fallbacks:
        if os.access(candidate, os.X_OK):
            return candidate
    return fallbacks[0] if fallbacks else name


KILL_BIN = find_binary("kill", "/bin/kill", "/usr/bin/kill")


def free_port() -> int:
    """Return a TCP port that was free on 127.0.0.1 a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def accepts(port: int, host: str = "127.0.0.1") -> bool:
    """True if host:port accepts a TCP connection now."""
    try:
        with socket.create_connection((host, port), timeout=0.5):
            return True
    except OSError:
        return False


def wait_port_free(port: int, timeout: float = STOP_TIMEOUT) -> None:
    """Wait (at most ``timeout``) until nothing accepts on 127.0.0.1:port."""
    deadline = time.monotonic() + timeout
    while accepts(port) and time.monotonic() < deadline:
        time.sleep(0.02)


def tail(path: Path, lines: int = 40) -> str:
    """The last ``lines`` lines of a log file, or why it cannot be read."""
    try:
        text = path.read_text(errors="replace")
    except OSError as exc:
        return f"<{path}: {exc}>"
    return "\n".join(text.splitlines()[-lines:])


def wait_until(
    what: str,
    ready: Callable[[], bool],
    alive: Callable[[], bool],
    logs: Callable[[], str],
    timeout: float = START_TIMEOUT,
) -> None:
    """Poll ``ready`` until true; RuntimeError (with ``logs()``) if the daemon dies or the time
    runs out."""
    deadline = time.monotonic() + timeout
    while not ready():
        if not alive() or time.monotonic() > deadline:
            state = "exited" if not alive() else f"not ready within {timeout:g} s"
            raise RuntimeError(f"{what} {state}\n{logs()}")
        time.sleep(0.02)


def wait_ports(
    what: str,
    ports: Mapping[str, int],
    alive: Callable[[], bool],
    logs: Callable[[], str],
    timeout: float = START_TIMEOUT,
) -> None:
    """Wait until every port accepts a connection (see ``wait_until``)."""

    def ready() -> bool:
        return all(accepts(port) for port in ports.values())

    wait_until(f"{what} (ports {dict(ports)})", ready, alive, logs, timeout)


def retry_if_port_taken(
    start_once: Callable[[], None],
    stop: Callable[[], None],
    port_taken: Callable[[], bool],
    new_ports: Callable[[], None] | None = None,
    retries: int = PORT_RETRIES,
) -> None:
    """Call ``start_once``; when it raises RuntimeError, ``stop`` and, if ``port_taken()`` (its
    logs say so), call ``new_ports`` and try again, ``retries`` times in all."""
    for attempt in range(retries):
        try:
            start_once()
            return
        except RuntimeError:
            taken = port_taken()
            stop()
            if not taken or attempt + 1 >= retries:
                raise
            if new_ports is not None:
                new_ports()


# --------------------------------------------------------------------------- processes


def _proc_stat(pid: int) -> tuple[str, int, int] | None:
    """(state, ppid, pgrp) from /proc, or None if the process is gone."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except (OSError, ValueError):
        return None
    fields = raw[raw.rfind(")") + 2 :].split()
    return fields[0], int(fields[1]), int(fields[2])


def alive(pid: int) -> bool:
    """True unless gone or a zombie: a daemonised process is re-parented to PID 1, which here
    reaps orphans only every few seconds, so a zombie counts as stopped."""
    stat = _proc_stat(pid)
    return stat is not None and stat[0] not in ("Z", "X")


def _all_pids() -> list[int]:
    return [int(p) for p in os.listdir("/proc") if p.isdigit()]


def family(pid: int) -> set[int]:
    """The process, its live descendants and, if it leads its own group, that group."""
    stats = {p: s for p in _all_pids() if (s := _proc_stat(p)) is not None}
    result = {pid}
    own = stats.get(pid)
    if own is not None and own[2] == pid and pid != os.getpgrp():
        result |= {p for p, s in stats.items() if s[2] == pid}
    changed = True
    while changed:
        new = {p for p, s in stats.items() if s[1] in result and p not in result}
        result |= new
        changed = bool(new)
    return {p for p in result if alive(p)}


def children(pid: int) -> set[int]:
    """Live (not zombie) direct children of ``pid``: an nginx or HAProxy master's workers."""
    found = set()
    for entry in _all_pids():
        stat = _proc_stat(entry)
        if stat is not None and stat[1] == pid and stat[0] not in ("Z", "X"):
            found.add(entry)
    return found


def _signal(pid: int, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.kill(pid, sig)


def _wait_gone(pids: set[int], timeout: float) -> set[int]:
    deadline = time.monotonic() + timeout
    left = {p for p in pids if alive(p)}
    while left and time.monotonic() < deadline:
        time.sleep(0.02)
        left = {p for p in left if alive(p)}
    return left


def terminate(pid: int, sig: int = signal.SIGTERM, timeout: float = STOP_TIMEOUT) -> None:
    """Signal pid, wait for it and its family to go; SIGKILL whatever is left."""
    kin = family(pid)
    if not kin:
        return
    _signal(pid, sig)
    left = _wait_gone(kin | family(pid), timeout)
    for p in left:
        _signal(p, signal.SIGKILL)
    left = _wait_gone(left, 5.0)
    if left:
        raise RuntimeError(f"processes survived SIGKILL: {sorted(left)}")


def stop_child(
    proc: subprocess.Popen[bytes] | None,
    sig: int = signal.SIGTERM,
    timeout: float = STOP_TIMEOUT,
) -> None:
    """Stop our child ``proc`` (with its family) by PID and reap it; None does nothing."""
    if proc is None:
        return
    if proc.poll() is None:
        terminate(proc.pid, sig, timeout)
    proc.wait(timeout=timeout)


def read_pid(path: Path, comm: str | None = None) -> int | None:
    """PID from a pid file; with comm, only if that live process has that name."""
    try:
        pid = int(path.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None
    if comm is not None:
        try:
            if not Path(f"/proc/{pid}/comm").read_text().strip().startswith(comm):
                return None
        except OSError:
            return None
    return pid


def wait_pidfile(path: Path, timeout: float, comm: str | None = None) -> int | None:
    """``read_pid`` until it finds a PID or ``timeout`` ends."""
    deadline = time.monotonic() + timeout
    while True:
        pid = read_pid(path, comm)
        if pid is not None or time.monotonic() >= deadline:
            return pid
        time.sleep(0.01)


def spawn(
    argv: list[str],
    log: Path | None,
    *,
    append: bool = True,
    cwd: Path | None = None,
    env: Mapping[str, str] | None = None,
    user: Account | None = None,
) -> subprocess.Popen[bytes]:
    """Start a foreground daemon in its own session (as ``user``, without supplementary
    groups, if given); output to ``log`` (a file, never a pipe: the daemon keeps it open)."""
    with contextlib.ExitStack() as stack:
        out = stack.enter_context(open(log, "ab" if append else "wb")) if log else None
        return subprocess.Popen(
            argv,
            cwd=cwd,
            env=env,
            user=user.uid if user else None,
            group=user.gid if user else None,
            extra_groups=[] if user else None,
            stdin=subprocess.DEVNULL,
            stdout=out or subprocess.DEVNULL,
            stderr=subprocess.STDOUT if out else subprocess.DEVNULL,
            start_new_session=True,
        )


# --------------------------------------------------------------------------- daemons


class Daemon:
    """Context-manager plumbing: ``with`` starts the daemon (unless running), then stops it
    (also when the start fails half-way)."""

    def start(self) -> None:
        raise NotImplementedError

    def stop(self) -> None:
        raise NotImplementedError

    @property
    def running(self) -> bool:
        raise NotImplementedError

    def __enter__(self) -> Self:
        if not self.running:
            try:
                self.start()
            except BaseException:
                self.stop()
                raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


class ChildDaemon(Daemon):
    """A daemon that runs in the foreground as our child process (``_proc``)."""

    label: ClassVar[str] = "daemon"
    stop_timeout: ClassVar[float] = STOP_TIMEOUT
    _proc: subprocess.Popen[bytes] | None = None

    @property
    def pid(self) -> int:
        if self._proc is None:
            raise RuntimeError(f"{self.label} not running")
        return self._proc.pid

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def stop(self) -> None:
        """Stop by PID (SIGTERM, then SIGKILL) with its family and reap it; idempotent."""
        proc, self._proc = self._proc, None
        stop_child(proc, timeout=self.stop_timeout)


class PidFileDaemon(Daemon):
    """A daemon that puts itself in the background and writes ``pid_file``; its master is the
    live process of that file named ``comm``."""

    label: ClassVar[str] = "daemon"
    comm: ClassVar[str]
    pid_file: Path
    port: int
    _pid: int | None = None
    _launched = False

    @property
    def pid(self) -> int:
        """The master's PID (from the pid file; it survives reloads)."""
        pid = read_pid(self.pid_file, self.comm) or self._pid
        if pid is None:
            raise RuntimeError(f"{self.label} not running")
        return pid

    @property
    def running(self) -> bool:
        return self._pid is not None and alive(self._pid)

    def logs(self) -> str:
        raise NotImplementedError

    def _new_port(self) -> None:
        self.port = free_port()

    def launch(
        self, argv: list[str], log: Path, *, append: bool = True, cwd: Path | None = None
    ) -> None:
        """Run the command that starts the daemon (output to ``log``), remember the master's
        PID and wait until ``port`` accepts connections; RuntimeError with the logs if not."""
        self.pid_file.unlink(missing_ok=True)
        self._launched = True
        with open(log, "ab" if append else "wb") as out:
            rc = subprocess.call(
                argv,
                cwd=cwd,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                timeout=START_TIMEOUT,
            )
        self._pid = wait_pidfile(self.pid_file, 2.0 if rc == 0 else 0.0, self.comm)
        if rc != 0 or self._pid is None:
            raise RuntimeError(f"{self.label} failed to start (exit {rc}):\n{self.logs()}")
        wait_ports(self.label, {"port": self.port}, lambda: self.running, self.logs)

    def _stop_master(self) -> set[int]:
        """Stop the master (pid file, else remembered PID) with its workers; the PIDs."""
        if not self._launched:
            return set()
        pids = {p for p in (read_pid(self.pid_file, self.comm), self._pid) if p is not None}
        for pid in pids:
            terminate(pid)
        self._pid, self._launched = None, False
        return pids

    def stop(self) -> None:
        """Stop the master and its workers by PID and wait until all are gone; idempotent."""
        self._stop_master()


# --------------------------------------------------------------------------- accounts, files


class Account(NamedTuple):
    """A service account: user name, its uid and the gid of the group of the same name."""

    name: str
    uid: int
    gid: int


def find_account(name: str) -> Account | None:
    """The account ``name`` (user and group), or None if either is missing."""
    try:
        return Account(name, pwd.getpwnam(name).pw_uid, grp.getgrnam(name).gr_gid)
    except KeyError:
        return None


def account(name: str) -> Account:
    """The account ``name``; KeyError if the user or group is missing."""
    found = find_account(name)
    if found is None:
        raise KeyError(f"no user and group {name}")
    return found


@contextlib.contextmanager
def ensure_account(name: str) -> Iterator[Account]:
    """A system user and group ``name``; created (and removed afterwards) if missing.
    Raises FileNotFoundError when it is missing and useradd is not available."""
    existing = find_account(name)  # also one left by a killed run
    if existing is not None:
        yield existing
        return
    useradd = shutil.which("useradd") or "/usr/sbin/useradd"
    if not os.access(useradd, os.X_OK):
        raise FileNotFoundError(f"no user {name} and no useradd to create it")
    subprocess.run(
        [useradd, "--system", "--user-group", "--no-create-home", "-s", "/usr/sbin/nologin", name],
        check=True,
        capture_output=True,
    )
    try:
        yield account(name)
    finally:
        userdel = shutil.which("userdel") or "/usr/sbin/userdel"
        subprocess.run([userdel, name], check=False, capture_output=True)


@contextlib.contextmanager
def ensure_group(name: str) -> Iterator[int]:
    """A system group ``name`` (its GID); created (and removed afterwards) if missing.
    Raises FileNotFoundError when it is missing and groupadd is not available."""
    try:
        existing = grp.getgrnam(name).gr_gid  # also one left by a killed run
    except KeyError:
        pass
    else:
        yield existing
        return
    groupadd = shutil.which("groupadd") or "/usr/sbin/groupadd"
    if not os.access(groupadd, os.X_OK):
        raise FileNotFoundError(f"no group {name} and no groupadd to create it")
    subprocess.run([groupadd, "--system", name], check=True, capture_output=True)
    try:
        yield grp.getgrnam(name).gr_gid
    finally:
        groupdel = shutil.which("groupdel") or "/usr/sbin/groupdel"
        subprocess.run([groupdel, name], check=False, capture_output=True)


def chown_to(path: Path, owner: Account, mode: int | None = None) -> Path:
    """Give ``path`` to ``owner`` (user and group) and, if given, ``mode``."""
    os.chown(path, owner.uid, owner.gid)
    if mode is not None:
        path.chmod(mode)
    return path


def owned_dir(path: Path, owner: Account, mode: int = 0o700) -> Path:
    """Make the directory ``path`` (with parents) owned by ``owner`` with ``mode``."""
    path.mkdir(parents=True, exist_ok=True)
    return chown_to(path, owner, mode)


def write_owned(path: Path, data: bytes, uid: int, gid: int, mode: int) -> Path:
    """Write ``data`` to ``path``, then give it uid:gid and ``mode``."""
    path.write_bytes(data)
    os.chown(path, uid, gid)
    path.chmod(mode)
    return path


def reachable_by_all(path: Path) -> bool:
    """Every user can traverse ``path`` and each directory above it."""
    return all(os.stat(p).st_mode & stat.S_IXOTH for p in (path, *path.parents))


def public_dir(prefix: str = "certbot-fanout-test-") -> Path:
    """A fresh temp dir, 0755, so every user (every service account) can traverse it
    (pytest's own tmp_path base is 0700). It is made in the temp directory when every user can
    reach that (a private ``$TMPDIR`` cannot be), else in /var/tmp or /tmp. The caller removes
    it."""
    bases = [Path(tempfile.gettempdir()).resolve(), Path("/var/tmp"), Path("/tmp")]
    base = next((b for b in bases if b.is_dir() and reachable_by_all(b)), None)
    if base is None:
        raise RuntimeError(f"no temp directory every user can reach among {bases}")
    path = Path(tempfile.mkdtemp(prefix=prefix, dir=base)).resolve()
    path.chmod(0o755)
    return path


@contextlib.contextmanager
def public_tempdir(prefix: str) -> Iterator[Path]:
    """``public_dir(prefix)``, removed with everything in it afterwards."""
    path = public_dir(prefix)
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)
