"""Consumers on other hosts: one ssh connection per host per run, and the agent at its end.

A run that deploys to a consumer with ``host:`` connects to that host with the system's OpenSSH
client, so the admin's ssh_config (User, Port, ProxyJump, IdentityFile), agent and keys apply,
with what a root tool must insist on: never a prompt (``BatchMode=yes``), never an unknown or
changed host key (``StrictHostKeyChecking=yes``, against the project's own known_hosts file,
where ``certbot-fanout hosts trust`` pins keys), no forwarding, a connect timeout and
keep-alives. The connection is a ControlMaster whose socket is in a directory only root can
enter, made for the run and removed when it ends.

Over it runs the agent (:mod:`certbot_fanout.agent`), sent as source to the target's ``python3``
(nothing is installed there): the command line ssh runs holds only a fixed loader, the
modules follow on stdin, then the requests and answers of :mod:`certbot_fanout.wire`. A
:class:`Session` is one host's connection; :meth:`Session.effects` gives the deploy's
:class:`~certbot_fanout.deploy.Effects` whose files and commands are that host's. Every wait is
bounded: the greeting by the connect timeout, each request by its own timeout.

A host that is down, refuses the key, or drops mid-run fails only its own consumers, with the
host's name and ssh's own words (:class:`HostError`).
"""

from __future__ import annotations

import contextlib
import hashlib
import itertools
import logging
import math
import os
import shlex
import subprocess
import tempfile
import threading
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field, replace
from typing import IO, Any

from certbot_fanout import __version__, commands, files, probe, wire
from certbot_fanout.errors import CommandError, FanoutError, PlacementError
from certbot_fanout.escape import printable
from certbot_fanout.model import DEFAULT_RUNTIME_DIR, REMOTE_ID, Consumer, Host

logger = logging.getLogger(__name__)

# The modules the agent runs from, in the order they are sent (all standard library only).
SHIPPED = (
    "errors",
    "trust",
    "files",
    "commands",
    "wire",
    "fswalk",
    "procview",
    "configscan",
    "procnet",
    "agent",
)
OLDEST_PYTHON = (3, 9)
# What ssh runs on the target: the interpreter, then this, which reads the loader from stdin.
# No quote of either kind, so that it survives the remote shell as one word once quoted.
STAGE1 = (
    "import sys;b=sys.stdin.buffer;"
    'exec(compile(b.read(int(b.readline())),"<certbot-fanout loader>","exec"))'
)
# The loader: checks the interpreter, reads the modules, runs the agent from memory.
LOADER = """\
import sys, json, struct
if sys.version_info < OLDEST:
    body = json.dumps({"hello": 0, "error": "python %d.%d is older than OLDEST_TEXT"
                       % sys.version_info[:2]}).encode()
    sys.stdout.buffer.write(struct.pack(">I", len(body)) + body)
    sys.stdout.flush()
    sys.exit(3)
from importlib.machinery import ModuleSpec
_in = sys.stdin.buffer
_SOURCES = json.loads(_in.read(int(_in.readline())).decode("utf-8"))

class _Memory:  # a meta path finder and loader (importlib.abc's bases cost 10 ms to import)
    def find_spec(self, name, path, target=None):
        if name == "certbot_fanout":
            return ModuleSpec(name, self, is_package=True)
        if name.startswith("certbot_fanout.") and name[15:] in _SOURCES:
            return ModuleSpec(name, self)
        return None

    def create_module(self, spec):
        return None

    def exec_module(self, module):
        if module.__name__ == "certbot_fanout":
            module.__path__ = []
            return
        short = module.__name__[15:]
        exec(compile(_SOURCES[short], "<certbot-fanout " + short + ">", "exec"), module.__dict__)

sys.meta_path.insert(0, _Memory())
from certbot_fanout import agent
sys.exit(agent.main(_in))
""".replace("OLDEST_TEXT", ".".join(map(str, OLDEST_PYTHON))).replace("OLDEST", repr(OLDEST_PYTHON))
# Extra seconds a request may take beyond its own timeout (the channel, the agent).
MARGIN = 15.0
# A file operation (snapshot, place, restore) on the target: its disk, not a command.
FILE_TIMEOUT = 60.0
STDERR_BYTES = 4096


