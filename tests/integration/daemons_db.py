"""Real database and directory daemons on loopback: PostgreSQL 15, MariaDB, OpenLDAP slapd.

Each one runs from its own directory under a base that every user can traverse (the service
accounts postgres, mysql and openldap must reach their files), on a free 127.0.0.1 port picked
at start, under its own service account, and is stopped by PID. No system configuration is read
or written: no /etc/postgresql, no /etc/mysql, no /etc/ldap, no systemd.

Stand-alone apart from ``stack.free_port``: no project imports.
"""

from __future__ import annotations

import contextlib
import grp
import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import urllib.parse
from pathlib import Path

from .stack import free_port

__all__ = [
    "INITDB_BIN",
    "LDAPMODIFY_BIN",
    "MARIADBD_BIN",
    "MARIADB_BIN",
    "MARIADB_INSTALL_DB_BIN",
    "OPENSSL_BIN",
    "PG_BINDIR",
    "PG_CTL_BIN",
    "RUNUSER_BIN",
    "SLAPADD_BIN",
    "SLAPD_BIN",
    "MariaDB",
    "PostgreSQL",
    "Slapd",
    "account",
    "missing_binaries",
    "openssl_fingerprint",
    "public_dir",
]

PG_BINDIR = Path("/usr/lib/postgresql/15/bin")
PG_CTL_BIN = str(PG_BINDIR / "pg_ctl")
INITDB_BIN = str(PG_BINDIR / "initdb")
MARIADBD_BIN = "/usr/sbin/mariadbd"
MARIADB_INSTALL_DB_BIN = "/usr/bin/mariadb-install-db"
MARIADB_BIN = "/usr/bin/mariadb"
SLAPD_BIN = "/usr/sbin/slapd"
SLAPADD_BIN = "/usr/sbin/slapadd"
LDAPMODIFY_BIN = "/usr/bin/ldapmodify"
OPENSSL_BIN = shutil.which("openssl") or "/usr/bin/openssl"
RUNUSER_BIN = shutil.which("runuser") or "/usr/sbin/runuser"

START_TIMEOUT = 30.0
STOP_TIMEOUT = 15.0
_PORT_RETRIES = 3


# --------------------------------------------------------------------------- helpers


def missing_binaries(*paths: str) -> list[str]:
    """The paths among ``paths`` that are not executable files."""
    return [p for p in paths if not os.access(p, os.X_OK)]


def account(name: str) -> tuple[int, int]:
    """(uid, gid) of a service account and its group."""
    return pwd.getpwnam(name).pw_uid, grp.getgrnam(name).gr_gid


def public_dir(prefix: str) -> Path:
    """A fresh temp dir, 0755, so every service account can traverse it. The caller removes it."""
    path = Path(tempfile.mkdtemp(prefix=prefix)).resolve()
    path.chmod(0o755)
    return path


def _owned_dir(path: Path, user: str, mode: int = 0o700) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    uid, gid = account(user)
    os.chown(path, uid, gid)
    path.chmod(mode)
    return path


def _tail(path: Path, lines: int = 30) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError as e:
        return f"<{path}: {e.strerror}>"
    return "\n".join(text.splitlines()[-lines:])


