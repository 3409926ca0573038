"""discover: what on this host carries a lineage's certificate but is missing from the map.

Three sources, each bounded: TCP listeners (from /proc/net/tcp and tcp6, each probed with the
lineage's name as SNI, STARTTLS by well-known port); certificate paths named in the
configuration of common services; and PEM files under the usual directories. Certbot's own
directory is skipped, symlinks are never followed, large and special files are never read, and
no key material is ever printed: only paths and certificate summaries.

Every user of the host can shape what discover reads (a service account owns its configuration
directory; anyone can listen on a port), so each phase is bounded on its own: a FIFO or device
is never opened (a path is opened with ``O_PATH`` and checked to be a regular file before a byte
is read), directory symlinks are never followed (the configuration walk and the file scan), the
listener phase and the file phase each have a time budget counted from their own start (root's
and the service accounts' listeners are probed first), every file counts against the file
phase's deadline and entry budget, each file's certificates are parsed up to a bound, and a
hard-linked file is read once. What a budget left out is a :attr:`DiscoverReport.shortfalls`
entry, and a report with one is never a clean "nothing found".

:func:`discover` returns a :class:`DiscoverReport`: each :class:`Find` says how it was found
(:class:`FindKind`) and carries the facts of its kind (the listener, the configuration line that
names it, what the copy holds and as whom), so rendering it (``render_discover``) reads nothing.
"""

from __future__ import annotations

import dataclasses
import datetime
import enum
import ipaddress
import os
import re
import socket
import stat
import time
import warnings
from collections.abc import Iterable, Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import NamedTuple

from cryptography import x509
from cryptography.utils import CryptographyDeprecationWarning

from certbot_fanout import configscan, fswalk, probe
from certbot_fanout.configscan import MAX_CONFIG_ENTRIES
from certbot_fanout.errors import FanoutError, ProbeError
from certbot_fanout.fswalk import MAX_FILE_BYTES, MAX_PEM_BLOCKS, NEVER_SCAN
from certbot_fanout.lineage import CertInfo, Lineage, cert_info, lineage_dir, read_lineage
from certbot_fanout.model import DEFAULT_ENGINE_SOCKET, Config, Dialect, Endpoint
from certbot_fanout.procnet import Socket, listening_sockets_by_owner

SCAN_ROOTS = ("/etc", "/var/lib", "/opt", "/srv", "/usr/local/etc")
MAX_ENTRIES = 400_000  # directory entries the file scan looks at
LISTENER_BUDGET = 20.0  # seconds for the listener phase, from its start (--probe-budget)
FILE_BUDGET = 40.0  # seconds for the configurations and the file scan, from their start
PROBE_TIMEOUT = 2.0
MIN_PROBE_SECONDS = 0.25  # a probe is not started with less time than this left

STARTTLS_PORTS = {
    21: Dialect.FTP,
    24: Dialect.LMTP,
    25: Dialect.SMTP,
    110: Dialect.POP3,
    119: Dialect.NNTP,
    143: Dialect.IMAP,
    389: Dialect.LDAP,
    587: Dialect.SMTP,
    3306: Dialect.MYSQL,
    4190: Dialect.SIEVE,
    5222: Dialect.XMPP,
    5269: Dialect.XMPP_SERVER,
    5432: Dialect.POSTGRES,
}


class ServiceConfig(NamedTuple):
    """Where a service keeps its configuration, and how that names a certificate's path."""

    globs: tuple[str, ...]  # its configuration files
    pattern: re.Pattern[str]  # a line that names a path; the path is the last group


