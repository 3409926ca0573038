"""Real daemons on loopback for integration tests: pebble, certbot, nginx, HAProxy; and the
ways to see which certificate an endpoint serves (our TLS client, ``openssl s_client``).

Stand-alone: no project imports. Every daemon is started on a free 127.0.0.1 port,
stopped by PID (with its process group / descendants) and is a context manager.
"""

from __future__ import annotations

import datetime
import hashlib
import ipaddress
import json
import os
import re
import socket
import ssl
import subprocess
import sys
import time
import urllib.request
from collections.abc import Mapping, Sequence, Set
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from .cli import explain, run, timed_out
from .proc import (
    KILL_BIN,
    START_TIMEOUT,
    STOP_TIMEOUT,
    ChildDaemon,
    PidFileDaemon,
    children,
    find_binary,
    free_port,
    retry_if_port_taken,
    spawn,
    tail,
    wait_port_free,
)

__all__ = [
    "DEFAULT_CERTBOT",
    "HAPROXY_BIN",
    "KILL_BIN",
    "NGINX_BIN",
    "OPENSSL_BIN",
    "PEBBLE_BIN",
    "START_TIMEOUT",
    "STOP_TIMEOUT",
    "Certbot",
    "CertbotError",
    "HAProxy",
    "Nginx",
    "NginxServer",
    "OpensslServed",
    "Pebble",
    "children",
    "file_fingerprint",
    "free_port",
    "openssl_fingerprint",
    "openssl_served",
    "pem_fingerprint",
    "served_fingerprint",
    "settled_workers",
]


def _default_certbot() -> str:
    for candidate in (
        Path(sys.prefix) / "bin" / "certbot",
        Path(__file__).resolve().parents[2] / ".venv" / "bin" / "certbot",
    ):
        if os.access(candidate, os.X_OK):
            return str(candidate)
    return "certbot"


PEBBLE_BIN = find_binary("pebble", "/usr/bin/pebble")
NGINX_BIN = find_binary("nginx", "/usr/sbin/nginx")
HAPROXY_BIN = find_binary("haproxy", "/usr/sbin/haproxy")
OPENSSL_BIN = find_binary("openssl", "/usr/bin/openssl")
DEFAULT_CERTBOT: tuple[str, ...] = (_default_certbot(),)

_IN_USE = "Address already in use"


# --------------------------------------------------------------------------- helpers


def settled_workers(
    master: int, count: int = 1, timeout: float = 15, replacing: Set[int] = frozenset()
) -> set[int]:
    """The master's workers once exactly ``count`` are left, none of them in ``replacing``
    (the workers from before a reload). For ~100 ms after a reload nginx keeps the old worker
    accepting beside the new one, so a probe may meet either."""
    deadline = time.monotonic() + timeout
    while True:
        kids = children(master)
        if len(kids) == count and not kids & replacing:
            return kids
        if time.monotonic() > deadline:
            if replacing:
                raise AssertionError(f"master {master} was not reloaded: workers {sorted(kids)}")
            raise AssertionError(f"master {master} has workers {sorted(kids)}, expected {count}")
        time.sleep(0.02)


def nginx_quote(value: str) -> str:
    """``value`` as a double-quoted nginx string."""
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


_PEM_CERT = re.compile(rb"-----BEGIN CERTIFICATE-----.+?-----END CERTIFICATE-----", re.DOTALL)


def _first_pem_cert(data: bytes) -> bytes:
    match = _PEM_CERT.search(data)
    if match is None:
        raise ValueError("no PEM certificate found")
    return ssl.PEM_cert_to_DER_cert(match.group(0).decode())


def pem_fingerprint(pem: bytes) -> str:
    """SHA-256 hex of the first certificate in PEM data."""
    return hashlib.sha256(_first_pem_cert(pem)).hexdigest()


