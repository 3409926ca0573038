"""discover: what on this host carries a lineage's certificate but is missing from the map.

Three sources, each bounded: TCP listeners (from /proc/net/tcp and tcp6, each probed with the
lineage's name as SNI, STARTTLS by well-known port); certificate paths named in the
configuration of common services; and PEM files under the usual directories. Certbot's own
directory is skipped, symlinks are never followed, large and special files are never read, and
no key material is ever printed: only paths and certificate summaries.
"""

from __future__ import annotations

import glob
import ipaddress
import os
import re
import socket
import stat
import time
import warnings
from collections.abc import Callable, Iterable, Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from cryptography import x509
from cryptography.utils import CryptographyDeprecationWarning

from certbot_fanout import probe
from certbot_fanout.errors import FanoutError, ProbeError
from certbot_fanout.lineage import CertInfo, Lineage, cert_info, lineage_dir, read_lineage
from certbot_fanout.model import Config, Dialect, Endpoint

SCAN_ROOTS = ("/etc", "/var/lib", "/opt", "/srv", "/usr/local/etc")
NEVER_SCAN = ("/proc", "/sys", "/dev", "/run")
MAX_FILE_BYTES = 1 << 20
MAX_ENTRIES = 400_000
TIME_BUDGET = 40.0
PROBE_TIMEOUT = 2.0

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

# service -> (config files (globs), pattern whose last group is a path)
SERVICE_CONFIGS: dict[str, tuple[tuple[str, ...], re.Pattern[str]]] = {
    "nginx": (
        ("/etc/nginx/**/*.conf", "/etc/nginx/sites-enabled/*", "/etc/nginx/nginx.conf"),
        re.compile(
            r"^\s*ssl_(?:certificate|certificate_key|trusted_certificate)\s+['\"]?([^;'\"\s]+)",
            re.M,
        ),
    ),
    "apache": (
        ("/etc/apache2/**/*.conf", "/etc/apache2/sites-enabled/*", "/etc/httpd/**/*.conf"),
        re.compile(
            r"^\s*SSLCertificate(?:File|KeyFile|ChainFile)\s+['\"]?([^'\"\s]+)", re.M | re.I
        ),
    ),
    "haproxy": (
        ("/etc/haproxy/*.cfg", "/etc/haproxy/**/*.cfg"),
        re.compile(r"\bcrt\s+([^\s]+)"),
    ),
    "postfix": (
        ("/etc/postfix/main.cf",),
        re.compile(r"^\s*smtpd?_tls_(?:cert_file|key_file|chain_files)\s*=\s*([^\s,]+)", re.M),
    ),
    "dovecot": (
        ("/etc/dovecot/*.conf", "/etc/dovecot/**/*.conf"),
        re.compile(r"^\s*ssl_(?:cert|key|server_cert_file|server_key_file)\s*=\s*<?\s*(\S+)", re.M),
    ),
    "synapse": (
        ("/etc/matrix-synapse/*.yaml", "/etc/matrix-synapse/**/*.yaml"),
        re.compile(r"^\s*tls_(?:certificate|private_key)_path\s*:\s*['\"]?([^'\"\s]+)", re.M),
    ),
    "prosody": (
        ("/etc/prosody/*.lua", "/etc/prosody/**/*.lua"),
        re.compile(r"\b(?:certificate|key)\s*=\s*['\"]([^'\"]+)['\"]"),
    ),
    "ejabberd": (
        ("/etc/ejabberd/*.yml", "/etc/ejabberd/**/*.yml"),
        re.compile(r"['\"]?(/[^'\"\s]+\.(?:pem|crt|cer|cert))['\"]?"),
    ),
    "mosquitto": (
        ("/etc/mosquitto/*.conf", "/etc/mosquitto/**/*.conf"),
        re.compile(r"^\s*(?:certfile|keyfile)\s+(\S+)", re.M),
    ),
    "coturn": (
        ("/etc/turnserver.conf", "/etc/coturn/*.conf"),
        re.compile(r"^\s*(?:cert|pkey)\s*=\s*['\"]?([^'\"\s]+)", re.M),
    ),
    "postgresql": (
        ("/etc/postgresql/*/*/postgresql.conf", "/etc/postgresql/*/*/conf.d/*.conf"),
        re.compile(r"^\s*ssl_(?:cert|key)_file\s*=\s*'([^']+)'", re.M),
    ),
}
_PEM_CERT = b"-----BEGIN CERTIFICATE-----"
_PEM_KEY = re.compile(rb"-----BEGIN (?:[A-Z]+ )?PRIVATE KEY-----")