SERVICE_CONFIGS: Mapping[str, ServiceConfig] = {
    "nginx": ServiceConfig(
        ("/etc/nginx/**/*.conf", "/etc/nginx/sites-enabled/*", "/etc/nginx/nginx.conf"),
        re.compile(
            r"^\s*ssl_(?:certificate|certificate_key|trusted_certificate)\s+['\"]?([^;'\"\s]+)",
            re.M,
        ),
    ),
    "apache": ServiceConfig(
        ("/etc/apache2/**/*.conf", "/etc/apache2/sites-enabled/*", "/etc/httpd/**/*.conf"),
        re.compile(
            r"^\s*SSLCertificate(?:File|KeyFile|ChainFile)\s+['\"]?([^'\"\s]+)", re.M | re.I
        ),
    ),
    "haproxy": ServiceConfig(
        ("/etc/haproxy/*.cfg", "/etc/haproxy/**/*.cfg"),
        re.compile(r"\bcrt\s+([^\s]+)"),
    ),
    "postfix": ServiceConfig(
        ("/etc/postfix/main.cf",),
        re.compile(r"^\s*smtpd?_tls_(?:cert_file|key_file|chain_files)\s*=\s*([^\s,]+)", re.M),
    ),
    "dovecot": ServiceConfig(
        ("/etc/dovecot/*.conf", "/etc/dovecot/**/*.conf"),
        re.compile(r"^\s*ssl_(?:cert|key|server_cert_file|server_key_file)\s*=\s*<?\s*(\S+)", re.M),
    ),
    "synapse": ServiceConfig(
        ("/etc/matrix-synapse/*.yaml", "/etc/matrix-synapse/**/*.yaml"),
        re.compile(r"^\s*tls_(?:certificate|private_key)_path\s*:\s*['\"]?([^'\"\s]+)", re.M),
    ),
    "prosody": ServiceConfig(
        ("/etc/prosody/*.lua", "/etc/prosody/**/*.lua"),
        re.compile(r"\b(?:certificate|key)\s*=\s*['\"]([^'\"]+)['\"]"),
    ),
    "ejabberd": ServiceConfig(
        ("/etc/ejabberd/*.yml", "/etc/ejabberd/**/*.yml"),
        re.compile(r"['\"]?(/[^'\"\s]+\.(?:pem|crt|cer|cert))['\"]?"),
    ),
    "mosquitto": ServiceConfig(
        ("/etc/mosquitto/*.conf", "/etc/mosquitto/**/*.conf"),
        re.compile(r"^\s*(?:certfile|keyfile)\s+(\S+)", re.M),
    ),
    "coturn": ServiceConfig(
        ("/etc/turnserver.conf", "/etc/coturn/*.conf"),
        re.compile(r"^\s*(?:cert|pkey)\s*=\s*['\"]?([^'\"\s]+)", re.M),
    ),
    "postgresql": ServiceConfig(
        ("/etc/postgresql/*/*/postgresql.conf", "/etc/postgresql/*/*/conf.d/*.conf"),
        re.compile(r"^\s*ssl_(?:cert|key)_file\s*=\s*'([^']+)'", re.M),
    ),
}
_PEM_CERT = fswalk.PEM_CERT
_PEM_KEY = fswalk.PEM_KEY


class FindKind(enum.StrEnum):
    """How a find was found; the value is the word discover's listing prints."""

    LISTENER = "listener"  # a listening TCP socket serves the certificate
    CONFIG = "config"  # a service's configuration names the path
    FILE = "file"  # the file scan read it


@dataclass(frozen=True)
class Listener:
    """A listening socket that serves the certificate (a LISTENER find)."""

    host: str  # the address connected to (loopback for a wildcard listener)
    port: int
    starttls: Dialect | None  # the dialect it answered in; None for TLS from the first byte


@dataclass(frozen=True)
class Reference:
    """The line of a service's configuration that names the path (a CONFIG find)."""

    service: str  # a key of SERVICE_CONFIGS
    conf: str  # the configuration file
    line: int
    reads_live: bool = False  # the path is certbot's own live/ file: the service reads it itself

    @property
    def via(self) -> str:
        return f"{self.service}: {self.conf}:{self.line}"


@dataclass(frozen=True)
class Copy:
    """A file that holds a copy of the certificate, as discovery read it (a FILE find, or a
    CONFIG find that does not read live/ directly)."""

    certificates: int  # how many certificates it holds (more than one: a chain)
    holds_key: bool  # it also holds a private key
    uid: int
    gid: int
    mode: int  # permission bits
    # The account names as the host the copy is on has them (another host's; None: look up
    # the numbers here).
    owner: str | None = None
    group: str | None = None


