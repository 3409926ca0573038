"""Running a consumer's test and reload commands: argv only, bounded in time and output."""

from __future__ import annotations

import contextlib
import os
import select
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import IO

from certbot_fanout.errors import CommandError

OUTPUT_TAIL_BYTES = 4096
_KILL_GRACE = 2.0


@dataclass(frozen=True)
class CommandResult:
    argv: tuple[str, ...]
    returncode: int
    output: str
    seconds: float


def run_command(argv: Sequence[str], timeout: float, what: str = "command") -> CommandResult:
    """Run ``argv`` without a shell, in its own session, and wait at most ``timeout`` seconds.

    Output goes to an anonymous temporary file rather than a pipe, so that a daemon the command
    starts (and which inherits its stdout) cannot keep us waiting for end-of-file. On timeout the
    whole process group gets SIGTERM, then SIGKILL.

    Raises:
        CommandError: the program cannot be started, timed out, or exited non-zero. The message
            holds the tail of its output.
    """
    argv = tuple(argv)
    shown = " ".join(argv)
    start = time.monotonic()
    with tempfile.TemporaryFile() as out:
        try:
            proc = subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                close_fds=True,
            )
        except FileNotFoundError:
            raise CommandError(f"{what} `{shown}`: {_not_found(argv[0])}") from None
        except PermissionError:
            raise CommandError(f"{what} `{shown}`: {argv[0]} is not executable") from None
        except OSError as e:
            raise CommandError(f"{what} `{shown}`: cannot start: {e.strerror}") from None
        try:
            returncode = _wait(proc, timeout)
        except subprocess.TimeoutExpired:
            _kill_group(proc)
            tail = _tail(out)
            raise CommandError(
                f"{what} `{shown}` timed out after {timeout:g} s; its process group was killed"
                + (f"; output: {tail}" if tail else "")
            ) from None
        seconds = time.monotonic() - start
        output = _tail(out)
    if returncode != 0:
        status = f"was killed by signal {-returncode}" if returncode < 0 else f"exited {returncode}"
        raise CommandError(f"{what} `{shown}` {status}" + (f"; output: {output}" if output else ""))
    return CommandResult(argv, returncode, output, seconds)


def _not_found(program: str) -> str:
    """Why exec said ENOENT: the program is missing (for a bare name: from PATH, which is
    short under cron and systemd), or it exists and its ``#!`` interpreter does not."""
    path = program if "/" in program else shutil.which(program)
    if path is None:
        return f"program {program} not found on PATH ({os.environ.get('PATH', os.defpath)})"
    try:
        with open(path, "rb") as f:
            first = f.readline(256)
    except OSError:
        return f"program {program} not found"
    if first.startswith(b"#!"):
        words = first[2:].split()
        interpreter = words[0].decode(errors="replace") if words else "(none)"
        return f"cannot start {path}: its interpreter {interpreter} does not exist"
    return f"cannot start {path}: No such file or directory (a missing loader or library?)"


def _wait(proc: subprocess.Popen[bytes], timeout: float) -> int:
    """Wait for exit; a pidfd wakes us the moment it happens (Popen.wait polls with sleeps
    of up to 50 ms, which a reload of a hundred consumers feels)."""
    try:
        pidfd = os.pidfd_open(proc.pid)
    except (AttributeError, OSError):
        return proc.wait(timeout)
    try:
        poller = select.poll()
        poller.register(pidfd, select.POLLIN)
        if not poller.poll(max(0.0, timeout) * 1000):
            raise subprocess.TimeoutExpired(proc.args, timeout)
    finally:
        os.close(pidfd)
    return proc.wait()


def _kill_group(proc: subprocess.Popen[bytes]) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGTERM)
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(_KILL_GRACE)
    # Whether or not the leader left, nothing it started in its group may outlive the timeout.
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(10.0)


def _tail(out: IO[bytes]) -> str:
    """The last lines of the output, joined with " | ", at most OUTPUT_TAIL_BYTES long."""
    out.seek(0, os.SEEK_END)
    size = out.tell()
    out.seek(max(0, size - OUTPUT_TAIL_BYTES))
    text = out.read().decode("utf-8", "replace")
    joined = " | ".join(line.strip() for line in text.splitlines() if line.strip())
    if size > OUTPUT_TAIL_BYTES or len(joined) > OUTPUT_TAIL_BYTES:
        joined = "..." + joined[-OUTPUT_TAIL_BYTES:]
    return joined
