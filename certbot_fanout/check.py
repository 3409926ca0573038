"""Preflight: will a deploy work on this host? Finds what would break it, changes nothing."""

from __future__ import annotations

import contextlib
import os
import socket
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

from certbot_fanout import commands, files, trust, verify
from certbot_fanout import probe as probe_module
from certbot_fanout.deploy import Effects, Places, loopback_problem
from certbot_fanout.errors import FanoutError, ProbeError
from certbot_fanout.files import default_acl, enter_problem, reader_problem
from certbot_fanout.lineage import Lineage, lineage_dir, read_lineage
from certbot_fanout.model import (
    DEFAULT_HOST_JOBS,
    Config,
    Consumer,
    Endpoint,
    FileSpec,
    Notify,
    address_label,
)

if TYPE_CHECKING:
    from certbot_fanout import remote

CONNECT_TIMEOUT = 5.0


@dataclass(frozen=True)
class Problem:
    where: str  # a consumer name, or "certificate NAME"
    text: str

    def __str__(self) -> str:
        return f"{self.where}: {self.text}"


@dataclass(frozen=True)
class CheckReport:
    problems: tuple[Problem, ...]
    consumers: int
    files: int
    endpoints: int
    probed: bool


def _local_directory(directory: str) -> tuple[bool, tuple[str, ...]]:
    isdir = os.path.isdir(directory)
    return isdir, default_acl(directory) if isdir else ()


def _program_problem(program: str) -> str | None:
    """Why a command's program would not run: found as a deploy finds it (a bare name in
    :data:`commands.COMMAND_PATH` only), and trusted as a deploy requires."""
    path = commands.resolve_program(program)
    if path is None:
        return (
            f"no program named {program} on PATH ({commands.COMMAND_PATH_TEXT}); install it, "
            "or give its full path"
        )
    problem = commands.program_problem(path)
    if problem is not None and problem.fault is trust.Fault.MISSING:
        return commands.not_found_text(path)
    if problem is not None:
        return f"it would not be run: {commands.untrusted_program_text(problem)}"
    if not os.path.isfile(path) or not os.access(path, os.X_OK):
        return f"{path} is not an executable file"
    return None


@dataclass(frozen=True)
class Look:
    """Where a consumer's files and programs are looked at: this host (the defaults), or the
    host it lives on, through that host's session (each call a request to its agent)."""

    host: str | None = None  # the map's host the consumer lives on (None: this one)
    snapshot: Callable[[str], files.Snapshot] = files.snapshot
    directory: Callable[[str], tuple[bool, tuple[str, ...]]] = _local_directory
    reader_problem: Callable[[str, int, int], str | None] = reader_problem
    enter_problem: Callable[[str, int, int], str | None] = enter_problem
    program_problem: Callable[[str], str | None] = _program_problem
    fetch_through: probe_module.Fetch | None = None  # via: host endpoints, when remote

    @property
    def where(self) -> str:
        return f"host {self.host}" if self.host else "this host"

    @property
    def on(self) -> str:
        """`` on host NAME`` for a consumer on another host; nothing for this one."""
        return f" on host {self.host}" if self.host else ""


def run_checks(config: Config, config_dir: str, probe: bool = True) -> CheckReport:
    problems: list[Problem] = []
    lineages: dict[str, Lineage | None] = {}
    for name in config.certificates:
        path = lineage_dir(config_dir, name)
        try:
            lineages[name] = read_lineage(path)
        except FanoutError as e:
            lineages[name] = None
            problems.append(Problem(f"certificate {name}", f"{e}; no deploy can succeed"))
    with contextlib.ExitStack() as stack:
        places = Places(Effects())
        places.open_hosts(stack, config, DEFAULT_HOST_JOBS)
        hosts = places.hosts
        for consumer in config.consumers:
            lineage = lineages.get(consumer.certificate)
            if consumer.host is None:
                located, found = _in_containers(consumer, None)
                problems.extend(found)
                problems.extend(_preflight_consumer(located, lineage, probe, Look()))
                continue
            assert hosts is not None
            try:
                located, look = _remote_look(hosts, consumer)
                session = hosts.session(consumer.host) if located.container else None
                forward = getattr(session, "forward_socket", None)
                located, found = _in_containers(located, forward)
                problems.extend(found)
                problems.extend(_preflight_consumer(located, lineage, probe, look))
            except FanoutError as e:  # the host unreachable, or an owner missing there
                problems.append(Problem(consumer.name, str(e)))
            finally:
                hosts.release(consumer)  # its host's last consumer closes the connection
    return CheckReport(
        # Each distinct problem once: files in one missing directory share its problem.
        problems=tuple(dict.fromkeys(problems)),
        consumers=len(config.consumers),
        files=sum(len(c.files) for c in config.consumers),
        endpoints=sum(len(c.verify) for c in config.consumers),
        probed=probe,
    )


