"""Real daemons on loopback for integration tests: pebble, certbot, nginx, HAProxy.

Stand-alone: no project imports. Every daemon is started on a free 127.0.0.1 port,
stopped by PID (with its process group / descendants) and is a context manager.
"""

from __future__ import annotations

import contextlib
import datetime
import hashlib
import ipaddress
import json
import os
import re
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import time
import urllib.request
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import TracebackType

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

__all__ = [
    "Certbot",
    "CertbotError",
    "HAProxy",
    "Nginx",
    "Pebble",
    "children",
    "file_fingerprint",
    "free_port",
    "served_fingerprint",
    "settled_workers",
]


def _find(name: str, *fallbacks: str) -> str:
    found = shutil.which(name)
    if found:
        return found
    for candidate in fallbacks:
        if os.access(candidate, os.X_OK):
            return candidate
    return fallbacks[0] if fallbacks else name


def _default_certbot() -> str:
    for candidate in (
        Path(sys.prefix) / "bin" / "certbot",
        Path(__file__).resolve().parents[2] / ".venv" / "bin" / "certbot",
    ):
        if os.access(candidate, os.X_OK):
            return str(candidate)
    return "certbot"


PEBBLE_BIN = _find("pebble", "/usr/bin/pebble")
NGINX_BIN = _find("nginx", "/usr/sbin/nginx")
HAPROXY_BIN = _find("haproxy", "/usr/sbin/haproxy")
KILL_BIN = _find("kill", "/bin/kill", "/usr/bin/kill")
DEFAULT_CERTBOT: tuple[str, ...] = (_default_certbot(),)

START_TIMEOUT = 15.0
STOP_TIMEOUT = 10.0
_PORT_RETRIES = 3


# --------------------------------------------------------------------------- helpers


def free_port() -> int:
    """Return a TCP port that was free on 127.0.0.1 a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def _tail(path: Path, lines: int = 40) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError as exc:
        return f"<{path}: {exc}>"
    return "\n".join(text.splitlines()[-lines:])


def _proc_stat(pid: int) -> tuple[str, int, int] | None:
    """(state, ppid, pgrp) from /proc, or None if the process is gone."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except (OSError, ValueError):
        return None
    fields = raw[raw.rfind(")") + 2 :].split()
    return fields[0], int(fields[1]), int(fields[2])


def _alive(pid: int) -> bool:
    """True unless gone or a zombie (PID 1 here reaps orphans only every few seconds)."""
    stat = _proc_stat(pid)
    return stat is not None and stat[0] not in ("Z", "X")


def _all_pids() -> list[int]:
    return [int(p) for p in os.listdir("/proc") if p.isdigit()]


def _family(pid: int) -> set[int]:
    """The process, its live descendants and, if it leads its own group, that group."""
    stats = {p: s for p in _all_pids() if (s := _proc_stat(p)) is not None}
    result = {pid}
    own = stats.get(pid)
    if own is not None and own[2] == pid and pid != os.getpgrp():
        result |= {p for p, s in stats.items() if s[2] == pid}
    changed = True
    while changed:
        new = {p for p, s in stats.items() if s[1] in result and p not in result}
        result |= new
        changed = bool(new)
    return {p for p in result if _alive(p)}


def children(pid: int) -> set[int]:
    """Live (not zombie) direct children of ``pid``: an nginx or HAProxy master's workers."""
    found = set()
    for entry in _all_pids():
        stat = _proc_stat(entry)
        if stat is not None and stat[1] == pid and stat[0] not in ("Z", "X"):
            found.add(entry)
    return found


def settled_workers(master: int, count: int = 1, timeout: float = 15) -> set[int]:
    """The master's workers once exactly ``count`` are left. For ~100 ms after a reload nginx
    keeps the old worker accepting beside the new one, so a probe may meet either."""
    deadline = time.monotonic() + timeout
    while True:
        kids = children(master)
        if len(kids) == count:
            return kids
        if time.monotonic() > deadline:
            raise AssertionError(f"master {master} has workers {sorted(kids)}, expected {count}")
        time.sleep(0.02)


