"""Preflight: will a deploy work on this host? Finds what would break it, changes nothing."""

from __future__ import annotations

import os
import socket
import stat
from dataclasses import dataclass

from certbot_fanout import commands, trust, verify
from certbot_fanout.errors import FanoutError, ProbeError
from certbot_fanout.files import default_acl, enter_problem, reader_problem
from certbot_fanout.lineage import Lineage, lineage_dir, read_lineage
from certbot_fanout.model import Config, Consumer, Endpoint, FileSpec, Notify, address_label

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
    for consumer in config.consumers:
        problems.extend(_preflight_consumer(consumer, lineages.get(consumer.certificate), probe))
    return CheckReport(
        # Each distinct problem once: files in one missing directory share its problem.
        problems=tuple(dict.fromkeys(problems)),
        consumers=len(config.consumers),
        files=sum(len(c.files) for c in config.consumers),
        endpoints=sum(len(c.verify) for c in config.consumers),
        probed=probe,
    )


def _preflight_consumer(consumer: Consumer, lineage: Lineage | None, probe: bool) -> list[Problem]:
    """What would break a deploy to ``consumer``: its files, its commands, its endpoints."""
    found: list[str] = []
    for spec in consumer.files:
        found.extend(_check_file(spec, lineage))
    for what, argv in (("test", consumer.test), ("reload", consumer.reload)):
        if argv:
            problem = _program_problem(argv[0])
            if problem:
                found.append(f"the {what} command `{' '.join(argv)}` cannot run: {problem}")
    if consumer.notify:
        found.extend(_notify_problems(consumer.notify))
    if probe:
        for ep in consumer.verify:
            found.extend(_endpoint_problems(ep))
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


def _endpoint_problems(ep: Endpoint) -> list[str]:
    """Every address of ``ep`` that accepts no connection (for a federation endpoint: of
    each place its name leads peers to, the well-known's server included)."""
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


def _check_file(spec: FileSpec, lineage: Lineage | None) -> list[str]:
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
            'every user on this host read it; use mode "0600", or "0640" with a group'
        )
    directory = os.path.dirname(spec.path)
    if not os.path.isdir(directory):
        found.append(
            f"the directory {directory} does not exist; create it (with the owner and mode "
            f"{who} needs to reach it) before the first deploy"
        )
        return found
    acl = default_acl(directory) if spec.holds_key else ()
    if acl:
        found.append(
            f"{directory}, where {spec.path} holds the private key, has a default ACL "
            f"({', '.join(acl)}) that every file created there inherits; certbot-fanout strips "
            f"it from the key it places, but not from what others create there: remove it "
            f"(setfacl -k {directory})"
        )
    if os.path.lexists(spec.path):
        st = os.lstat(spec.path)
        if spec.holds_key and stat.S_ISREG(st.st_mode) and st.st_mode & 0o004:
            found.append(
                f"{spec.path} holds the private key and is readable by every user on this host "
                f"right now (mode {stat.S_IMODE(st.st_mode):04o}); the next deploy fixes it"
            )
        problem = reader_problem(spec.path, spec.owner, spec.group)
    else:
        problem = enter_problem(directory, spec.owner, spec.group)
    if problem:
        found.append(
            f"{who} is to own {spec.path} but could not read it: {problem}; let {who} "
            "(or its group) enter every directory on the way, or place the file elsewhere"
        )
    return found


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