def copy_from_scan(item: Mapping[str, object]) -> Copy:
    """The :class:`Copy` of one file a scan listed (:func:`certbot_fanout.fswalk.pem_file`'s
    fields, here or in another host's answer).

    Raises:
        KeyError, TypeError, ValueError: a field missing or of the wrong kind.
    """

    def number(key: str) -> int:
        value = item[key]
        if not isinstance(value, int) or isinstance(value, bool):
            raise TypeError(f"{key}: not a number")
        return value

    owner, group = item.get("owner"), item.get("group")
    return Copy(
        certificates=number("certificates"),
        holds_key=bool(item["holds_key"]),
        uid=number("uid"),
        gid=number("gid"),
        mode=number("mode") & 0o7777,
        owner=str(owner) if owner else None,
        group=str(group) if group else None,
    )


@dataclass(frozen=True)
class Find:
    """One place on this host that carries a lineage's certificate."""

    kind: FindKind
    where: str  # host:port (and the STARTTLS dialect), or a path
    certificate: str  # the lineage it carries
    served: CertInfo
    current: bool
    mapped_by: str | None = None  # the consumer that covers it
    listener: Listener | None = None  # for a LISTENER find
    reference: Reference | None = None  # for a CONFIG find
    copy: Copy | None = None  # for a file read (FILE, and CONFIG unless it reads live/)
    host: str | None = None  # the map's host it was found on (None: this host)

    def __post_init__(self) -> None:
        """A find carries the facts of its kind and no other: a LISTENER its listener, a CONFIG
        its reference (and the copy, unless the service reads live/ itself), a FILE its copy."""
        wants = {
            FindKind.LISTENER: ("listener",),
            FindKind.CONFIG: ("reference",) if self.reads_live else ("reference", "copy"),
            FindKind.FILE: ("copy",),
        }[self.kind]
        has = tuple(f for f in ("listener", "reference", "copy") if getattr(self, f) is not None)
        if has != wants:
            carried = " and ".join(has) or "nothing"
            raise ValueError(f"a {self.kind} find carries {' and '.join(wants)}, not {carried}")

    @property
    def mapped(self) -> bool:
        return self.mapped_by is not None

    @property
    def via(self) -> str:
        """For a CONFIG find: which service's file names it, and where."""
        return self.reference.via if self.reference else ""

    @property
    def reads_live(self) -> bool:
        """A service configuration pointing into certbot's live/ directory."""
        return self.reference is not None and self.reference.reads_live


@dataclass(frozen=True)
class ContainerFind:
    """A file under one of a running container's mounts that carries a lineage's certificate
    (discover_containers)."""

    container: str  # its name
    ident: str  # its id, shortened
    source: str  # the file on this host
    inside: str  # the path the container sees it at
    certificate: str
    served: CertInfo
    current: bool
    single_file: bool  # the mount is of this one file (an atomic replace would not reach it)
    seen_current: bool | None  # its main process sees the same bytes there (None: not read)
    ports: tuple[str, ...] = ()  # what it publishes
    mapped_by: str | None = None
    copy: Copy | None = None  # the file on this host, as the scan read it
    engine: str = DEFAULT_ENGINE_SOCKET  # the socket of the engine that runs it
    namespace: str | None = None  # its main process's mount namespace (mnt:[INODE])

    @property
    def mapped(self) -> bool:
        return self.mapped_by is not None


@dataclass(frozen=True)
class ViewFind:
    """A process that reads an old copy of a lineage's certificate through its own mount
    namespace: a single-file bind mount of a file since replaced (discover_containers)."""

    pid: int
    command: str
    point: str  # the path it reads
    original: str  # the replaced file, as its filesystem names it
    certificate: str
    served: CertInfo