def _in_containers(
    consumer: Consumer, forward: Callable[[str], str] | None
) -> tuple[Consumer, list[Problem]]:
    """A container consumer's engine and containers looked at (what a deploy would refuse),
    and the consumer without the files it would copy into them (not on the host, so not
    checked there); any other consumer as it is. ``forward``: the engine's socket reached
    through its host's connection."""
    if consumer.container is None:
        return consumer, []
    from certbot_fanout import containers

    try:
        engine = forward(consumer.container.engine) if forward else None
        refused, copied = containers.preflight(consumer, engine)
    except FanoutError as e:
        return replace(consumer, files=()), [Problem(consumer.name, str(e))]
    kept = tuple(spec for spec in consumer.files if spec.path not in copied)
    return replace(consumer, files=kept), [Problem(consumer.name, why) for why in refused]


def _remote_look(hosts: remote.Hosts, consumer: Consumer) -> tuple[Consumer, Look]:
    """``consumer`` as its host numbers its owners, and how to look at it there.

    Raises:
        FanoutError: the host could not be reached, or an owner does not exist there.
    """
    assert consumer.host is not None
    if hosts.hosts[consumer.host].mode == "receive":
        # Its own map decides its files and commands (`check` there looks at them).
        return replace(consumer, files=(), test=None, reload=None), Look(host=consumer.host)
    session, located = hosts.prepare(consumer)
    look = Look(
        host=consumer.host,
        snapshot=session.snapshot,
        directory=session.directory,
        reader_problem=session.reader_problem,
        enter_problem=session.enter_problem,
        program_problem=session.program_problem,
        fetch_through=session.fetch_through,
    )
    return located, look


def _preflight_consumer(
    consumer: Consumer, lineage: Lineage | None, probe: bool, look: Look
) -> list[Problem]:
    """What would break a deploy to ``consumer``: its files, its commands, its endpoints."""
    found: list[str] = []
    for spec in consumer.files:
        try:
            found.extend(_check_file(spec, lineage, look))
        except FanoutError as e:  # unreadable there, or the host's connection lost
            found.append(f"{spec.path}: {e}")
    for what, argv in (("test", consumer.test), ("reload", consumer.reload)):
        if argv:
            try:
                problem = look.program_problem(argv[0])
            except FanoutError as e:
                problem = str(e)
            if problem:
                command = " ".join(argv)
                found.append(f"the {what} command `{command}` cannot run{look.on}: {problem}")
    if consumer.notify:
        found.extend(_notify_problems(consumer.notify))
    if probe:
        for ep in consumer.verify:
            found.extend(_endpoint_problems(ep, consumer.host, look))
    return [Problem(consumer.name, text) for text in found]


def _notify_problems(notify: Notify) -> list[str]:
    """What would keep a notifier from delivering: its program, and a webhook's files."""
    found = []
    programs = []
    if notify.mail:
        programs.append(("mail notifier's sendmail", notify.sendmail))
    if notify.command is not None:
        programs.append(("notify command", notify.command))
    for what, argv in programs:
        problem = _program_problem(argv[0])
        if problem:
            found.append(f"the {what} `{' '.join(argv)}` cannot run: {problem}")
    hook = notify.webhook
    if hook is not None and hook.headers_file is not None:
        from certbot_fanout.notify import read_headers  # only for a map with a webhook

        try:
            read_headers(hook.headers_file)
        except FanoutError as e:
            found.append(f"the webhook {hook.url} would not be told: {e}")
    if hook is not None and hook.ca_file is not None and not os.access(hook.ca_file, os.R_OK):
        found.append(f"the webhook's ca_file {hook.ca_file} cannot be read")
    return found


