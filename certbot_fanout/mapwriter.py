"""A first map from what discover found: the plan of each consumer, and writing it as a file.

:func:`plan_map` turns a :class:`~certbot_fanout.discover.DiscoverReport` into a
:class:`FirstMap`: one consumer per recognised service (by the configuration that names the
certificate, or by the process that listens on a port serving it), with the test and reload
of its preset, the files found for it and the endpoints it listens on; one consumer for each
find no service was recognised for; one for each running container whose mounts carry a
certificate (``container: {name: ...}``, the files it mounts, the ports it publishes; the
copies it mounts are not consumers of their own). What the scan could not know is a placeholder
(:func:`certbot_fanout.yamlnode.placeholder`), which ``check`` names until it is
filled in.

A find whose name holds a control character, or is not UTF-8 (the map holds only UTF-8
text), is left out with a note: a found name only ever reaches the map as a quoted YAML value,
never as a comment or a key. :func:`listener_owners` reads ``/proc`` to say which service
(or container) holds a listening socket; :func:`write_new_file` writes the map without ever
replacing a file.
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import grp
import ipaddress
import os
import pwd
import re
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import NamedTuple

import yaml

from certbot_fanout.discover import ContainerFind, Copy, DiscoverReport, Find, FindKind
from certbot_fanout.errors import FanoutError
from certbot_fanout.model import DEFAULT_ENGINE_SOCKET
from certbot_fanout.presets import PRESETS
from certbot_fanout.yamlnode import placeholder

# Which preset a listening process is, by its name (/proc/PID/comm) or, for an interpreter,
# by a word of its command line.
_PROCESS_NAMES: Mapping[str, str] = {
    "nginx": "nginx",
    "apache2": "apache",
    "httpd": "apache",
    "haproxy": "haproxy",
    "dovecot": "dovecot",
    "exim4": "exim",
    "postgres": "postgresql",
    "mariadbd": "mariadb",
    "mysqld": "mariadb",
    "turnserver": "coturn",
    "mosquitto": "mosquitto",
    "lighttpd": "lighttpd",
    "prosody": "prosody",
}
_COMMAND_WORDS: Mapping[str, str] = {
    "synapse.app.homeserver": "synapse",
    "synctl": "synapse",
    "prosody": "prosody",
    "ejabberd": "ejabberd",
    "/usr/lib/postfix/sbin/master": "postfix",
}
# Services whose one combined file holds the chain before the key.
_CHAIN_FIRST = ("haproxy", "ejabberd")
_NAME_CHARS = re.compile(r"[^A-Za-z0-9._-]+")
_ACCOUNT_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9._-]*$")
_PROC_BUDGET = 2.0  # seconds for reading /proc
_MAX_FD_LINKS = 200_000


@dataclass(frozen=True)
class MapFile:
    """One ``files:`` entry: a found path (or a placeholder), what it holds, as whom."""

    path: str
    content: tuple[str, ...]
    owner: str | int
    group: str | int
    mode: int


@dataclass(frozen=True)
class MapEndpoint:
    """One ``verify:`` endpoint, from a listener that served the certificate."""

    host: str
    port: int
    starttls: str | None = None


@dataclass(frozen=True)
class MapConsumer:
    """One consumer of the first map. ``files`` or ``reload`` is a placeholder string where
    the scan could not know it; ``about`` is what the map's comment says of it (the
    program's own words, never a found name)."""

    name: str
    certificate: str
    about: str
    files: tuple[MapFile, ...] | str = ()
    host: str | None = None  # the map's host it lives on (None: this host)
    container: str | None = None  # the name of the container it is (container: {name: ...})
    engine: str | None = None  # that container's engine socket, when not the default
    test: tuple[str, ...] | None = None
    reload: tuple[str, ...] | str | None = None
    verify: tuple[MapEndpoint, ...] = ()
    notes: str = ""

    @property
    def unfilled(self) -> int:
        """How many of its fields are placeholders."""
        count = int(isinstance(self.files, str)) + int(isinstance(self.reload, str))
        if not isinstance(self.files, str):
            count += sum(f.path.startswith("<fill in: ") for f in self.files)
        return count