def served_fingerprint(host: str, port: int, server_name: str, timeout: float = 5) -> str:
    """SHA-256 hex of the leaf certificate served at host:port for SNI server_name."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    with (
        socket.create_connection((host, port), timeout=timeout) as raw,
        ctx.wrap_socket(raw, server_hostname=server_name) as tls,
    ):
        der = tls.getpeercert(binary_form=True)
    if not der:
        raise RuntimeError(f"{host}:{port} presented no certificate")
    return hashlib.sha256(der).hexdigest()


def file_fingerprint(cert_pem_path: Path) -> str:
    """SHA-256 hex of the first certificate in a PEM file."""
    return pem_fingerprint(Path(cert_pem_path).read_bytes())


@dataclass(frozen=True)
class OpensslServed:
    """What ``openssl s_client`` saw: the leaf's SHA-256 as ``openssl x509 -fingerprint
    -sha256`` prints it (lower-case hex, no colons), and the certificates it printed (DER, leaf
    first: the whole chain with ``-showcerts``)."""

    fingerprint: str
    chain: tuple[bytes, ...]


def openssl_served(
    port: int,
    server_name: str,
    starttls: str | None = None,
    *,
    showcerts: bool = False,
    host: str = "127.0.0.1",
    timeout: float = 30,
    options: Sequence[str] = (),
) -> OpensslServed:
    """``openssl s_client -connect H:P -servername N [-starttls PROTO [-xmpphost N]]
    [-showcerts] [OPTIONS...] </dev/null | openssl x509 -noout -fingerprint -sha256``;
    ``-xmpphost`` for the XMPP dialects; an IPv6 ``host`` in brackets (``[::1]``); ``options``
    such as ``-sigalgs RSA-PSS+SHA256`` or ``-tls1_2``. AssertionError if it gets no
    certificate."""
    argv = [OPENSSL_BIN, "s_client", "-connect", f"{host}:{port}", "-servername", server_name]
    if starttls is not None:
        argv += ["-starttls", starttls]
        if starttls.startswith("xmpp"):
            argv += ["-xmpphost", server_name]
    if showcerts:
        argv.append("-showcerts")
    argv += options
    client = subprocess.run(
        argv, stdin=subprocess.DEVNULL, capture_output=True, timeout=timeout, check=False
    )
    chain = tuple(
        ssl.PEM_cert_to_DER_cert(m.group(0).decode()) for m in _PEM_CERT.finditer(client.stdout)
    )
    x509_out = subprocess.run(
        [OPENSSL_BIN, "x509", "-noout", "-fingerprint", "-sha256"],
        input=client.stdout,
        capture_output=True,
        timeout=timeout,
        check=False,
    )
    match = re.search(rb"Fingerprint=([0-9A-Fa-f:]+)", x509_out.stdout)
    if not chain or x509_out.returncode != 0 or match is None:
        raise AssertionError(
            f"openssl s_client {' '.join(argv[2:])} got no certificate (exit {client.returncode}):"
            f"\n{client.stderr.decode(errors='replace')[-2000:]}"
        )
    return OpensslServed(match.group(1).decode().replace(":", "").lower(), chain)


def openssl_fingerprint(
    port: int, server_name: str, starttls: str | None = None, host: str = "127.0.0.1"
) -> str:
    """SHA-256 hex (lower case, no colons) of the leaf that ``openssl s_client`` gets."""
    return openssl_served(port, server_name, starttls, host=host).fingerprint


def _no_proxy_opener(ctx: ssl.SSLContext) -> urllib.request.OpenerDirector:
    return urllib.request.build_opener(
        urllib.request.ProxyHandler({}), urllib.request.HTTPSHandler(context=ctx)
    )


# --------------------------------------------------------------------------- pebble


def _write_pebble_tls(workdir: Path) -> tuple[Path, Path, Path]:
    """Throwaway CA plus a localhost/127.0.0.1 server cert; returns (ca, cert, key)."""
    now = datetime.datetime.now(datetime.UTC)
    start, end = now - datetime.timedelta(hours=1), now + datetime.timedelta(days=7)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "stack test CA")])
    ca_ski = x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key())
    ca_cert = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(end)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(ca_ski, critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")]))
        .issuer_name(ca_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(end)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
            ),
            critical=False,
        )
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ca_ski),
            critical=False,
        )
        .sign(ca_key, hashes.SHA256())
    )
    ca_path, cert_path, key_path = workdir / "ca.pem", workdir / "cert.pem", workdir / "key.pem"
    ca_path.write_bytes(ca_cert.public_bytes(serialization.Encoding.PEM))
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    key_path.chmod(0o600)
    return ca_path, cert_path, key_path


class Pebble(ChildDaemon):
    """A real ACME server (pebble) that validates every challenge."""

    label = "pebble"

    def __init__(self, workdir: Path, validity_seconds: int | None = None) -> None:
        self.workdir = Path(workdir).resolve()
        self.validity_seconds = validity_seconds
        self.port = 0
        self.management_port = 0
        self.ca_file = self.workdir / "ca.pem"
        self.log_path = self.workdir / "pebble.log"
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def directory_url(self) -> str:
        return f"https://127.0.0.1:{self.port}/dir"

    def _ssl_context(self) -> ssl.SSLContext:
        return ssl.create_default_context(cafile=str(self.ca_file))

    def start(self) -> None:
        """Make TLS material and config, start pebble, wait for /dir."""
        if self.running:
            raise RuntimeError("pebble already running")
        self.workdir.mkdir(parents=True, exist_ok=True)
        _, cert, key = _write_pebble_tls(self.workdir)
        retry_if_port_taken(
            lambda: self._start_once(cert, key),
            self.stop,
            lambda: "address already in use" in tail(self.log_path, 5),
        )

    def _start_once(self, cert: Path, key: Path) -> None:
        self.port, self.management_port = free_port(), free_port()
        conf: dict[str, object] = {
            "listenAddress": f"127.0.0.1:{self.port}",
            "managementListenAddress": f"127.0.0.1:{self.management_port}",
            "certificate": str(cert),
            "privateKey": str(key),
            "httpPort": free_port(),
            "tlsPort": free_port(),
            "ocspResponderURL": "",
            "externalAccountBindingRequired": False,
        }
        if self.validity_seconds is not None:
            conf["certificateValidityPeriod"] = self.validity_seconds
        config = self.workdir / "pebble.json"
        config.write_text(json.dumps({"pebble": conf}, indent=2))
        env = dict(os.environ)
        env.update(PEBBLE_VA_ALWAYS_VALID="1", PEBBLE_VA_NOSLEEP="1", PEBBLE_WFE_NONCEREJECT="0")
        self._proc = spawn(
            [PEBBLE_BIN, "-config", str(config)], self.log_path, cwd=self.workdir, env=env
        )
        self._wait_ready(self._proc)

    def _wait_ready(self, proc: subprocess.Popen[bytes]) -> None:
        opener = _no_proxy_opener(self._ssl_context())
        deadline = time.monotonic() + START_TIMEOUT
        last: Exception | None = None
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                break
            try:
                with opener.open(self.directory_url, timeout=2) as resp:
                    if resp.status == 200:
                        return
            except OSError as exc:
                last = exc
            time.sleep(0.05)
        raise RuntimeError(
            f"pebble not ready at {self.directory_url} (exit={proc.poll()},"
            f" last error={last!r}); log tail:\n{tail(self.log_path)}"
        )

    def issuing_roots_pem(self) -> bytes:
        """The current issuing root (changes at every pebble start)."""
        url = f"https://127.0.0.1:{self.management_port}/roots/0"
        with _no_proxy_opener(self._ssl_context()).open(url, timeout=10) as resp:
            data: bytes = resp.read()
            return data


# --------------------------------------------------------------------------- certbot


class CertbotError(RuntimeError):
    """A certbot run failed; carries the completed process."""

    def __init__(self, message: str, result: subprocess.CompletedProcess[str]) -> None:
        super().__init__(message)
        self.result = result


class Certbot:
    """Runs a certbot binary against a Pebble with private config/work/logs dirs."""

    def __init__(
        self,
        pebble: Pebble,
        basedir: Path,
        certbot_argv: Sequence[str] = DEFAULT_CERTBOT,
        extra_env: Mapping[str, str] | None = None,
    ) -> None:
        self.pebble = pebble
        self.basedir = Path(basedir).resolve()
        self.certbot_argv = list(certbot_argv)
        self.extra_env = dict(extra_env or {})
        self.config_dir = self.basedir / "etc"
        self.work_dir = self.basedir / "work"
        self.logs_dir = self.basedir / "logs"

    def env(self) -> dict[str, str]:
        """The environment certbot runs with."""
        env = dict(os.environ)
        env["REQUESTS_CA_BUNDLE"] = str(self.pebble.ca_file)
        for var in ("NO_PROXY", "no_proxy"):
            env[var] = ",".join(filter(None, [env.get(var, ""), "127.0.0.1", "localhost"]))
        env.update(self.extra_env)
        return env

    def argv(self, *args: str) -> list[str]:
        """Full certbot command line for args."""
        return [
            *self.certbot_argv,
            *args,
            "--config-dir",
            str(self.config_dir),
            "--work-dir",
            str(self.work_dir),
            "--logs-dir",
            str(self.logs_dir),
            "--server",
            self.pebble.directory_url,
            "-n",
        ]

    def run(
        self, *args: str, check: bool = True, timeout: float = 120
    ) -> subprocess.CompletedProcess[str]:
        """Run certbot; on failure (check) raise CertbotError with output and log tail."""
        for d in (self.config_dir, self.work_dir, self.logs_dir):
            d.mkdir(parents=True, exist_ok=True)
        argv = self.argv(*args)
        try:
            result = run(argv, env=self.env(), timeout=timeout, new_session=True)
        except subprocess.TimeoutExpired as exc:
            result = timed_out(exc)
            what = f"timed out after {timeout}s"
            raise CertbotError(self._describe(result, what), result) from exc
        if check and result.returncode != 0:
            raise CertbotError(self._describe(result, f"exit {result.returncode}"), result)
        return result

    def _describe(self, result: subprocess.CompletedProcess[str], what: str) -> str:
        return (
            f"certbot {what}\n{explain(result)}--- letsencrypt.log tail:\n"
            f"{tail(self.logs_dir / 'letsencrypt.log')}"
        )

    def issue(
        self,
        name: str,
        *more_names: str,
        cert_name: str | None = None,
        options: Sequence[str] = (),
    ) -> Path:
        """certonly (manual, auth hook /bin/true) for name + more_names as the lineage
        ``cert_name`` (default: name), with ``options`` (``--key-type rsa``); returns
        live/CERT_NAME."""
        domains: list[str] = []
        for n in (name, *more_names):
            domains += ["-d", n]
        lineage = cert_name or name
        self.run(
            "certonly",
            "--manual",
            "--preferred-challenges",
            "http",
            "--manual-auth-hook",
            "/bin/true",
            "--agree-tos",
            "--register-unsafely-without-email",
            "--cert-name",
            lineage,
            *options,
            *domains,
        )
        return self.lineage(lineage)

    def renew(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        """renew --force-renewal --no-random-sleep-on-renew plus args."""
        return self.run(
            "renew", "--force-renewal", "--no-random-sleep-on-renew", *args, check=check
        )

    def lineage(self, name: str) -> Path:
        """config_dir/live/NAME."""
        return self.config_dir / "live" / name


# --------------------------------------------------------------------------- nginx


@dataclass(frozen=True)
class NginxServer:
    """One TLS server block of an ``Nginx``: the addresses it listens on (each on the daemon's
    port; an IPv6 address in brackets, ``[::1]``), its certificate and key pairs (with more
    than one, nginx presents the one that fits what the client offers, as for an ECDSA and an
    RSA certificate of one name) and, if given, its ``ssl_protocols`` (``TLSv1.2``)."""

    addresses: tuple[str, ...]
    pairs: tuple[tuple[Path, Path], ...]
    protocols: str | None = None


class Nginx(PidFileDaemon):
    """nginx in a private prefix with one TLS server on 127.0.0.1:port (``cert_path`` and
    ``key_path``), or the server blocks ``servers`` on that port."""

    label = comm = "nginx"

    def __init__(
        self,
        prefix: Path,
        cert_path: Path,
        key_path: Path,
        port: int | None = None,
        server_name: str = "localhost",
        servers: Sequence[NginxServer] = (),
    ) -> None:
        self.prefix = Path(prefix).resolve()
        self.cert_path = Path(cert_path).resolve()
        self.key_path = Path(key_path).resolve()
        self.servers = tuple(servers) or (
            NginxServer(("127.0.0.1",), ((self.cert_path, self.key_path),)),
        )
        self._auto_port = port is None
        self.port = free_port() if port is None else port
        self.server_name = server_name
        self.conf_path = self.prefix / "nginx.conf"
        self.error_log = self.prefix / "error.log"
        self.launch_log = self.prefix / "launch.log"
        self.pid_file = self.prefix / "nginx.pid"

    def _flags(self) -> list[str]:
        return ["-p", f"{self.prefix}/", "-c", str(self.conf_path), "-e", str(self.error_log)]

    def test_argv(self) -> list[str]:
        """nginx -t for this instance."""
        return [NGINX_BIN, *self._flags(), "-t"]

    def reload_argv(self) -> list[str]:
        """nginx -s reload for this instance."""
        return [NGINX_BIN, *self._flags(), "-s", "reload"]

    def write_config(self) -> None:
        """(Re)write nginx.conf for the current port and paths."""
        p = self.prefix
        temps = "\n".join(
            f"    {kind}_temp_path {nginx_quote(str(p / 'tmp' / kind))};"
            for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")
        )
        self.conf_path.write_text(
            f"""worker_processes 1;