class HostError(FanoutError):
    """A host could not be reached, or its connection failed: ssh's own words, and the host."""


@dataclass(frozen=True)
class Hello:
    """What the agent said when it started."""

    python: str
    pid: int
    uid: int


def ssh_program() -> str:
    """The ssh client to run: found in the fixed PATH, and only if root alone can change it."""
    program = commands.resolve_program("ssh")
    if program is None:
        raise HostError(
            f"the OpenSSH client (ssh) is not installed (looked in {commands.COMMAND_PATH_TEXT}); "
            "install openssh-client"
        )
    problem = commands.program_problem(program)
    if problem is not None:
        raise HostError(f"ssh is not run: {commands.untrusted_program_text(problem)}")
    return program


def _without_clear(options: list[str]) -> list[str]:
    """``options`` without ``-o ClearAllForwardings=yes``."""
    kept: list[str] = []
    for option in options:
        if option == "ClearAllForwardings=yes" and kept and kept[-1] == "-o":
            kept.pop()
            continue
        kept.append(option)
    return kept


def ssh_options(host: Host, *, pinned: bool = True) -> list[str]:
    """The options every ssh a run starts for ``host`` gets, before the destination; only
    ``hosts trust`` asks for them without the pinned key (``pinned=False``)."""
    options = ["-T", "-x", "-a", "-o", "BatchMode=yes"]
    if pinned:
        options += [
            "-o",
            "StrictHostKeyChecking=yes",
            "-o",
            f"UserKnownHostsFile={host.known_hosts}",
        ]
    options += [
        "-o",
        f"ConnectTimeout={max(1, math.ceil(host.connect_timeout))}",
        "-o",
        "ServerAliveInterval=5",
        "-o",
        "ServerAliveCountMax=3",
        "-o",
        "ClearAllForwardings=yes",
        "-o",
        "LogLevel=ERROR",
    ]
    if host.ssh_config:
        options[:0] = ["-F", host.ssh_config]
    if host.port:
        options += ["-p", str(host.port)]
    if host.identity_file:
        options += ["-i", host.identity_file, "-o", "IdentitiesOnly=yes"]
    return options


def agent_command(host: Host) -> str:
    """The one command line ssh runs on the target: a fixed loader, no data."""
    # -I: no environment, no user site, no script directory; -S: no site (3 ms less start).
    return shlex.join(["exec", host.python, "-I", "-S", "-c", STAGE1])


def agent_payload() -> bytes:
    """What the target's python reads first: the loader, then the modules, each after its
    length."""
    here = os.path.dirname(os.path.abspath(__file__))
    sources = {}
    for name in SHIPPED:
        with open(os.path.join(here, f"{name}.py"), encoding="utf-8") as f:
            sources[name] = f.read()
    modules = _json_bytes(sources)
    loader = LOADER.encode("utf-8")
    return b"".join(
        (str(len(loader)).encode(), b"\n", loader, str(len(modules)).encode(), b"\n", modules)
    )


def _json_bytes(value: object) -> bytes:
    import json

    return json.dumps(value).encode("utf-8")


def _has_entries(known_hosts: str) -> bool:
    """Whether ``known_hosts`` exists and holds anything."""
    try:
        return os.path.getsize(known_hosts) > 0
    except OSError:
        return False


@contextlib.contextmanager
def control_directory(runtime_dir: str = DEFAULT_RUNTIME_DIR) -> Iterator[str]:
    """A directory for this run's ssh control sockets, only its user can enter; removed after.
    It is made in ``runtime_dir`` when that is the user's own and closed to others, else in
    the system's temporary directory (mkdtemp: mode 0700, a name nobody can guess)."""
    parent = None
    with contextlib.suppress(OSError):
        os.makedirs(runtime_dir, mode=0o700, exist_ok=True)
        st = os.lstat(runtime_dir)
        if st.st_uid == os.geteuid() and not st.st_mode & 0o077 and os.path.isdir(runtime_dir):
            parent = runtime_dir
    path = tempfile.mkdtemp(prefix="ssh-", dir=parent)
    try:
        yield path
    finally:
        for name in os.listdir(path):
            with contextlib.suppress(OSError):
                os.unlink(os.path.join(path, name))
        with contextlib.suppress(OSError):
            os.rmdir(path)