@dataclass(frozen=True)
class DiscoverReport:
    """What discover looked for and what it found."""

    lineages: Mapping[str, Lineage]
    finds: tuple[Find, ...]
    notes: tuple[str, ...]
    seconds: float
    scanned_files: int
    listeners: int  # how many listening sockets were probed
    checked_at: datetime.datetime  # when the look ended (an expired find reads as expired)
    shortfalls: tuple[str, ...] = ()  # what a budget left out: the look is incomplete
    host: str | None = None  # the map's host looked at (None: this host)
    containers: tuple[ContainerFind, ...] = ()
    views: tuple[ViewFind, ...] = ()

    @property
    def complete(self) -> bool:
        """Every listener was probed and every file scanned: "nothing found" means it."""
        return not self.shortfalls


@dataclass(frozen=True)
class Budgets:
    """The seconds each phase may take, each counted from that phase's own start."""

    listeners: float = LISTENER_BUDGET
    files: float = FILE_BUDGET  # the service configurations, then the file scan


def discover(
    config: Config,
    config_dir: str,
    cert_names: Iterable[str] = (),
    extra_paths: Iterable[str] = (),
    roots: Iterable[str] = SCAN_ROOTS,
    proc_net: str = "/proc/net",
    service_configs: Mapping[str, ServiceConfig] = SERVICE_CONFIGS,
    budgets: Budgets = Budgets(),
) -> DiscoverReport:
    """Look for every place on this host that carries one of the lineages' certificates.

    Raises:
        FanoutError: no lineage to look for.
    """
    start = time.monotonic()
    skip = {os.path.realpath(config_dir)}
    sockets = listening_sockets_by_owner(proc_net)
    with warnings.catch_warnings():
        # Certificates found on a host can be odd (negative serials, ...); they are only compared.
        warnings.simplefilter("ignore", CryptographyDeprecationWarning)
        lineages, notes = read_lineages(config, config_dir, cert_names)
        probed = listeners(config, lineages, sockets, budgets.listeners)
        files_deadline = time.monotonic() + budgets.files
        named = _service_configs(config, lineages, skip, service_configs, files_deadline)
        scan = _scan_files(config, lineages, [*roots, *extra_paths], skip, files_deadline)
    finds = probed.finds
    seen = {f.where for f in named.finds}
    finds += named.finds
    for find in scan.finds:
        if find.where not in seen:
            seen.add(find.where)
            finds.append(find)
    return DiscoverReport(
        lineages=lineages,
        finds=tuple(finds),
        notes=(*notes, *scan.notes),
        seconds=time.monotonic() - start,
        scanned_files=scan.files,
        listeners=len(sockets) - probed.unprobed,
        checked_at=datetime.datetime.now(datetime.UTC),
        shortfalls=tuple(s for s in (probed.shortfall, named.shortfall, scan.shortfall) if s),
    )


def read_lineages(
    config: Config, config_dir: str, cert_names: Iterable[str]
) -> tuple[dict[str, Lineage], list[str]]:
    """The lineages to look for, and a note for each that cannot be read.

    Raises:
        FanoutError: no lineage to look for, or none of them reads.
    """
    names = list(cert_names) or list(config.certificates) or _all_lineages(config_dir)
    if not names:
        raise FanoutError(
            f"no certificate to look for: the map names none and {config_dir}/live is empty"
        )
    lineages: dict[str, Lineage] = {}
    notes = []
    for name in names:
        try:
            lineages[name] = read_lineage(lineage_dir(config_dir, name))
        except FanoutError as e:
            notes.append(f"skipped {name}: {e}")
    if not lineages:
        raise FanoutError("; ".join(notes))
    return lineages, notes


def _all_lineages(config_dir: str) -> list[str]:
    try:
        return sorted(e.name for e in os.scandir(os.path.join(config_dir, "live")) if e.is_dir())
    except OSError:
        return []


def match(info: CertInfo, lineages: Mapping[str, Lineage]) -> Lineage | None:
    """The lineage whose names the certificate carries (the current one first)."""
    for lineage in lineages.values():
        if info.fingerprint == lineage.cert.fingerprint:
            return lineage
    for lineage in lineages.values():
        if set(info.names) & set(lineage.cert.names):
            return lineage
    return None


# -- listeners ----------------------------------------------------------------------------------