@dataclass(frozen=True)
class Find:
    kind: str  # "listener", "config" or "file"
    where: str  # host:port, or a path
    certificate: str  # the lineage it carries
    served: CertInfo
    current: bool
    mapped_by: str | None = None  # the consumer that covers it
    via: str = ""  # for "config": which service's file names it
    port: int = 0
    host: str = ""
    starttls: Dialect | None = None
    holds_key: bool = False
    certs_in_file: int = 0
    reads_live: bool = False  # a service config pointing into certbot's live/ directory

    @property
    def mapped(self) -> bool:
        return self.mapped_by is not None


@dataclass
class DiscoverReport:
    lineages: dict[str, Lineage]
    finds: list[Find] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    seconds: float = 0.0
    scanned_files: int = 0
    listeners: int = 0


def discover(
    config: Config,
    config_dir: str,
    cert_names: Iterable[str] = (),
    extra_paths: Iterable[str] = (),
    roots: Iterable[str] = SCAN_ROOTS,
    proc_net: str = "/proc/net",
    service_configs: Mapping[str, tuple[tuple[str, ...], re.Pattern[str]]] | None = None,
    fetch: Callable[
        [str, int, str | None, float, Dialect | None], probe.Served
    ] = probe.fetch_served,
    time_budget: float = TIME_BUDGET,
) -> DiscoverReport:
    """Look for every place on this host that carries one of the lineages' certificates.

    Raises:
        FanoutError: no lineage to look for.
    """
    start = time.monotonic()
    # Certificates found on a host can be odd (negative serials, ...); they are only compared.
    warnings.filterwarnings("ignore", category=CryptographyDeprecationWarning)
    names = list(cert_names) or list(config.certificates) or _all_lineages(config_dir)
    if not names:
        raise FanoutError(
            f"no certificate to look for: the map names none and {config_dir}/live is empty"
        )
    report = DiscoverReport(lineages={})
    for name in names:
        try:
            report.lineages[name] = read_lineage(lineage_dir(config_dir, name))
        except FanoutError as e:
            report.notes.append(f"skipped {name}: {e}")
    if not report.lineages:
        raise FanoutError("; ".join(report.notes))

    report.finds.extend(_listeners(config, report, proc_net, fetch))
    deadline = start + time_budget
    skip = {os.path.realpath(config_dir)}
    seen: set[str] = set()
    for find in _service_configs(config, report, skip, service_configs or SERVICE_CONFIGS):
        seen.add(find.where)
        report.finds.append(find)
    for find in _scan_files(config, report, [*roots, *extra_paths], skip, deadline):
        if find.where not in seen:
            seen.add(find.where)
            report.finds.append(find)
    report.seconds = time.monotonic() - start
    return report


def _all_lineages(config_dir: str) -> list[str]:
    try:
        return sorted(e.name for e in os.scandir(os.path.join(config_dir, "live")) if e.is_dir())
    except OSError:
        return []


def _match(info: CertInfo, lineages: dict[str, Lineage]) -> Lineage | None:
    """The lineage whose names the certificate carries (the current one first)."""
    for lineage in lineages.values():
        if info.fingerprint == lineage.cert.fingerprint:
            return lineage
    for lineage in lineages.values():
        if set(info.names) & set(lineage.cert.names):
            return lineage
    return None


# -- listeners ----------------------------------------------------------------------------------


def listening_sockets(proc_net: str = "/proc/net") -> list[tuple[str, int]]:
    """(address, port) of every listening TCP socket, from /proc/net/tcp and tcp6."""
    found: dict[tuple[str, int], None] = {}
    for table, width in (("tcp", 8), ("tcp6", 32)):
        try:
            with open(os.path.join(proc_net, table)) as f:
                lines = f.read(4 << 20).splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            if len(fields) < 4 or fields[3] != "0A":  # TCP_LISTEN
                continue
            address, _, port_hex = fields[1].partition(":")
            if len(address) != width:
                continue
            raw = bytes.fromhex(address)
            # The kernel prints each 32-bit word in host (little-endian) order.
            words = b"".join(raw[i : i + 4][::-1] for i in range(0, len(raw), 4))
            ip = ipaddress.ip_address(words)
            if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped:
                ip = ip.ipv4_mapped
            found[(str(ip), int(port_hex, 16))] = None
    return list(found)


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


