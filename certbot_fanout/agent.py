"""The agent: what a run starts on another host, over ssh, to place files and run commands there.

It is not installed on the target. The controller (:mod:`certbot_fanout.remote`) pipes this
module and the few it needs (``errors``, ``trust``, ``files``, ``commands``, ``wire``) to the
target's ``python3`` (3.9 or later) and they run from memory: so the placement on the target is
the project's own, with every guarantee it has here (a temporary file in the destination's
directory, owner and mode before the first byte, fsync and rename, the symlink-safe walk), and
owners, groups and programs are the target's. Nothing is written on the target but the files
placed.

It answers requests (:mod:`certbot_fanout.wire`) on stdin and stdout until stdin ends; each
request runs in a thread of its own, so a slow reload does not hold up another consumer's
placement. Anything else it would print goes to stderr, never into the exchange. When the
connection ends mid-run, what has started finishes (a placement is atomic either way) and the
agent exits; the next run finds the files as they are and repairs them.

Standard library only, Python 3.9.
"""

from __future__ import annotations

import contextlib
import grp
import os
import pwd
import sys
import threading
from collections.abc import Callable
from typing import IO, Any

from certbot_fanout import commands, configscan, files, fswalk, procnet, procview, trust, wire
from certbot_fanout.errors import CommandError, FanoutError, PlacementError

Handler = Callable[[dict[str, Any]], Any]


def _resolve(args: dict[str, Any]) -> dict[str, Any]:
    """Users and groups by name (null: no such account here), and names by id."""
    users: dict[str, int | None] = {}
    for name in args.get("users", ()):
        try:
            users[name] = pwd.getpwnam(name).pw_uid
        except KeyError:
            users[name] = None
    groups: dict[str, int | None] = {}
    for name in args.get("groups", ()):
        try:
            groups[name] = grp.getgrnam(name).gr_gid
        except KeyError:
            groups[name] = None
    return {"users": users, "groups": groups}


def _names(args: dict[str, Any]) -> dict[str, Any]:
    """The names of user and group ids, as this host knows them (for messages)."""
    user_names = {}
    for uid in args.get("uids", ()):
        try:
            user_names[str(uid)] = pwd.getpwuid(int(uid)).pw_name
        except KeyError:
            user_names[str(uid)] = str(uid)
    group_names = {}
    for gid in args.get("gids", ()):
        try:
            group_names[str(gid)] = grp.getgrgid(int(gid)).gr_name
        except KeyError:
            group_names[str(gid)] = str(gid)
    return {"users": user_names, "groups": group_names}


def _snapshot(args: dict[str, Any]) -> Any:
    return wire.snapshot_to_wire(files.snapshot(str(args["path"])))


def _place(args: dict[str, Any]) -> None:
    files.place(wire.desired_from_wire(args["desired"]))


def _restore(args: dict[str, Any]) -> None:
    files.restore(wire.snapshot_from_wire(args["snapshot"]))


def _run(args: dict[str, Any]) -> dict[str, Any]:
    argv = [str(a) for a in args["argv"]]
    result = commands.run_command(argv, float(args["timeout"]), str(args.get("what", "command")))
    return {"returncode": result.returncode, "output": result.output, "seconds": result.seconds}


def _remove_leftovers(args: dict[str, Any]) -> None:
    files.remove_leftovers(str(args["path"]))


def _reader_problem(args: dict[str, Any]) -> str | None:
    return files.reader_problem(str(args["path"]), int(args["uid"]), int(args["gid"]))


def _enter_problem(args: dict[str, Any]) -> str | None:
    return files.enter_problem(str(args["directory"]), int(args["uid"]), int(args["gid"]))


def _program_problem(args: dict[str, Any]) -> str | None:
    """Why the program a command names would not be run here, in a sentence; None: it would."""
    name = str(args["program"])
    program = commands.resolve_program(name)
    if program is None:
        return f"program {name} not found on PATH ({commands.COMMAND_PATH_TEXT})"
    problem = commands.program_problem(program)
    if problem is None:
        return None
    if problem.fault is trust.Fault.MISSING:
        return commands.not_found_text(program)
    return commands.untrusted_program_text(problem)


def _directory(args: dict[str, Any]) -> dict[str, Any]:
    """Whether ``directory`` is one, and its default ACL's named entries (for ``check``)."""
    directory = str(args["directory"])
    isdir = os.path.isdir(directory)
    return {"isdir": isdir, "default_acl": list(files.default_acl(directory)) if isdir else []}