def _connect_to(address: str) -> str:
    ip = ipaddress.ip_address(address)
    if ip.is_unspecified:
        return "127.0.0.1" if ip.version == 4 else "::1"
    return address


def _local_addresses(host: str) -> set[str]:
    try:
        return {str(ipaddress.ip_address(host))}
    except ValueError:
        pass
    try:
        return {str(info[4][0]) for info in socket.getaddrinfo(host, None)}
    except OSError:
        return set()


def _endpoint_covers(ep: Endpoint, address: str, port: int) -> bool:
    if ep.port != port:
        return False
    listen = ipaddress.ip_address(address)
    for resolved in _local_addresses(ep.host):
        ip = ipaddress.ip_address(resolved.split("%")[0])
        if listen.is_unspecified or ip == listen:
            return True
        if listen.is_loopback and ip.is_loopback:
            return True
    return False


class Probed(NamedTuple):
    finds: list[Find]
    unprobed: int  # listening sockets the budget left unprobed
    shortfall: str | None


def listeners(
    config: Config,
    lineages: Mapping[str, Lineage],
    sockets: list[Socket],
    budget: float,
    fetch: probe.Fetch = probe.fetch_served,
    host: str | None = None,
) -> Probed:
    """Each listening socket that serves one of the lineages' certificates (probed at once, in
    the sockets' order, until the budget runs out) with ``fetch``: from here, or, for the
    sockets of another ``host``, through its connection."""
    jobs = [(s, lin) for s in sockets for lin in lineages.values()]
    if not jobs:
        return Probed([], 0, None)
    deadline = time.monotonic() + budget

    def look(job: tuple[Socket, Lineage]) -> Find | bool | None:
        """The find, None, or False when there was no time left to probe."""
        if deadline - time.monotonic() < MIN_PROBE_SECONDS:
            return False
        return _listener_find(config, job[0].address, job[0].port, job[1], deadline, fetch, host)

    with ThreadPoolExecutor(max_workers=min(32, len(jobs))) as pool:
        looked = list(pool.map(look, jobs))
    unique: dict[tuple[str, int, str], Find] = {}
    unprobed: set[Socket] = set()
    for (sock, lineage), find in zip(jobs, looked, strict=True):
        if find is False:
            unprobed.add(sock)
        elif isinstance(find, Find):
            unique.setdefault((_connect_to(sock.address), sock.port, lineage.name), find)
    shortfall = None
    if unprobed:
        shortfall = (
            f"{len(unprobed)} of {len(sockets)} listening sockets not probed: the listener "
            f"budget of {budget:g} s ran out (root's and the system accounts' come first; "
            "raise it with --probe-budget)"
        )
    return Probed(list(unique.values()), len(unprobed), shortfall)


def _probe_listener(
    host: str, port: int, lineage: Lineage, deadline: float, fetch: probe.Fetch
) -> tuple[probe.Served, Dialect | None] | None:
    """What the socket serves for the lineage's name and key type (a server with an RSA and
    an ECDSA certificate shows each lineage its own), and the dialect it answered in."""
    name = lineage.default_server_name
    dialect = STARTTLS_PORTS.get(port)
    key_type = lineage.cert.key_type
    try:
        served = fetch(host, port, name, _probe_timeout(deadline), dialect, key_type=key_type)
        return served, dialect
    except ProbeError:
        if dialect is None:
            return None
    try:  # a well-known port may still speak TLS directly (or not at all)
        served = fetch(host, port, name, _probe_timeout(deadline), None, key_type=key_type)
        return served, None
    except ProbeError:
        return None


def _probe_timeout(deadline: float) -> float:
    """PROBE_TIMEOUT, or what is left of the listener budget if that is less."""
    return max(0.05, min(PROBE_TIMEOUT, deadline - time.monotonic()))