def _run(argv: list[str], what: str, timeout: float = START_TIMEOUT) -> str:
    """Run a set-up command; raise with its output if it fails."""
    proc = subprocess.run(
        argv,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    if proc.returncode != 0:
        raise RuntimeError(
            f"{what} failed (exit {proc.returncode}): {argv}\n{proc.stdout}{proc.stderr}"
        )
    return proc.stdout


def _proc_stat(pid: int) -> tuple[str, int] | None:
    """(state, ppid) from /proc, or None if the process is gone."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except (OSError, ValueError):
        return None
    fields = raw[raw.rfind(")") + 2 :].split()
    return fields[0], int(fields[1])


def _alive(pid: int) -> bool:
    """True unless gone or a zombie: a daemonised process is re-parented to PID 1, which here
    reaps orphans only every few seconds, so a zombie counts as stopped."""
    stat = _proc_stat(pid)
    return stat is not None and stat[0] not in ("Z", "X")


def _descendants(pid: int) -> set[int]:
    stats = {int(p): s for p in os.listdir("/proc") if p.isdigit() and (s := _proc_stat(int(p)))}
    found: set[int] = set()
    frontier = {pid}
    while frontier:
        frontier = {p for p, s in stats.items() if s[1] in frontier and p not in found}
        found |= frontier
    return found


def stop_pid(pid: int, sig: int = signal.SIGTERM, timeout: float = STOP_TIMEOUT) -> None:
    """Send ``sig`` to ``pid``, wait until it and its descendants are gone; SIGKILL stragglers."""
    family = {pid} | _descendants(pid)
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, sig)
    deadline = time.monotonic() + timeout
    left = {p for p in family if _alive(p)}
    while left and time.monotonic() < deadline:
        time.sleep(0.02)
        left = {p for p in left if _alive(p)}
    for p in left:
        with contextlib.suppress(ProcessLookupError):
            os.kill(p, signal.SIGKILL)
    deadline = time.monotonic() + 5.0
    while left and time.monotonic() < deadline:
        time.sleep(0.02)
        left = {p for p in left if _alive(p)}
    if left:
        raise RuntimeError(f"processes survived SIGKILL: {sorted(left)}")


def _accepts(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return True
    except OSError:
        return False


def _wait_port_free(port: int, timeout: float = STOP_TIMEOUT) -> None:
    deadline = time.monotonic() + timeout
    while _accepts(port) and time.monotonic() < deadline:
        time.sleep(0.02)


def openssl_fingerprint(
    port: int, starttls: str, server_name: str, host: str = "127.0.0.1", timeout: float = 20
) -> str:
    """SHA-256 (lowercase hex) of the leaf that ``openssl s_client -starttls PROTO`` gets:
    ``openssl s_client ... </dev/null | openssl x509 -noout -fingerprint -sha256``."""
    client = [
        OPENSSL_BIN,
        "s_client",
        "-starttls",
        starttls,
        "-connect",
        f"{host}:{port}",
        "-servername",
        server_name,
    ]
    hello = subprocess.run(
        client, stdin=subprocess.DEVNULL, capture_output=True, timeout=timeout, check=False
    )
    x509 = subprocess.run(
        [OPENSSL_BIN, "x509", "-noout", "-fingerprint", "-sha256"],
        input=hello.stdout,
        capture_output=True,
        timeout=timeout,
        check=False,
    )
    out = x509.stdout.decode(errors="replace").strip()
    if x509.returncode != 0 or "=" not in out:
        raise AssertionError(
            f"openssl s_client -starttls {starttls} got no certificate from {host}:{port} "
            f"(exit {hello.returncode}):\n{hello.stderr.decode(errors='replace')[-2000:]}"
        )
    return out.split("=", 1)[1].replace(":", "").lower()


# --------------------------------------------------------------------------- PostgreSQL


class PostgreSQL:
    """A PostgreSQL 15 cluster of its own: initdb as postgres, ``pg_ctl start``, ssl = on with
    ssl_cert_file / ssl_key_file at the given paths (which must exist before start)."""

    def __init__(self, base: Path, cert_file: Path, key_file: Path) -> None:
        self.base = base
        self.cert_file = cert_file
        self.key_file = key_file
        self.data = base / "data"
        self.run_dir = base / "run"
        self.log_path = self.run_dir / "postgresql.log"
        self.port = 0
        self._pid: int | None = None

    def _as_postgres(self, *argv: str) -> list[str]:
        return [RUNUSER_BIN, "-u", "postgres", "--", *argv]

    def reload_argv(self) -> list[str]:
        """``pg_ctl -D DATA reload`` as postgres (SIGHUP to the postmaster)."""
        return self._as_postgres(PG_CTL_BIN, "-D", str(self.data), "reload")

    @property
    def pid(self) -> int:
        if self._pid is None:
            raise RuntimeError("postgres not running")
        return self._pid

    def initdb(self) -> None:
        _owned_dir(self.data, "postgres")
        _owned_dir(self.run_dir, "postgres", 0o755)
        _run(
            self._as_postgres(
                INITDB_BIN, "-D", str(self.data), "-A", "trust", "-U", "postgres", "--no-sync"
            ),
            "initdb",
        )
        with (self.data / "postgresql.conf").open("a") as f:
            f.write("\ninclude = 'fanout-test.conf'\n")

    def _write_settings(self) -> None:
        settings = self.data / "fanout-test.conf"
        settings.write_text(
            "listen_addresses = '127.0.0.1'\n"
            f"port = {self.port}\n"
            f"unix_socket_directories = '{self.run_dir}'\n"
            "ssl = on\n"
            f"ssl_cert_file = '{self.cert_file}'\n"
            f"ssl_key_file = '{self.key_file}'\n"
            "fsync = off\n"
            "max_connections = 10\n"
            "shared_buffers = 16MB\n"
        )
        uid, gid = account("postgres")
        os.chown(settings, uid, gid)

    def start(self) -> None:
        """Start the postmaster (``pg_ctl -w start``) and remember its PID."""
        for attempt in range(_PORT_RETRIES):
            self.port = free_port()
            self._write_settings()
            start = self._as_postgres(
                PG_CTL_BIN, "-D", str(self.data), "-l", str(self.log_path), "-w", "start"
            )
            rc = subprocess.call(
                start,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
                timeout=START_TIMEOUT,
            )
            pid_file = self.data / "postmaster.pid"
            if rc == 0 and pid_file.exists():
                self._pid = int(pid_file.read_text().split()[0])
                return
            if attempt + 1 < _PORT_RETRIES and "could not bind" in _tail(self.log_path, 10):
                continue
            raise RuntimeError(f"postgres failed to start (exit {rc}):\n{_tail(self.log_path)}")

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self) -> None:
        """Fast shutdown (SIGINT to the postmaster); the backends go with it. Idempotent."""
        pid, self._pid = self._pid, None
        if pid is not None:
            stop_pid(pid, signal.SIGINT)
            _wait_port_free(self.port)


# --------------------------------------------------------------------------- MariaDB


class MariaDB:
    """mariadbd with its own datadir (mariadb-install-db), socket, pid file and error log under
    ``base``, running as mysql, TLS from --ssl-cert / --ssl-key."""

    def __init__(self, base: Path, cert_file: Path, key_file: Path) -> None:
        self.base = base
        self.cert_file = cert_file
        self.key_file = key_file
        self.data = base / "data"
        self.run_dir = base / "run"
        self.socket = self.run_dir / "mysqld.sock"
        self.pid_file = self.run_dir / "mysqld.pid"
        self.log_path = self.run_dir / "error.log"
        self.port = 0
        self._proc: subprocess.Popen[bytes] | None = None

    def reload_argv(self) -> list[str]:
        """``FLUSH SSL`` through the client over the unix socket, as root (unix_socket auth)."""
        return [
            MARIADB_BIN,
            "--no-defaults",
            "--protocol=socket",
            f"--socket={self.socket}",
            "--user=root",
            "--batch",
            "--execute=FLUSH SSL",
        ]

    @property
    def pid(self) -> int:
        if self._proc is None:
            raise RuntimeError("mariadbd not running")
        return self._proc.pid

    def install_db(self) -> None:
        _owned_dir(self.data, "mysql")
        _owned_dir(self.run_dir, "mysql", 0o755)
        _run(
            [
                MARIADB_INSTALL_DB_BIN,
                "--no-defaults",
                "--user=mysql",
                f"--datadir={self.data}",
                "--skip-test-db",
                "--auth-root-authentication-method=socket",
            ],
            "mariadb-install-db",
            timeout=120,
        )

    def start(self) -> None:
        """Start mariadbd in the foreground (our child) and wait until it accepts on the port."""
        for attempt in range(_PORT_RETRIES):
            self.port = free_port()
            self.log_path.unlink(missing_ok=True)
            self._proc = subprocess.Popen(
                [
                    MARIADBD_BIN,
                    "--no-defaults",
                    "--user=mysql",
                    f"--datadir={self.data}",
                    f"--socket={self.socket}",
                    f"--pid-file={self.pid_file}",
                    f"--log-error={self.log_path}",
                    f"--port={self.port}",
                    "--bind-address=127.0.0.1",
                    f"--ssl-cert={self.cert_file}",
                    f"--ssl-key={self.key_file}",
                    "--innodb-buffer-pool-size=16M",
                    "--innodb-flush-log-at-trx-commit=0",
                    "--performance-schema=OFF",
                ],
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
                start_new_session=True,
            )
            deadline = time.monotonic() + START_TIMEOUT
            while self._proc.poll() is None and time.monotonic() < deadline:
                if self.socket.exists() and _accepts(self.port):
                    return
                time.sleep(0.02)
            log = _tail(self.log_path)
            self.stop()
            if attempt + 1 < _PORT_RETRIES and "Address already in use" in log:
                continue
            raise RuntimeError(f"mariadbd not ready on port {self.port}:\n{log}")

    def stop(self) -> None:
        """SIGTERM (a clean shutdown), then reap our child. Idempotent."""
        proc, self._proc = self._proc, None
        if proc is None:
            return
        if proc.poll() is None:
            stop_pid(proc.pid, signal.SIGTERM)
        proc.wait(timeout=STOP_TIMEOUT)
        _wait_port_free(self.port)


# --------------------------------------------------------------------------- slapd


class Slapd:
    """OpenLDAP slapd with a minimal cn=config (slapd.d made by slapadd) holding only the TLS
    settings and an access rule that lets root manage cn=config over ldapi:// with SASL
    EXTERNAL; listens on ldap://127.0.0.1:PORT/ (StartTLS) and a private ldapi socket; runs
    as openldap (slapd -u/-g drops root after binding)."""

    def __init__(self, base: Path, cert_file: Path, key_file: Path) -> None:
        self.base = base
        self.cert_file = cert_file
        self.key_file = key_file
        self.config_dir = base / "slapd.d"
        self.run_dir = base / "run"
        self.ldapi_path = self.run_dir / "ldapi"
        self.log_path = base / "slapd.log"
        self.reload_ldif = base / "reload-tls.ldif"
        self.port = 0
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def ldapi_url(self) -> str:
        return "ldapi://" + urllib.parse.quote(str(self.ldapi_path), safe="")

    def reload_argv(self) -> list[str]:
        """Replace olcTLSCertificateFile/KeyFile in cn=config with the same values: slapd
        builds a new TLS context from the files, no restart (ldapmodify over ldapi, EXTERNAL)."""
        return [
            LDAPMODIFY_BIN,
            "-Q",
            "-Y",
            "EXTERNAL",
            "-H",
            self.ldapi_url,
            "-f",
            str(self.reload_ldif),
        ]

    @property
    def pid(self) -> int:
        if self._proc is None:
            raise RuntimeError("slapd not running")
        return self._proc.pid

    def configure(self) -> None:
        """Write the cn=config LDIF, load it with slapadd, hand the result to openldap."""
        self.base.mkdir(parents=True, exist_ok=True)
        self.config_dir.mkdir()
        _owned_dir(self.run_dir, "openldap", 0o755)
        peercred_root = "gidNumber=0+uidNumber=0,cn=peercred,cn=external,cn=auth"
        ldif = self.base / "config.ldif"
        ldif.write_text(
            f"""dn: cn=config
objectClass: olcGlobal
cn: config
olcPidFile: {self.run_dir / "slapd.pid"}
olcArgsFile: {self.run_dir / "slapd.args"}
olcTLSCertificateFile: {self.cert_file}
olcTLSCertificateKeyFile: {self.key_file}

dn: cn=schema,cn=config
objectClass: olcSchemaConfig
cn: schema

dn: olcDatabase={{0}}config,cn=config
objectClass: olcDatabaseConfig
olcDatabase: {{0}}config
olcAccess: {{0}}to * by dn.exact={peercred_root} manage by * none
"""
        )
        _run([SLAPADD_BIN, "-n0", "-F", str(self.config_dir), "-l", str(ldif)], "slapadd")
        uid, gid = account("openldap")
        for path in (self.config_dir, *self.config_dir.rglob("*")):
            os.chown(path, uid, gid)
        self.reload_ldif.write_text(
            f"""dn: cn=config
changetype: modify
replace: olcTLSCertificateFile
olcTLSCertificateFile: {self.cert_file}
-
replace: olcTLSCertificateKeyFile
olcTLSCertificateKeyFile: {self.key_file}
-
"""
        )

    def start(self) -> None:
        """Start slapd in the foreground (``-d 0``: our child) and wait for the port."""
        for attempt in range(_PORT_RETRIES):
            self.port = free_port()
            self.ldapi_path.unlink(missing_ok=True)
            with self.log_path.open("ab") as log:
                self._proc = subprocess.Popen(
                    [
                        SLAPD_BIN,
                        "-h",
                        f"ldap://127.0.0.1:{self.port}/ {self.ldapi_url}",
                        "-F",
                        str(self.config_dir),
                        "-u",
                        "openldap",
                        "-g",
                        "openldap",
                        "-d",
                        "0",
                    ],
                    stdin=subprocess.DEVNULL,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,
                )
            deadline = time.monotonic() + START_TIMEOUT
            while self._proc.poll() is None and time.monotonic() < deadline:
                if _accepts(self.port):
                    return
                time.sleep(0.02)
            log_text = _tail(self.log_path)
            self.stop()
            if attempt + 1 < _PORT_RETRIES and "errno=98" in log_text:
                continue
            raise RuntimeError(f"slapd not ready on port {self.port}:\n{log_text}")

    def stop(self) -> None:
        """SIGTERM, then reap our child. Idempotent."""
        proc, self._proc = self._proc, None
        if proc is None:
            return
        if proc.poll() is None:
            stop_pid(proc.pid, signal.SIGTERM)
        proc.wait(timeout=STOP_TIMEOUT)
        _wait_port_free(self.port)