@dataclass(frozen=True)
class LeftOut:
    """A find that is not in the map, and why (``where`` is shown escaped, never in YAML)."""

    where: str
    why: str


@dataclass(frozen=True)
class FirstMap:
    """What ``discover --write-map`` writes: the consumers, and what it left out."""

    consumers: tuple[MapConsumer, ...]
    left_out: tuple[LeftOut, ...]
    config_dir: str | None = None  # certbot's directory, when not the default

    @property
    def unfilled(self) -> int:
        return sum(c.unfilled for c in self.consumers)


# -- refusing names -----------------------------------------------------------------------


def refusal(name: str) -> str | None:
    """Why a found name cannot go into a map, or None when it can (as a quoted value)."""
    if any(ord(c) < 0x20 or 0x7F <= ord(c) < 0xA0 for c in name):
        return "its name holds a control character"
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:
        return "its name is not UTF-8 (a map holds only UTF-8 text)"
    if not name.isprintable():
        return "its name holds a character that is not printable"
    return None


def find_refusal(find: Find) -> str | None:
    """Why the find cannot go into a map: its path, or its lineage's name, is refused."""
    for name in (find.where, find.certificate):
        why = refusal(name)
        if why is not None:
            return why
    return None


# -- the plan ------------------------------------------------------------------------------


def plan_map(
    report: DiscoverReport,
    owners: Mapping[int, Owner] | None = None,
    config_dir: str | None = None,
) -> FirstMap:
    """The first map of what discover found; ``owners`` says whose each listening port is
    (:func:`listener_owners`)."""
    owners = owners or {}
    services = {port: o.service for port, o in owners.items() if o.service}
    groups: dict[tuple[str, str], list[Find]] = {}
    alone: list[Find] = []
    names: set[str] = set()
    in_containers = _in_containers(report, owners, names)
    left_out = in_containers.left_out
    for find in report.finds:
        if in_containers.claims(find):
            continue
        why = find_refusal(find)
        if why is not None:
            left_out.append(LeftOut(find.where, why))
            continue
        service = _service_of(find, services)
        if service is None:
            alone.append(find)
        else:
            groups.setdefault((service, find.certificate), []).append(find)
    per_service: dict[str, int] = {}
    for service, _cert in groups:
        per_service[service] = per_service.get(service, 0) + 1
    consumers: list[MapConsumer] = []
    for (service, cert), finds in groups.items():
        name = service if per_service[service] == 1 else f"{service}-{cert}"
        consumers.append(_service_consumer(_unique(name, names), service, cert, finds))
    for find in alone:
        consumers.append(_lone_consumer(_unique(_lone_name(find), names), find))
    return FirstMap((*consumers, *in_containers.consumers), tuple(left_out), config_dir)


class _InContainers(NamedTuple):
    """The containers' consumers of a first map, and the finds that are theirs."""

    consumers: list[MapConsumer]
    left_out: list[LeftOut]
    files: set[str]  # the host paths their mounts carry
    ports: set[int]  # the ports their processes listen on

    def claims(self, find: Find) -> bool:
        """Whether ``find`` is a container's (a file it mounts, a port it listens on), so
        not a consumer of its own."""
        if find.kind is FindKind.FILE:
            return find.where in self.files
        listener = find.listener
        return (
            find.kind is FindKind.LISTENER and listener is not None and listener.port in self.ports
        )


def _in_containers(
    report: DiscoverReport, owners: Mapping[int, Owner], names: set[str]
) -> _InContainers:
    """A consumer for each container; what its processes listen on (a listening socket held
    in its mount namespace) goes to it, not to a service of this host."""
    inside = {f.namespace: f.container for f in report.containers if f.namespace}
    theirs = {port: inside[o.namespace] for port, o in owners.items() if o.namespace in inside}
    listens: dict[str, list[MapEndpoint]] = {}
    for find in report.finds:
        endpoint = _endpoint(find)
        if find.kind is FindKind.LISTENER and endpoint and endpoint.port in theirs:
            listens.setdefault(theirs[endpoint.port], []).append(endpoint)
    consumers, left_out = _container_consumers(report.containers, names, listens)
    planned = {c.container for c in consumers}
    return _InContainers(
        consumers,
        left_out,
        files={f.path for c in consumers if not isinstance(c.files, str) for f in c.files},
        ports={port for port, container in theirs.items() if container in planned},
    )