def _listener_find(
    config: Config,
    address: str,
    port: int,
    lineage: Lineage,
    deadline: float,
    fetch: probe.Fetch,
    on: str | None,
) -> Find | None:
    host = _connect_to(address)
    probed = _probe_listener(host, port, lineage, deadline, fetch)
    if probed is None:
        return None
    served, dialect = probed
    info = _info(served.leaf)
    if info is None or match(info, {lineage.name: lineage}) is None:
        return None
    mapped = next(
        (
            c.name
            for c in config.consumers
            # Its own consumer's: one listener can serve an ECDSA and an RSA lineage.
            if c.certificate == lineage.name
            and c.host == on
            and any(_endpoint_covers(ep, address, port) for ep in c.verify)
        ),
        None,
    )
    where = Endpoint(host, port).label
    return Find(
        kind=FindKind.LISTENER,
        where=where + (f" ({dialect.value})" if dialect else ""),
        certificate=lineage.name,
        served=info,
        current=info.fingerprint == lineage.cert.fingerprint,
        mapped_by=mapped,
        listener=Listener(host=host, port=port, starttls=dialect),
        host=on,
    )


def _info(der: bytes) -> CertInfo | None:
    try:
        return cert_info(x509.load_der_x509_certificate(der))
    except ValueError:
        return None


# -- files ----------------------------------------------------------------------------------------


def _mapped_path(config: Config, path: str, status: os.stat_result | None = None) -> str | None:
    """The consumer whose ``files:`` name this path, or the same file (a hard link to it)."""
    real = os.path.realpath(path)
    for consumer in config.consumers:
        for spec in consumer.files:
            if spec.path == path or os.path.realpath(spec.path) == real:
                return consumer.name
            if status is not None and status.st_nlink > 1 and _same_file(spec.path, status):
                return consumer.name
    return None


def _same_file(path: str, status: os.stat_result) -> bool:
    try:
        st = os.stat(path)
    except OSError:
        return False
    return (st.st_dev, st.st_ino) == (status.st_dev, status.st_ino)


_Pem = fswalk.Read  # a small regular file with a PEM certificate in it, and its status


def _read_pem(path: str, seen: set[tuple[int, int]] | None = None) -> _Pem | None:
    """The file, if it is a small regular file (never a symlink) with a PEM certificate in it."""
    pem = fswalk.read_regular(path, max_size=MAX_FILE_BYTES, seen=seen)
    return pem if pem is not None and _PEM_CERT in pem.data else None


def _file_find(
    config: Config,
    lineages: Mapping[str, Lineage],
    path: str,
    pem: _Pem,
    kind: FindKind,
    reference: Reference | None = None,
) -> Find | None:
    certs: list[CertInfo] = []
    # At most MAX_PEM_BLOCKS certificates: a megabyte of BEGIN lines is not worth parsing.
    for block in pem.data.split(_PEM_CERT, MAX_PEM_BLOCKS)[1:]:
        try:
            certs.append(cert_info(x509.load_pem_x509_certificate(_PEM_CERT + block)))
        except ValueError:
            continue
    if not certs:
        return None
    info = certs[0]
    lineage = match(info, lineages)
    if lineage is None:
        return None
    return Find(
        kind=kind,
        where=path,
        certificate=lineage.name,
        served=info,
        current=info.fingerprint == lineage.cert.fingerprint,
        mapped_by=_mapped_path(config, path, pem.status),
        reference=reference,
        copy=Copy(
            certificates=len(certs),
            holds_key=bool(_PEM_KEY.search(pem.data)),
            uid=pem.status.st_uid,
            gid=pem.status.st_gid,
            mode=stat.S_IMODE(pem.status.st_mode),
        ),
    )


# -- service configurations ---------------------------------------------------------------------


class _Named(NamedTuple):
    finds: list[Find]
    shortfall: str | None


def _service_configs(
    config: Config,
    lineages: Mapping[str, Lineage],
    skip: set[str],
    services: Mapping[str, ServiceConfig],
    deadline: float,
) -> _Named:
    """Each certificate path named in a service's configuration that carries a lineage (each
    path read once, however often it is named)."""
    allowance = configscan.Allowance(deadline, MAX_CONFIG_ENTRIES)
    finds = []
    looked: set[str] = set()
    for reference, path in _references(services, allowance):
        if path in looked or not allowance.spend(reference.conf):
            continue
        looked.add(path)
        find = _referenced_find(config, lineages, skip, reference, path)
        if find is not None:
            finds.append(find)
    shortfall = None
    if allowance.stopped:
        shortfall = f"the service configurations were read only up to {allowance.stopped}"
    return _Named(finds, shortfall)