@dataclass
class _Pending:
    done: threading.Event = field(default_factory=threading.Event)
    answer: dict[str, Any] | None = None


class Session:
    """One host's connection and agent, for one run."""

    # Whether the consumers' owners and groups are looked up on the target at open.
    resolves_accounts = True

    def __init__(self, host: Host, control_path: str) -> None:
        self.host = host
        self.control_path = control_path
        self.proc: subprocess.Popen[bytes] | None = None
        self.hello: Hello | None = None
        self._stderr: IO[bytes] | None = None
        self._ids = itertools.count(1)
        self._pending: dict[int, _Pending] = {}
        self._lock = threading.Lock()
        self._write_lock = threading.Lock()
        self._dead: str | None = None  # why the connection is gone
        self._reader: threading.Thread | None = None
        self._names: dict[str, dict[int, str]] = {"users": {}, "groups": {}}
        self._forwards: dict[str, str] = {}  # remote socket -> its local end (forward_socket)

    @property
    def where(self) -> str:
        return f"host {self.host.name} ({self.host.ssh})"

    def argv(self) -> list[str]:
        return [
            ssh_program(),
            *ssh_options(self.host),
            "-o",
            "ControlMaster=yes",
            "-o",
            f"ControlPath={self.control_path}",
            "-o",
            "ControlPersist=no",
            "--",
            self.host.ssh,
            self.command(),
        ]

    def command(self) -> str:
        """What ssh asks the target to run."""
        return agent_command(self.host)

    def payload(self) -> bytes:
        """What the target reads first, before any request."""
        return agent_payload()

    @property
    def fetch_through(self) -> probe.Fetch:
        """Probing from the host itself (``via: host``): ``ssh -W`` on this connection."""
        from certbot_fanout.tunnel import Tunnel

        argv = [
            ssh_program(),
            *ssh_options(self.host),
            "-o",
            "ControlMaster=no",
            "-o",
            f"ControlPath={self.control_path}",
        ]
        return Tunnel(argv, self.host.ssh, self.host.name).fetch

    # -- starting and stopping ------------------------------------------------------------

    def open(self) -> None:
        """Connect, start the agent, and wait for its greeting (then in ``hello``).

        Raises:
            HostError: ssh failed (its words), the target has no usable python, or the agent
                did not answer within the connect timeout and a margin.
        """
        self._stderr = tempfile.TemporaryFile()  # noqa: SIM115 (kept until close())
        try:
            self.proc = subprocess.Popen(
                self.argv(),
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=self._stderr,
                start_new_session=True,
                close_fds=True,
            )
        except OSError as e:
            raise HostError(f"{self.where}: cannot start ssh: {e.strerror}") from None
        assert self.proc.stdin is not None and self.proc.stdout is not None
        greeting: list[dict[str, Any] | BaseException | None] = []
        got = threading.Event()

        def first() -> None:
            assert self.proc is not None and self.proc.stdout is not None
            try:
                greeting.append(wire.read_frame(self.proc.stdout))
            except (wire.WireError, OSError, ValueError) as e:
                greeting.append(e)
            got.set()

        threading.Thread(target=first, daemon=True, name=f"hello-{self.host.name}").start()
        try:
            payload = self.payload()
            if payload:
                self.proc.stdin.write(payload)
                self.proc.stdin.flush()
        except OSError:
            pass  # ssh is gone already: its exit says why
        if not got.wait(self.host.connect_timeout + MARGIN):
            self._kill()
            raise HostError(
                f"{self.where}: no answer within {self.host.connect_timeout + MARGIN:g} s "
                f"(ssh: {self._ssh_words() or 'nothing said'})"
            )
        message = greeting[0]
        if not isinstance(message, dict):
            raise HostError(self._failure_text(message))
        try:
            self.greeted(message)
        except HostError:
            self._kill()
            raise
        self._reader = threading.Thread(
            target=self._read_answers, daemon=True, name=f"agent-{self.host.name}"
        )
        self._reader.start()

    def greeted(self, message: dict[str, Any]) -> None:
        """Take the target's first message, or say why it cannot serve (HostError)."""
        if message.get("hello") != wire.PROTOCOL:
            error = message.get("error") or f"protocol {message.get('hello')!r}"
            raise HostError(
                f"{self.where}: the agent cannot run there: {printable(str(error))} "
                f"(certbot-fanout {__version__} needs python "
                f"{'.'.join(map(str, OLDEST_PYTHON))} or later on the target; set "
                f"hosts.{self.host.name}.python)"
            )
        self.hello = Hello(str(message.get("python")), int(message["pid"]), int(message["uid"]))

    def _failure_text(self, message: object) -> str:
        """Why ssh ended before the agent spoke: ssh's exit and its words."""
        assert self.proc is not None
        try:
            code = self.proc.wait(timeout=self.host.connect_timeout + MARGIN)
        except subprocess.TimeoutExpired:
            self._kill()
            code = None
        words = self._ssh_words()
        if code == 127:
            return (
                f"{self.where}: {self.host.python} not found on the target "
                f"({words or 'exit 127'}); install python3 (3.9 or later) there, or set "
                f"hosts.{self.host.name}.python"
            )
        if isinstance(message, BaseException):
            words = words or str(message)
        hint = ""
        if code == 255 and not _has_entries(self.host.known_hosts):
            hint = (
                f" ({self.host.known_hosts} pins no host key yet: check and pin this one "
                f"with `certbot-fanout hosts trust {self.host.name}`)"
            )
        return f"{self.where}: ssh failed (exit {code}): {words or 'it said nothing'}{hint}"

    def _ssh_words(self) -> str:
        """The last lines ssh (or the remote shell) wrote to stderr, escaped."""
        if self._stderr is None:
            return ""
        self._stderr.seek(0, os.SEEK_END)
        size = self._stderr.tell()
        self._stderr.seek(max(0, size - STDERR_BYTES))
        text = self._stderr.read().decode("utf-8", "replace")
        lines = [line.strip() for line in text.splitlines() if line.strip()]
        lines = [line for line in lines if not set(line) <= set("@")]
        return printable("; ".join(lines[-3:]))

    def close(self) -> None:
        """End the agent (its stdin closes), then ssh; kill them if they linger."""
        proc = self.proc
        if proc is None:
            return
        with contextlib.suppress(OSError):
            assert proc.stdin is not None
            proc.stdin.close()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self._kill()
        if self._reader is not None:
            self._reader.join(timeout=5)
        if proc.stdout is not None:
            proc.stdout.close()
        if self._stderr is not None:
            self._stderr.close()
        self.proc = None

    def _kill(self) -> None:
        proc = self.proc
        if proc is None:
            return
        with contextlib.suppress(OSError):
            proc.kill()
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=5)

    # -- requests -------------------------------------------------------------------------

    def _read_answers(self) -> None:
        assert self.proc is not None and self.proc.stdout is not None
        why = "the connection ended"
        try:
            while True:
                message = wire.read_frame(self.proc.stdout)
                if message is None:
                    break
                with self._lock:
                    pending = self._pending.pop(message.get("id"), None)  # type: ignore[arg-type]
                if pending is not None:
                    pending.answer = message
                    pending.done.set()
        except (wire.WireError, OSError, ValueError) as e:
            why = str(e)
        code = None
        with contextlib.suppress(subprocess.TimeoutExpired):
            code = self.proc.wait(timeout=5)
        words = self._ssh_words()
        detail = f"ssh exit {code}" if code is not None else "ssh still running"
        self._fail_all(f"{why} ({detail}{': ' + words if words else ''})")

    def _fail_all(self, why: str) -> None:
        with self._lock:
            self._dead = why
            pending, self._pending = self._pending, {}
        for item in pending.values():
            item.done.set()

    def call(self, op: str, args: dict[str, Any], timeout: float) -> Any:
        """Ask the agent; its result.

        Raises:
            HostError: the connection is gone or broke, or no answer came in time.
            RemoteFailure: the agent answered with an error (its kind and message).
        """
        item = _Pending()
        with self._lock:
            if self._dead is not None or self.proc is None:
                raise HostError(f"{self.where}: connection lost: {self._dead or 'not open'}")
            ident = next(self._ids)
            self._pending[ident] = item
        try:
            assert self.proc.stdin is not None
            with self._write_lock:
                wire.write_frame(self.proc.stdin, {"id": ident, "op": op, "args": args})
        except (OSError, ValueError, wire.WireError) as e:
            with self._lock:
                self._pending.pop(ident, None)
            raise HostError(f"{self.where}: connection lost: {e}") from None
        if not item.done.wait(timeout + MARGIN):
            with self._lock:
                self._pending.pop(ident, None)
            raise HostError(f"{self.where}: no answer to {op} within {timeout + MARGIN:g} s")
        answer = item.answer
        if answer is None:
            raise HostError(f"{self.where}: connection lost: {self._dead}")
        if answer.get("ok"):
            return answer.get("result")
        error = answer.get("error") or {}
        raise RemoteFailure(str(error.get("type")), str(error.get("message")))

    # -- what a deploy calls --------------------------------------------------------------

    def resolve(
        self, users: Iterable[str], groups: Iterable[str]
    ) -> tuple[dict[str, int | None], dict[str, int | None]]:
        """Users and groups by name on the target (None: no such account there)."""
        found = self.call(
            "resolve", {"users": sorted(set(users)), "groups": sorted(set(groups))}, FILE_TIMEOUT
        )
        users_found = {str(k): (None if v is None else int(v)) for k, v in found["users"].items()}
        groups_found = {str(k): (None if v is None else int(v)) for k, v in found["groups"].items()}
        for name, uid in users_found.items():
            if uid is not None:
                self._names["users"][uid] = name
        for name, gid in groups_found.items():
            if gid is not None:
                self._names["groups"][gid] = name
        return users_found, groups_found

    def _file_call(self, op: str, args: dict[str, Any]) -> Any:
        try:
            return self.call(op, args, FILE_TIMEOUT)
        except HostError as e:
            raise PlacementError(str(e)) from None
        except RemoteFailure as e:
            raise PlacementError(f"on {self.host.name}: {e.message}") from None

    def snapshot(self, path: str) -> files.Snapshot:
        snap = wire.snapshot_from_wire(self._file_call("snapshot", {"path": path}))
        self._learn_names([snap.uid], [snap.gid])
        return snap

    def place(self, desired: files.Desired) -> None:
        self._file_call("place", {"desired": wire.desired_to_wire(desired)})

    def restore(self, previous: files.Snapshot) -> None:
        self._file_call("restore", {"snapshot": wire.snapshot_to_wire(previous)})

    def remove_leftovers(self, path: str) -> None:
        with contextlib.suppress(PlacementError):
            self._file_call("remove_leftovers", {"path": path})

    def reader_problem(self, path: str, uid: int, gid: int) -> str | None:
        found = self._file_call("reader_problem", {"path": path, "uid": uid, "gid": gid})
        return None if found is None else str(found)

    def enter_problem(self, directory: str, uid: int, gid: int) -> str | None:
        found = self._file_call("enter_problem", {"directory": directory, "uid": uid, "gid": gid})
        return None if found is None else str(found)

    def program_problem(self, program: str) -> str | None:
        """Why the target would not run ``program`` (found and trusted as a deploy there
        requires), in a sentence; None: it would."""
        found = self._file_call("program_problem", {"program": program})
        return None if found is None else str(found)

    def stale_views(
        self, pid: int, items: list[tuple[str, str, bool]], restart: str, binds: bool
    ) -> list[str]:
        """What process ``pid`` on the target sees wrong of each file (see
        :func:`procview.stale_views`)."""
        args = {"pid": pid, "files": [list(i) for i in items], "restart": restart, "binds": binds}
        return [str(p) for p in self._file_call("stale_views", args)]

    def forward_socket(self, remote_path: str) -> str:
        """A unix socket here that reaches ``remote_path`` (a socket on the target, such as
        its container engine's) through this connection: ``ssh -O forward -L``, once per
        path; the local end is in the run's 0700 control directory.

        Raises:
            HostError: ssh refused the forward (its words), e.g. the target's sshd forbids
                stream-local forwarding.
        """
        with self._lock:
            known = self._forwards.get(remote_path)
        if known is not None:
            return known
        digest = hashlib.sha256(remote_path.encode()).hexdigest()[:12]
        local = os.path.join(os.path.dirname(self.control_path), f"{self.host.name}-{digest}.sock")
        # ClearAllForwardings (in ssh_options) would clear this -L too: not for this command.
        argv = [
            ssh_program(),
            *_without_clear(ssh_options(self.host)),
            "-o",
            f"ControlPath={self.control_path}",
            "-O",
            "forward",
            "-L",
            f"{local}:{remote_path}",
            "--",
            self.host.ssh,
        ]
        try:
            done = subprocess.run(
                argv, capture_output=True, timeout=FILE_TIMEOUT, stdin=subprocess.DEVNULL
            )
        except (OSError, subprocess.TimeoutExpired) as e:
            raise HostError(f"{self.where}: cannot forward {remote_path}: {e}") from None
        if done.returncode != 0:
            words = done.stderr.decode("utf-8", "replace").strip()[-300:]
            raise HostError(f"{self.where}: ssh would not forward {remote_path}: {words}")
        with self._lock:
            self._forwards[remote_path] = local
        return local

    def directory(self, directory: str) -> tuple[bool, tuple[str, ...]]:
        """Whether ``directory`` is one on the target, and its default ACL's named entries."""
        found = self._file_call("directory", {"directory": directory})
        return bool(found["isdir"]), tuple(str(e) for e in found["default_acl"])

    def run(
        self, argv: Iterable[str], timeout: float, what: str = "command"
    ) -> commands.CommandResult:
        argv = tuple(argv)
        try:
            found = self.call(
                "run", {"argv": list(argv), "timeout": timeout, "what": what}, timeout
            )
        except HostError as e:
            raise CommandError(f"{what} `{' '.join(argv)}` on {self.host.name}: {e}") from None
        except RemoteFailure as e:
            raise CommandError(f"on {self.host.name}: {e.message}") from None
        return commands.CommandResult(
            argv, int(found["returncode"]), str(found["output"]), float(found["seconds"])
        )

    def _learn_names(self, uids: Iterable[int], gids: Iterable[int]) -> None:
        uids = [u for u in uids if u not in self._names["users"]]
        gids = [g for g in gids if g not in self._names["groups"]]
        if not uids and not gids:
            return
        with contextlib.suppress(HostError, RemoteFailure):
            found = self.call("names", {"uids": uids, "gids": gids}, FILE_TIMEOUT)
            for uid, name in found["users"].items():
                self._names["users"][int(uid)] = str(name)
            for gid, name in found["groups"].items():
                self._names["groups"][int(gid)] = str(name)

    def user_name(self, uid: int) -> str:
        return self._names["users"].get(uid, str(uid))

    def group_name(self, gid: int) -> str:
        return self._names["groups"].get(gid, str(gid))

    def compare(self, desired: files.Desired, current: files.Snapshot) -> list[files.Difference]:
        """:func:`files.compare`, with the target's names for owners and groups."""
        self._learn_names([desired.uid], [desired.gid])
        return files.compare(desired, current, user=self.user_name, group=self.group_name)