def consumer_for(find: Find, name: str) -> MapConsumer | LeftOut:
    """The consumer that would cover one find (named ``name``), or why it is left out."""
    why = find_refusal(find)
    if why is not None:
        return LeftOut(find.where, why)
    service = _service_of(find, {})
    if service is None:
        planned = _lone_consumer(name, find)
    else:
        planned = _service_consumer(name, service, find.certificate, [find])
    return dataclasses.replace(planned, host=find.host)


def _service_of(find: Find, services: Mapping[int, str]) -> str | None:
    if find.reference is not None and find.reference.service in PRESETS:
        return find.reference.service
    if find.listener is not None:
        return services.get(find.listener.port)
    return None


def _unique(name: str, taken: set[str]) -> str:
    name = _NAME_CHARS.sub("-", name).strip("-") or "consumer"
    candidate, n = name, 1
    while candidate in taken:
        n += 1
        candidate = f"{name}-{n}"
    taken.add(candidate)
    return candidate


def _lone_name(find: Find) -> str:
    if find.listener is not None:
        return f"port-{find.listener.port}"
    return "copy"


def _service_consumer(name: str, service: str, certificate: str, finds: list[Find]) -> MapConsumer:
    """A recognised service: its preset's test and reload, the files found for it (and a
    placeholder for its key when no file found holds one), the endpoints it listens on."""
    test, reload = _preset_commands(service)
    files = [f for f in (_file(find, service) for find in finds) if f is not None]
    verify = tuple(e for e in (_endpoint(find) for find in finds) if e is not None)
    reads_live = any(find.reads_live for find in finds)
    why = []
    if any(find.reference is not None for find in finds):
        why.append("its configuration names the certificate")
    if verify:
        why.append("it listens on a port that serves it")
    about = (
        f"{service}, recognised because {' and '.join(why)}; test and reload are the {service} "
        f"preset's (certbot-fanout presets {service}): change them if this host runs "
        f"{service} otherwise"
    )
    placed: tuple[MapFile, ...] | str = tuple(files)
    if files and not any("privkey" in f.content for f in files):
        first = files[0]
        key = MapFile(
            path=placeholder(
                f"the path of the private key {service} reads with this certificate (its "
                "configuration names it); the file must exist for check to pass"
            ),
            content=("privkey",),
            owner=first.owner,
            group=first.group,
            mode=0o600,
        )
        placed = (*files, key)
    elif not files and not reads_live:
        placed = placeholder(
            f"the files {service} reads this certificate from, as a list of "
            f"{{path: ..., content: ...}} (certbot-fanout presets {service} shows the usual ones)"
        )
    return MapConsumer(
        name=name,
        certificate=certificate,
        about=about,
        files=placed,
        test=test,
        reload=reload or placeholder(f"the command that reloads {service}"),
        verify=verify,
        notes=_notes(finds),
    )


def _lone_consumer(name: str, find: Find) -> MapConsumer:
    """A find no service was recognised for: what it is, and the reload left to fill in."""
    if find.listener is not None:
        about = f"a service listening on port {find.listener.port}, which serves the certificate"
        what = f"the command that makes the service on port {find.listener.port} reload it"
    elif find.reads_live:
        about = "a service that reads certbot's live/ files directly: it needs a reload"
        what = "the command that reloads the service that reads certbot's files"
    else:
        about = "a copy of the certificate found on disk"
        what = (
            "the command that reloads the service reading this copy (if it also reads a "
            "key from another file, add that file with content: privkey)"
        )
    file = _file(find, None)
    endpoint = _endpoint(find)
    return MapConsumer(
        name=name,
        certificate=find.certificate,
        about=about,
        files=(file,) if file else (),
        reload=placeholder(what),
        verify=(endpoint,) if endpoint else (),
        notes=_notes([find]),
    )