pid {nginx_quote(str(self.pid_file))};
error_log {nginx_quote(str(self.error_log))} info;
events {{ worker_connections 64; }}
http {{
    access_log {nginx_quote(str(p / "access.log"))};
{temps}
{"".join(self._server_block(server) for server in self.servers)}}}
"""
        )

    def _server_block(self, server: NginxServer) -> str:
        lines = [f"        listen {address}:{self.port} ssl;" for address in server.addresses]
        lines.append(f"        server_name {self.server_name};")
        for cert, key in server.pairs:
            lines.append(f"        ssl_certificate {nginx_quote(str(Path(cert).resolve()))};")
            lines.append(f"        ssl_certificate_key {nginx_quote(str(Path(key).resolve()))};")
        if server.protocols is not None:
            lines.append(f"        ssl_protocols {server.protocols};")
        body = "\n".join(lines)
        return f"""    server {{
{body}
        default_type text/plain;
        return 200 "ok\\n";
    }}
"""

    def logs(self) -> str:
        return f"{tail(self.launch_log)}\n--- error.log tail:\n{tail(self.error_log)}"

    def start(self) -> None:
        """Start the daemon and wait until the port accepts connections."""
        if self.running:
            raise RuntimeError("nginx already running")
        (self.prefix / "tmp").mkdir(parents=True, exist_ok=True)
        retry_if_port_taken(
            self._start_once,
            self.stop,
            lambda: self._auto_port and _IN_USE in tail(self.error_log, 5),
            self._new_port,
        )

    def _start_once(self) -> None:
        self.write_config()
        self.launch([NGINX_BIN, *self._flags()], self.launch_log, append=False)


# --------------------------------------------------------------------------- haproxy


class HAProxy(PidFileDaemon):
    """HAProxy master-worker (-W -D -p PIDFILE) with `bind 127.0.0.1:PORT ssl crt PEM`."""

    label = comm = "haproxy"

    def __init__(self, workdir: Path, combined_pem: Path, port: int | None = None) -> None:
        self.workdir = Path(workdir).resolve()
        self.combined_pem = Path(combined_pem).resolve()
        self._auto_port = port is None
        self.port = free_port() if port is None else port
        self.cfg_path = self.workdir / "haproxy.cfg"
        self.pid_file = self.workdir / "haproxy.pid"
        self.log_path = self.workdir / "haproxy.log"

    def check_argv(self) -> list[str]:
        """haproxy -c -q -f CFG."""
        return [HAPROXY_BIN, "-c", "-q", "-f", str(self.cfg_path)]

    def reload_argv(self) -> list[str]:
        """kill -USR2 MASTER (no shell)."""
        return [KILL_BIN, "-USR2", str(self.pid)]

    def write_config(self) -> None:
        """(Re)write haproxy.cfg for the current port and PEM."""
        self.cfg_path.write_text(
            f"""global
    maxconn 256

defaults
    mode http
    timeout connect 5s
    timeout client 10s
    timeout server 10s

frontend fe_tls
    bind 127.0.0.1:{self.port} ssl crt {nginx_quote(str(self.combined_pem))}
    http-request return status 200 content-type text/plain string ok
"""
        )

    def logs(self) -> str:
        return tail(self.log_path)

    def start(self) -> None:
        """Start the master-worker daemon and wait until the port accepts connections."""
        if self.running:
            raise RuntimeError("haproxy already running")
        self.workdir.mkdir(parents=True, exist_ok=True)
        retry_if_port_taken(
            self._start_once,
            self.stop,
            lambda: self._auto_port and _IN_USE in tail(self.log_path, 10),
            self._new_port,
        )

    def _start_once(self) -> None:
        self.write_config()
        argv = [HAPROXY_BIN, "-W", "-D", "-f", str(self.cfg_path), "-p", str(self.pid_file)]
        self.launch(argv, self.log_path, cwd=self.workdir)

    def stop(self) -> None:
        """Stop the master (and workers) by PID and wait until the port is free."""
        if not self._launched:
            return
        pids = self._stop_master()
        self.pid_file.unlink(missing_ok=True)
        if pids:
            wait_port_free(self.port)