def _references(
    services: Mapping[str, ServiceConfig], allowance: configscan.Allowance
) -> Iterator[tuple[Reference, str]]:
    """Every absolute path the services' configuration files name, with where it is named."""
    named = {name: (globs, pattern) for name, (globs, pattern) in services.items()}
    for service, conf, line, path in configscan.references(named, allowance):
        yield Reference(service=service, conf=conf, line=line), path


def _referenced_find(
    config: Config,
    lineages: Mapping[str, Lineage],
    skip: set[str],
    reference: Reference,
    path: str,
) -> Find | None:
    real = os.path.realpath(path)
    if any(real == s or real.startswith(s + "/") for s in skip):
        return _reads_live_directly(config, lineages, path, reference)
    pem = _read_pem(path)
    if pem is None:
        return None
    return _file_find(config, lineages, path, pem, FindKind.CONFIG, reference)


def _reads_live_directly(
    config: Config, lineages: Mapping[str, Lineage], path: str, reference: Reference
) -> Find | None:
    """A service that reads certbot's files itself is current on disk, but something must
    still reload it after each renewal: is there a consumer that does?"""
    lineage = next((lin for lin in lineages.values() if path.startswith(lin.live_dir + "/")), None)
    if lineage is None or not path.endswith(("cert.pem", "fullchain.pem")):
        return None
    reloader = next(
        (
            c.name
            for c in config.consumers_for(lineage.name)
            if c.reload and any(reference.service in word for word in c.reload)
        ),
        None,
    )
    return Find(
        kind=FindKind.CONFIG,
        where=path,
        certificate=lineage.name,
        served=lineage.cert,
        current=True,
        mapped_by=reloader,
        reference=dataclasses.replace(reference, reads_live=True),
    )


# -- the file scan ------------------------------------------------------------------------------

_SCAN_STOPPED = (
    "the file scan stopped early (entry or time budget); add --path for the directories that matter"
)


class _Scan(NamedTuple):
    finds: list[Find]
    files: int  # how many files were read
    notes: tuple[str, ...]
    shortfall: str | None = None


def _scan_files(
    config: Config,
    lineages: Mapping[str, Lineage],
    roots: Iterable[str],
    skip: set[str],
    deadline: float,
) -> _Scan:
    """Each PEM file under ``roots`` that carries a lineage, every entry counted against the
    entry budget and checked against the deadline."""
    never = {os.path.realpath(p) for p in NEVER_SCAN} | skip
    finds: list[Find] = []
    read = entries = 0
    seen: set[tuple[int, int]] = set()  # (device, inode) of each hard-linked file read
    todo = [r for r in dict.fromkeys(os.path.abspath(r) for r in roots) if os.path.isdir(r)]
    for i, root in enumerate(todo):
        for directory, path in fswalk.walk(root, never):
            entries += 1
            if entries >= MAX_ENTRIES or time.monotonic() > deadline:
                why = "entry" if entries >= MAX_ENTRIES else "time"
                stopped = _scan_shortfall(directory, read, why, todo[i + 1 :])
                return _Scan(finds, read, (_SCAN_STOPPED,), stopped)
            if path is None:
                continue
            read += 1
            pem = _read_pem(path, seen)
            find = None if pem is None else _file_find(config, lineages, path, pem, FindKind.FILE)
            if find is not None:
                finds.append(find)
    return _Scan(finds, read, ())


def _scan_shortfall(directory: str, read: int, why: str, left: list[str]) -> str:
    budget = (
        f"its budget of {MAX_ENTRIES} entries ran out"
        if why == "entry"
        else "its time budget ran out; raise it with --scan-budget"
    )
    text = f"the file scan stopped in {directory} after {read} files ({budget})"
    return text + (f"; not reached: {', '.join(left)}" if left else "")