def _container_consumers(
    finds: Iterable[ContainerFind], names: set[str], listens: Mapping[str, list[MapEndpoint]]
) -> tuple[list[MapConsumer], list[LeftOut]]:
    """One consumer per running container whose mounts carry a lineage's certificate (per
    certificate, if it carries several), whether the map covers it or not, as for any find
    of a first map. Two containers that mount the same files (replicas) are one consumer's
    to find by label: the second is left out with that said."""
    groups: dict[tuple[str, str], list[ContainerFind]] = {}
    left_out: list[LeftOut] = []
    for find in finds:
        if find.copy is None:
            continue
        why = next(
            (r for r in map(refusal, (find.container, find.source, find.certificate)) if r),
            None,
        )
        if why is not None:
            left_out.append(LeftOut(f"container {find.container}: {find.source}", why))
            continue
        groups.setdefault((find.container, find.certificate), []).append(find)
    planned: list[MapConsumer] = []
    taken: dict[str, str] = {}  # a file's path: the consumer it went to
    certificates = collections.Counter(container for container, _ in groups)
    for (container, certificate), group in groups.items():
        other = next((taken[f.source] for f in group if f.source in taken), None)
        if other is not None:
            why = (
                f"it mounts the files of consumer {other}: give both containers a label and "
                "map them as one consumer with container: {label: ...}"
            )
            left_out.append(LeftOut(f"container {container}", why))
            continue
        several = certificates[container] > 1
        name = _unique(f"{container}-{certificate}" if several else container, names)
        taken.update((f.source, name) for f in group)
        endpoints = listens.get(container, [])
        planned.append(_container_consumer(name, (container, certificate), group, endpoints))
    return planned, left_out


def _container_consumer(
    name: str,
    which: tuple[str, str],
    finds: list[ContainerFind],
    listens: list[MapEndpoint],
) -> MapConsumer:
    """A container (``which``: its name and the certificate): the files its mounts carry (a
    placeholder for the key when none of them holds one), the ports it publishes and those
    its processes were found serving the certificate on, and its reload left to fill in."""
    container, certificate = which
    files = [_mounted_file(find) for find in finds]
    if not any("privkey" in f.content for f in files):
        key = placeholder(
            f"the path on this host of the private key container {container} reads (mounted "
            "as its certificate is); the file must exist for check to pass"
        )
        files.append(dataclasses.replace(files[0], path=key, content=("privkey",), mode=0o600))
    said = []
    for find in finds:
        how = "a single-file bind mount" if find.single_file else "under a directory mount"
        said.append(f"{find.source} is {find.inside} in the container ({how})")
    single = any(find.single_file for find in finds)
    notes = "found by certbot-fanout discover: " + "; ".join(said)
    if single:
        notes += (
            "; deploy refuses a single-file bind mount (an atomic replace never reaches the "
            "container): mount the directory, or give the file inplace: true (not atomic), or "
            "reload with {restart: true}"
        )
    return MapConsumer(
        name=name,
        certificate=certificate,
        about=(
            "a running container whose mounts carry the certificate (docs/containers.md); "
            "its reload is left to fill in"
        ),
        files=tuple(files),
        container=container,
        engine=None if finds[0].engine == DEFAULT_ENGINE_SOCKET else finds[0].engine,
        reload=placeholder(
            "how the container reloads: {signal: HUP}, {exec: [COMMAND, ARG, ...]} or "
            "{restart: true}, written as a mapping"
        ),
        verify=tuple(dict.fromkeys([*listens, *(e for f in finds for e in _published(f.ports))])),
        notes=notes,
    )


def _mounted_file(find: ContainerFind) -> MapFile:
    assert find.copy is not None
    return _map_file(find.source, find.copy, None)


