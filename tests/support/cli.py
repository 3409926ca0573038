"""The one way tests run a command: ``run`` as a subprocess (also the daemons' set-up
commands, with ``check=True``), ``invoke`` in-process through ``certbot_fanout.cli.main``, and
``explain``, which formats either result (argv, exit code, stdout, stderr) for an assertion
message.

Stand-alone apart from ``invoke`` (which imports the CLI when called): no pytest and no project
imports, so the daemon modules (run as ``python -m tests.support.MODULE``) use ``run`` too.
"""

from __future__ import annotations

import io
import json
import os
import shlex
import signal
import subprocess
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .proc import Account

RUN_TIMEOUT = 120.0
FAILED_TAIL = 6000  # characters of each stream a failed ``check`` run shows


class CommandFailed(AssertionError):
    """A command that had to succeed (``run(..., check=True)``) did not; the message is
    ``explain`` of its result, which it carries as ``result``."""

    def __init__(self, result: subprocess.CompletedProcess[str]) -> None:
        super().__init__(explain(result, tail=FAILED_TAIL))
        self.result = result


def run(
    argv: Sequence[str | Path],
    *,
    timeout: float = RUN_TIMEOUT,
    env: Mapping[str, str] | None = None,
    cwd: str | Path | None = None,
    check: bool = False,
    new_session: bool = False,
    user: Account | None = None,
    umask: int = -1,
) -> subprocess.CompletedProcess[str]:
    """Run ``argv`` without stdin, capturing stdout and stderr as text (as ``user``, without
    supplementary groups, if given; with ``umask``, if given). A non-zero exit is returned, or
    with ``check`` raised as ``CommandFailed``. On timeout the process (with ``new_session``,
    its whole session) is killed and ``subprocess.TimeoutExpired`` raised with what it had
    written."""
    args = [str(a) for a in argv]
    with subprocess.Popen(
        args,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=dict(env) if env is not None else None,
        cwd=cwd,
        start_new_session=new_session,
        user=user.uid if user else None,
        group=user.gid if user else None,
        extra_groups=[] if user else None,
        umask=umask,
    ) as proc:
        try:
            out, err = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            _kill(proc, new_session)
            out, err = proc.communicate()
            raise subprocess.TimeoutExpired(args, timeout, output=out, stderr=err) from None
        except BaseException:
            _kill(proc, new_session)
            raise
    result = subprocess.CompletedProcess(args, proc.returncode, out, err)
    if check and result.returncode != 0:
        raise CommandFailed(result)
    return result


def timed_out(exc: subprocess.TimeoutExpired) -> subprocess.CompletedProcess[str]:
    """A run ``run`` gave up on, as a result with exit -9 (it was killed) and what it wrote."""
    return subprocess.CompletedProcess(exc.cmd, -9, _text(exc.output), _text(exc.stderr))


def _kill(proc: subprocess.Popen[str], session: bool) -> None:
    try:
        if session:
            os.killpg(proc.pid, signal.SIGKILL)
        else:
            proc.kill()
    except ProcessLookupError:
        pass


@dataclass(frozen=True)
class Invoked:
    """What ``main(argv)`` returned and wrote to its ``stdout``. Its stderr goes where the
    test's stderr goes (pytest's ``capsys`` reads it), so it is not kept here."""

    args: list[str]
    returncode: int
    stdout: str
    stderr: str | None = None


def invoke(argv: Sequence[str], environ: Mapping[str, str] | None = None) -> Invoked:
    """``certbot_fanout.cli.main(argv)`` in this process, with ``environ`` (default: empty)
    as its environment and its stdout captured."""
    from certbot_fanout.cli import main

    out = io.StringIO()
    code = main(list(argv), environ=dict(environ or {}), stdout=out)
    return Invoked(list(argv), code, out.getvalue())


def explain(
    result: subprocess.CompletedProcess[str] | subprocess.TimeoutExpired | Invoked,
    *,
    tail: int | None = None,
) -> str:
    """argv, exit code, stdout and stderr of a run, for an assertion message; with ``tail``,
    only the last ``tail`` characters of each stream."""
    stderr: str | None
    if isinstance(result, subprocess.TimeoutExpired):
        argv, status = result.cmd, f"timed out after {result.timeout}s"
        stdout, stderr = _text(result.output), _text(result.stderr)
    else:
        argv, status = result.args, f"exit {result.returncode}"
        stdout, stderr = result.stdout, result.stderr
    line = shlex.join(str(a) for a in argv) if isinstance(argv, list | tuple) else str(argv)
    err = "(not captured)\n" if stderr is None else stderr
    if tail is not None:
        stdout, err = stdout[-tail:], err[-tail:]
    return f"$ {line}\n{status}\n--- stdout:\n{stdout}\n--- stderr:\n{err}"


def _text(data: str | bytes | None) -> str:
    if data is None:
        return ""
    return data.decode(errors="replace") if isinstance(data, bytes) else data


def json_document(result: subprocess.CompletedProcess[str]) -> dict[str, Any]:
    """The JSON object a command (``--json``) printed on stdout; a failure says what ran."""
    assert result.stdout.startswith("{"), explain(result)
    document = json.loads(result.stdout)
    assert isinstance(document, dict), result.stdout
    return document