def _scan_pems(args: dict[str, Any]) -> dict[str, Any]:
    """``discover --host``: the PEM files under the roots (see :func:`fswalk.scan_pems`)."""
    return fswalk.scan_pems(
        [str(r) for r in args["roots"]],
        [str(n) for n in args["never"]],
        int(args["max_entries"]),
        float(args["seconds"]),
        int(args["max_found"]),
    )


def _references(args: dict[str, Any]) -> dict[str, Any]:
    """``discover --host``: the certificate paths the services' configurations name here."""
    services = args["services"]
    return configscan.scan_references(services, int(args["max_entries"]), float(args["seconds"]))


def _pems(args: dict[str, Any]) -> list[Any]:
    """``discover --host``: each of the paths that is a small PEM file, as the scan lists it."""
    found = (fswalk.pem_file(str(p)) for p in args["paths"])
    return [item for item in found if item is not None]


def _listeners(args: dict[str, Any]) -> list[list[Any]]:
    """``discover --host``: this host's listening TCP sockets, root's first."""
    return [[s.address, s.port, s.uid] for s in procnet.listening_sockets_by_owner()]


def _stale_views(args: dict[str, Any]) -> list[str]:
    """A container's main process's view of its files here (see :func:`procview.stale_views`)."""
    items = [(str(h), str(i), bool(f)) for h, i, f in args["files"]]
    return procview.stale_views(int(args["pid"]), items, str(args["restart"]), bool(args["binds"]))


OPS: dict[str, Handler] = {
    "resolve": _resolve,
    "names": _names,
    "snapshot": _snapshot,
    "place": _place,
    "restore": _restore,
    "run": _run,
    "remove_leftovers": _remove_leftovers,
    "reader_problem": _reader_problem,
    "enter_problem": _enter_problem,
    "program_problem": _program_problem,
    "directory": _directory,
    "scan_pems": _scan_pems,
    "listeners": _listeners,
    "references": _references,
    "pems": _pems,
    "stale_views": _stale_views,
}


def _error_kind(e: BaseException) -> str:
    if isinstance(e, PlacementError):
        return "placement"
    if isinstance(e, CommandError):
        return "command"
    if isinstance(e, FanoutError):
        return "fanout"
    return "internal"


class _Agent:
    def __init__(self, out: IO[bytes]) -> None:
        self.out = out
        self.lock = threading.Lock()

    def send(self, message: dict[str, Any]) -> None:
        # When the controller is gone, what it asked for still finishes.
        with self.lock, contextlib.suppress(OSError, ValueError):
            wire.write_frame(self.out, message)

    def answer(self, request: dict[str, Any]) -> None:
        ident = request.get("id")
        handler = OPS.get(str(request.get("op")))
        if handler is None:
            error = {"type": "protocol", "message": f"unknown request {request.get('op')!r}"}
            self.send({"id": ident, "ok": False, "error": error})
            return
        try:
            result = handler(request.get("args") or {})
        except Exception as e:  # every failure is an answer, never a dead agent
            message = str(e) if isinstance(e, FanoutError) else f"{type(e).__name__}: {e}"
            self.send(
                {"id": ident, "ok": False, "error": {"type": _error_kind(e), "message": message}}
            )
            return
        self.send({"id": ident, "ok": True, "result": result})


def serve(inp: IO[bytes], out: IO[bytes]) -> int:
    """Answer requests from ``inp`` on ``out`` until ``inp`` ends."""
    agent = _Agent(out)
    agent.send(
        {
            "hello": wire.PROTOCOL,
            "python": ".".join(str(n) for n in sys.version_info[:3]),
            "pid": os.getpid(),
            "uid": os.getuid(),
        }
    )
    workers = []
    while True:
        try:
            request = wire.read_frame(inp)
        except wire.WireError as e:
            print(f"certbot-fanout agent: {e}", file=sys.stderr)
            break
        if request is None:
            break
        worker = threading.Thread(target=agent.answer, args=(request,))
        worker.start()
        workers.append(worker)
        workers = [w for w in workers if w.is_alive()]
    for worker in workers:
        worker.join()
    return 0


def main(inp: IO[bytes] | None = None) -> int:
    """Serve on ``inp`` (the loader's reader of stdin, which may hold bytes it read ahead) and
    the process's stdout; stdout is then taken from everything else (a stray print, or a
    program that writes to an inherited fd 1, goes to stderr, not into the exchange)."""
    out = os.fdopen(os.dup(1), "wb", buffering=0)
    os.dup2(2, 1)
    sys.stdout = sys.stderr
    return serve(inp if inp is not None else sys.stdin.buffer, out)