def _published(ports: Iterable[str]) -> list[MapEndpoint]:
    """The endpoints of a container's published TCP ports (``0.0.0.0:8443->443/tcp``), asked
    for on loopback when published on every address."""
    found = []
    for port in ports:
        address, _, rest = port.rpartition(":")
        host_port, _, inside = rest.partition("->")
        if not inside.endswith("/tcp") or not host_port.isdigit():
            continue
        address = address.strip("[]")
        try:
            every = not address or ipaddress.ip_address(address).is_unspecified
        except ValueError:
            continue  # not an address
        if every:
            address = "127.0.0.1"
        found.append(MapEndpoint(address, int(host_port)))
    return found


def _notes(finds: Iterable[Find]) -> str:
    """Where discover found the consumer (a value of the map, never a comment)."""
    said = []
    for find in finds:
        if find.reference is not None:
            ref = find.reference
            conf = (
                ref.conf if refusal(ref.conf) is None else f"a configuration file of {ref.service}"
            )
            said.append(f"{conf}:{ref.line} names {find.where}")
        elif find.listener is not None:
            said.append(f"{find.where} serves the certificate")
        else:
            said.append(f"{find.where} holds a copy")
    return "found by certbot-fanout discover: " + "; ".join(said)


def _preset_commands(service: str) -> tuple[tuple[str, ...] | None, tuple[str, ...] | None]:
    """The preset's test and reload commands, as words."""
    fields = yaml.safe_load(PRESETS[service].expand("example.org"))

    def words(key: str) -> tuple[str, ...] | None:
        value = fields.get(key)
        return tuple(str(w) for w in value) if isinstance(value, list) else None

    return words("test"), words("reload")


def _endpoint(find: Find) -> MapEndpoint | None:
    if find.listener is None:
        return None
    dialect = find.listener.starttls
    return MapEndpoint(find.listener.host, find.listener.port, dialect.value if dialect else None)


def _content(copy: Copy, service: str | None) -> tuple[str, ...]:
    chain = "fullchain" if copy.certificates > 1 else "cert"
    if not copy.holds_key:
        return (chain,)
    return (chain, "privkey") if service in _CHAIN_FIRST else ("privkey", chain)


def _account(number: int, *, user: bool, named: str | None = None) -> str | int:
    """The account's name when it has a plain one (``named``: as another host has it), else
    the number."""
    name = named
    if name is None:
        try:
            name = pwd.getpwuid(number).pw_name if user else grp.getgrgid(number).gr_name
        except KeyError:
            return number
    return name if _ACCOUNT_RE.match(name) else number


def _file(find: Find, service: str | None) -> MapFile | None:
    return None if find.copy is None else _map_file(find.where, find.copy, service)


def _map_file(path: str, copy: Copy, service: str | None) -> MapFile:
    mode = copy.mode & 0o770 if copy.holds_key else copy.mode  # a key is never for others
    return MapFile(
        path=path,
        content=_content(copy, service),
        owner=_account(copy.uid, user=True, named=copy.owner),
        group=_account(copy.gid, user=False, named=copy.group),
        mode=mode,
    )


# -- which service listens ----------------------------------------------------------------


class Owner(NamedTuple):
    """The process that holds a listening socket: the preset it is (None: not recognised), and
    its mount namespace (``mnt:[INODE]``; None: not read)."""

    service: str | None
    namespace: str | None


def listener_owners(ports: Iterable[int], proc: str = "/proc") -> dict[int, Owner]:
    """Whose each listening port is (for the ports given), from /proc: the socket's inode in
    net/tcp and tcp6, the process whose fd is that socket, its name and its mount namespace
    (a container's processes share one). Only links are read, within a time and count
    budget; a port not told apart is left out."""
    wanted = set(ports)
    inodes = _listening_inodes(wanted, proc)
    if not inodes:
        return {}
    found: dict[int, Owner] = {}
    deadline = time.monotonic() + _PROC_BUDGET
    links = 0
    for pid in _pids(proc):
        if time.monotonic() > deadline or links > _MAX_FD_LINKS or len(found) == len(wanted):
            break
        fd_dir = os.path.join(proc, pid, "fd")
        try:
            fds = os.listdir(fd_dir)
        except OSError:
            continue
        owner: Owner | None = None
        for fd in fds:
            links += 1
            try:
                target = os.readlink(os.path.join(fd_dir, fd))
            except OSError:
                continue
            port = inodes.get(target)
            if port is None or port in found:
                continue
            found[port] = owner = owner or Owner(
                _process_service(proc, pid), _namespace(os.path.join(proc, pid))
            )
    return found