def _endpoint_problems(ep: Endpoint, host: str | None = None, look: Look = Look()) -> list[str]:
    """Every address of ``ep`` that accepts no connection (for a federation endpoint: of
    each place its name leads peers to, the well-known's server included). For a consumer on
    another ``host``: a ``via: host`` endpoint is reached through it, and a loopback is not
    probed here."""
    if ep.via_host:
        assert look.fetch_through is not None
        try:
            look.fetch_through(ep.host, ep.port, ep.server_name, CONNECT_TIMEOUT, ep.starttls)
        except ProbeError as e:
            return [str(e)]
        return []
    if host is not None:
        problem = loopback_problem(ep.host, ep.port, host)
        if problem is not None:
            return [problem]
    try:
        places = _places(ep)
    except ProbeError as e:
        return [f"{ep.label}: {e}"]
    found = []
    for host, port in places:
        try:
            addresses = verify.addresses(host, port, ep.family, CONNECT_TIMEOUT)
        except ProbeError as e:
            found.append(str(e))
            continue
        of = ep.label if ep.federation else host
        for address in addresses:
            where = address_label(address, port) + (f" (of {of})" if of != address else "")
            try:
                with socket.create_connection((address, port), timeout=CONNECT_TIMEOUT):
                    pass
            except OSError as e:
                reason = e.strerror or str(e) or type(e).__name__
                found.append(
                    f"nothing accepts connections at {where} ({reason}); is the service "
                    "running, and is this the address and port it listens on?"
                )
    return found


def _places(ep: Endpoint) -> list[tuple[str, int]]:
    if ep.federation is None:
        return [(ep.host, ep.port)]
    from certbot_fanout import federation  # only when a federation endpoint is checked

    resolution = federation.resolve(ep.federation, timeout=CONNECT_TIMEOUT, ca_file=ep.ca_file)
    targets = (*resolution.targets, *resolution.well_known)
    return list(dict.fromkeys((t.host, t.port) for t in targets))


def _check_file(spec: FileSpec, lineage: Lineage | None, look: Look) -> list[str]:
    found = []
    who = spec.owner_name
    if spec.link:
        if lineage is not None:
            target = lineage.live_path(spec.content[0])
            problem = reader_problem(target, spec.owner, spec.group)
            if problem:
                found.append(
                    f"{spec.path} is to be a link to {target}, but {problem}: "
                    f"{who} could not read its certificate through it (certbot keeps live/ "
                    "and archive/ at mode 0700); place a copy instead (drop 'link')"
                )
        return found
    if spec.holds_key and spec.mode & 0o004:
        found.append(
            f"{spec.path} holds the private key, and its configured mode {spec.mode:04o} lets "
            f'every user on {look.where} read it; use mode "0600", or "0640" with a group'
        )
    directory = os.path.dirname(spec.path)
    isdir, default_entries = look.directory(directory)
    if not isdir:
        found.append(
            f"the directory {directory} does not exist{look.on}; create it (with the owner and "
            f"mode {who} needs to reach it) before the first deploy"
        )
        return found
    acl = default_entries if spec.holds_key else ()
    if acl:
        found.append(
            f"{directory}, where {spec.path} holds the private key, has a default ACL "
            f"({', '.join(acl)}) that every file created there inherits; certbot-fanout strips "
            f"it from the key it places, but not from what others create there: remove it "
            f"(setfacl -k {directory})"
        )
    current = look.snapshot(spec.path)
    if current.kind is not files.Kind.MISSING:
        if spec.holds_key and current.kind is files.Kind.FILE and current.mode & 0o004:
            found.append(
                f"{spec.path} holds the private key and is readable by every user on "
                f"{look.where} right now (mode {current.mode:04o}); the next deploy fixes it"
            )
        problem = look.reader_problem(spec.path, spec.owner, spec.group)
    else:
        problem = look.enter_problem(directory, spec.owner, spec.group)
    if problem:
        found.append(
            f"{who} is to own {spec.path} but could not read it: {problem}; let {who} "
            "(or its group) enter every directory on the way, or place the file elsewhere"
        )
    return found
