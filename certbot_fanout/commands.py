"""Running a consumer's test and reload commands: argv only, bounded in time and output, and
only programs nobody but root could have changed.

A bare program name is looked up in :data:`COMMAND_PATH` alone, which is also the ``PATH`` every
command runs with, so ``check`` and a deploy under cron, certbot or a login shell find the same
programs. :func:`program_problem` applies :mod:`certbot_fanout.trust` to the program and to the
interpreter its ``#!`` line names.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import select
import shutil
import signal
import stat
import subprocess
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import IO

from certbot_fanout import trust
from certbot_fanout.errors import CommandError

OUTPUT_TAIL_BYTES = 4096
_KILL_GRACE = 2.0
# Where a bare program name is looked for, and the PATH of every command run: root's own
# directories (those of Debian's root login and of systemd), whatever PATH the caller had.
COMMAND_PATH = ("/usr/local/sbin", "/usr/local/bin", "/usr/sbin", "/usr/bin", "/sbin", "/bin")
COMMAND_PATH_TEXT = os.pathsep.join(COMMAND_PATH)
# How much of a script is read to find the interpreter its #! line names.
_SHEBANG_BYTES = 256


@dataclass(frozen=True)
class CommandResult:
    argv: tuple[str, ...]
    returncode: int
    output: str
    seconds: float


def run_command(
    argv: Sequence[str], timeout: float, what: str = "command", *, stdin: bytes | None = None
) -> CommandResult:
    """Run ``argv`` without a shell, in its own session, and wait at most ``timeout`` seconds.
    With ``stdin``, the command reads those bytes (from an anonymous temporary file, so a
    command that does not read them cannot block us); else it reads nothing (/dev/null).

    Output goes to an anonymous temporary file rather than a pipe, so that a daemon the command
    starts (and which inherits its stdout) cannot keep us waiting for end-of-file. On timeout the
    whole process group gets SIGTERM, then SIGKILL.

    The program is :func:`resolve_program` of ``argv[0]``; it runs with ``PATH`` set to
    :data:`COMMAND_PATH`, and only if :func:`program_problem` finds nothing.

    Raises:
        CommandError: the program is missing or could be changed by a user other than root (it
            was not run), cannot be started, timed out, or exited non-zero. The message holds
            the tail of its output.
    """
    argv = tuple(argv)
    shown = " ".join(argv)
    program = _trusted_program(argv[0], f"{what} `{shown}`")
    environment = {**os.environ, "PATH": COMMAND_PATH_TEXT}
    start = time.monotonic()
    with tempfile.TemporaryFile() as out, _input(stdin) as given:
        try:
            proc = subprocess.Popen(
                argv,
                executable=program,
                env=environment,
                stdin=given,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                close_fds=True,
            )
        except FileNotFoundError:
            raise CommandError(f"{what} `{shown}`: {not_found_text(program)}") from None
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


@contextlib.contextmanager
def _input(data: bytes | None) -> Iterator[IO[bytes] | int]:
    """What a command reads: ``data`` in an unlinked temporary file, or /dev/null."""
    if data is None:
        yield subprocess.DEVNULL
        return
    with tempfile.TemporaryFile() as f:
        f.write(data)
        f.flush()
        f.seek(0)
        yield f


def resolve_program(program: str) -> str | None:
    """The absolute path of a command's program: a bare name found in :data:`COMMAND_PATH`
    (None when it is in none of its directories), any other path made absolute."""
    if "/" in program:
        return os.path.abspath(program)
    return shutil.which(program, path=COMMAND_PATH_TEXT)


def program_problem(path: str) -> trust.TrustProblem | None:
    """Why the program at ``path`` must not be run: it (or a directory above it, or the
    interpreter its ``#!`` line names, or one above that) could be changed by a user other
    than root (in a run by another user: than root or that user), or is missing."""
    problem = trust.path_problem(path)
    if problem is not None:
        return problem
    interpreter = _interpreter(path)
    problem = None if interpreter is None else trust.path_problem(interpreter)
    if problem is None or problem.fault is trust.Fault.MISSING:
        return problem
    return dataclasses.replace(problem, via=f"its interpreter {interpreter}")


def _trusted_program(name: str, shown: str) -> str:
    """The path to execute for the program ``name``; CommandError if it must not be run."""
    program = resolve_program(name)
    if program is None:
        raise CommandError(f"{shown}: program {name} not found on PATH ({COMMAND_PATH_TEXT})")
    problem = program_problem(program)
    if problem is None:
        return program
    if problem.fault is trust.Fault.MISSING:
        raise CommandError(f"{shown}: {not_found_text(program)}")
    raise CommandError(f"{shown} was not run: {untrusted_program_text(problem)}")


def untrusted_program_text(problem: trust.TrustProblem) -> str:
    """Why a program is not run, and what to do, in a sentence."""
    return (
        f"{problem}, so someone other than {problem.trusted} could change what it runs; "
        f"certbot-fanout runs only programs that {problem.trusted} alone can change"
    )


def _interpreter(path: str) -> str | None:
    """The interpreter a script's ``#!`` line names (made absolute), or None."""
    try:
        # Without blocking, and only from a regular file: a FIFO named as a program never
        # holds us up.
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError:
        return None
    with open(fd, "rb") as f:
        try:
            first = f.readline(_SHEBANG_BYTES) if stat.S_ISREG(os.fstat(fd).st_mode) else b""
        except OSError:
            return None
    words = first[2:].split() if first.startswith(b"#!") else []
    return os.path.abspath(os.fsdecode(words[0])) if words else None


def not_found_text(path: str) -> str:
    """Why ``path`` cannot be started: it is missing, or its ``#!`` interpreter is, or (exec
    said ENOENT of a file that is there) its loader or a library."""
    if not os.path.exists(path):
        return f"program {path} not found"
    interpreter = _interpreter(path)
    if interpreter is not None and not os.path.exists(interpreter):
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