def _listeners(
    config: Config,
    report: DiscoverReport,
    proc_net: str,
    fetch: probe.Fetch,
) -> list[Find]:
    sockets = listening_sockets(proc_net)
    report.listeners = len(sockets)
    jobs = [(a, p, lin) for a, p in sockets for lin in report.lineages.values()]

    def look(job: tuple[str, int, Lineage]) -> Find | None:
        address, port, lineage = job
        dialect = STARTTLS_PORTS.get(port)
        host = _connect_to(address)
        try:
            served = fetch(host, port, lineage.default_server_name, PROBE_TIMEOUT, dialect)
        except ProbeError:
            if dialect is None:
                return None
            try:  # a well-known port may still speak TLS directly (or not at all)
                served = fetch(host, port, lineage.default_server_name, PROBE_TIMEOUT, None)
                dialect = None
            except ProbeError:
                return None
        info = _info(served.leaf)
        if info is None or _match(info, {lineage.name: lineage}) is None:
            return None
        mapped = next(
            (
                c.name
                for c in config.consumers
                if any(_endpoint_covers(ep, address, port) for ep in c.verify)
            ),
            None,
        )
        where = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
        return Find(
            kind="listener",
            where=where + (f" ({dialect.value})" if dialect else ""),
            certificate=lineage.name,
            served=info,
            current=info.fingerprint == lineage.cert.fingerprint,
            mapped_by=mapped,
            port=port,
            host=host,
            starttls=dialect,
        )

    if not jobs:
        return []
    with ThreadPoolExecutor(max_workers=min(32, len(jobs))) as pool:
        found = [f for f in pool.map(look, jobs) if f is not None]
    unique: dict[tuple[str, int, str], Find] = {}
    for f in found:
        unique.setdefault((f.host, f.port, f.certificate), f)
    return list(unique.values())


def _info(der: bytes) -> CertInfo | None:
    try:
        return cert_info(x509.load_der_x509_certificate(der))
    except ValueError:
        return None


# -- files ----------------------------------------------------------------------------------------


def _mapped_path(config: Config, path: str) -> str | None:
    real = os.path.realpath(path)
    for consumer in config.consumers:
        for spec in consumer.files:
            if spec.path == path or os.path.realpath(spec.path) == real:
                return consumer.name
    return None