def _signal(pid: int, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.kill(pid, sig)


def _wait_gone(pids: set[int], timeout: float) -> set[int]:
    deadline = time.monotonic() + timeout
    left = {p for p in pids if _alive(p)}
    while left and time.monotonic() < deadline:
        time.sleep(0.02)
        left = {p for p in left if _alive(p)}
    return left


def _terminate(pid: int, sig: int = signal.SIGTERM, timeout: float = STOP_TIMEOUT) -> None:
    """Signal pid, wait for it and its family to go; SIGKILL whatever is left."""
    family = _family(pid)
    if not family:
        return
    _signal(pid, sig)
    left = _wait_gone(family | _family(pid), timeout)
    for p in left:
        _signal(p, signal.SIGKILL)
    left = _wait_gone(left, 5.0)
    if left:
        raise RuntimeError(f"processes survived SIGKILL: {sorted(left)}")


def _read_pid(path: Path, comm: str | None = None) -> int | None:
    """PID from a pid file; with comm, only if that live process has that name."""
    try:
        pid = int(path.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None
    if comm is not None:
        try:
            if not Path(f"/proc/{pid}/comm").read_text().strip().startswith(comm):
                return None
        except OSError:
            return None
    return pid


def _wait_pidfile(path: Path, timeout: float) -> int | None:
    deadline = time.monotonic() + timeout
    while True:
        pid = _read_pid(path)
        if pid is not None or time.monotonic() >= deadline:
            return pid
        time.sleep(0.01)


def _accepts(port: int, host: str = "127.0.0.1") -> bool:
    try:
        with socket.create_connection((host, port), timeout=0.5):
            return True
    except OSError:
        return False


def _quote(value: str) -> str:
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _first_pem_cert(data: str) -> bytes:
    match = re.search(r"-----BEGIN CERTIFICATE-----.+?-----END CERTIFICATE-----", data, re.DOTALL)
    if match is None:
        raise ValueError("no PEM certificate found")
    return ssl.PEM_cert_to_DER_cert(match.group(0))


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
    return hashlib.sha256(_first_pem_cert(Path(cert_pem_path).read_text())).hexdigest()


def _no_proxy_opener(ctx: ssl.SSLContext) -> urllib.request.OpenerDirector:
    return urllib.request.build_opener(
        urllib.request.ProxyHandler({}), urllib.request.HTTPSHandler(context=ctx)
    )


class _Daemon:
    """Context-manager plumbing: __enter__ starts (unless running), __exit__ stops."""

    def start(self) -> None:
        raise NotImplementedError

    def stop(self) -> None:
        raise NotImplementedError

    @property
    def running(self) -> bool:
        raise NotImplementedError

    def __enter__(self) -> _Daemon:
        if not self.running:
            self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


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


class Pebble(_Daemon):
    """A real ACME server (pebble) that validates every challenge."""

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

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    @property
    def pid(self) -> int:
        if self._proc is None:
            raise RuntimeError("pebble not started")
        return self._proc.pid

    def _ssl_context(self) -> ssl.SSLContext:
        return ssl.create_default_context(cafile=str(self.ca_file))

    def start(self) -> None:
        """Make TLS material and config, start pebble, wait for /dir."""
        if self.running:
            raise RuntimeError("pebble already running")
        self.workdir.mkdir(parents=True, exist_ok=True)
        _, cert, key = _write_pebble_tls(self.workdir)
        env = dict(os.environ)
        env.update(PEBBLE_VA_ALWAYS_VALID="1", PEBBLE_VA_NOSLEEP="1", PEBBLE_WFE_NONCEREJECT="0")
        for attempt in range(_PORT_RETRIES):
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
            with open(self.log_path, "ab") as log:
                self._proc = subprocess.Popen(
                    [PEBBLE_BIN, "-config", str(config)],
                    cwd=self.workdir,
                    env=env,
                    stdin=subprocess.DEVNULL,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,
                )
            try:
                self._wait_ready()
                return
            except RuntimeError:
                self.stop()
                if attempt + 1 < _PORT_RETRIES and "address already in use" in _tail(
                    self.log_path, 5
                ):
                    continue
                raise

    def _wait_ready(self) -> None:
        assert self._proc is not None
        opener = _no_proxy_opener(self._ssl_context())
        deadline = time.monotonic() + START_TIMEOUT
        last: Exception | None = None
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                break
            try:
                with opener.open(self.directory_url, timeout=2) as resp:
                    if resp.status == 200:
                        return
            except OSError as exc:
                last = exc
            time.sleep(0.05)
        raise RuntimeError(
            f"pebble not ready at {self.directory_url} (exit={self._proc.poll()},"
            f" last error={last!r}); log tail:\n{_tail(self.log_path)}"
        )

    def issuing_roots_pem(self) -> bytes:
        """The current issuing root (changes at every pebble start)."""
        url = f"https://127.0.0.1:{self.management_port}/roots/0"
        with _no_proxy_opener(self._ssl_context()).open(url, timeout=10) as resp:
            data: bytes = resp.read()
            return data

    def stop(self) -> None:
        """Stop pebble; idempotent."""
        proc, self._proc = self._proc, None
        if proc is None:
            return
        if proc.poll() is None:
            _terminate(proc.pid)
        proc.wait(timeout=STOP_TIMEOUT)

    def __enter__(self) -> Pebble:
        super().__enter__()
        return self


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
        proc = subprocess.Popen(
            argv,
            env=self.env(),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            start_new_session=True,
        )
        try:
            out, err = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired as exc:
            _terminate(proc.pid, signal.SIGKILL, 5.0)
            out, err = proc.communicate()
            result = subprocess.CompletedProcess(argv, -9, out, err)
            what = f"timed out after {timeout}s"
            raise CertbotError(self._describe(result, what), result) from exc
        except BaseException:
            _terminate(proc.pid, signal.SIGKILL, 5.0)
            proc.wait()
            raise
        result = subprocess.CompletedProcess(argv, proc.returncode, out, err)
        if check and result.returncode != 0:
            raise CertbotError(self._describe(result, f"exit {result.returncode}"), result)
        return result

    def _describe(self, result: subprocess.CompletedProcess[str], what: str) -> str:
        return (
            f"certbot {what}: {result.args}\n--- stdout:\n{result.stdout}\n"
            f"--- stderr:\n{result.stderr}\n--- letsencrypt.log tail:\n"
            f"{_tail(self.logs_dir / 'letsencrypt.log')}"
        )

    def issue(self, name: str, *more_names: str) -> Path:
        """certonly (manual, auth hook /bin/true) for name + more_names; returns live/NAME."""
        domains: list[str] = []
        for n in (name, *more_names):
            domains += ["-d", n]
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
            name,
            *domains,
        )
        return self.lineage(name)

    def renew(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        """renew --force-renewal --no-random-sleep-on-renew plus args."""
        return self.run(
            "renew", "--force-renewal", "--no-random-sleep-on-renew", *args, check=check
        )

    def lineage(self, name: str) -> Path:
        """config_dir/live/NAME."""
        return self.config_dir / "live" / name


# --------------------------------------------------------------------------- nginx


class Nginx(_Daemon):
    """nginx in a private prefix with one TLS server on 127.0.0.1:port."""

    def __init__(
        self,
        prefix: Path,
        cert_path: Path,
        key_path: Path,
        port: int | None = None,
        server_name: str = "localhost",
    ) -> None:
        self.prefix = Path(prefix).resolve()
        self.cert_path = Path(cert_path).resolve()
        self.key_path = Path(key_path).resolve()
        self._auto_port = port is None
        self.port = free_port() if port is None else port
        self.server_name = server_name
        self.conf_path = self.prefix / "nginx.conf"
        self.error_log = self.prefix / "error.log"
        self.pid_file = self.prefix / "nginx.pid"
        self._pid: int | None = None
        self._launched = False

    @property
    def pid(self) -> int:
        """The master's PID (from the pid file; it survives reloads)."""
        pid = _read_pid(self.pid_file) or self._pid
        if pid is None:
            raise RuntimeError("nginx not running")
        return pid

    @property
    def running(self) -> bool:
        return self._pid is not None and _alive(self._pid)

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
            f"    {kind}_temp_path {_quote(str(p / 'tmp' / kind))};"
            for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")
        )
        self.conf_path.write_text(
            f"""worker_processes 1;
pid {_quote(str(self.pid_file))};
error_log {_quote(str(self.error_log))} info;
events {{ worker_connections 64; }}
http {{
    access_log {_quote(str(p / "access.log"))};
{temps}
    server {{
        listen 127.0.0.1:{self.port} ssl;
        server_name {self.server_name};
        ssl_certificate {_quote(str(self.cert_path))};
        ssl_certificate_key {_quote(str(self.key_path))};
        default_type text/plain;
        return 200 "ok\\n";
    }}
}}
"""
        )

    def start(self) -> None:
        """Start the daemon and wait until the port accepts connections."""
        if self.running:
            raise RuntimeError("nginx already running")
        (self.prefix / "tmp").mkdir(parents=True, exist_ok=True)
        for attempt in range(_PORT_RETRIES):
            self.write_config()
            try:
                self._start_once()
                return
            except RuntimeError:
                self.stop()
                retry = self._auto_port and attempt + 1 < _PORT_RETRIES
                if retry and "Address already in use" in _tail(self.error_log, 5):
                    self.port = free_port()
                    continue
                raise

    def _start_once(self) -> None:
        launch_log = self.prefix / "launch.log"
        self.pid_file.unlink(missing_ok=True)
        self._launched = True
        with open(launch_log, "wb") as log:  # a file, not a pipe: the daemon may keep it
            rc = subprocess.call(
                [NGINX_BIN, *self._flags()],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                timeout=START_TIMEOUT,
            )
        self._pid = _wait_pidfile(self.pid_file, 2.0 if rc == 0 else 0.0)
        if rc != 0 or self._pid is None:
            raise RuntimeError(
                f"nginx failed to start (exit {rc}):\n{_tail(launch_log)}\n"
                f"--- error.log tail:\n{_tail(self.error_log)}"
            )
        deadline = time.monotonic() + START_TIMEOUT
        while not _accepts(self.port):
            if not _alive(self._pid) or time.monotonic() > deadline:
                raise RuntimeError(
                    f"nginx not accepting on {self.port}; error.log tail:\n{_tail(self.error_log)}"
                )
            time.sleep(0.01)

    def stop(self) -> None:
        """Fast-stop the master (pid file, else remembered PID) and wait until all are gone."""
        if not self._launched:
            return
        pids = {p for p in (_read_pid(self.pid_file, "nginx"), self._pid) if p is not None}
        for pid in pids:
            _terminate(pid)
        self._pid, self._launched = None, False

    def __enter__(self) -> Nginx:
        super().__enter__()
        return self


# --------------------------------------------------------------------------- haproxy


class HAProxy(_Daemon):
    """HAProxy master-worker (-W -D -p PIDFILE) with `bind 127.0.0.1:PORT ssl crt PEM`."""

    def __init__(self, workdir: Path, combined_pem: Path, port: int | None = None) -> None:
        self.workdir = Path(workdir).resolve()
        self.combined_pem = Path(combined_pem).resolve()
        self._auto_port = port is None
        self.port = free_port() if port is None else port
        self.cfg_path = self.workdir / "haproxy.cfg"
        self.pid_file = self.workdir / "haproxy.pid"
        self.log_path = self.workdir / "haproxy.log"
        self._pid: int | None = None
        self._launched = False

    @property
    def pid(self) -> int:
        """The master's PID (stable across USR2 reloads)."""
        pid = _read_pid(self.pid_file) or self._pid
        if pid is None:
            raise RuntimeError("haproxy not running")
        return pid

    @property
    def running(self) -> bool:
        return self._pid is not None and _alive(self._pid)

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
    bind 127.0.0.1:{self.port} ssl crt {_quote(str(self.combined_pem))}
    http-request return status 200 content-type text/plain string ok
"""
        )

    def start(self) -> None:
        """Start the master-worker daemon and wait until the port accepts connections."""
        if self.running:
            raise RuntimeError("haproxy already running")
        self.workdir.mkdir(parents=True, exist_ok=True)
        for attempt in range(_PORT_RETRIES):
            self.write_config()
            try:
                self._start_once()
                return
            except RuntimeError:
                self.stop()
                retry = self._auto_port and attempt + 1 < _PORT_RETRIES
                if retry and "Address already in use" in _tail(self.log_path, 10):
                    self.port = free_port()
                    continue
                raise

    def _start_once(self) -> None:
        self.pid_file.unlink(missing_ok=True)
        self._launched = True
        with open(self.log_path, "ab") as log:  # a file, not a pipe: the daemon may keep it
            rc = subprocess.call(
                [HAPROXY_BIN, "-W", "-D", "-f", str(self.cfg_path), "-p", str(self.pid_file)],
                cwd=self.workdir,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                timeout=START_TIMEOUT,
            )
        self._pid = _wait_pidfile(self.pid_file, 2.0 if rc == 0 else 0.0)
        if rc != 0 or self._pid is None:
            raise RuntimeError(f"haproxy failed to start (exit {rc}):\n{_tail(self.log_path)}")
        deadline = time.monotonic() + START_TIMEOUT
        while not _accepts(self.port):
            if not _alive(self._pid) or time.monotonic() > deadline:
                raise RuntimeError(
                    f"haproxy not accepting on {self.port}; log tail:\n{_tail(self.log_path)}"
                )
            time.sleep(0.01)

    def stop(self) -> None:
        """Stop the master (and workers) by PID and wait until the port is free."""
        if not self._launched:
            return
        pids = {p for p in (_read_pid(self.pid_file, "haproxy"), self._pid) if p is not None}
        for pid in pids:
            _terminate(pid)
        self.pid_file.unlink(missing_ok=True)
        self._pid, self._launched = None, False
        deadline = time.monotonic() + STOP_TIMEOUT
        while pids and _accepts(self.port) and time.monotonic() < deadline:
            time.sleep(0.02)

    def __enter__(self) -> HAProxy:
        super().__enter__()
        return self