class RemoteFailure(Exception):
    """The agent answered a request with an error."""

    def __init__(self, kind: str, message: str) -> None:
        super().__init__(message)
        self.kind = kind
        self.message = message


class Hosts:
    """The sessions of one run: each host connected once, when its first consumer needs it,
    at most ``jobs`` connecting at a time; every one closed when the run ends."""

    def __init__(
        self,
        hosts: Iterable[Host],
        consumers: Iterable[Consumer],
        jobs: int,
        session_for: Callable[[Host, str], Session] = Session,
    ) -> None:
        """``session_for(host, control_path)``: the session of a host (another kind for a
        receive-mode host; see :mod:`certbot_fanout.remote_receive`)."""
        self._session_for = session_for
        self.hosts = {h.name: h for h in hosts}
        self.consumers: dict[str, list[Consumer]] = {}
        for c in consumers:
            if c.host is not None:
                self.consumers.setdefault(c.host, []).append(c)
        self._gate = threading.BoundedSemaphore(max(1, jobs))
        # Consumers of each host not yet released: its session closes when none is left, so
        # a run over many hosts keeps only those in progress open (processes, descriptors).
        self._remaining = {name: len(found) for name, found in self.consumers.items()}
        self._count_lock = threading.Lock()
        self._locks = {name: threading.Lock() for name in (*self.hosts, *self.consumers)}
        self._opened: dict[str, Session | HostError] = {}
        self._accounts: dict[str, tuple[dict[str, int | None], dict[str, int | None]]] = {}
        self._stack = contextlib.ExitStack()
        self._control = ""

    def __enter__(self) -> Hosts:
        self._control = self._stack.enter_context(control_directory())
        return self

    def __exit__(self, *exc: object) -> None:
        sessions = [s for s in self._opened.values() if isinstance(s, Session)]
        threads = [threading.Thread(target=s.close) for s in sessions]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        self._stack.close()

    def release(self, consumer: Consumer) -> None:
        """``consumer`` is done with its host: the last one of a host closes its session."""
        if consumer.host is None or consumer.host not in self._remaining:
            return
        with self._count_lock:
            self._remaining[consumer.host] -= 1
            last = self._remaining[consumer.host] == 0
            found = self._opened.get(consumer.host) if last else None
        if isinstance(found, Session):
            found.close()

    def session(self, name: str) -> Session:
        """The open session of host ``name``, connecting first if no consumer has yet.

        Raises:
            HostError: the host could not be reached (every consumer of it gets the same).
        """
        with self._locks[name]:
            found = self._opened.get(name)
            if found is None:
                found = self._open(name)
                self._opened[name] = found
        if isinstance(found, HostError):
            raise found
        return found

    def _open(self, name: str) -> Session | HostError:
        index = sorted(self.hosts).index(name)
        session = self._session_for(self.hosts[name], os.path.join(self._control, f"h{index}"))
        with self._gate:
            try:
                session.open()
                if not session.resolves_accounts:
                    self._accounts[name] = ({}, {})
                    return session
                users = {f.owner_name for c in self.consumers.get(name, []) for f in c.files}
                groups = {f.group_name for c in self.consumers.get(name, []) for f in c.files}
                self._accounts[name] = session.resolve(users, groups)
            except HostError as e:
                session.close()
                return e
            except RemoteFailure as e:
                session.close()
                return HostError(f"{session.where}: {e.message}")
        return session

    def prepare(self, consumer: Consumer) -> tuple[Session, Consumer]:
        """The session of ``consumer``'s host, and the consumer with its owners and groups as
        that host numbers them.

        Raises:
            HostError: the host could not be reached.
            PlacementError: an owner or group does not exist there (nothing was touched).
        """
        assert consumer.host is not None
        session = self.session(consumer.host)
        users, groups = self._accounts[consumer.host]
        specs = []
        for spec in consumer.files:
            uid = spec.owner if spec.owner != REMOTE_ID else users.get(spec.owner_name)
            gid = spec.group if spec.group != REMOTE_ID else groups.get(spec.group_name)
            for kind, value, name in (
                ("user", uid, spec.owner_name),
                ("group", gid, spec.group_name),
            ):
                if value is None:
                    raise PlacementError(
                        f"{spec.path}: {kind} {name} does not exist on {consumer.host}; nothing "
                        f"was placed there for {consumer.name} (create the {kind} on "
                        f"{consumer.host}, or use a numeric id)"
                    )
            assert uid is not None and gid is not None
            specs.append(replace(spec, owner=uid, group=gid))
        return session, replace(consumer, files=tuple(specs))