def _read_pem(path: str) -> bytes | None:
    """The file's bytes if it is a small regular file with a PEM certificate in it."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode) or st.st_size > MAX_FILE_BYTES:
            return None
        data = os.read(fd, MAX_FILE_BYTES)
    except OSError:
        return None
    finally:
        os.close(fd)
    return data if _PEM_CERT in data else None


def _file_find(
    config: Config, report: DiscoverReport, path: str, data: bytes, kind: str, via: str = ""
) -> Find | None:
    certs: list[CertInfo] = []
    for block in data.split(_PEM_CERT)[1:]:
        try:
            certs.append(cert_info(x509.load_pem_x509_certificate(_PEM_CERT + block)))
        except ValueError:
            continue
    if not certs:
        return None
    info = certs[0]
    lineage = _match(info, report.lineages)
    if lineage is None:
        return None
    return Find(
        kind=kind,
        where=path,
        certificate=lineage.name,
        served=info,
        current=info.fingerprint == lineage.cert.fingerprint,
        mapped_by=_mapped_path(config, path),
        via=via,
        holds_key=bool(_PEM_KEY.search(data)),
        certs_in_file=len(certs),
    )


def _service_configs(
    config: Config,
    report: DiscoverReport,
    skip: set[str],
    services: Mapping[str, tuple[tuple[str, ...], re.Pattern[str]]],
) -> Iterator[Find]:
    for service, (patterns, regex) in services.items():
        conf_files = sorted({p for pat in patterns for p in glob.glob(pat, recursive=True)})
        for conf in conf_files:
            try:
                with open(conf, errors="replace") as f:
                    text = f.read(MAX_FILE_BYTES)
            except OSError:
                continue
            for m in regex.finditer(text):
                path = m.group(m.lastindex or 1).strip()
                if not path.startswith("/"):
                    continue
                line = text.count("\n", 0, m.start()) + 1
                via = f"{service}: {conf}:{line}"
                real = os.path.realpath(path)
                if any(real == s or real.startswith(s + "/") for s in skip):
                    find = _reads_live_directly(config, report, path, service, via)
                    if find:
                        yield find
                    continue
                data = _read_pem(path)
                if data is None:
                    continue
                find = _file_find(config, report, path, data, "config", via)
                if find:
                    yield find


def _reads_live_directly(
    config: Config, report: DiscoverReport, path: str, service: str, via: str
) -> Find | None:
    """A service that reads certbot's files itself is current on disk, but something must
    still reload it after each renewal: is there a consumer that does?"""
    lineage = next(
        (lin for lin in report.lineages.values() if path.startswith(lin.live_dir + "/")), None
    )
    if lineage is None or not path.endswith(("cert.pem", "fullchain.pem")):
        return None
    reloader = next(
        (
            c.name
            for c in config.consumers_for(lineage.name)
            if c.reload and any(service in word for word in c.reload)
        ),
        None,
    )
    return Find(
        kind="config",
        where=path,
        certificate=lineage.name,
        served=lineage.cert,
        current=True,
        mapped_by=reloader,
        via=via,
        reads_live=True,
    )


def _scan_files(
    config: Config,
    report: DiscoverReport,
    roots: Iterable[str],
    skip: set[str],
    deadline: float,
) -> Iterator[Find]:
    budget = [MAX_ENTRIES]
    never = {os.path.realpath(p) for p in NEVER_SCAN} | skip
    for root in dict.fromkeys(os.path.abspath(r) for r in roots):
        if not os.path.isdir(root):
            continue
        for path in _walk(root, never, budget, deadline):
            report.scanned_files += 1
            data = _read_pem(path)
            if data is None:
                continue
            find = _file_find(config, report, path, data, "file")
            if find:
                yield find
        if budget[0] <= 0 or time.monotonic() > deadline:
            report.notes.append(
                "the file scan stopped early (entry or time budget); add --path for the "
                "directories that matter"
            )
            return


def _walk(root: str, never: set[str], budget: list[int], deadline: float) -> Iterator[str]:
    stack = [root]
    while stack:
        directory = stack.pop()
        if directory in never or time.monotonic() > deadline:
            continue
        try:
            entries = list(os.scandir(directory))
        except OSError:
            continue
        for entry in entries:
            budget[0] -= 1
            if budget[0] <= 0:
                return
            try:
                if entry.is_dir(follow_symlinks=False):
                    stack.append(entry.path)
                elif entry.is_file(follow_symlinks=False):
                    yield entry.path
            except OSError:
                continue


# -- what to paste --------------------------------------------------------------------------------


def snippet(find: Find, index: int) -> str:
    """A consumer-map entry that would cover an unmapped find (to be completed by a human)."""
    name = f"found-{index}"
    if find.kind == "listener":
        starttls = f", starttls: {find.starttls.value}" if find.starttls else ""
        return (
            f"  {name}:   # the service listening on {find.where}\n"
            f"    certificate: {find.certificate}\n"
            f"    reload: TODO    # how this service reloads its certificate\n"
            f"    verify:\n"
            f"      - {{host: {find.host}, port: {find.port}{starttls}}}\n"
        )
    if find.reads_live:
        return (
            f"  {name}:   # {find.via} reads certbot's files directly\n"
            f"    certificate: {find.certificate}\n"
            f"    reload: TODO    # reload {find.via.split(':')[0]} after every renewal\n"
        )
    try:
        st = os.stat(find.where)
        owner, group, mode = st.st_uid, st.st_gid, stat.S_IMODE(st.st_mode)
    except OSError:
        owner, group, mode = 0, 0, 0o644
    parts = ["fullchain" if find.certs_in_file > 1 else "cert"]
    if find.holds_key:
        parts = ["privkey", *parts]
        mode &= 0o770
    content = parts[0] if len(parts) == 1 else "[" + ", ".join(parts) + "]"
    origin = f"named in {find.via}" if find.via else "found on disk"
    return (
        f"  {name}:   # {origin}\n"
        f"    certificate: {find.certificate}\n"
        f"    files:\n"
        f"      - {{path: {find.where}, content: {content}, owner: {owner}, group: {group}, "
        f'mode: "{mode:04o}"}}\n'
        f"    reload: TODO    # how the service reading this file reloads it\n"
    )