def _namespace(process: str) -> str | None:
    try:
        return os.readlink(os.path.join(process, "ns", "mnt"))
    except OSError:
        return None


def _pids(proc: str) -> list[str]:
    try:
        return sorted((p for p in os.listdir(proc) if p.isdigit()), key=int)
    except OSError:
        return []


def _listening_inodes(ports: set[int], proc: str) -> dict[str, int]:
    """``socket:[INODE]`` -> port, for each listening TCP socket on one of ``ports``."""
    inodes: dict[str, int] = {}
    for table in ("tcp", "tcp6"):
        try:
            with open(os.path.join(proc, "net", table)) as f:
                lines = f.read(4 << 20).splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            if len(fields) < 10 or fields[3] != "0A":  # TCP_LISTEN
                continue
            try:
                port = int(fields[1].rpartition(":")[2], 16)
            except ValueError:
                continue
            if port in ports and fields[9] != "0":
                inodes[f"socket:[{fields[9]}]"] = port
    return inodes


def _read_small(path: str, limit: int = 4096) -> bytes:
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError:
        return b""
    try:
        return os.read(fd, limit)
    except OSError:
        return b""
    finally:
        os.close(fd)


def _process_service(proc: str, pid: str) -> str | None:
    comm = _read_small(os.path.join(proc, pid, "comm"), 64).decode(errors="replace").strip()
    if comm in _PROCESS_NAMES:
        return _PROCESS_NAMES[comm]
    words = _read_small(os.path.join(proc, pid, "cmdline")).decode(errors="replace").split("\0")
    for word in words:
        if word in _COMMAND_WORDS:
            return _COMMAND_WORDS[word]
    return None


# -- writing the map ------------------------------------------------------------------------


def refuse_existing(path: str) -> None:
    """Raise if something is at ``path`` already (a map is never overwritten).

    Raises:
        FanoutError: there is a file (or a link, or anything) at ``path``.
    """
    if os.path.lexists(path):
        raise FanoutError(
            f"--write-map {path}: a file is already there; certbot-fanout never overwrites a "
            "map (move it away, or give another FILE)"
        )


def write_new_file(path: str, text: str) -> None:
    """Write ``text`` as a new file at ``path``, mode 0600, owned by the running user; the file
    appears whole or not at all, and nothing already at ``path`` is ever replaced.

    The text goes into a temporary file created beside it (``O_CREAT|O_EXCL|O_NOFOLLOW``),
    which is synced and then hard-linked to ``path``: the link fails if ``path`` exists.

    Raises:
        FanoutError: ``path`` exists, or the file cannot be written.
    """
    directory = os.path.dirname(os.path.abspath(path)) or "/"
    temp = os.path.join(directory, f".{os.path.basename(path)}.{os.getpid()}.tmp")
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
    try:
        fd = os.open(temp, flags, 0o600)
    except OSError as e:
        raise FanoutError(f"--write-map {path}: cannot create a file there: {e.strerror}") from None
    try:
        try:
            os.fchown(fd, os.geteuid(), os.getegid())
            os.fchmod(fd, 0o600)
            data = text.encode("utf-8")
            while data:
                data = data[os.write(fd, data) :]
            os.fsync(fd)
        finally:
            os.close(fd)
        os.link(temp, path, follow_symlinks=False)
    except FileExistsError:
        refuse_existing(path)
        raise
    except OSError as e:
        raise FanoutError(f"--write-map {path}: cannot write the map: {e.strerror}") from None
    finally:
        with contextlib.suppress(OSError):
            os.unlink(temp)
